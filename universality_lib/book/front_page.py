"""The front page: the claims table of the last run, its preset and machine, and one figure per chapter.

The directive ``{front-page}`` (in ``book/intro.md``; registered by :mod:`universality_lib.book.extension`) puts
:func:`front_page_html` there. It reads the results the build points it at (the runner sets
``UNIVERSALITY_RESULTS_DIR`` to this run's), builds the rows with :func:`universality_lib.report.claim_rows`, and
takes the first PNG or JPEG output of every executed chapter, linking to the chapter.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .toc import chapter_notebooks


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

    from .. import report
    from .. import results as _results

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
