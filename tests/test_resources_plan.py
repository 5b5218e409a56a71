"""The resource appendix: measured rates from the device check replace the estimates (marked as measured), the Colab
T4 plan (preset ``paper_t4``) and its row, and the induction sweeps priced from the task's cap."""
import json

import pytest

from universality_lib import presets, resources
from universality_lib.circuits.task import task_config
from universality_lib.errors import UniversalityError


def _measured(tmp_path, drop=(), **top):
    """A device-check JSON of a GPU run at the paper shapes, with round rates (inputs of the arithmetic below)."""
    stages = {"forward_T": {"status": "ok", "seconds": 0.1, "tokens_per_s": 200_000.0, "layers": 12},
              "forward_M": {"status": "ok", "seconds": 0.1, "tokens_per_s": 100_000.0, "layers": 24},
              "sae_step": {"status": "ok", "seconds": 0.02, "batch_tokens": 4096},
              "mppc_sparse_chunk": {"status": "ok", "seconds": 0.05},
              "mppc_dense_chunk": {"status": "ok", "seconds": 0.5}}
    for k in drop:
        stages[k] = {"status": "not available", "reason": "planted"}
    res = {"kind": "gpu_check", "measured": True, "small": False, "preset": "paper", "device": "cuda",
           "name": "Planted GPU", "date": "2026-12-01T00:00:00Z", "torch": "2.13.0", "memory_gb": 80.0,
           "stages": stages, **top}
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(res))
    return path


def test_measured_rates_price_each_stage_by_its_units_of_work(tmp_path):
    m = resources.load_measured(_measured(tmp_path))
    sae = resources.plan("paper")[0]
    u = sae["units"]
    by_hand = (u["sae_step"] * 0.02 + u["block_tokens_T"] / (200_000.0 * 12)
               + u["block_tokens_M"] / (100_000.0 * 24))
    assert resources.measured_seconds(sae, m) == pytest.approx(by_hand, rel=1e-12)
    p = presets.get("paper")
    assert u["sae_step"] == 84 * -(-p.sae.training_tokens // p.sae.batch_tokens)
    ind = next(r for r in resources.plan("paper") if r["stage"].startswith("Induction"))
    assert resources.measured_seconds(ind, m) == pytest.approx(ind["units"]["model_tokens_T"] / 200_000.0)


def test_the_page_marks_the_measured_column(tmp_path):
    page = resources.page("paper", measured=_measured(tmp_path))
    assert "Planted GPU (measured rates)" in page and "(measured)" in page and "**estimated**" in page
    rows = resources.plan("paper")
    m = resources.load_measured(_measured(tmp_path))
    total = sum(resources.measured_seconds(r, m) for r in resources.totals(rows))
    assert f"**{resources._fmt_time(total)}** (measured)" in page
    # a rate the check did not get leaves its stages "not measured", never an estimate in the measured column
    partial = resources.page("paper", measured=_measured(tmp_path, drop=("mppc_dense_chunk",)))
    assert "not measured" in partial


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"kind": "other", "stages": {}}),
                                     json.dumps({"kind": "gpu_check"})])
def test_a_file_that_is_not_the_checks_json_is_one_clear_error(tmp_path, content):
    path = tmp_path / "gpu_check.json"
    path.write_text(content)
    with pytest.raises(UniversalityError, match="gpu_check"):
        resources.load_measured(path)


@pytest.mark.parametrize("top", [dict(small=True), dict(device="cpu"), dict(preset="smoke")])
def test_small_cpu_or_other_preset_runs_are_not_measurements(tmp_path, top):
    assert resources.load_measured(_measured(tmp_path, **top)) is None
    assert resources.load_measured(tmp_path / "absent.json") is None


def test_colab_t4_plan_is_one_preset_name_and_fits_one_session():
    q, p = presets.get("paper_t4"), presets.get("paper")
    assert "paper_t4" in presets.NAMES and q.needs_internet and q.hub_models == p.hub_models
    assert q.corpus == p.corpus and q.transformer == p.transformer and q.mamba == p.mamba and q.zoo == p.zoo
    assert not q.sae.autocast  # a T4 has no bfloat16 tensor cores
    assert q.sae.dead_feature_window < q.sae.training_tokens // q.sae.batch_tokens
    t4 = next(g for g in resources.GPUS if not g.native_bf16)
    rows = resources.plan(q)
    total = sum(resources.seconds(r, t4) for r in resources.totals(rows))
    assert total <= resources.SESSION_HOURS * 3600  # the target: <= 3 h on a T4 (estimated)
    assert all(r["memory_gb"] <= t4.memory_gb for r in rows)
    cfg = task_config(q)
    assert cfg.stop_early and cfg.n_prompts == 1024 and not cfg.prepend_bos
    page = resources.page("paper")
    assert f"| **Colab T4 plan (`paper_t4`), all three** | **{resources._fmt_time(total)}**" in page
    assert "gives up" in page and f"{q.sae.training_tokens:,} per SAE" in page


def test_induction_row_prices_the_tasks_cap_not_a_fixed_65536():
    for name in ("paper", "paper_t4"):
        row = next(r for r in resources.plan(name) if r["stage"].startswith("Induction"))
        cfg = task_config(name)
        assert row["tokens"] == row["count"] * cfg.n_prompts * cfg.seq_len
