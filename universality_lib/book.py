"""Run the book: execute every chapter notebook with papermill at one preset, then build HTML.

``build_book(preset="tiny")`` (or ``python -m universality_lib.book --preset tiny``):

1. checks the preset (:func:`universality_lib.presets.get`);
2. reads ``_toc.yml`` at the repository root and lists its pages in order;
3. copies ``_config.yml``, ``_toc.yml`` and ``book/`` to ``<out>/<preset>/book/``;
4. executes each ``.ipynb`` page with papermill (``parameters={"preset": preset}``, working
   directory = the notebook's folder in the copy, environment ``UNIVERSALITY_RESULTS_DIR=
   <out>/<preset>/results``, ``UNIVERSALITY_PRESET``, ``UNIVERSALITY_CHAPTER=<notebook stem>``),
   writing the executed notebook over the copy; ``.md`` pages are used as they are;
5. if ``html``, tags the parameters cells of the executed copies ``remove-cell`` (:func:`hide_parameter_cells`),
   then runs ``jupyter-book build`` on the copy with execution off (``_config.yml`` says
   ``execute_notebooks: "off"``: papermill has already run everything);
6. writes ``<out>/<preset>/timings.json`` and returns the path of ``index.html`` (or of the
   executed book folder when ``html=False``).

Re-runs: every executed chapter is kept in the verified cache (``cache_dir()/book/<preset>/<key>``: the executed
notebook, its results file and how long it ran), keyed by :func:`chapter_key`: the notebook, the preset, every
file of this package (code and shipped checkpoints), the versions of the packages that compute, and the results
that the chapters before it recorded. A chapter whose key is found is restored from there instead of executed
(status ``cached`` in ``timings.json``, with the time it took when it ran); any change to those inputs runs it
again. ``reuse=False`` (``--rerun``) executes everything.

Colab: the first code cell of every chapter is :data:`COLAB_CELL` (tagged ``colab-setup``, hidden in the built
book). It pip-installs this package from :data:`REPO_URL` when it runs in Colab and does nothing elsewhere, so a
chapter opened from the book's launch button works before ``universality_lib`` exists there.
:func:`ensure_colab_cell` inserts or updates it in a notebook.

Offline HTML: listed in ``_config.yml`` under ``sphinx.extra_extensions``, this module is also a Sphinx
extension (:func:`setup`). When ``mathjax_path`` points at ``mathjax/...`` it copies MathJax 2 (the static files of
the pinned ``jupyter-server-mathjax`` package) into the build's ``_static/mathjax/``, so formulas render with no
network. It writes circuitsvis's bundle once to ``_static/circuitsvis.js`` and takes the inlined copies out of every
page (:func:`universality_lib.views.share_bundle`), so each view loads the shared one. :func:`external_resources`
lists what a built page would still fetch from another host (the build prints a warning when anything does).

Front page: the directive ``{front-page}`` (in ``book/intro.md``) puts :func:`front_page_html` there: the claims
table of the run whose results the build reads (the runner points it at this run's), its preset, and the first
figure of every chapter, linking to it. :func:`site_url` is where ``.github/workflows/pages.yml`` publishes the book.

The kernel is always the interpreter running this function (``sys.executable``): a kernelspec
named ``python3`` pointing at it is written to ``<out>/<preset>/.jupyter`` and put first on
``JUPYTER_PATH`` while the notebooks run, so the executed notebooks keep their ``python3``
kernel name. ``kernel=`` uses another installed kernelspec instead.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import glob as _glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from .errors import UniversalityError

ROOT = Path(__file__).resolve().parent.parent  # the repository root of an editable install / a clone


def default_root() -> Path:
    """The book to run: the current folder if it holds a ``_toc.yml`` (a clone), else the repository root."""
    here = Path.cwd()
    return here if (here / "_toc.yml").exists() else ROOT
KERNEL_NAME = "python3"

# The repository the Colab cell installs from; must equal `repository.url` in _config.yml (a test checks).
REPO_URL = "https://github.com/universality-book/universality"
COLAB_TAG = "colab-setup"


def site_url(repo_url: str = REPO_URL) -> str:
    """The book's GitHub Pages address for a GitHub repository URL (``.github/workflows/pages.yml`` deploys there):
    ``https://github.com/OWNER/NAME`` -> ``https://OWNER.github.io/NAME/`` (``OWNER.github.io`` itself: the root)."""
    m = re.fullmatch(r"https://github\.com/([A-Za-z0-9-]+)/([A-Za-z0-9._-]+?)(?:\.git)?/?", repo_url)
    if m is None:
        raise UniversalityError(f"site_url takes a GitHub repository URL like https://github.com/OWNER/NAME, got "
                                f"{repo_url!r}: fix `repository.url` in _config.yml.")
    owner, name = m.groups()
    host = f"{owner.lower()}.github.io"
    return f"https://{host}/" if name.lower() == host else f"https://{host}/{name}/"


