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

Glossary:
    view      a circuitsvis ``RenderedHTML``
    bundle    circuitsvis's JavaScript (``dist/cdn/iife.js``, about 1.3 MB), inlined in every view's HTML, so each
              output works on its own, whatever else is (or is not) on the page
"""
from __future__ import annotations

from .errors import UniversalityError


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
