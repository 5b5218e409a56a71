"""Colab: the set-up cell that opens every chapter, and where the repository and its published book live.

The first code cell of every chapter is :data:`COLAB_CELL` (tagged ``colab-setup``, hidden in the built book). It
pip-installs this package from :data:`REPO_URL` when it runs in Colab and does nothing elsewhere, so a chapter opened
from the book's launch button works before ``universality_lib`` exists there. :func:`ensure_colab_cell` inserts or
updates it in a notebook. :data:`REPO_URL` must equal ``repository.url`` in ``_config.yml`` (a test checks), which
also gives the launch buttons and :func:`site_url`, the address ``.github/workflows/pages.yml`` publishes to.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UniversalityError

# The repository the Colab cell installs from; must equal `repository.url` in _config.yml (a test checks).
REPO_URL = "https://github.com/universality-book/universality"
COLAB_TAG = "colab-setup"

# The first code cell of every chapter: self-contained (universality_lib is not installed in a fresh Colab yet).
COLAB_CELL = f"""\
# Colab set-up: installs the companion library from its repository when this runs in Colab; does nothing elsewhere.
# (For mamba_ssm's fused GPU kernels, install "universality_lib[gpu] @ git+..." instead: it compiles for a while.)
import subprocess
import sys

if "google.colab" in sys.modules:
    _loaded = [m for m in ("numpy", "torch") if m in sys.modules]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "universality_lib @ git+{REPO_URL}"])
    if _loaded:
        print(f"Installed. {{', '.join(_loaded)}} were already imported: restart the session and run again.")"""


def site_url(repo_url: str = REPO_URL) -> str:
    """The book's GitHub Pages address for a GitHub repository URL (``.github/workflows/pages.yml`` deploys there):
    ``https://github.com/OWNER/NAME`` -> ``https://OWNER.github.io/NAME/`` (``OWNER.github.io`` itself: the root)."""
    m = re.fullmatch(r"https://github\.com/([A-Za-z0-9-]+)/([A-Za-z0-9._-]+?)(?:\.git)?/?", repo_url)
    if m is None:
        raise UniversalityError(f"site_url takes a GitHub repository URL like https://github.com/OWNER/NAME, got "
                                f"{repo_url!r}: fix `repository.url` in _config.yml.")
    owner, name = m.groups()
    host = f"{owner.lower()}.github.io"
    return f"https://{host}/" if name.lower() == host else f"https://{host}/{name}/"


def _is_colab_cell(cell) -> bool:
    """The tagged cell, or an older untagged version of it."""
    if cell.get("cell_type") != "code":
        return False
    if COLAB_TAG in cell.get("metadata", {}).get("tags", []):
        return True
    src = cell.get("source", "")
    src = "".join(src) if isinstance(src, list) else src
    return src.lstrip().startswith("# Colab set-up") and "google.colab" in src


def ensure_colab_cell(nb_path: str | os.PathLike) -> bool:
    """Make :data:`COLAB_CELL` the first code cell of the notebook at ``nb_path`` (tags ``colab-setup`` and
    ``remove-cell``), replacing any earlier Colab set-up cell. Writes the file only when something changed;
    returns whether it did."""
    import nbformat
    from nbformat.v4 import new_code_cell

    nb_path = Path(nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    old = [c for c in nb.cells if _is_colab_cell(c)]
    rest = [c for c in nb.cells if not _is_colab_cell(c)]
    cell = new_code_cell(COLAB_CELL, metadata={"tags": [COLAB_TAG, "remove-cell"]})
    if old and old[0].get("id"):
        cell["id"] = old[0]["id"]  # keep the cell id stable across updates
    first_code = next((i for i, c in enumerate(rest) if c.cell_type == "code"), len(rest))
    cells = rest[:first_code] + [cell] + rest[first_code:]

    def key(cells_):
        return [(c.cell_type, c.source, c.get("metadata", {}).get("tags", [])) for c in cells_]

    if key(cells) == key(nb.cells):
        return False
    nb.cells = cells
    nbformat.validate(nb)
    nbformat.write(nb, nb_path)
    return True
