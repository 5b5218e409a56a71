"""universality_lib.book: the papermill + jupyter-book runner.

The first tests run the runner on a throwaway two-page book; ``test_every_notebook_at_smoke``
executes every chapter of the real book at the ``smoke`` preset (the CI notebook check).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from universality_lib import book
from universality_lib.book import build_book, chapter_notebooks, main
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
    (root / "book" / "intro.md").write_text("# Mini book\n\nHello.\n")
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


def test_built_html_is_offline(mini_html):
    """The build serves MathJax from _static/mathjax/ and inlines circuitsvis: no page fetches from another host."""
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
    assert 'href="https://colab.research.google.com/' in page  # a plain link (the launch button) is fine


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium on this machine")
def test_built_html_renders_with_no_network(mini_html):
    """Headless Chromium with every host name unresolvable: MathJax typesets the formulas and the circuitsvis view
    draws its tokens."""
    _, _, index = mini_html
    page = index.parent / "book" / "ok.html"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert 'id="MathJax-Element-1-Frame"' in dom and 'class="MathJax_Display"' in dom  # inline and displayed maths
    assert "font-family: STIXMathJax_Main" in dom  # typeset with the bundled web fonts
    assert re.search(r'<div id="circuits-vis-[^"]+"[^>]*><div class="colored-tokens">', dom)
    assert dom.count("offline</span>") >= 1  # the view's tokens are on the page


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
    rc = main(["--preset", "smoke", "--out", str(out), "--chapters", "ok", "--no-html", "--root", str(root), "--rerun"])
    assert rc == 0
    toc = (out / "smoke" / "book" / "_toc.yml").read_text()
    assert "book/ok" in toc and "broken" not in toc
    assert list(load_results(out / "smoke" / "results")) == ["ok"]
    with pytest.raises(UniversalityError, match="unknown chapter"):
        build_book(preset="smoke", out=out, root=root, chapters=["nope"], html=False)
    assert main(["--preset", "nope", "--out", str(out), "--root", str(root)]) == 1
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


@pytest.mark.notebooks
def test_every_notebook_at_smoke(tmp_path):
    index = build_book(preset="smoke", out=tmp_path, html=True, reuse=False)
    assert index.exists()
    executed = tmp_path / "smoke" / "book"
    for nb in chapter_notebooks():
        rel = nb.relative_to(book.ROOT)
        assert (executed / rel).exists(), f"{rel} was not executed"
        html = executed / "_build" / "html" / rel.with_suffix(".html")
        assert html.exists(), f"{rel} has no HTML page"
    assert book.external_resources(index.parent) == []  # the whole book works offline
