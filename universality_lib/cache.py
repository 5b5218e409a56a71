"""Content-addressed, verified artifacts: atomic writes, sha256 manifests, one cache folder.

Every expensive artifact (tokenizer, token stream, checkpoint, SAE, activation sample, similarity
result) is stored under ``cache_dir() / kind / key`` where ``key`` hashes what produced it, and a
``MANIFEST.sha256`` lists the sha256 of every file in the folder. A folder that has a file its manifest
does not list, misses one it lists, or whose files do not match is refused (``IntegrityError``).

Writing (:func:`building`) is atomic and locked:

* the folder is built under a temporary name (``.<name>.tmp-*``) and only made visible by renames: the old
  folder is moved aside (``.<name>.old-*``), the new one moved in, then the old one deleted. A kill at any
  point leaves either the old or the new folder; :func:`recover` (run before every read and write) puts an
  orphaned old folder back and deletes stale temporary ones;
* one writer per folder: an exclusive ``flock`` on ``.<name>.lock`` beside it. A second writer waits, and
  :func:`cached_folder` then uses the first one's result instead of building it again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import IntegrityError, UniversalityError

try:  # POSIX; elsewhere folders are still swapped by rename, without the one-writer lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

MANIFEST = "MANIFEST.sha256"
_PACKAGE = Path(__file__).resolve().parent
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def cache_dir() -> Path:
    """``$UNIVERSALITY_CACHE`` or ``~/.cache/universality_lib``."""
    d = _cache_root()
    _make_dir(d, "the cache folder", "set UNIVERSALITY_CACHE to a folder you can write to")
    return d


def _make_dir(d: Path, what: str, fix: str) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UniversalityError(f"cannot create {what} {d} ({e.strerror or e}): {fix}.") from e


def writable_dir(d: str | Path, what: str, fix: str) -> Path:
    """``d``, created if needed, after checking that a file can be written in it (else one clear error)."""
    d = Path(d)
    _make_dir(d, what, fix)
    try:
        tempfile.TemporaryFile(dir=d).close()
    except OSError as e:
        raise UniversalityError(f"cannot write to {what} {d} ({e.strerror or e}): {fix}.") from e
    return d


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a cache is shared like any file
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


# ----------------------------------------------------------------------------- manifests
def _files(folder: Path) -> Iterable[str]:
    """The files a manifest covers: every file under ``folder`` but the manifest and dot-files."""
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith("."):
            yield p.relative_to(folder).as_posix()


def write_manifest(folder: str | Path) -> dict[str, str]:
    """Hash every file under ``folder`` (except the manifest) into ``MANIFEST.sha256``."""
    folder = Path(folder)
    digests = {name: sha256_file(folder / name) for name in _files(folder)}
    text = "".join(f"{d}  {name}\n" for name, d in digests.items())
    atomic_write_bytes(folder / MANIFEST, text.encode())
    return digests


def fix_for(folder: str | Path) -> str:
    """What to do about a folder that failed verification, by where it lives."""
    f = Path(folder).resolve()
    if _PACKAGE in f.parents:
        return f"restore the shipped files with `git checkout -- {folder}` (or reinstall universality_lib)"
    if _cache_root().resolve() in f.parents:
        return f"delete {folder}: it is rebuilt the next time it is needed"
    return f"delete {folder} and create it again"


def _to_fix(fix: str) -> str:
    return f" To fix: {fix}." if fix else ""


def _cache_root() -> Path:
    return Path(os.environ.get("UNIVERSALITY_CACHE", Path.home() / ".cache" / "universality_lib"))


def read_manifest(folder: str | Path, fix: str | None = None) -> dict[str, str]:
    """``{file name: sha256}`` from the folder's manifest; a missing or malformed manifest is an IntegrityError."""
    path = Path(folder) / MANIFEST
    fix = fix_for(folder) if fix is None else fix
    if not path.exists():
        raise IntegrityError(f"{folder} has no {MANIFEST}: it was not written by universality_lib, "
                             f"or its writing was interrupted.{_to_fix(fix)}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise IntegrityError(f"{path} is damaged (not UTF-8 text: {e.reason} at byte {e.start})."
                             f"{_to_fix(fix)}") from e
    out = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        parts = Path(name).parts
        if not sep or not _HEX64.match(digest) or not parts or Path(name).is_absolute() or ".." in parts \
                or name in out:
            raise IntegrityError(f"{path} is damaged: line {i} is {line[:80]!r}, expected '<sha256>  <file name>' "
                                 f"(64 hex digits, two spaces, a file inside the folder, each once).{_to_fix(fix)}")
        out[name] = digest
    return out


def verify_manifest(folder: str | Path, required: Iterable[str] = (), fix: str | None = None) -> str:
    """Check that the manifest lists exactly the folder's files (and each of ``required``) and that every one
    matches its sha256; return one digest for the whole folder. ``fix``: what the error says to do (None: from
    where the folder lives, :func:`fix_for`; "": nothing)."""
    folder = Path(folder)
    fix = fix_for(folder) if fix is None else fix
    expected = read_manifest(folder, fix)
    unlisted = [n for n in required if n not in expected] + [n for n in _files(folder) if n not in expected]
    if unlisted:
        raise IntegrityError(f"{folder / MANIFEST} does not list {', '.join(dict.fromkeys(unlisted))}: the manifest "
                             f"is damaged or incomplete, or files were added.{_to_fix(fix)}")
    for name, digest in expected.items():
        p = folder / name
        if not p.is_file():
            raise IntegrityError(f"{p} is listed in {folder / MANIFEST} but missing.{_to_fix(fix)}")
        actual = sha256_file(p)
        if actual != digest:
            raise IntegrityError(f"{p} does not match its recorded sha256 ({actual[:12]} != {digest[:12]}): the file "
                                 f"is corrupt or was changed.{_to_fix(fix)}")
    return hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- locked, atomic folder writes
