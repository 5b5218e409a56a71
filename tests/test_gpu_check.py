"""benchmarks/gpu_check.py, the device check the resource appendix reads: run on the CPU at the smoke preset's shapes
(``--small``), every stage recorded, and the JSON it writes is what ``resources.load_measured`` expects (a small run
is never taken for a GPU measurement)."""
import json
import sys
from pathlib import Path

import pytest

from universality_lib import presets, resources

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    rc = gpu_check.main(["--small", "--device", "cpu", "--out", str(out)])
    return rc, out, json.loads(out.read_text())


def test_small_run_times_every_stage_at_the_smoke_shapes(small_run):
    rc, out, res = small_run
    p = presets.get("smoke")
    F = p.sae.expansion_factor * p.transformer.d_model
    st = res["stages"]
    assert rc == 0 and res["kind"] == "gpu_check" and res["measured"] and res["small"] and res["preset"] == "smoke"
    assert list(st) == ["build", "forward_T", "forward_M", "forward_M_mamba_ssm", "sae_step", "shared_forward_batch",
                        "mppc_sparse_chunk", "mppc_dense_chunk"]
    assert st["forward_M_mamba_ssm"]["status"] == "not available"  # its kernels need CUDA
    ok = [k for k in st if k != "forward_M_mamba_ssm"]
    assert all(st[k]["status"] == "ok" for k in ok), {k: st[k].get("reason") for k in ok}
    assert all(st[k]["seconds"] > 0 for k in ok if k != "build")
    assert st["sae_step"]["d_sae"] == F and st["sae_step"]["batch_tokens"] == p.sae.batch_tokens
    assert st["shared_forward_batch"]["layers"] == p.transformer.n_layers
    assert st["forward_T"]["layers"] == p.transformer.n_layers and st["forward_M"]["layers"] == p.mamba.n_layers
    assert st["mppc_sparse_chunk"]["backend"] == "sparse" and st["mppc_dense_chunk"]["backend"] == "dense"
    # the models are the shapes the appendix counts (same formulas, same padded vocabularies)
    mod = resources._models(p)
    # (TransformerLens keeps an unembedding bias b_U, zero for GPT-NeoX, which the appendix does not count)
    assert st["build"]["params"] == {"T": mod["T"]["total"] + resources.pad_vocab(p, "T"), "M": mod["M"]["total"]}
    assert resources.load_measured(out) is None  # a --small run never replaces the page's estimates


def test_a_missing_back_end_is_recorded_not_raised():
    import torch

    r = gpu_check.mppc_stage(presets.get("smoke"), torch.device("cpu"), "no_such_backend", 64, dense=False)
    assert r["status"] == "not available" and "no_such_backend" in r["reason"]


def test_a_failing_stage_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("out of memory (planted)")

    monkeypatch.setattr(gpu_check, "sae_stage", boom)
    out = tmp_path / "g.json"
    assert gpu_check.main(["--small", "--device", "cpu", "--out", str(out)]) == 1
    st = json.loads(out.read_text())["stages"]
    assert st["sae_step"]["status"] == "failed" and "planted" in st["sae_step"]["reason"]
    assert st["mppc_dense_chunk"]["status"] == "ok"  # measured after the failure


def test_the_full_check_uses_the_paper_shapes():
    p = presets.get("paper")
    assert p.sae.expansion_factor * p.transformer.d_model == 24_576  # the F
    assert (resources.pad_vocab(p, "T"), resources.pad_vocab(p, "M")) == (50_304, 50_280)
