"""Content-addressed, verified artifacts: atomic writes, sha256 manifests, one cache folder.

Every expensive artifact (tokenizer, token stream, checkpoint, SAE, activation sample, similarity
result) is stored under ``cache_dir() / kind / key`` where ``key`` hashes what produced it, and a
``MANIFEST.sha256`` lists the sha256 of every file in the folder. A folder is only ever made visible
by renaming a finished temporary folder, so a crash leaves nothing half-written, and a folder whose
files do not match its manifest is refused (``IntegrityError``) instead of being used.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import IntegrityError

MANIFEST = "MANIFEST.sha256"


def cache_dir() -> Path:
    """``$UNIVERSALITY_CACHE`` or ``~/.cache/universality_lib``."""
    d = Path(os.environ.get("UNIVERSALITY_CACHE", Path.home() / ".cache" / "universality_lib"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def stable_hash(obj, n: int = 16) -> str:
    """Hex digest of a JSON-able object (sorted keys), used as a cache key."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_manifest(folder: str | Path) -> dict[str, str]:
    """Hash every file under ``folder`` (except the manifest) into ``MANIFEST.sha256``."""
    folder = Path(folder)
    digests = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    text = "".join(f"{d}  {name}\n" for name, d in digests.items())
    atomic_write_bytes(folder / MANIFEST, text.encode())
    return digests


def read_manifest(folder: str | Path) -> dict[str, str]:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise IntegrityError(f"{folder} has no {MANIFEST}: it was not written by universality_lib, "
                             f"or its writing was interrupted. Delete the folder and create it again.")
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split("  ", 1)
            out[name] = digest
    return out


def verify_manifest(folder: str | Path) -> str:
    """Check every file listed in the manifest; return one digest for the whole folder."""
    folder = Path(folder)
    expected = read_manifest(folder)
    for name, digest in expected.items():
        p = folder / name
        if not p.exists():
            raise IntegrityError(f"{p} is listed in {folder / MANIFEST} but missing. "
                                 f"Restore it (git checkout) or delete {folder} and rebuild it.")
        actual = sha256_file(p)
        if actual != digest:
            raise IntegrityError(
                f"{p} does not match its recorded sha256 ({actual[:12]} != {digest[:12]}): the file is "
                f"corrupt or was changed. Restore it (git checkout) or delete {folder} and rebuild it."
            )
    return hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()


@contextlib.contextmanager
def building(folder: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name; on success write its manifest and rename it into place."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        yield tmp
        write_manifest(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verified_folder(kind: str, key: str, *, verbose: bool = True) -> Path | None:
    """The folder ``cache_dir()/kind/key`` if it exists and passes its manifest, else None. A folder that fails
    verification is removed (and says so), never returned."""
    folder = cache_dir() / kind / key
    if not folder.exists():
        return None
    try:
        verify_manifest(folder)
        return folder
    except IntegrityError as e:
        if verbose:
            print(f"[cache] {kind}/{key} failed verification ({e}); rebuilding it.", flush=True)
        shutil.rmtree(folder)
        return None


def cached_folder(kind: str, key: str, build: Callable[[Path], None], *, verbose: bool = True) -> Path:
    """Return the verified folder ``cache_dir()/kind/key``, building it with ``build(tmp)`` if absent.

    A folder that fails verification is rebuilt (and says so), never silently used.
    """
    found = verified_folder(kind, key, verbose=verbose)
    if found is not None:
        return found
    folder = cache_dir() / kind / key
    with building(folder) as tmp:
        build(tmp)
    return folder
