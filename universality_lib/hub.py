"""The Hugging Face hub, in one place: fetch a snapshot or say clearly that the machine is offline.

Only the ``paper`` preset reaches the hub. A local folder is always used as it is; with
``HF_HUB_OFFLINE=1`` (set by the tests) a pre-filled HF cache still works and anything else fails at
once with one :class:`~universality_lib.errors.OfflineError` instead of hanging.
"""
from __future__ import annotations

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


def offline_error(repo: str, what: str = "", exc: Optional[BaseException] = None) -> OfflineError:
    why = f" ({type(exc).__name__})" if exc is not None else ""
    return OfflineError(
        f"cannot fetch {what + ' ' if what else ''}{repo!r} from the Hugging Face hub{why}: the 'paper' preset needs "
        f"internet (e.g. Colab) or a pre-filled HF cache; offline, use preset 'tiny' or a local folder."
    )


def snapshot(repo: str, allow: List[str], what: str = "") -> Path:
    """A local folder as is, else ``snapshot_download(repo)`` (cache only when offline)."""
    if Path(repo).is_dir():
        return Path(repo)
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
        raise UniversalityError(f"cannot fetch {what + ' ' if what else ''}{repo!r} from the Hugging Face hub: {exc}") from exc


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
