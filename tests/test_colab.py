"""The Colab set-up cell: one canonical source (book.COLAB_CELL), first code cell of every chapter."""
from __future__ import annotations

import subprocess
import sys
import types

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from universality_lib import book

OLD_CELL = ('# Colab set-up: installs the companion library; does nothing outside Colab.\nimport sys\n'
            'if "google.colab" in sys.modules:\n    %pip install -q "git+https://github.com/x/y"')


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("nb", sorted((book.ROOT / "book").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_notebook_starts_with_the_colab_cell(nb):
    first = _code_cells(nb)[0]
    assert first.source == book.COLAB_CELL, f"run book.ensure_colab_cell({nb.name!r})"
    assert book.COLAB_TAG in first.metadata.tags and "remove-cell" in first.metadata.tags


def test_the_cell_installs_from_the_configured_repository():
    from packaging.requirements import Requirement

    config = yaml.safe_load((book.ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == book.REPO_URL
    # the project's name from pyproject.toml (no toml reader needed on Python 3.10)
    name = next(line.split("=", 1)[1].strip().strip('"') for line in (book.ROOT / "pyproject.toml").read_text()
                .splitlines() if line.startswith("name ="))
    assert f'"{name} @ git+{book.REPO_URL}"' in book.COLAB_CELL
    req = Requirement(f"{name} @ git+{book.REPO_URL}")
    assert req.name == name and req.url == f"git+{book.REPO_URL}"


def _run_cell(monkeypatch, in_colab: bool) -> list:
    calls = []
    monkeypatch.setattr(subprocess, "check_call", lambda args, **kw: calls.append(args) or 0)
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(book.COLAB_CELL, "<colab cell>", "exec"), {})
    return calls


def test_the_cell_does_nothing_outside_colab(monkeypatch):
    assert _run_cell(monkeypatch, in_colab=False) == []


def test_the_cell_pip_installs_in_colab(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delitem(sys.modules, "numpy", raising=False)
    calls = _run_cell(monkeypatch, in_colab=True)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", f"universality_lib @ git+{book.REPO_URL}"]]
    assert capsys.readouterr().out == ""  # a fresh session: nothing to restart
    monkeypatch.setitem(sys.modules, "numpy", types.ModuleType("numpy"))
    assert len(_run_cell(monkeypatch, in_colab=True)) == 1
    assert "numpy were already imported: restart the session" in capsys.readouterr().out


def test_ensure_colab_cell_inserts_replaces_and_is_idempotent(tmp_path):
    nb = new_notebook(cells=[new_markdown_cell("# Title"), new_code_cell('preset = "tiny"', metadata={"tags": ["parameters"]}),
                             new_code_cell(OLD_CELL, metadata={"tags": ["remove-cell"]}), new_code_cell("x = 1")])
    path = tmp_path / "ch.ipynb"
    nbformat.write(nb, path)
    assert book.ensure_colab_cell(path) is True
    cells = nbformat.read(path, as_version=4).cells
    assert [c.cell_type for c in cells] == ["markdown", "code", "code", "code"]
    assert cells[1].source == book.COLAB_CELL and cells[1].metadata.tags == [book.COLAB_TAG, "remove-cell"]
    assert [c.source for c in cells[2:]] == ['preset = "tiny"', "x = 1"]  # the old cell is gone, the rest kept
    before = path.read_bytes()
    assert book.ensure_colab_cell(path) is False and path.read_bytes() == before
    # an outdated canonical cell (tagged) is updated in place, keeping its id
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = "# stale"
    old_id = nb.cells[1].id
    nbformat.write(nb, path)
    assert book.ensure_colab_cell(path) is True
    cells = nbformat.read(path, as_version=4).cells
    assert cells[1].source == book.COLAB_CELL and cells[1].id == old_id and len(cells) == 4


def test_ensure_colab_cell_on_a_notebook_without_code(tmp_path):
    path = tmp_path / "md.ipynb"
    nbformat.write(new_notebook(cells=[new_markdown_cell("# only prose")]), path)
    assert book.ensure_colab_cell(path) is True
    cells = nbformat.read(path, as_version=4).cells
    assert [c.cell_type for c in cells] == ["markdown", "code"] and cells[1].source == book.COLAB_CELL
