"""universality_lib.book: the papermill + jupyter-book runner.

The first tests run the runner on a throwaway two-page book; ``test_every_notebook_at_smoke``
executes every chapter of the real book at the ``smoke`` preset (the CI notebook check).
"""
from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from universality_lib import book, report, views
from universality_lib.book import build_book, chapter_notebooks
from universality_lib.cli import main
from universality_lib.errors import UniversalityError
from universality_lib.results import load_results

CONFIG = """\
title: Mini book
author: tests
only_build_toc_files: true
execute:
  execute_notebooks: "off"
"""


def _notebook(*cells) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = list(cells)
    return nb


def _mini_book(root: Path, *, failing: bool = False, offline: bool = False) -> Path:
    """A two-page book. ``offline``: with the real ``_config.yml`` (MathJax, launch buttons) and, in ``ok``,
    a formula and a circuitsvis view shown through universality_lib.views."""
    (root / "book").mkdir(parents=True)
    if offline:
        shutil.copy2(book.ROOT / "_config.yml", root / "_config.yml")
    else:
        (root / "_config.yml").write_text(CONFIG)
    chapters = ["  - file: book/ok"] + (["  - file: book/broken"] if failing else [])
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n" + "\n".join(chapters) + "\n")
    front = "\n```{front-page}\n```\n" if offline else ""
    (root / "book" / "intro.md").write_text(f"# Mini book\n\nHello.\n{front}")
    (root / "book" / "data.txt").write_text("side file\n")  # non-page files are copied too
    ok = _notebook(
        new_code_cell('preset = "tiny"', metadata={"tags": ["parameters"]}),
        new_markdown_cell("# OK chapter"),
        new_code_cell(
            "import os, sys\n"
            "from universality_lib.results import record\n"
            'record("preset_seen", preset)\n'
            'record("kernel_python", sys.executable)\n'
            'record("kernel_argv", " ".join(sys.argv))\n'
            'record("cwd_has_data", os.path.exists("data.txt"))\n'
            'print("preset is", preset)'
        ),
    )
    if offline:
        ok.cells += [
            new_markdown_cell("Inline $a^2 + b^2 = c^2$ and displayed\n\n$$\\sum_{i=1}^n x_i$$"),
            new_code_cell(
                "import circuitsvis as cv\n"
                "from universality_lib import views\n"
                'views.show(cv.tokens.colored_tokens(tokens=["offline", " view"], values=[0.2, 0.9]))'
            ),
            new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()"),
        ]
    nbformat.write(ok, root / "book" / "ok.ipynb")
    if failing:
        broken = _notebook(
            new_code_cell('preset = "tiny"', metadata={"tags": ["parameters"]}),
            new_code_cell('raise ValueError("deliberate failure")'),
        )
        nbformat.write(broken, root / "book" / "broken.ipynb")
    return root


@pytest.fixture(scope="module")
def mini_html(tmp_path_factory):
    """The mini book (offline variant), executed and built to HTML once for this module: (root, out, index)."""
    tmp = tmp_path_factory.mktemp("mini_html")
    root = _mini_book(tmp / "src", offline=True)
    out = tmp / "out"
    index = build_book(preset="smoke", out=out, root=root, html=True, progress=False)
    return root, out, index


