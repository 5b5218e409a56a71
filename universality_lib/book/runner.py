"""Run the book: execute every chapter notebook with papermill at one preset, then build the HTML.

``build_book(preset="tiny")`` (or ``python -m universality_lib book --preset tiny``), in named steps:

1. checks the preset (:func:`universality_lib.presets.get`) and reads ``_toc.yml``'s pages in order (:mod:`.toc`);
2. :func:`copy_sources`: copies ``_config.yml``, ``_toc.yml`` and ``book/`` to ``<out>/<preset>/book/``;
3. :func:`chapter_environment`: the kernel (:mod:`.kernel`) and what a chapter sees: ``UNIVERSALITY_RESULTS_DIR=
   <out>/<preset>/results``, ``UNIVERSALITY_PRESET``, and ``UNIVERSALITY_CHAPTER=<notebook stem>`` while it runs;
4. :func:`run_chapter` for each chapter: restored from the chapter cache when nothing it depends on changed, else
   executed with papermill (``parameters={"preset": preset}``, working directory = the notebook's folder in the
   copy), writing the executed notebook over the copy and keeping it in the cache; ``.md`` pages are used as is;
5. if ``html``: :func:`hide_parameter_cells` on the executed copies, then :func:`build_html` runs
   ``jupyter-book build`` on the copy with execution off (``_config.yml`` says ``execute_notebooks: "off"``:
   papermill has already run everything) and checks that the pages fetch nothing from another host;
6. ``<out>/<preset>/timings.json`` (:class:`Timings`) is rewritten after every step; returns the path of
   ``index.html`` (or of the executed book folder when ``html=False``).

The chapter cache: every executed chapter is kept in the verified cache (``cache_dir()/book/<preset>/<key>``: the
executed notebook, its results file and how long it ran), keyed by :func:`chapter_key`: the notebook, the preset,
every file of this package (code and shipped checkpoints, :func:`package_digest`), the versions of the packages
that compute, and the results that the chapters before it recorded. A chapter whose key is found is restored
instead of executed (status ``cached`` in ``timings.json``, with the time it took when it ran); any change to those
inputs runs it again. ``reuse=False`` (``--rerun``) executes everything.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .. import cache, presets
from ..errors import UniversalityError
from .kernel import KERNEL_NAME, check_kernelspec, patched_environ, prepend_path, write_kernelspec
from .offline import external_resources
from .toc import ROOT, chapter_notebooks, default_root, select_chapters, toc_pages, write_subset_toc

_COPY_IGNORE = shutil.ignore_patterns(".ipynb_checkpoints", "_build", "__pycache__", "*.pyc", ".DS_Store")
PARAMETER_TAGS = ("parameters", "injected-parameters")  # the notebook's own parameters cell, and papermill's
# packages whose versions can change what a chapter computes (part of the chapter key)
_KEY_PACKAGES = ("torch", "numpy", "numba", "transformer-lens", "sae-lens", "transformers", "tokenizers", "scipy",
                 "pandas", "matplotlib", "circuitsvis", "papermill")


def machine() -> str:
    """The machine, in words: :func:`universality_lib.runtime.cpu_name` and, when torch sees one, ``, GPU <name>``."""
    import torch

    from ..runtime import cpu_name, device_name

    desc = cpu_name()
    if torch.cuda.is_available():
        desc += f", GPU {device_name(torch.device('cuda', 0))}"
    return desc


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fmt_s(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(seconds, 60)
    return f"{int(m)} min {s:04.1f} s"


# ---------------------------------------------------------------------------------------------- the chapter cache


def package_digest(package_dir: str | os.PathLike | None = None) -> str:
    """One hash of every file of this package (its code and its shipped checkpoints) and of the versions of the
    packages that compute (:data:`_KEY_PACKAGES`) and of Python."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    folder = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1]
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
    earlier = {Path(r).name: cache.sha256_file(r) for r in earlier_results if Path(r).exists()}
    return cache.stable_hash({"notebook": cache.sha256_file(notebook), "preset": preset, "package": digest,
                              "earlier_results": earlier, "v": 1})


# ---------------------------------------------------------------------------------------------- one run


class Timings:
    """``<out>/<preset>/timings.json``: the run's preset, machine and status, and one row per chapter; rewritten
    after every change (the report and the front page read it)."""

    def __init__(self, path: Path, preset: str):
        self.path = path
        self.data: dict = {"preset": preset, "started": _now().replace("+00:00", "Z"), "python": sys.executable,
                           "machine": machine(), "chapters": [], "html_seconds": None, "total_seconds": None,
                           "status": "running"}
        self.t_start = time.perf_counter()

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1) + "\n", encoding="utf-8")

    def add(self, **row) -> None:
        """One chapter's row (``chapter``, ``notebook``, ``seconds``, ``status``, ...)."""
        self.data["chapters"].append(row)
        self.write()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["total_seconds"] = round(time.perf_counter() - self.t_start, 2)
        self.write()


