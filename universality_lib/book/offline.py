"""Offline HTML: the built book fetches nothing from another host.

* MathJax: ``_config.yml`` points ``mathjax_path`` at ``mathjax/MathJax.js`` under the build's ``_static/``;
  :func:`copy_mathjax` puts MathJax 2 there (the static files of the pinned ``jupyter-server-mathjax`` package), so
  formulas render with no network. (circuitsvis views are made offline by :mod:`universality_lib.views`.)
* The checker: :func:`external_resources` lists what a built page would still fetch from another host (a script,
  stylesheet, font, image or frame; not a plain link). The runner prints a warning when anything does, and the book
  test fails on it.

The Sphinx hooks that call these during a build are in :mod:`universality_lib.book.extension`.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..errors import UniversalityError

# ---------------------------------------------------------------------------------------------- a local MathJax

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


# ---------------------------------------------------------------------------------------------- the checker

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