def test_runner_on_mini_book(mini_html):
    root, out, index = mini_html

    base = out / "smoke"
    assert index == base / "book" / "_build" / "html" / "index.html"
    assert index.exists()
    assert (base / "book" / "_build" / "html" / "book" / "ok.html").exists()

    executed = nbformat.read(base / "book" / "book" / "ok.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "preset = \"smoke\"" in injected[0].source
    assert executed.metadata.kernelspec.name == "python3"
    assert any("preset is smoke" in o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    # the source notebook is untouched
    src = nbformat.read(root / "book" / "ok.ipynb", as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in src.cells)
    assert not any("remove-cell" in c.metadata.get("tags", []) for c in src.cells)

    res = load_results(base / "results")
    assert list(res) == ["ok"]  # UNIVERSALITY_CHAPTER = notebook stem
    by = {r["name"]: r for r in res["ok"]}
    assert by["preset_seen"]["value"] == "smoke"
    assert by["preset_seen"]["preset"] == "smoke"  # UNIVERSALITY_PRESET reached the kernel
    assert by["kernel_python"]["value"] == sys.executable  # the kernel is this interpreter
    assert "--IPKernelApp.log_level=ERROR" in by["kernel_argv"]["value"]  # ...started by our kernelspec
    assert by["cwd_has_data"]["value"] is True  # cwd = the executed copy's folder

    timings = json.loads((base / "timings.json").read_text())
    assert timings["status"] == "ok" and timings["preset"] == "smoke"
    assert timings["machine"] == book.machine()  # the report names the machine the chapters ran on
    assert [c["chapter"] for c in timings["chapters"]] == ["ok"]
    assert timings["html_seconds"] is not None


def test_parameters_cells_are_kept_but_not_shown(mini_html):
    """The notebook's own parameters cell and papermill's injected one stay in the executed notebook, tagged
    remove-cell, and the page shows neither."""
    _, out, index = mini_html
    executed = nbformat.read(out / "smoke" / "book" / "book" / "ok.ipynb", as_version=4)
    params = [c for c in executed.cells if set(book.PARAMETER_TAGS) & set(c.metadata.get("tags", []))]
    assert len(params) == 2 and all("remove-cell" in c.metadata.tags for c in params)
    page = (index.parent / "book" / "ok.html").read_text(encoding="utf-8")
    assert "preset is smoke" in page  # the other cells are there
    for tag in book.PARAMETER_TAGS:
        assert f"tag_{tag}" not in page, f"the {tag} cell is on the page"
    assert not book.hide_parameter_cells(out / "smoke" / "book" / "book" / "ok.ipynb")  # already tagged: no rewrite


def test_front_page_shows_the_claims_and_a_figure_per_chapter(mini_html):
    """The intro's {front-page}: the claims of this run as a table (one row per claim), the preset, and the
    chapter's figure linking to the chapter."""
    _, _, index = mini_html
    page = (index.parent / "book" / "intro.html").read_text(encoding="utf-8")
    tables = _tables(page)
    assert [t["ids"] for t in tables] == [[c.id for c in report.CLAIMS]]
    assert tables[0]["head"] == ["", "claim", "paper (source)", "this run", "status"]
    assert "preset <strong>smoke</strong>" in page
    assert re.search(r'<a href="ok\.html"><img src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', page)
    assert book.external_resources(index.parent) == []


def test_front_page_without_results(tmp_path):
    html = book.front_page_html(tmp_path, "book/intro", directory=tmp_path / "no-results")
    assert "No chapter has recorded results" in html and "<table" not in html


def test_built_html_is_offline(mini_html):
    """The build serves MathJax from _static/mathjax/ and inlines circuitsvis: no page fetches from another host; every
    page links the book's own stylesheet."""
    _, _, index = mini_html
    site = index.parent
    assert book.external_resources(site) == []
    mathjax = site / "_static" / "mathjax"
    for rel in ("MathJax.js", "config/TeX-AMS-MML_HTMLorMML-full.js", "jax/output/HTML-CSS/fonts/STIX-Web/fontdata.js",
                "fonts/HTML-CSS/STIX-Web/woff/STIXMathJax_Main-Regular.woff"):
        assert (mathjax / rel).is_file(), f"no {rel} in the built _static/mathjax/"
    page = (site / "book" / "ok.html").read_text(encoding="utf-8")
    assert 'src="../_static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"' in page
    assert r"\(a^2 + b^2 = c^2\)" in page  # the delimiters _config.yml's tex2jax settings look for
    assert "CircuitsVis.render(" in page and "unpkg.com/circuitsvis" not in page
    # circuitsvis's bundle: one shared copy in _static/, loaded by a classic script before the views
    assert views.bundle() not in page and "var CircuitsVis=" not in page
    assert page.count('<script src="../_static/circuitsvis.js"></script>') == 1
    # the book's own stylesheet (universality_lib/book/static/), copied and linked from every page
    from universality_lib.book.extension import STATIC, STYLESHEET
    assert (site / "_static" / STYLESHEET).read_bytes() == (STATIC / STYLESHEET).read_bytes()
    assert f'href="../_static/{STYLESHEET}' in page
    assert page.index('src="../_static/circuitsvis.js"') < page.index("CircuitsVis.render(")
    assert (site / "_static" / views.BUNDLE_FILE).read_text(encoding="utf-8") == views.bundle()
    assert len(page.encode()) < 200_000  # the 1.3 MB bundle is not in the page
    assert 'href="https://colab.research.google.com/' in page  # a plain link (the launch button) is fine


def test_built_html_renders_with_no_network(mini_html, chromium):
    """Headless Chromium with every host name unresolvable: MathJax typesets the formulas and the circuitsvis view
    draws its tokens."""
    _, _, index = mini_html
    page = index.parent / "book" / "ok.html"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert 'id="MathJax-Element-1-Frame"' in dom and 'class="MathJax_Display"' in dom  # inline and displayed maths
    assert "font-family: STIXMathJax_Main" in dom  # typeset with the bundled web fonts
    assert re.search(r'<div id="circuits-vis-[^"]+"[^>]*><div class="colored-tokens">', dom)
    assert dom.count("offline</span>") >= 1  # the view's tokens are on the page


def test_browser_tests_fail_without_chromium_under_ci(tmp_path):
    """With no Chromium on the PATH, a test that needs one is skipped, but fails under CI (``CI`` set)."""
    shutil.copy2(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_draw.py").write_text("def test_draw(chromium):\n    pass\n")
    path = str(Path(sys.executable).parent)  # the venv's scripts: no browser there
    for ci, rc, said in (("true", 1, "under CI the browser tests must run, not skip"), ("", 0, "1 skipped")):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_draw.py"],
                              cwd=tmp_path, env={**os.environ, "PATH": path, "CI": ci}, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == rc and said in proc.stdout, proc.stdout[-2000:]


def test_failing_notebook_names_it(tmp_path):
    root = _mini_book(tmp_path / "src", failing=True)
    out = tmp_path / "out"
    with pytest.raises(UniversalityError) as info:
        build_book(preset="smoke", out=out, root=root, html=False, progress=False, reuse=False)
    msg = str(info.value)
    assert "book/broken.ipynb" in msg
    assert "deliberate failure" in msg
    assert str(out / "smoke" / "book" / "book" / "broken.ipynb") in msg
    assert (out / "smoke" / "book" / "book" / "broken.ipynb").exists()  # the executed copy
    timings = json.loads((out / "smoke" / "timings.json").read_text())
    assert timings["status"] == "failed"
    assert [c["status"] for c in timings["chapters"]] == ["ok", "failed"]


def test_cell_timeout_fails_the_run(tmp_path):
    root = _mini_book(tmp_path / "src")
    nb = nbformat.read(root / "book" / "ok.ipynb", as_version=4)
    nb.cells.append(new_code_cell("import time; time.sleep(30)"))
    nbformat.write(nb, root / "book" / "ok.ipynb")
    with pytest.raises(UniversalityError, match="book/ok.ipynb failed"):
        build_book(preset="smoke", out=tmp_path / "out", root=root, html=False, timeout=2, progress=False)


def test_chapter_subset_and_cli(tmp_path, capsys):
    root = _mini_book(tmp_path / "src", failing=True)
    out = tmp_path / "out"
    rc = main(["book", "--preset", "smoke", "--out", str(out), "--chapters", "ok", "--no-html", "--root", str(root),
               "--rerun"])
    assert rc == 0
    toc = (out / "smoke" / "book" / "_toc.yml").read_text()
    assert "book/ok" in toc and "broken" not in toc
    assert list(load_results(out / "smoke" / "results")) == ["ok"]
    with pytest.raises(UniversalityError, match="unknown chapter"):
        build_book(preset="smoke", out=out, root=root, chapters=["nope"], html=False)
    # one CLI (python -m universality_lib book; `-m universality_lib.book` is an alias): a bad input exits 2
    assert main(["book", "--preset", "nope", "--out", str(out), "--root", str(root)]) == 2
    assert "error:" in capsys.readouterr().err


def test_unchanged_chapters_come_from_the_cache(tmp_path, monkeypatch):
    """A re-run restores every chapter whose inputs did not change (notebook, package, earlier results); a
    change runs it again, and so every chapter after it whose earlier results changed; a corrupt entry is
    re-executed, never used."""
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path / "cache"))
    root = _mini_book(tmp_path / "src")
    second = _notebook(
        new_code_cell('preset = "tiny"', metadata={"tags": ["parameters"]}),
        new_code_cell("from universality_lib.results import get, record\n"
                      'record("seen_from_ok", get("preset_seen", chapter="ok")["value"])'),
    )
    nbformat.write(second, root / "book" / "second.ipynb")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/ok\n"
                                   "  - file: book/second\n")
    out = tmp_path / "out"

    def run(**kw):
        build_book(preset="smoke", out=out, root=root, html=False, progress=False, **kw)
        timings = json.loads((out / "smoke" / "timings.json").read_text())
        results = {p.name: p.read_bytes() for p in (out / "smoke" / "results").glob("*.json")}
        return [c["status"] for c in timings["chapters"]], timings, results

    status, _, first = run()
    assert status == ["ok", "ok"] and set(first) == {"ok.json", "second.json"}
    status, timings, again = run()
    assert status == ["cached", "cached"] and again == first  # results restored byte for byte
    assert all(c["executed_seconds"] > 0 and c["executed_at"] for c in timings["chapters"])
    assert (out / "smoke" / "book" / "book" / "ok.ipynb").exists()
    # the first chapter changes: it runs again, and so does the second, whose input (ok's results) changed
    nb = nbformat.read(root / "book" / "ok.ipynb", as_version=4)
    nb.cells.append(new_code_cell("x = 1"))
    nbformat.write(nb, root / "book" / "ok.ipynb")
    assert run()[0] == ["ok", "ok"]
    assert run()[0] == ["cached", "cached"]
    # a corrupt cache entry is reported and the chapter executed again
    entry = max((e for e in (tmp_path / "cache" / "book" / "smoke").glob("*/results.json")
                 if b"seen_from_ok" in e.read_bytes()), key=lambda e: e.stat().st_mtime)  # second's current entry
    (entry.parent / "executed.ipynb").write_text("garbage")
    assert run()[0] == ["cached", "ok"]
    assert run(reuse=False)[0] == ["ok", "ok"]


