"""The Pages workflow: the tiny book on a hosted CPU runner, the verified cache restored between runs, the HTML
deployed to GitHub Pages on pushes to main; the README gives the site's address, derived from _config.yml."""
from __future__ import annotations

import pytest
import yaml

from universality_lib import book
from universality_lib.errors import UniversalityError

WORKFLOW = book.ROOT / ".github" / "workflows" / "pages.yml"


def _workflow() -> dict:
    wf = yaml.safe_load(WORKFLOW.read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def test_pages_workflow_builds_tiny_and_deploys_on_push_to_main():
    wf = _workflow()
    assert wf["on"]["push"]["branches"] == ["main"]
    assert wf["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    assert build["runs-on"] == "ubuntu-latest" and build["env"]["PRESET"] == "tiny"
    assert build["env"]["HF_HUB_OFFLINE"] == "1"
    steps = build["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    run = "\n".join(s.get("run", "") for s in steps)
    assert 'make book PRESET="$PRESET"' in run  # the README's command, not a copy of it
    # the verified cache is restored before the book runs, keyed by what the book computes from, and saved after
    # it (also when it failed: what finished is kept)
    book_step = next(i for i, s in enumerate(steps) if "make book" in s.get("run", ""))
    restore, save = steps[uses.index("actions/cache/restore")], steps[uses.index("actions/cache/save")]
    assert uses.index("actions/cache/restore") < book_step < uses.index("actions/cache/save")
    assert restore["with"]["path"] == save["with"]["path"] == "${{ env.UNIVERSALITY_CACHE }}"
    assert build["env"]["UNIVERSALITY_CACHE"].startswith("${{ github.workspace }}/")
    assert "universality_lib/**" in restore["with"]["key"] and "book/**" in restore["with"]["key"]
    assert restore["with"]["restore-keys"].strip() == "universality-${{ env.PRESET }}-"
    assert restore["with"]["key"].startswith(restore["with"]["restore-keys"].strip())
    assert save["with"]["key"] == f"${{{{ steps.{restore['id']}.outputs.cache-primary-key }}}}"
    assert save["if"].startswith("always()")
    # the official Pages actions: configure, upload the built HTML, deploy in a job after it
    assert uses.index("actions/configure-pages") < uses.index("actions/upload-pages-artifact")
    upload = steps[uses.index("actions/upload-pages-artifact")]
    assert upload["with"]["path"] == "build/${{ env.PRESET }}/book/_build/html"
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]


def test_site_url_follows_the_repository_url():
    config = yaml.safe_load((book.ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == book.REPO_URL
    assert book.site_url() == "https://universality-book.github.io/universality/"
    assert book.site_url("https://github.com/Some-Org/my.book.git") == "https://some-org.github.io/my.book/"
    assert book.site_url("https://github.com/someone/someone.github.io") == "https://someone.github.io/"
    with pytest.raises(UniversalityError, match="GitHub repository URL"):
        book.site_url("https://gitlab.com/o/r")


def test_readme_gives_the_site_and_how_to_enable_pages():
    readme = (book.ROOT / "README.md").read_text()
    assert book.site_url() in readme
    assert ".github/workflows/pages.yml" in readme and "GitHub Actions" in readme
