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
