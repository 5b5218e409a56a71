"""Offline HTML pieces on their own: universality_lib.views (inline circuitsvis), book.external_resources (the
checker) and book.copy_mathjax. The built mini book is checked in tests/test_book.py (one build for both)."""
from __future__ import annotations

import pytest

from universality_lib import book, views
from universality_lib.errors import UniversalityError

cv_tokens = pytest.importorskip("circuitsvis.tokens")


@pytest.fixture(scope="module")
def view():
    return cv_tokens.colored_tokens(tokens=["a", " cat"], values=[0.1, 0.7])


def test_views_html_is_the_inline_variant(view):
    out = views.html(view)
    assert out == view.local_src
    assert "var CircuitsVis=" in out and "CircuitsVis.render(" in out  # the bundle and the call, in one script
    assert "unpkg.com" not in out
    assert book._page_external(out) == []
    assert book._page_external(view.cdn_src)  # ...whereas circuitsvis's CDN variant imports from unpkg


def test_views_show_displays_inline_html(view, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    views.show(view)
    assert len(shown) == 1 and shown[0].data == view.local_src


@pytest.mark.parametrize("bad", ["<b>html</b>", None, object()])
def test_views_reject_what_is_not_a_view(bad):
    with pytest.raises(UniversalityError, match="circuitsvis view"):
        views.html(bad)


def test_external_resources_flags_loads_not_links(tmp_path):
    page = """<html><head>
<script async src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>
<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Lato">
<link rel="preload" as="font" href="https://example.org/f.woff2">
<link rel="canonical" href="https://example.org/page.html">
<link rel="stylesheet" href="_static/local.css">
<script src="_static/local.js"></script>
<style>@font-face { font-family: X; src: url("https://example.org/x.woff"); }</style>
<script type="module">import { render } from "https://unpkg.com/circuitsvis/dist/cdn/esm.js";</script>
<script>const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js";</script>
</head><body>
<a href="https://colab.research.google.com/github/o/r/blob/main/book/ok.ipynb">Colab</a>
<img src="https://example.org/plot.png"><img src="local.png">
<div style="background: url(https://example.org/bg.png)"></div>
</body></html>"""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.html").write_text(page)
    (tmp_path / "theme.css").write_text('@import "https://example.org/a.css";\nb { background: url(img/ok.png) }\n')
    found = book.external_resources(tmp_path)
    assert [f.split(": ", 1)[0] for f in found] == ["sub/page.html"] * 7 + ["theme.css"]
    text = "\n".join(found)
    for what in ("mathjax@3", "fonts.googleapis.com", "f.woff2", "x.woff", "unpkg.com/circuitsvis", "plot.png",
                 "bg.png", "a.css"):
        assert what in text, f"{what} not flagged"
    for fine in ("colab.research", "canonical", "thebe", "local.", "ok.png"):
        assert fine not in text, f"{fine} flagged"


def test_copy_mathjax(tmp_path):
    done = book.copy_mathjax(tmp_path / "_static")
    assert done == tmp_path / "_static" / book.MATHJAX_DIR / "MathJax.js"
    assert done.read_bytes() == (book.mathjax_source() / "MathJax.js").read_bytes()
    assert (done.parent / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()


def test_share_bundle_keeps_one_script_for_every_view(view):
    other = cv_tokens.colored_tokens(tokens=["b"], values=[0.3])
    page = "<p>text</p>" + views.html(view) + "<p>more</p>" + views.html(other)
    assert page.count(views.bundle()) == 2
    shared = views.share_bundle(page, "../_static/" + views.BUNDLE_FILE)
    assert views.bundle() not in shared and "var CircuitsVis=" not in shared
    assert shared.startswith('<script src="../_static/circuitsvis.js"></script>')  # classic: runs before the modules
    assert shared.count("CircuitsVis.render(") == 2 and shared.count('<script crossorigin type="module">') == 2
    assert len(shared) < len(page) - 2 * 1_000_000
    assert views.share_bundle("<p>no view</p>", "x.js") == "<p>no view</p>"