def test_unknown_preset_raises_before_running(tmp_path):
    root = _mini_book(tmp_path / "src")
    out = tmp_path / "out"
    with pytest.raises(UniversalityError):
        build_book(preset="no-such-preset", out=out, root=root)
    assert not out.exists()


def test_real_toc_lists_notebooks():
    nbs = chapter_notebooks()
    assert nbs, "the book has no notebooks"
    for nb in nbs:
        assert nb.suffix == ".ipynb" and nb.exists()
        cells = nbformat.read(nb, as_version=4).cells
        code = [c for c in cells if c.cell_type == "code"]
        assert len(code) >= 2, f"{nb.name}: needs a parameters cell and a Colab set-up cell"
        assert book.COLAB_TAG in code[0].metadata.get("tags", []), f"{nb.name}: first code cell must be the Colab cell"
        assert "parameters" in code[1].metadata.get("tags", []), f"{nb.name}: second code cell must be tagged 'parameters'"
        assert 'preset = "tiny"' in code[1].source, f"{nb.name}: parameters cell must set preset = \"tiny\""


def _tables(page: str) -> list[dict]:
    """The ``<table>`` elements of an HTML page: their header cells (``head``), the number of body rows (``rows``)
    and the text of each body row's first cell (``ids``)."""
    from html.parser import HTMLParser

    tables: list[dict] = []

    class Scan(HTMLParser):
        part = cell = None  # the open <thead> / <tbody>; the cell whose text is collected ("head", "id")
        first = False  # the next cell is its row's first

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                tables.append({"head": [], "rows": 0, "ids": []})
            elif tag in ("thead", "tbody"):
                self.part = tag
            elif tag == "tr" and self.part == "tbody":
                tables[-1]["rows"] += 1
                self.first = True
            elif tag in ("th", "td") and self.part == "thead":
                tables[-1]["head"].append("")
                self.cell = "head"
            elif tag in ("th", "td") and self.part == "tbody" and self.first:
                tables[-1]["ids"].append("")
                self.cell, self.first = "id", False

        def handle_data(self, data):
            if self.cell:
                tables[-1]["head" if self.cell == "head" else "ids"][-1] += data

        def handle_endtag(self, tag):
            if tag in ("th", "td"):
                self.cell = None
            elif tag in ("thead", "tbody"):
                self.part = None

    Scan(convert_charrefs=True).feed(page)
    return tables


