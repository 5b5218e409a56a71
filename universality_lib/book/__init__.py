"""universality_lib.book: run the book (execute every chapter with papermill at a preset) and build its HTML.

One concept per module:

* :mod:`.toc`         ``_toc.yml``: the pages in order, a subset of chapters, the subset's toc
* :mod:`.colab`       the Colab set-up cell of every chapter, the repository URL, the published site's address
* :mod:`.kernel`      the kernelspec the chapters run in, and their environment
* :mod:`.runner`      :func:`build_book` in named steps, the chapter cache (:func:`chapter_key`), ``timings.json``
* :mod:`.offline`     a local MathJax and the checker of what a built page would fetch from another host
* :mod:`.front_page`  the intro's claims table and one figure per chapter
* :mod:`.extension`   the Sphinx extension ``_config.yml`` loads (MathJax copy, shared circuitsvis bundle,
                      ``{front-page}``)

The command line is ``python -m universality_lib book`` (:mod:`universality_lib.cli`; ``python -m
universality_lib.book`` is an alias). The names below are re-exported so that ``from universality_lib import book``
and ``book.build_book`` etc. keep working.
"""
from .colab import COLAB_CELL, COLAB_TAG, REPO_URL, ensure_colab_cell, site_url
from .front_page import _first_figure, front_page_html
from .kernel import KERNEL_NAME
from .offline import MATHJAX_DIR, _page_external, copy_mathjax, external_resources, mathjax_source
from .runner import PARAMETER_TAGS, build_book, chapter_key, hide_parameter_cells, machine, package_digest
from .toc import ROOT, chapter_notebooks, default_root, toc_pages

__all__ = ["COLAB_CELL", "COLAB_TAG", "KERNEL_NAME", "MATHJAX_DIR", "PARAMETER_TAGS", "REPO_URL", "ROOT",
           "build_book", "chapter_key", "chapter_notebooks", "copy_mathjax", "default_root", "ensure_colab_cell",
           "external_resources", "front_page_html", "hide_parameter_cells", "machine", "mathjax_source",
           "package_digest", "site_url", "toc_pages"]