_held = threading.local()  # the lock files this thread holds (a lock is re-entrant within a thread)


@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """Hold the one-writer lock of ``folder`` (an exclusive flock on ``.<name>.lock`` beside it). If another
    process holds it, say so and wait until it is done."""
    folder = Path(folder)
    path = (folder.parent / f".{folder.name}.lock").absolute()
    held = _held.__dict__.setdefault("paths", set())
    if fcntl is None or path in held:
        yield
        return
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UniversalityError(f"cannot write in {folder.parent} ({e.strerror or e}): make it writable, or choose "
                                f"another folder (the cache: set UNIVERSALITY_CACHE to a folder you can write to).") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[cache] another process is writing {folder}; waiting for it to finish ...", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(path)
        try:
            yield
        finally:
            held.discard(path)
    finally:
        os.close(fd)  # releases the lock


def _leftovers(folder: Path, kind: str) -> list[Path]:
    """``.<name>.<kind>-<hex>`` folders beside ``folder`` (kind: "tmp" being built, "old" moved aside); "tmp" also
    matches the ``.<name>.<8 characters>.tmp`` folders of earlier versions (``tempfile.mkdtemp``)."""
    if not folder.parent.is_dir():
        return []
    legacy = "|" + re.escape(f".{folder.name}.") + r"[a-z0-9_]{8}\.tmp" if kind == "tmp" else ""
    pattern = re.compile(re.escape(f".{folder.name}.{kind}-") + r"[0-9a-f]{12}" + legacy)
    return [p for p in folder.parent.iterdir() if pattern.fullmatch(p.name)]


def _aside(folder: Path, kind: str) -> Path:
    return folder.parent / f".{folder.name}.{kind}-{uuid.uuid4().hex[:12]}"


def recover(folder: str | Path) -> None:
    """Finish what a killed writer of ``folder`` left behind: if ``folder`` is missing but its previous version was
    moved aside, put it back; delete stale temporary and old versions. Takes the lock only when there is work."""
    folder = Path(folder)
    if _leftovers(folder, "tmp") or _leftovers(folder, "old"):
        with locked(folder):
            _settle(folder)


def _settle(folder: Path) -> None:
    """(lock held) :func:`recover`'s work."""
    olds = sorted(_leftovers(folder, "old"), key=lambda p: p.stat().st_mtime)
    if olds and not folder.exists():
        os.replace(olds.pop(), folder)
        print(f"[cache] {folder}: restored the previous version (a writer was stopped while replacing it)",
              flush=True)
    for p in olds + _leftovers(folder, "tmp"):
        shutil.rmtree(p, ignore_errors=True)


def _swap_in(tmp: Path, folder: Path) -> None:
    """(lock held) Make ``tmp`` the new ``folder`` by renames only: old aside, new in, then delete the old."""
    old = None
    if folder.exists():
        old = _aside(folder, "old")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove(folder: Path) -> None:
    """(lock held) Delete ``folder``: renamed away first, so it disappears at once."""
    if folder.exists():
        trash = _aside(folder, "tmp")
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _build_into(folder: Path) -> Iterator[Path]:
    """(lock held) A fresh temporary folder; on success its manifest is written and it replaces ``folder``."""
    _settle(folder)
    tmp = _aside(folder, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        write_manifest(tmp)
        _swap_in(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def building(folder: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name; on success write its manifest and swap it into place (locked: a
    second writer of the same folder waits for the first)."""
    folder = Path(folder)
    with locked(folder), _build_into(folder) as tmp:
        yield tmp


def verified_folder(kind: str, key: str, *, verbose: bool = True) -> Path | None:
    """The folder ``cache_dir()/kind/key`` if it exists and passes its manifest, else None. A folder that fails
    verification is removed (and says so), never returned."""
    folder = cache_dir() / kind / key
    recover(folder)
    if not folder.exists():
        return None
    try:
        verify_manifest(folder)
        return folder
    except IntegrityError:
        with locked(folder):  # check again under the lock: another process may have just rebuilt it
            try:
                verify_manifest(folder, fix="")
                return folder
            except IntegrityError as e:
                if verbose:
                    print(f"[cache] {kind}/{key} failed verification ({str(e).rstrip('.')}); rebuilding it.", flush=True)
                _remove(folder)
        return None


def cached_folder(kind: str, key: str, build: Callable[[Path], None], *, verbose: bool = True) -> Path:
    """Return the verified folder ``cache_dir()/kind/key``, building it with ``build(tmp)`` if absent.

    A folder that fails verification is rebuilt (and says so), never silently used. When another process is
    building the same folder, this one waits for it and uses its result.
    """
    found = verified_folder(kind, key, verbose=verbose)
    if found is not None:
        return found
    folder = cache_dir() / kind / key
    with locked(folder):
        found = verified_folder(kind, key, verbose=verbose)
        if found is not None:  # built by another process while this one waited
            return found
        with _build_into(folder) as tmp:
            build(tmp)
    return folder