# The first code cell of every chapter: self-contained (universality_lib is not installed in a fresh Colab yet).
COLAB_CELL = f"""\
# Colab set-up: installs the companion library from its repository when this runs in Colab; does nothing elsewhere.
# (For mamba_ssm's fused GPU kernels, install "universality_lib[gpu] @ git+..." instead: it compiles for a while.)
import subprocess
import sys

if "google.colab" in sys.modules:
    _loaded = [m for m in ("numpy", "torch") if m in sys.modules]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "universality_lib @ git+{REPO_URL}"])
    if _loaded:
        print(f"Installed. {{', '.join(_loaded)}} were already imported: restart the session and run again.")"""
_COPY_IGNORE = shutil.ignore_patterns(".ipynb_checkpoints", "_build", "__pycache__", "*.pyc", ".DS_Store")
_PAGE_SUFFIXES = (".ipynb", ".md", ".rst")


# ----------------------------------------------------------------------------------------------
# table of contents


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
            for key in ("parts", "chapters", "sections"):
                if key in node:
                    walk(node[key])

    if "root" in toc:
        out.append(str(toc["root"]))
    for key in ("parts", "chapters", "sections"):
        if key in toc:
            walk(toc[key])
    return out


def _resolve_page(root: Path, entry: str) -> Path:
    p = root / entry
    if p.suffix in _PAGE_SUFFIXES and p.exists():
        return p
    for suffix in _PAGE_SUFFIXES:
        q = root / (entry + suffix)
        if q.exists():
            return q
    raise UniversalityError(f"_toc.yml lists {entry!r}, but no {entry}.ipynb / .md exists under {root}.")


def toc_pages(root: str | os.PathLike | None = None) -> list[Path]:
    """The pages of the book in ``_toc.yml`` order (absolute paths; ``.ipynb`` and ``.md``)."""
    import yaml

    root = Path(root) if root is not None else default_root()
    toc_path = root / "_toc.yml"
    if not toc_path.exists():
        raise UniversalityError(f"no _toc.yml in {root}: pass root= the folder that holds the book's _toc.yml.")
    with open(toc_path, encoding="utf-8") as f:
        toc = yaml.safe_load(f) or {}
    pages: list[Path] = []
    for entry in _toc_files(toc):
        if entry.startswith("glob:"):
            pattern = entry[5:]
            hits = sorted(
                Path(h) for h in _glob.glob(str(root / pattern) + "*")
                if Path(h).suffix in _PAGE_SUFFIXES
            )
            pages.extend(h.resolve() for h in hits)
        else:
            pages.append(_resolve_page(root, entry).resolve())
    seen: set[Path] = set()
    return [p for p in pages if not (p in seen or seen.add(p))]


def chapter_notebooks(root: str | os.PathLike | None = None) -> list[Path]:
    """The ``.ipynb`` chapters of the book, in order."""
    return [p for p in toc_pages(root) if p.suffix == ".ipynb"]


def _select(notebooks: list[Path], chapters: Sequence[str] | None, root: Path) -> list[Path]:
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
    # keep the book's order, drop duplicates
    return [nb for nb in notebooks if nb in picked]


def _filter_toc(toc: dict, keep_files: set[str]) -> dict:
    """A copy of ``toc`` without the notebook entries not in ``keep_files`` (toc-style names)."""

    def keep(entry: dict) -> bool:
        f = entry.get("file")
        return f is None or f in keep_files

    def walk(node):
        if isinstance(node, list):
            out = []
            for n in node:
                if isinstance(n, dict) and not keep(n):
                    continue
                out.append(walk(n))
            return out
        if isinstance(node, dict):
            node = dict(node)
            for key in ("parts", "chapters", "sections"):
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


# ----------------------------------------------------------------------------------------------
# the Colab set-up cell