_DELIMITER = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$")


def _markdown_tables(text: str) -> list[int]:
    """The number of body rows of every pipe table in Markdown text (outside fenced code)."""
    lines, out, fenced = text.splitlines(), [], False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and i and _DELIMITER.match(line.strip()) and lines[i - 1].lstrip().startswith("|"):
            rows = 0
            while i + 1 + rows < len(lines) and lines[i + 1 + rows].lstrip().startswith("|"):
                rows += 1
            out.append(rows)
    return out


def _expected_tables(page: Path) -> list[int]:
    """Body-row counts of the tables a page's source holds: pipe tables in its Markdown (cells and Markdown
    outputs) and the HTML tables (DataFrames, the claims table) its cells displayed."""
    if page.suffix == ".md":
        return _markdown_tables(page.read_text(encoding="utf-8"))
    counts: list[int] = []
    for cell in nbformat.read(page, as_version=4).cells:
        if cell.cell_type == "markdown":
            counts += _markdown_tables(cell.source)
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            counts += _markdown_tables(data.get("text/markdown", ""))
            counts += [t["rows"] for t in _tables(data.get("text/html", ""))]
    return counts


def test_table_helpers():
    md = "x\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\n```\n| c |\n|---|---|\n```\n"
    assert _markdown_tables(md) == [2]
    rows = report.claim_rows(results={})
    t = _tables(report.to_html(rows))
    assert t == [{"head": list(report.COLUMNS.values()), "rows": len(rows), "ids": [r["id"] for r in rows]}]
    with pytest.raises(UniversalityError, match="columns must be some of"):
        report.to_html(rows, columns=("id", "verdict"))