@dataclass
class Run:
    """One run of the book: what it reads, where it writes, how it executes a chapter."""

    preset: str
    root: Path  # the source book: _toc.yml, _config.yml, book/
    base: Path  # <out>/<preset>/: book/ (the executed copy), results/, timings.json, .jupyter/
    notebooks: list[Path]  # every chapter of the book, in order (a chapter's key reads the results of those before)
    timings: Timings
    kernel: str = KERNEL_NAME
    timeout: int | None = None  # per cell, in seconds
    digest: str | None = None  # package_digest(); None: execute every chapter (reuse=False)
    env: dict[str, str | None] = field(default_factory=dict)  # the environment the kernel starts in

    @property
    def book_dir(self) -> Path:
        return self.base / "book"

    @property
    def results(self) -> Path:
        return self.base / "results"


def copy_sources(root: Path, book_dir: Path, subset: list[Path] | None = None) -> None:
    """A fresh copy of the book at ``root`` in ``book_dir``: ``_config.yml``, ``_toc.yml``, every folder or file a
    page lives in, ``book/``, ``references.bib`` and ``_static/``. ``subset``: the toc lists only these notebooks."""
    if book_dir.exists():
        shutil.rmtree(book_dir)
    book_dir.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        if not (root / name).exists():
            raise UniversalityError(f"no {name} in {root}.")
        shutil.copy2(root / name, book_dir / name)
    tops = [page.relative_to(root).parts[0] for page in toc_pages(root)]  # pages may live outside book/
    for top in [*tops, "book", "references.bib", "_static"]:
        src, dst = root / top, book_dir / top
        if src.is_dir() and not dst.exists():
            shutil.copytree(src, dst, ignore=_COPY_IGNORE)
        elif src.is_file() and not dst.exists():
            shutil.copy2(src, dst)
    if subset is not None:
        write_subset_toc(root, subset, book_dir / "_toc.yml")


def chapter_environment(base: Path, preset: str, kernel: str | None) -> tuple[str, dict[str, str | None]]:
    """(kernelspec name, environment changes) for the chapters: this run's results folder and preset, this package
    importable, and (``kernel=None``) a ``python3`` kernelspec for this interpreter first on ``JUPYTER_PATH``."""
    env: dict[str, str | None] = {
        "UNIVERSALITY_RESULTS_DIR": str(base / "results"),
        "UNIVERSALITY_PRESET": preset,
        # the kernel imports this package even when it is not pip-installed
        "PYTHONPATH": prepend_path("PYTHONPATH", str(ROOT)),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    if kernel is not None:
        return kernel, env
    env["JUPYTER_PATH"] = prepend_path("JUPYTER_PATH", str(write_kernelspec(base / ".jupyter")))
    return KERNEL_NAME, env


def _failure_message(nb_rel: str, executed: Path, err: BaseException) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        what = f"cell {err.cell_index} (execution count {err.exec_count}) raised {err.ename}: {err.evalue}"
    else:
        what = f"{type(err).__name__}: {err}"
    return f"Notebook {nb_rel} failed: {what}\nThe executed copy, with the traceback in its outputs, is at {executed}"


def execute_chapter(run: Run, nb: Path, executed: Path) -> None:
    """papermill on one notebook (``papermill.execute_notebook``), the executed copy written to ``executed``."""
    import papermill as pm

    with patched_environ({"UNIVERSALITY_CHAPTER": nb.stem}):
        pm.execute_notebook(str(nb), str(executed), parameters={"preset": run.preset}, kernel_name=run.kernel,
                            cwd=str(executed.parent), progress_bar=False, log_output=False,
                            execution_timeout=run.timeout)


def _restore(hit: Path, executed: Path, results_file: Path) -> dict:
    """Copy a cached chapter back (notebook, results); returns its ``run.json`` (seconds, machine, at)."""
    shutil.copy2(hit / "executed.ipynb", executed)
    if (hit / "results.json").exists():
        shutil.copy2(hit / "results.json", results_file)
    return json.loads((hit / "run.json").read_text(encoding="utf-8"))


def _keep(run: Run, key: str, executed: Path, results_file: Path, seconds: float) -> None:
    """Store an executed chapter in the chapter cache under ``key``."""

    def fill(tmp: Path) -> None:
        shutil.copy2(executed, tmp / "executed.ipynb")
        if results_file.exists():
            shutil.copy2(results_file, tmp / "results.json")
        (tmp / "run.json").write_text(json.dumps({"seconds": round(seconds, 2), "machine": run.timings.data["machine"],
                                                  "at": _now()}) + "\n")

    cache.cached_folder(f"book/{run.preset}", key, fill, verbose=False)


def run_chapter(run: Run, nb: Path) -> str:
    """Restore one chapter from the chapter cache, or execute it (and keep it there); records its row in the
    timings and returns the line to print. Raises :class:`UniversalityError` naming the notebook when it fails."""
    rel = nb.relative_to(run.root)
    executed = run.book_dir / rel
    results_file = run.results / f"{nb.stem}.json"
    if results_file.exists():  # results of this chapter come from this run only
        results_file.unlink()
    run.results.mkdir(parents=True, exist_ok=True)
    row = {"chapter": nb.stem, "notebook": rel.as_posix()}
    t0 = time.perf_counter()
    key = hit = None
    if run.digest is not None:
        earlier = [run.results / f"{n.stem}.json" for n in run.notebooks[:run.notebooks.index(nb)]]
        key = chapter_key(nb, run.preset, earlier, run.digest)
        hit = cache.verified_folder(f"book/{run.preset}", key)  # a corrupt entry is reported and run again
    if hit is not None:  # nothing it depends on changed: restore it
        ran = _restore(hit, executed, results_file)
        run.timings.add(**row, seconds=round(time.perf_counter() - t0, 2), status="cached",
                        executed_seconds=ran["seconds"], executed_on=ran["machine"], executed_at=ran["at"])
        return f"  {rel.as_posix()}: from the cache (it ran in {_fmt_s(ran['seconds'])})"
    try:
        execute_chapter(run, nb, executed)
    except Exception as err:  # PapermillExecutionError, timeouts, dead kernels
        run.timings.add(**row, seconds=round(time.perf_counter() - t0, 2), status="failed")
        run.timings.finish("failed")
        raise UniversalityError(_failure_message(rel.as_posix(), executed, err)) from err
    dt = time.perf_counter() - t0
    run.timings.add(**row, seconds=round(dt, 2), status="ok")
    if key is not None:
        _keep(run, key, executed, results_file, dt)
    return f"  {rel.as_posix()}: {_fmt_s(dt)}"


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


def _jupyter_book_cmd() -> list[str]:
    script = Path(sys.executable).parent / "jupyter-book"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())"]


