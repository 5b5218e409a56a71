"""universality_lib.views: circuitsvis views that work offline, in Jupyter and in the built book.

A circuitsvis view (``cv.attention.attention_heads(...)``, ``cv.tokens.colored_tokens(...)``) is a
``RenderedHTML`` with two variants: ``local_src`` inlines circuitsvis's JavaScript bundle, ``cdn_src`` imports it
from unpkg.com. Its ``_repr_html_`` picks the CDN variant whenever it can reach google.com, so a chapter executed on
a machine with a network would save outputs (and build HTML pages) that show nothing offline. The chapters display
views through :func:`show` instead, which always uses the inline variant:

    import circuitsvis as cv
    from universality_lib import views

    views.show(cv.attention.attention_heads(tokens=toks, attention=pattern))   # one output
    pane = views.html(cv.tokens.colored_tokens(tokens=toks, values=acts))     # the HTML, to lay out yourself

In a notebook each output carries the bundle, so it works on its own. The built book keeps one copy: the book's
Sphinx extension (:mod:`universality_lib.book.extension`) writes :func:`bundle` to ``_static/circuitsvis.js`` and
passes every page through :func:`share_bundle`, so a page loads the bundle once from there (still no network) and its
views keep only their render calls.

Glossary:
    view      a circuitsvis ``RenderedHTML``
    bundle    circuitsvis's JavaScript (``dist/cdn/iife.js``, about 1.3 MB), inlined in every view's HTML, so each
              output works on its own, whatever else is (or is not) on the page
"""
from __future__ import annotations

import functools
from pathlib import Path

from .errors import UniversalityError

BUNDLE_FILE = "circuitsvis.js"  # the built book's one copy of the bundle, under _static/


def html(view) -> str:
    """The HTML of a circuitsvis view with its JavaScript inlined: shows with no network."""
    src = getattr(view, "local_src", None)
    if not isinstance(src, str) or "CircuitsVis.render(" not in src:
        raise UniversalityError(
            "views.show / views.html take a circuitsvis view (a RenderedHTML such as "
            f"cv.tokens.colored_tokens(...) returns), not {type(view).__name__}."
        )
    return src


def show(view) -> None:
    """Display a circuitsvis view with its JavaScript inlined (see :func:`html`)."""
    from IPython.display import HTML, display

    display(HTML(html(view)))


@functools.lru_cache(maxsize=1)
def bundle() -> str:
    """circuitsvis's JavaScript exactly as a view inlines it (``dist/cdn/iife.js`` less any ``</script>``)."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "")


def share_bundle(page: str, src: str) -> str:
    """``page`` (HTML) with every inlined bundle taken out of its views and one ``<script src="{src}">`` put first.

    That script is a classic one: it defines the global ``CircuitsVis`` while the page is parsed, before the views'
    ``type="module"`` scripts (deferred) call ``CircuitsVis.render``. A page with no inlined view comes back as is.
    """
    js = bundle()
    if js not in page:
        return page
    return f'<script src="{src}"></script>\n' + page.replace(js, "")