@pytest.mark.notebooks
def test_every_notebook_at_smoke(tmp_path, chromium):
    index = build_book(preset="smoke", out=tmp_path, html=True, reuse=False)
    assert index.exists()
    check_built_book(tmp_path / "smoke", chromium)


def _drawn_views(page: Path, chromium: str) -> int:
    """How many circuitsvis views headless Chromium, with no network, draws on a page."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--virtual-time-budget=8000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    return len(re.findall(r'<div id="circuits-vis-[^"]+"[^>]*><div', dom))


def check_built_book(base: Path, chromium: str | None = None) -> None:
    """The checks of a built book (``base``: the runner's ``<out>/<preset>`` folder); with ``chromium``, also that
    every circuitsvis view of every page is drawn (from the shared bundle, with no network)."""
    executed = (base / "book").resolve()  # toc_pages gives resolved paths
    site = executed / "_build" / "html"
    for nb in chapter_notebooks():
        rel = nb.relative_to(book.ROOT)
        assert (executed / rel).exists(), f"{rel} was not executed"
        assert (site / rel.with_suffix(".html")).exists(), f"{rel} has no HTML page"
    assert book.external_resources(site) == []  # the whole book works offline
    for page in book.toc_pages(executed):
        built = site / page.relative_to(executed).with_suffix(".html")
        text = built.read_text(encoding="utf-8")
        # light pages: circuitsvis's bundle is shared (_static/), not inlined
        assert len(text.encode()) <= 1_000_000, f"{built.name}: {len(text.encode()):,} bytes"
        assert "var CircuitsVis=" not in text
        # every table of the source is a <table> on the page, with its rows; no paragraph of pipes is left
        found = sorted(t["rows"] for t in _tables(text))
        for rows in _expected_tables(page):
            assert rows in found, f"{built.name}: no <table> with {rows} rows (tables: {found})"
            found.remove(rows)
        assert not re.search(r"<p>[^<]*\|\s*[-\u2013\u2014]+\s*\|", text), f"{built.name}: a Markdown table left as text"
        views_here = text.count("CircuitsVis.render(")
        if chromium and views_here:
            assert _drawn_views(built, chromium) == views_here, f"{built.name}: not every view was drawn"
    # the report page and the front page: one row per claim, this run's values
    rows = report.claim_rows(base / "results", preset=base.name)
    ids = [r["id"] for r in rows]
    assert ids in [t["ids"] for t in _tables((site / "book" / "99_reproduction_report.html").read_text())]
    front = (site / "book" / "intro.html").read_text(encoding="utf-8")
    assert ids in [t["ids"] for t in _tables(front)]
    for r in rows:
        assert html_lib.escape(r["this_run"]) in front
    # one figure per chapter that drew one, in book order, linking to it
    drew = [nb for nb in book.chapter_notebooks(executed) if book._first_figure(nbformat.read(nb, as_version=4))]
    figures = re.findall(r'<a href="([^"]+)"><img src="data:image/', front)
    assert len(drew) >= 6 and figures == [nb.with_suffix(".html").name for nb in drew]