def build_html(run: Run) -> Path:
    """``jupyter-book build`` of the executed copy; returns its ``index.html``. Warns about anything a page would
    fetch from another host (:func:`universality_lib.book.offline.external_resources`)."""
    t0 = time.perf_counter()
    cmd = [*_jupyter_book_cmd(), "build", str(run.book_dir)]
    print("Building HTML: " + " ".join(cmd), flush=True)
    # Sphinx loads this package as an extension (_config.yml): make it importable without a pip install; the
    # front page ({front-page}) reads this run's results
    env = {**os.environ, "PYTHONPATH": prepend_path("PYTHONPATH", str(ROOT)),
           "UNIVERSALITY_RESULTS_DIR": str(run.results), "UNIVERSALITY_PRESET": run.preset}
    proc = subprocess.run(cmd, cwd=str(run.book_dir), capture_output=True, text=True, env=env)
    run.timings.data["html_seconds"] = round(time.perf_counter() - t0, 2)
    index = run.book_dir / "_build" / "html" / "index.html"
    if proc.returncode != 0 or not index.exists():
        run.timings.finish("failed")
        tail = "\n".join((proc.stdout + "\n" + proc.stderr).strip().splitlines()[-40:])
        raise UniversalityError(f"jupyter-book build of {run.book_dir} failed (exit {proc.returncode}):\n{tail}")
    print(f"  html: {_fmt_s(run.timings.data['html_seconds'])}", flush=True)
    online = external_resources(index.parent)
    if online:
        print(f"Warning: {len(online)} external resource(s) in the built HTML, which will not load offline:\n  "
              + "\n  ".join(online[:20]), flush=True)
    return index


# ---------------------------------------------------------------------------------------------- the whole book


def build_book(
    preset: str | presets.Preset = "tiny",
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
    """Execute the book's notebooks at ``preset`` (a name or a :class:`~universality_lib.presets.Preset`) and
    (optionally) build its HTML.

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
    from tqdm.auto import tqdm

    preset = presets.get(preset).name  # UniversalityError for an unknown preset, before anything runs
    root = Path(root).resolve() if root is not None else default_root()
    notebooks = chapter_notebooks(root)
    selected = select_chapters(notebooks, chapters, root)
    base = Path(out).resolve() / preset
    base.mkdir(parents=True, exist_ok=True)

    copy_sources(root, base / "book", subset=None if chapters is None else selected)
    kernel_name, env = chapter_environment(base, preset, kernel)
    timings = Timings(base / "timings.json", preset)
    run = Run(preset, root, base, notebooks, timings, kernel=kernel_name, timeout=timeout,
              digest=package_digest() if reuse else None, env=env)
    timings.t_start = time.perf_counter()  # the total leaves out the package digest

    print(f"Executing {len(selected)} notebook(s) at preset {preset!r} into {run.book_dir}", flush=True)
    bar = tqdm(selected, desc=f"book [{preset}]", unit="chapter", disable=not progress, file=sys.stdout)
    try:
        with patched_environ(run.env):
            check_kernelspec(run.kernel)
            for nb in bar:
                bar.set_postfix_str(nb.stem)
                bar.write(run_chapter(run, nb))
    finally:
        bar.close()

    result = run.book_dir
    if html:
        for nb in selected:
            hide_parameter_cells(run.book_dir / nb.relative_to(root))
        result = build_html(run)
    timings.finish("ok")
    print(f"Done in {_fmt_s(timings.data['total_seconds'])}: {result}", flush=True)
    return result
