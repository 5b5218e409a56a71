"""SAE autocast (presets.SAEConfig.autocast): sae-lens' bf16 mixed precision reaches the runner config on CUDA only,
and the resource estimate prices it at the 16-bit tensor-core peak only on GPUs with native bfloat16."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from universality_lib import presets, resources, saes
from universality_lib.models.mamba import HookedMamba, MambaConfig


@pytest.fixture(scope="module")
def mamba():
    return HookedMamba(MambaConfig(d_model=16, n_layers=2, d_vocab=64, seed=0))


@pytest.mark.parametrize("autocast,device,expected", [(True, "cpu", False), (False, "cpu", False),
                                                      (True, "cuda", True), (False, "cuda", False)])
def test_runner_config_autocasts_only_on_cuda(mamba, autocast, device, expected):
    cfg = dataclasses.replace(presets.get("smoke").sae, autocast=autocast)
    try:
        runner_cfg = saes._runner_config(cfg, 16, "blocks.0.hook_resid_post", torch.device(device), mamba, [0],
                                         "stand-in")
    except Exception as err:  # sae-lens may check that the device exists
        if device == "cuda" and not torch.cuda.is_available():
            pytest.skip(f"sae-lens will not build a CUDA config without a GPU: {err}")
        raise
    assert runner_cfg.autocast is expected
    assert runner_cfg.to_sae_trainer_config().autocast is expected  # what SAETrainer reads


def test_autocast_is_part_of_the_sae_cache_key():
    cfg = presets.get("paper").sae
    assert saes._key_config(cfg)["autocast"] is cfg.autocast
    assert saes._key_config(dataclasses.replace(cfg, autocast=not cfg.autocast)) != saes._key_config(cfg)


# ----------------------------------------------------------------------------- resource estimate
def _sae_row(p):
    return resources.plan(p)[0]


def _with(p, **changes):
    return p.replace(sae=dataclasses.replace(p.sae, **changes))


def test_autocast_prices_the_sae_steps_at_the_bf16_peak_only_with_native_bf16():
    p = presets.get("paper")
    on, off = _sae_row(_with(p, autocast=True)), _sae_row(_with(p, autocast=False))
    assert off["autocast_flops"] == 0 and on["flops"] == off["flops"]
    assert 0 < on["autocast_flops"] < on["flops"]
    by_name = {g.name: g for g in resources.GPUS}
    assert not by_name["Colab T4"].native_bf16
    assert by_name["A100 (40 GB)"].native_bf16 and by_name["H100 (80 GB, SXM)"].native_bf16
    for g in resources.GPUS:
        fp32 = off["flops"] / (g.fp32_tflops * 1e12 * resources.EFFICIENCY)
        assert resources.seconds(off, g) == pytest.approx(fp32, rel=1e-12)
        if g.native_bf16:  # the SAE steps at the 16-bit tensor-core peak, the model forward passes at float32
            mixed = ((on["flops"] - on["autocast_flops"]) / g.fp32_tflops + on["autocast_flops"] / g.bf16_tflops) \
                / (1e12 * resources.EFFICIENCY)
            assert resources.seconds(on, g) == pytest.approx(mixed, rel=1e-12) and mixed < fp32
        else:  # a T4 emulates bf16: no gain, estimated at float32
            assert resources.seconds(on, g) == pytest.approx(fp32, rel=1e-12)


def test_other_stages_stay_float32():
    for row in resources.plan("paper")[1:]:
        assert row["autocast_flops"] == 0


def test_paper_sae_budget_fits_one_colab_a100_session():
    p = presets.get("paper")
    assert p.sae.autocast and p.sae.expansion_factor * p.transformer.d_model == 24_576 and p.sae.batch_tokens == 4096
    assert len(saes.jobs("paper")) == 84
    a100 = next(g for g in resources.GPUS if g.name.startswith("A100"))
    assert resources.seconds(_sae_row(p), a100) <= resources.SESSION_HOURS * 3600
    assert p.sae.training_tokens <= resources.sae_tokens_within(p, a100)
    assert p.sae.dead_feature_window < p.sae.training_tokens // p.sae.batch_tokens  # the statistic has time to act


@pytest.mark.parametrize("gpu", resources.GPUS, ids=lambda g: g.name)
def test_sae_tokens_within_is_the_largest_budget_that_fits(gpu):
    p, limit = presets.get("paper"), resources.SESSION_HOURS * 3600
    n = resources.sae_tokens_within(p, gpu)
    assert n > 0 and n % 1_000_000 == 0
    assert resources.seconds(_sae_row(_with(p, training_tokens=n)), gpu) <= limit
    assert resources.seconds(_sae_row(_with(p, training_tokens=n + 1_000_000)), gpu) > limit


def test_page_gives_the_t4_budget_computed_by_the_code():
    p = presets.get("paper")
    t4 = next(g for g in resources.GPUS if not g.native_bf16)
    n = resources.sae_tokens_within(p, t4)
    page = resources.page(p)
    assert f"training_tokens={n:_}" in page and "(float32: no bf16)" in page and "(bf16 SAE steps)" in page
    assert "**estimated**" in page
    # with autocast off the page says so and prices everything at float32
    assert "(bf16 SAE steps)" not in resources.page(_with(p, autocast=False))