def _is_colab_cell(cell) -> bool:
    if cell.get("cell_type") != "code":
        return False
    if COLAB_TAG in cell.get("metadata", {}).get("tags", []):
        return True
    src = cell.get("source", "")
    src = "".join(src) if isinstance(src, list) else src
    return src.lstrip().startswith("# Colab set-up") and "google.colab" in src  # an older version of the cell


def ensure_colab_cell(nb_path: str | os.PathLike) -> bool:
    """Make :data:`COLAB_CELL` the first code cell of the notebook at ``nb_path`` (tags ``colab-setup`` and
    ``remove-cell``), replacing any earlier Colab set-up cell. Writes the file only when something changed;
    returns whether it did."""
    import nbformat
    from nbformat.v4 import new_code_cell

    nb_path = Path(nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    old = [c for c in nb.cells if _is_colab_cell(c)]
    rest = [c for c in nb.cells if not _is_colab_cell(c)]
    cell = new_code_cell(COLAB_CELL, metadata={"tags": [COLAB_TAG, "remove-cell"]})
    if old and old[0].get("id"):
        cell["id"] = old[0]["id"]  # keep the cell id stable across updates
    first_code = next((i for i, c in enumerate(rest) if c.cell_type == "code"), len(rest))
    cells = rest[:first_code] + [cell] + rest[first_code:]

    def key(cells_):
        return [(c.cell_type, c.source, c.get("metadata", {}).get("tags", [])) for c in cells_]

    if key(cells) == key(nb.cells):
        return False
    nb.cells = cells
    nbformat.validate(nb)
    nbformat.write(nb, nb_path)
    return True


PARAMETER_TAGS = ("parameters", "injected-parameters")  # the notebook's own parameters cell, and papermill's


def hide_parameter_cells(nb_path: str | os.PathLike) -> bool:
    """Tag the parameters cells of an executed notebook (its own ``preset = "tiny"`` and the one papermill injected
    after it) ``remove-cell``, so the rendered page does not show two contradicting presets; the cells stay in the
    notebook. Writes the file only when something changed; returns whether it did."""
    import nbformat

    nb_path = Path(nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    changed = False
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if set(PARAMETER_TAGS) & set(tags) and "remove-cell" not in tags:
            cell.setdefault("metadata", {})["tags"] = [*tags, "remove-cell"]
            changed = True
    if changed:
        nbformat.write(nb, nb_path)
    return changed


def machine() -> str:
    """The machine, in words: CPU (cores, OS) and, when torch sees one, the GPU."""
    import platform

    desc = f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()} ({platform.system()})"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", GPU {torch.cuda.get_device_name(0)}"
    except Exception:  # pragma: no cover - torch missing or broken CUDA
        pass
    return desc


# ----------------------------------------------------------------------------------------------
# kernel and environment


def _write_kernelspec(prefix: Path) -> Path:
    """A ``python3`` kernelspec under ``prefix/kernels`` whose argv[0] is ``sys.executable``."""
    kdir = prefix / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    spec = {
        # log_level=ERROR hides ipykernel's "running over TCP without encryption" warning (the
        # kernel only listens on localhost); cell output, warnings included, is unaffected
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.log_level=ERROR"],
        "display_name": "Python 3 (universality)",
        "language": "python",
        "metadata": {"debugger": True},
    }
    (kdir / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return prefix


def _check_kernelspec(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel as e:
        raise UniversalityError(f"no Jupyter kernel named {name!r} (see `jupyter kernelspec list`).") from e
    if name == KERNEL_NAME and spec.argv and spec.argv[0] != sys.executable:
        raise UniversalityError(  # pragma: no cover - guards _write_kernelspec / JUPYTER_PATH
            f"kernel {name!r} runs {spec.argv[0]}, not this interpreter ({sys.executable})."
        )


@contextlib.contextmanager
def _patched_environ(changes: dict[str, str | None]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _prepend_path(var: str, *entries: str) -> str:
    parts = [e for e in entries if e]
    rest = os.environ.get(var)
    if rest:
        parts.append(rest)
    return os.pathsep.join(parts)


def _jupyter_book_cmd() -> list[str]:
    script = Path(sys.executable).parent / "jupyter-book"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())"]


# ----------------------------------------------------------------------------------------------
# the runner


def _failure_message(nb_rel: str, executed: Path, err: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        what = f"cell {err.cell_index} (execution count {err.exec_count}) raised {err.ename}: {err.evalue}"
    else:
        what = f"{type(err).__name__}: {err}"
    return (
        f"Notebook {nb_rel} failed: {what}\n"
        f"The executed copy, with the traceback in its outputs, is at {executed}"
    )


def _fmt_s(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(seconds, 60)
    return f"{int(m)} min {s:04.1f} s"


# packages whose versions can change what a chapter computes (part of the chapter key)
_KEY_PACKAGES = ("torch", "numpy", "numba", "transformer-lens", "sae-lens", "transformers", "tokenizers", "scipy",
                 "pandas", "matplotlib", "circuitsvis", "papermill")


def package_digest(package_dir: str | os.PathLike | None = None) -> str:
    """One hash of every file of this package (its code and its shipped checkpoints) and of the versions of the
    packages that compute (:data:`_KEY_PACKAGES`) and of Python."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    folder = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            h.update(path.relative_to(folder).as_posix().encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    versions = {"python": sys.version.split()[0]}
    for name in _KEY_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    h.update(json.dumps(versions, sort_keys=True).encode())
    return h.hexdigest()


def chapter_key(notebook: str | os.PathLike, preset: str, earlier_results: Sequence[str | os.PathLike],
                digest: str) -> str:
    """The cache key of one executed chapter: the notebook's bytes, the preset, :func:`package_digest` and the
    bytes of the results files of the chapters before it (those it may read)."""
    from .cache import sha256_file, stable_hash

    earlier = {Path(r).name: sha256_file(r) for r in earlier_results if Path(r).exists()}
    return stable_hash({"notebook": sha256_file(notebook), "preset": preset, "package": digest,
                        "earlier_results": earlier, "v": 1})


def build_book(
    preset: str = "tiny",
    out: str | os.PathLike = "build",
    chapters: list[str] | None = None,
    html: bool = True,
    timeout: int | None = None,
    kernel: str | None = None,
    *,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    reuse: bool = True,
) -> Path:
    """Execute the book's notebooks at ``preset`` and (optionally) build its HTML.

    ``chapters``: a subset of notebooks (stems such as ``"01_two_architectures"``, or toc paths);
    the executed book then lists only those notebooks (and every ``.md`` page).
    ``timeout``: per-cell time limit in seconds (None: no limit).
    ``kernel``: a kernelspec name; default: this interpreter.
    ``root``: the folder holding ``_toc.yml`` / ``_config.yml`` / ``book/`` (default: the repo).
    ``reuse``: restore a chapter from the verified cache when nothing it depends on changed (see the module
    docstring); False executes every chapter.
    Returns the path of ``index.html`` (``html=True``) or of the executed book folder.
    Raises :class:`UniversalityError` for a bad preset/chapter or a failing notebook.
    """
    import papermill as pm
    import yaml
    from tqdm.auto import tqdm

    from . import presets

    presets.get(preset)  # UniversalityError for an unknown preset, before anything runs
    root = Path(root).resolve() if root is not None else default_root()
    notebooks = chapter_notebooks(root)
    selected = _select(notebooks, chapters, root)

    base = Path(out).resolve() / preset
    book_dir = base / "book"
    results_path = base / "results"
    base.mkdir(parents=True, exist_ok=True)

    # ---- fresh copy of the book sources
    if book_dir.exists():
        shutil.rmtree(book_dir)
    book_dir.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        if not (root / name).exists():
            raise UniversalityError(f"no {name} in {root}.")
        shutil.copy2(root / name, book_dir / name)
    for page in toc_pages(root):  # pages may live outside book/ (e.g. a top-level intro)
        top = page.relative_to(root).parts[0]
        src = root / top
        dst = book_dir / top
        if src.is_dir() and not dst.exists():
            shutil.copytree(src, dst, ignore=_COPY_IGNORE)
        elif src.is_file() and not dst.exists():
            shutil.copy2(src, dst)
    for extra in ("book", "references.bib", "_static"):
        src = root / extra
        if src.exists() and not (book_dir / extra).exists():
            if src.is_dir():
                shutil.copytree(src, book_dir / extra, ignore=_COPY_IGNORE)
            else:
                shutil.copy2(src, book_dir / extra)
    if chapters is not None:
        with open(root / "_toc.yml", encoding="utf-8") as f:
            toc = yaml.safe_load(f) or {}
        keep = {nb.relative_to(root).with_suffix("").as_posix() for nb in selected}
        keep |= {nb.relative_to(root).as_posix() for nb in selected}
        keep |= {p.relative_to(root).with_suffix("").as_posix() for p in toc_pages(root) if p.suffix != ".ipynb"}
        keep |= {p.relative_to(root).as_posix() for p in toc_pages(root) if p.suffix != ".ipynb"}
        with open(book_dir / "_toc.yml", "w", encoding="utf-8") as f:
            f.write("# written by universality_lib.book for a subset of chapters\n")
            yaml.safe_dump(_filter_toc(toc, keep), f, sort_keys=False)

    # ---- kernel
    env_changes: dict[str, str | None] = {
        "UNIVERSALITY_RESULTS_DIR": str(results_path),
        "UNIVERSALITY_PRESET": preset,
        # the kernel imports this package even when it is not pip-installed
        "PYTHONPATH": _prepend_path("PYTHONPATH", str(ROOT)),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    if kernel is None:
        kernel_name = KERNEL_NAME
        jpath = _write_kernelspec(base / ".jupyter")
        env_changes["JUPYTER_PATH"] = _prepend_path("JUPYTER_PATH", str(jpath))
    else:
        kernel_name = kernel

    timings: dict = {
        "preset": preset,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "python": sys.executable,
        "machine": machine(),
        "chapters": [],
        "html_seconds": None,
        "total_seconds": None,
        "status": "running",
    }

    def write_timings() -> None:
        (base / "timings.json").write_text(json.dumps(timings, indent=1) + "\n", encoding="utf-8")

    from . import cache as _cache

    digest = package_digest() if reuse else ""
    kind = f"book/{preset}"
    t_start = time.perf_counter()
    print(f"Executing {len(selected)} notebook(s) at preset {preset!r} into {book_dir}", flush=True)
    bar = tqdm(selected, desc=f"book [{preset}]", unit="chapter", disable=not progress, file=sys.stdout)
    try:
        with _patched_environ(env_changes):
            _check_kernelspec(kernel_name)
            for nb in bar:
                rel = nb.relative_to(root)
                executed = book_dir / rel
                bar.set_postfix_str(nb.stem)
                # results of this chapter come from this run only
                stale = results_path / f"{nb.stem}.json"
                if stale.exists():
                    stale.unlink()
                results_path.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                key = hit = None
                if reuse:
                    earlier = [results_path / f"{n.stem}.json" for n in notebooks[:notebooks.index(nb)]]
                    key = chapter_key(nb, preset, earlier, digest)
                    hit = _cache.verified_folder(kind, key)  # a corrupt entry is reported and run again
                if hit is not None:  # nothing it depends on changed: restore it
                    shutil.copy2(hit / "executed.ipynb", executed)
                    if (hit / "results.json").exists():
                        shutil.copy2(hit / "results.json", stale)
                    ran = json.loads((hit / "run.json").read_text(encoding="utf-8"))
                    dt = time.perf_counter() - t0
                    timings["chapters"].append({"chapter": nb.stem, "notebook": rel.as_posix(), "seconds": round(dt, 2),
                                                "status": "cached", "executed_seconds": ran["seconds"],
                                                "executed_on": ran["machine"], "executed_at": ran["at"]})
                    write_timings()
                    bar.write(f"  {rel.as_posix()}: from the cache (it ran in {_fmt_s(ran['seconds'])})")
                    continue
                try:
                    with _patched_environ({"UNIVERSALITY_CHAPTER": nb.stem}):
                        pm.execute_notebook(
                            str(nb),
                            str(executed),
                            parameters={"preset": preset},
                            kernel_name=kernel_name,
                            cwd=str(executed.parent),
                            progress_bar=False,
                            log_output=False,
                            execution_timeout=timeout,
                        )
                except Exception as err:  # PapermillExecutionError, timeouts, dead kernels
                    dt = time.perf_counter() - t0
                    timings["chapters"].append({"chapter": nb.stem, "notebook": rel.as_posix(), "seconds": round(dt, 2), "status": "failed"})
                    timings["status"] = "failed"
                    timings["total_seconds"] = round(time.perf_counter() - t_start, 2)
                    write_timings()
                    raise UniversalityError(_failure_message(rel.as_posix(), executed, err)) from err
                dt = time.perf_counter() - t0
                timings["chapters"].append({"chapter": nb.stem, "notebook": rel.as_posix(), "seconds": round(dt, 2), "status": "ok"})
                write_timings()
                bar.write(f"  {rel.as_posix()}: {_fmt_s(dt)}")
                if reuse:
                    def keep(tmp: Path, executed=executed, results=stale, dt=dt) -> None:
                        shutil.copy2(executed, tmp / "executed.ipynb")
                        if results.exists():
                            shutil.copy2(results, tmp / "results.json")
                        (tmp / "run.json").write_text(json.dumps({
                            "seconds": round(dt, 2), "machine": timings["machine"],
                            "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}) + "\n")

                    _cache.cached_folder(kind, key, keep, verbose=False)
    finally:
        bar.close()

    result = book_dir
    if html:
        for nb in selected:
            hide_parameter_cells(book_dir / nb.relative_to(root))
        t0 = time.perf_counter()
        cmd = [*_jupyter_book_cmd(), "build", str(book_dir)]
        print("Building HTML: " + " ".join(cmd), flush=True)
        # Sphinx loads this package as an extension (_config.yml): make it importable without a pip install; the
        # front page ({front-page}) reads this run's results
        env = {**os.environ, "PYTHONPATH": _prepend_path("PYTHONPATH", str(ROOT)),
               "UNIVERSALITY_RESULTS_DIR": str(results_path), "UNIVERSALITY_PRESET": preset}
        proc = subprocess.run(cmd, cwd=str(book_dir), capture_output=True, text=True, env=env)
        timings["html_seconds"] = round(time.perf_counter() - t0, 2)
        index = book_dir / "_build" / "html" / "index.html"
        if proc.returncode != 0 or not index.exists():
            timings["status"] = "failed"
            timings["total_seconds"] = round(time.perf_counter() - t_start, 2)
            write_timings()
            log = (proc.stdout + "\n" + proc.stderr).strip().splitlines()
            tail = "\n".join(log[-40:])
            raise UniversalityError(
                f"jupyter-book build of {book_dir} failed (exit {proc.returncode}):\n{tail}"
            )
        print(f"  html: {_fmt_s(timings['html_seconds'])}", flush=True)
        online = external_resources(index.parent)
        if online:
            print(f"Warning: {len(online)} external resource(s) in the built HTML, which will not load offline:\n  "
                  + "\n  ".join(online[:20]), flush=True)
        result = index

    timings["total_seconds"] = round(time.perf_counter() - t_start, 2)
    timings["status"] = "ok"
    write_timings()
    print(f"Done in {_fmt_s(timings['total_seconds'])}: {result}", flush=True)
    return result


# ----------------------------------------------------------------------------------------------
# Sphinx extension: a local MathJax


MATHJAX_DIR = "mathjax"  # under the build's _static/; `mathjax_path` in _config.yml starts with this


def mathjax_source() -> Path:
    """The folder of MathJax 2 static files shipped by ``jupyter-server-mathjax`` (``MathJax.js``, ``config/``,
    ``jax/``, ``fonts/``, ...)."""
    try:
        import jupyter_server_mathjax
    except ImportError as e:
        raise UniversalityError(
            "the book serves MathJax from a local copy: pip install jupyter-server-mathjax==0.2.6 "
            "(a pinned dependency of universality_lib)."
        ) from e
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (src / "MathJax.js").is_file():
        raise UniversalityError(f"jupyter-server-mathjax has no static/MathJax.js under {src.parent}.")
    return src


def copy_mathjax(static_dir: str | os.PathLike) -> Path:
    """Copy MathJax 2 into ``static_dir/mathjax/`` (skipped when an identical ``MathJax.js`` is there);
    returns the path of the copied ``MathJax.js``."""
    src = mathjax_source()
    dst = Path(static_dir) / MATHJAX_DIR
    done = dst / "MathJax.js"
    if not (done.is_file() and done.read_bytes() == (src / "MathJax.js").read_bytes()):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    return done


def _sphinx_copy_mathjax(app, exception) -> None:
    """``build-finished``: copy MathJax when the HTML pages load it from ``_static/mathjax/``."""
    if exception is not None or app.builder.format != "html":
        return
    if not str(app.config.mathjax_path or "").startswith(MATHJAX_DIR + "/"):
        return  # a CDN or another local MathJax: nothing to copy
    copy_mathjax(Path(app.outdir) / "_static")


def _sphinx_share_circuitsvis(app, pagename, templatename, context, doctree) -> None:
    """``html-page-context``: the page's circuitsvis views load the one shared bundle (:func:`views.share_bundle`)."""
    from . import views

    if context.get("body"):
        context["body"] = views.share_bundle(context["body"], context["pathto"](f"_static/{views.BUNDLE_FILE}", 1))


def _sphinx_write_circuitsvis(app, exception) -> None:
    """``build-finished``: write the shared bundle to ``_static/circuitsvis.js``."""
    from . import views

    if exception is None and app.builder.format == "html":
        (Path(app.outdir) / "_static" / views.BUNDLE_FILE).write_text(views.bundle(), encoding="utf-8")


def setup(app) -> dict:
    """Sphinx entry point (``sphinx.extra_extensions: [universality_lib.book]`` in ``_config.yml``)."""
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    mathjax_source()  # fail at start-up, not after the whole build, when the package is missing

    class FrontPage(SphinxDirective):
        """``{front-page}``: :func:`front_page_html` for the page it sits on."""

        def run(self):
            return [nodes.raw("", front_page_html(self.env.srcdir, self.env.docname), format="html")]

    app.add_directive("front-page", FrontPage)
    app.connect("build-finished", _sphinx_copy_mathjax)
    app.connect("html-page-context", _sphinx_share_circuitsvis)
    app.connect("build-finished", _sphinx_write_circuitsvis)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ----------------------------------------------------------------------------------------------
# the front page: the last run's claims and one figure per chapter


def _first_figure(nb) -> tuple[str, str] | None:
    """(MIME type, base64 data) of a notebook's first PNG or JPEG output, or None."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            for mime in ("image/png", "image/jpeg"):
                if mime in data:
                    return mime, "".join(data[mime]).replace("\n", "")
    return None


def _title(nb, fallback: str) -> str:
    """The first Markdown heading of a notebook."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#+\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return fallback


def front_page_html(book_root: str | os.PathLike, docname: str, directory: str | os.PathLike | None = None) -> str:
    """The front page's block (HTML): the claims table of the last run (claim, paper, this run, status), the
    preset it came from, and the first figure of every executed chapter, each linking to its chapter.

    ``book_root``: the book (with ``_toc.yml``) whose executed notebooks hold the figures; ``docname``: the page's
    name in it (``book/intro``), for the links; ``directory``: the results folder (default:
    :func:`universality_lib.results.results_dir`, which the runner points at this run's results)."""
    import html as _html
    import posixpath

    import nbformat

    from . import report
    from . import results as _results

    book_root = Path(book_root)
    directory = _results.results_dir(directory)
    res = _results.load_results(directory)
    if not res:
        return (f"<p><em>No chapter has recorded results in {_html.escape(str(directory))} yet: build the book "
                "with <code>make book</code> (or <code>python -m universality_lib book</code>) to fill this page."
                "</em></p>")
    timings = report.load_timings(directory) or {}  # the runner's: the preset the run was asked for
    rows = report.claim_rows(results=res, preset=timings.get("preset"))
    preset = timings.get("preset") or ", ".join(sorted({r["preset"] for r in rows if r["preset"]}))
    tested = [r for r in rows if r["status"] in (report.HELD, report.NOT_HELD)]
    held = sum(r["status"] == report.HELD for r in tested)
    when = f", started {timings['started']} on {timings['machine']}" if timings.get("started") else ""
    parts = [f"<p>The last run of this book: preset <strong>{_html.escape(preset)}</strong>{_html.escape(when)}. "
             f"Of the {len(tested)} claims and prerequisites it tested, {held} held.</p>",
             report.to_html(rows, columns=("id", "claim", "paper", "this_run", "status")),
             '<div class="front-figures" style="display: grid; grid-template-columns: repeat(auto-fill, '
             'minmax(16em, 1fr)); gap: 1em; margin-top: 1em;">']
    here = posixpath.dirname(docname)
    for nb_path in chapter_notebooks(book_root):
        nb = nbformat.read(nb_path, as_version=4)
        fig = _first_figure(nb)
        if fig is None:
            continue
        href = _html.escape(posixpath.relpath(nb_path.relative_to(book_root).with_suffix(".html").as_posix(),
                                              here or "."))
        title = _html.escape(_title(nb, nb_path.stem))
        parts.append(f'<figure style="margin: 0;"><a href="{href}"><img src="data:{fig[0]};base64,{fig[1]}" '
                     f'alt="{title}" style="width: 100%;"></a><figcaption><a href="{href}">{title}</a>'
                     "</figcaption></figure>")
    parts.append("</div>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# offline check: what a built page would fetch from another host

_EXTERNAL = re.compile(r"(?:^|,)\s*(?:https?:)?//", re.I)  # an absolute or protocol-relative URL (srcset: any item)
# a module import of a URL in an inline script: `import {x} from "https://..."`, `import "https://..."`, `import("...")`
_JS_IMPORT = re.compile(r"""\bimport\s*(?:\(\s*|[\w$*{},\s]*?\bfrom\s*)?["']((?:https?:)?//[^"']*)""")
# a stylesheet or font from another host: url(https://...), @import "https://..."
_CSS_EXTERNAL = re.compile(r"""(?:\burl\(\s*["']?|@import\s+["'])((?:https?:)?//[^"')\s]*)""", re.I)


def _page_external(text: str) -> list[str]:
    """External loads in one HTML page (see :func:`external_resources`)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Scan(HTMLParser):
        body: list[str] | None = None  # the text of the open <script> / <style>

        def handle_starttag(self, tag, attrs):
            a = {k: v or "" for k, v in attrs}
            for key in ("src", "srcset", "data", "poster"):
                if _EXTERNAL.search(a.get(key, "")):
                    found.append(f"<{tag} {key}={a[key][:120]}>")
            rel = a.get("rel", "").lower().split()
            if tag == "link" and _EXTERNAL.match(a.get("href", "")) and not {"canonical", "alternate"} & set(rel):
                found.append(f"<link rel={a.get('rel')} href={a['href'][:120]}>")
            for m in _CSS_EXTERNAL.finditer(a.get("style", "")):
                found.append(f"<{tag} style=...{m.group(1)}...>")
            if tag in ("script", "style"):
                self.body = [tag]

        def handle_data(self, data):
            if self.body is not None:
                self.body.append(data)

        def handle_endtag(self, tag):
            if self.body is not None and tag == self.body[0]:
                pattern = _JS_IMPORT if tag == "script" else _CSS_EXTERNAL
                found.extend(f"<{tag}> ...{m.group(1)}..." for m in pattern.finditer("".join(self.body[1:])))
                self.body = None

    Scan(convert_charrefs=True).feed(text)
    return found


def external_resources(html_dir: str | os.PathLike) -> list[str]:
    """Everything the built HTML under ``html_dir`` would fetch from another host, as ``"page: what"`` lines:
    ``src`` of scripts, images, frames, media; ``<link>`` hrefs (stylesheets, fonts, icons, preloads);
    ``url(...)`` / ``@import`` in styles and ``.css`` files; module imports of a URL in inline scripts (circuitsvis's
    CDN variant). Plain hyperlinks (``<a href>``, e.g. the Colab launch button) are not fetched and are not listed.
    An empty list means every page works offline."""
    html_dir = Path(html_dir)
    out: list[str] = []
    for path in sorted(html_dir.rglob("*")):
        rel = path.relative_to(html_dir).as_posix()
        if path.suffix == ".html":
            out += [f"{rel}: {f}" for f in _page_external(path.read_text(encoding="utf-8", errors="replace"))]
        elif path.suffix == ".css":
            text = path.read_text(encoding="utf-8", errors="replace")
            out += [f"{rel}: ...{m.group(1)}..." for m in _CSS_EXTERNAL.finditer(text)]
    return out


# ----------------------------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m universality_lib.book [--preset P] [--out DIR] [--chapters A,B] [--no-html] [--timeout S]``"""
    from . import presets

    p = argparse.ArgumentParser(prog="python -m universality_lib.book", description="Execute the book's notebooks at a preset and build the HTML.")
    p.add_argument("--preset", default="tiny", help=f"one of {', '.join(presets.NAMES)} (default: tiny)")
    p.add_argument("--out", default="build", help="output folder (default: build); results go to OUT/PRESET/")
    p.add_argument("--chapters", nargs="+", default=None, help="notebook stems to run (default: all); comma-separated also works")
    p.add_argument("--no-html", action="store_true", help="execute the notebooks only, skip jupyter-book build")
    p.add_argument("--timeout", type=int, default=None, help="per-cell time limit in seconds (default: none)")
    p.add_argument("--kernel", default=None, help="a kernelspec name (default: this Python interpreter)")
    p.add_argument("--rerun", action="store_true", help="execute every chapter, even those the cache holds unchanged")
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    chapters = None
    if args.chapters:
        chapters = [c.strip() for item in args.chapters for c in item.split(",") if c.strip()]
    try:
        path = build_book(preset=args.preset, out=args.out, chapters=chapters, html=not args.no_html,
                          timeout=args.timeout, kernel=args.kernel, root=args.root, reuse=not args.rerun)
    except UniversalityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
