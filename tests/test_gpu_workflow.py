"""The GPU runner workflow: the paper preset through the book runner, the gpu extra, the HTML as an artifact."""
from __future__ import annotations

import yaml

from universality_lib import book, presets

WORKFLOW = book.ROOT / ".github" / "workflows" / "gpu-book.yml"


def test_gpu_workflow_runs_the_book_at_paper_on_a_gpu_runner():
    wf = yaml.safe_load(WORKFLOW.read_text())
    job = wf["jobs"]["book"]
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    assert job["env"]["PRESET"].endswith("|| 'paper' }}") and "paper" in presets.NAMES
    run = "\n".join(step.get("run", "") for step in job["steps"])
    assert '".[gpu]"' in run and "torch==2.13.0" in run and "torch.cuda.is_available()" in run
    assert '-m universality_lib book --preset "$PRESET"' in run and '-m universality_lib report --preset "$PRESET"' in run
    uploads = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert any(s["with"]["path"] == "build/${{ env.PRESET }}/book/_build/html" for s in uploads)
    # the torch pin is the project's
    assert '"torch==2.13.0"' in (book.ROOT / "pyproject.toml").read_text()
