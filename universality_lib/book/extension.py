"""The book's Sphinx extension (``sphinx.extra_extensions: [universality_lib.book.extension]`` in ``_config.yml``).

During ``jupyter-book build`` it
* copies MathJax 2 into the build's ``_static/mathjax/`` when ``mathjax_path`` points there
  (:func:`universality_lib.book.offline.copy_mathjax`), so formulas render with no network;
* writes circuitsvis's bundle once to ``_static/circuitsvis.js`` and takes the inlined copies out of every page
  (:func:`universality_lib.views.share_bundle`), so each view loads the shared one;
* provides the ``{front-page}`` directive (:func:`universality_lib.book.front_page.front_page_html`);
* adds the book's own stylesheet, ``static/universality.css`` beside this file, to every page.

The hooks are Sphinx's core events (``config-inited``, ``build-finished``, ``html-page-context``), as in Sphinx's own
extensions.
"""
from __future__ import annotations

from pathlib import Path

from .. import views
from .front_page import front_page_html
from .offline import MATHJAX_DIR, copy_mathjax, mathjax_source

STATIC = Path(__file__).parent / "static"  # the book's own static files (copied to the build's _static/)
STYLESHEET = "universality.css"


def _add_static(app, config) -> None:
    """``config-inited``: Sphinx copies :data:`STATIC` into ``_static/`` too (as sphinx.ext.* add their assets)."""
    config.html_static_path = [*config.html_static_path, str(STATIC)]


def _copy_mathjax(app, exception) -> None:
    """``build-finished``: copy MathJax when the HTML pages load it from ``_static/mathjax/``."""
    if exception is not None or app.builder.format != "html":
        return
    if not str(app.config.mathjax_path or "").startswith(MATHJAX_DIR + "/"):
        return  # a CDN or another local MathJax: nothing to copy
    copy_mathjax(Path(app.outdir) / "_static")


def _share_circuitsvis(app, pagename, templatename, context, doctree) -> None:
    """``html-page-context``: the page's circuitsvis views load the one shared bundle (:func:`views.share_bundle`)."""
    if context.get("body"):
        context["body"] = views.share_bundle(context["body"], context["pathto"](f"_static/{views.BUNDLE_FILE}", 1))


def _write_circuitsvis(app, exception) -> None:
    """``build-finished``: write the shared bundle to ``_static/circuitsvis.js``."""
    if exception is None and app.builder.format == "html":
        (Path(app.outdir) / "_static" / views.BUNDLE_FILE).write_text(views.bundle(), encoding="utf-8")


def setup(app) -> dict:
    """Sphinx entry point: the ``{front-page}`` directive, the stylesheet and the four hooks above."""
    from docutils import nodes
    from sphinx.util.docutils import SphinxDirective

    mathjax_source()  # fail at start-up, not after the whole build, when the package is missing

    class FrontPage(SphinxDirective):
        """``{front-page}``: :func:`front_page_html` for the page it sits on."""

        def run(self):
            return [nodes.raw("", front_page_html(self.env.srcdir, self.env.docname), format="html")]

    app.add_directive("front-page", FrontPage)
    app.connect("config-inited", _add_static)
    app.add_css_file(STYLESHEET)
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _share_circuitsvis)
    app.connect("build-finished", _write_circuitsvis)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
