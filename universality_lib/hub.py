"""The Hugging Face hub, in one place: fetch a snapshot or say clearly why it cannot be had.

Only the ``paper`` preset reaches the hub. A local folder is always used as it is; with
``HF_HUB_OFFLINE=1`` (set by the tests) a pre-filled HF cache still works and anything else fails at
once with one clear error instead of hanging. The error says which of three things went wrong:

* a name that can only be a path (``./x``, ``/a/b/c``: not a hub repo id) names no folder: "no such folder";
* a local folder holds none of the files asked for: "the folder ... has no <what> files";
* a hub repo id cannot be fetched offline: :class:`~universality_lib.errors.OfflineError`, "needs internet".
"""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import List, Optional

from .errors import OfflineError, UniversalityError


def offline_env() -> bool:
    truthy = {"1", "true", "yes", "on"}
    if any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def is_repo_id(name: str) -> bool:
    """True when ``name`` is a valid hub repo id (``"name"`` or ``"owner/name"``, as the hub spells them)."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(str(name))
        return True
    except Exception:
        return False


def local_problem(name: str, what: str = "", patterns: Optional[List[str]] = None) -> Optional[UniversalityError]:
    """Why ``name`` cannot be used as a local folder, or None (a usable folder, or a hub repo id).

    An existing folder must hold at least one file (matching one of ``patterns`` when given; hidden
    files do not count). A name that is not a hub repo id can only be a path, so it must exist."""
    path = Path(str(name)).expanduser()
    label = f"{what} files" if what else "files"
    if path.is_dir():
        files = (f for f in path.rglob("*")
                 if f.is_file() and not any(s.startswith(".") for s in f.relative_to(path).parts))
        if any(patterns is None or any(fnmatch.fnmatch(f.name, p) for p in patterns) for f in files):
            return None
        wanted = f" (expected {', '.join(patterns)})" if patterns else ""
        return UniversalityError(f"the folder {path} has no {label}{wanted}: check the path, or put the files there")
    if path.exists():
        return UniversalityError(f"{path} is a file, not a folder: pass the folder that holds the {label}")
    if not is_repo_id(str(name)):
        return UniversalityError(
            f"no such folder: {path} (and {str(name)!r} is not a hub repo id 'owner/name' either): check the path")
    return None


def offline_error(repo: str, what: str = "", exc: Optional[BaseException] = None) -> UniversalityError:
    """The error for a fetch of ``repo`` that failed offline.

    About the folder when ``repo`` is a local folder or can only be one (see :func:`local_problem`);
    otherwise an :class:`OfflineError`: the hub repo id needs internet."""
    problem = local_problem(repo, what)
    if problem is not None:
        return problem
    why = f" ({type(exc).__name__})" if exc is not None else ""
    if Path(str(repo)).expanduser().is_dir():
        return UniversalityError(f"cannot read the local {what + ' ' if what else ''}folder {repo}{why}: {exc}")
    return OfflineError(
        f"cannot fetch {what + ' ' if what else ''}{repo!r} from the Hugging Face hub{why} (there is no local folder "
        f"of that name): the 'paper' preset needs internet (e.g. Colab) or a pre-filled HF cache; offline, use "
        f"preset 'tiny' or a local folder."
    )


def snapshot(repo: str, allow: List[str], what: str = "") -> Path:
    """A local folder as is (it must hold a file matching ``allow``), else ``snapshot_download(repo)``
    (the HF cache only, when offline)."""
    problem = local_problem(repo, what, allow)
    if problem is not None:
        raise problem
    if Path(str(repo)).expanduser().is_dir():
        return Path(str(repo)).expanduser()
    try:
        from huggingface_hub import snapshot_download
    except Exception as exc:  # pragma: no cover
        raise offline_error(repo, what, exc) from exc
    offline = offline_env()
    try:
        return Path(snapshot_download(repo, allow_patterns=allow, local_files_only=offline))
    except Exception as exc:
        if is_connection_error(exc) or offline:
            raise offline_error(repo, what, exc) from exc
        raise UniversalityError(f"cannot fetch {what + ' ' if what else ''}{repo!r} from the Hugging Face hub "
                                f"(there is no local folder of that name): {exc}") from exc


def tokenizer(repo: str):
    """A tokenizer from the hub (or a local folder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(snapshot(repo, ["*.json", "*.txt", "*.model"], what="tokenizer")))


def is_connection_error(exc: BaseException) -> bool:
    names = {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "ConnectionError",
        "ConnectTimeout",
        "ConnectError",
        "ReadTimeout",
        "Timeout",
        "TimeoutException",
        "NetworkError",
        "ProxyError",
        "gaierror",
    }
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if any(c.__name__ in names for c in type(e).__mro__) or isinstance(e, (ConnectionError, TimeoutError)):
            return True
        e = e.__cause__ or e.__context__
    return False
