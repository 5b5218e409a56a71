"""The book's table of contents: ``_toc.yml`` read into its pages in order, a subset of chapters picked, and the
toc of that subset written for the executed copy.

``_toc.yml`` is Jupyter Book 1's (``format: jb-book`` or ``jb-article``): a ``root`` page, then ``parts`` /
``chapters`` / ``sections``, each entry a ``file`` (a path without its suffix) or a ``glob``. These functions read
it the way jupyter-book's ``_toc.yml`` parser (``sphinx_external_toc.parsing``) does for the entries the book uses.

Glossary:
    root     the folder that holds ``_toc.yml``, ``_config.yml`` and ``book/`` (a clone, or the repository of an
             editable install: :data:`ROOT`)
    page     a ``.ipynb``, ``.md`` or ``.rst`` file the toc lists (an absolute path)
    chapter  a page that is a notebook: what the runner executes
"""
from __future__ import annotations

import glob as _glob
import os
from pathlib import Path
from typing import Sequence

from ..errors import UniversalityError

ROOT = Path(__file__).resolve().parents[2]  # the repository root of an editable install / a clone
PAGE_SUFFIXES = (".ipynb", ".md", ".rst")
_NESTING = ("parts", "chapters", "sections")  # the keys under which a toc entry lists more entries


def default_root() -> Path:
    """The book to run: the current folder if it holds a ``_toc.yml`` (a clone), else the repository root."""
    here = Path.cwd()
    return here if (here / "_toc.yml").exists() else ROOT


def read_toc(root: Path) -> dict:
    """``root/_toc.yml`` as a dict (empty file: ``{}``)."""
    import yaml

    toc_path = root / "_toc.yml"
    if not toc_path.exists():
        raise UniversalityError(f"no _toc.yml in {root}: pass root= the folder that holds the book's _toc.yml.")
    with open(toc_path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _toc_files(toc: dict) -> list[str]:
    """Every ``file`` (and expanded ``glob``) entry of a jb-book / jb-article toc, in order."""
    out: list[str] = []

    def walk(node) -> None:
        if isinstance(node, list):
            for n in node:
                walk(n)
        elif isinstance(node, dict):
            if "file" in node:
                out.append(str(node["file"]))
            if "glob" in node:
                out.append("glob:" + str(node["glob"]))
            for key in _NESTING:
                if key in node:
                    walk(node[key])

    if "root" in toc:
        out.append(str(toc["root"]))
    for key in _NESTING:
        if key in toc:
            walk(toc[key])
    return out


def _resolve_page(root: Path, entry: str) -> Path:
    """The file a toc entry names (``book/ok`` -> ``book/ok.ipynb``)."""
    p = root / entry
    if p.suffix in PAGE_SUFFIXES and p.exists():
        return p
    for suffix in PAGE_SUFFIXES:
        q = root / (entry + suffix)
        if q.exists():
            return q
    raise UniversalityError(f"_toc.yml lists {entry!r}, but no {entry}.ipynb / .md exists under {root}.")


def toc_pages(root: str | os.PathLike | None = None) -> list[Path]:
    """The pages of the book in ``_toc.yml`` order (absolute paths; ``.ipynb`` and ``.md``)."""
    root = Path(root) if root is not None else default_root()
    pages: list[Path] = []
    for entry in _toc_files(read_toc(root)):
        if entry.startswith("glob:"):
            hits = sorted(Path(h) for h in _glob.glob(str(root / entry[5:]) + "*") if Path(h).suffix in PAGE_SUFFIXES)
            pages.extend(h.resolve() for h in hits)
        else:
            pages.append(_resolve_page(root, entry).resolve())
    seen: set[Path] = set()
    return [p for p in pages if not (p in seen or seen.add(p))]


def chapter_notebooks(root: str | os.PathLike | None = None) -> list[Path]:
    """The ``.ipynb`` chapters of the book, in order."""
    return [p for p in toc_pages(root) if p.suffix == ".ipynb"]


def select_chapters(notebooks: list[Path], chapters: Sequence[str] | str | None, root: Path) -> list[Path]:
    """The notebooks that ``chapters`` names (stems such as ``01_two_architectures``, file names or toc paths; a
    comma-separated string also works), in the book's order; None: all of them."""
    if chapters is None:
        return notebooks
    if isinstance(chapters, str):
        chapters = [c for c in chapters.split(",") if c.strip()]
    by_key: dict[str, Path] = {}
    for nb in notebooks:
        rel = nb.relative_to(root).as_posix()
        for key in (nb.stem, nb.name, rel, rel[: -len(".ipynb")]):
            by_key[key] = nb
    picked: list[Path] = []
    for c in chapters:
        c = str(c).strip()
        if c not in by_key:
            names = ", ".join(nb.stem for nb in notebooks) or "(none)"
            raise UniversalityError(f"unknown chapter {c!r}; the book's notebooks are: {names}.")
        picked.append(by_key[c])
    return [nb for nb in notebooks if nb in picked]  # the book's order, no duplicates


def _filter_toc(toc: dict, keep_files: set[str]) -> dict:
    """A copy of ``toc`` without the entries whose ``file`` is not in ``keep_files`` (toc-style names)."""

    def keep(entry: dict) -> bool:
        f = entry.get("file")
        return f is None or f in keep_files

    def walk(node):
        if isinstance(node, list):
            return [walk(n) for n in node if not (isinstance(n, dict) and not keep(n))]
        if isinstance(node, dict):
            node = dict(node)
            for key in _NESTING:
                if key in node:
                    node[key] = walk(node[key])
                    if not node[key]:
                        del node[key]
            return node
        return node

    out = walk(toc)
    if "parts" in out:
        out["parts"] = [p for p in out["parts"] if p.get("chapters")]
    return out


def write_subset_toc(root: Path, selected: list[Path], dest: Path) -> None:
    """Write to ``dest`` the toc of ``root`` that lists only the notebooks in ``selected`` (and every other page)."""
    import yaml

    kept = selected + [p for p in toc_pages(root) if p.suffix != ".ipynb"]
    keep = {p.relative_to(root).with_suffix("").as_posix() for p in kept} | {p.relative_to(root).as_posix()
                                                                            for p in kept}
    with open(dest, "w", encoding="utf-8") as f:
        f.write("# written by universality_lib.book for a subset of chapters\n")
        yaml.safe_dump(_filter_toc(read_toc(root), keep), f, sort_keys=False)
