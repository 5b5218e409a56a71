"""The shared forward pass (saes.train_shared, issue 15 item 1): an SAE trained with the other SAEs of its model
from one forward pass equals the SAE trained alone on the same tokens, in the same order, with the same seed;
train_all's shared pass writes the same cache entries as the one-by-one path. Smoke-sized (a few thousand tokens
per SAE), plus the one frequency-band feature picker."""
import dataclasses

import numpy as np
import pytest
import torch

from universality_lib import cache, presets, saes, zoo
from universality_lib.errors import UniversalityError
from universality_lib.presets import SAEConfig, TransformerConfig

from test_saes import rows, tok  # noqa: F401  (the smoke tokenizer and sae_train rows, shared fixtures)

CFG = SAEConfig(expansion_factor=2, l1_coefficient=1.0, training_tokens=4096, batch_tokens=256, lr=3e-3,
                context=64, n_batches_in_buffer=8, store_batch_rows=8, dead_feature_window=50, eval_tokens=1024,
                seeds=(0, 1), seed_skyline="T")
WEIGHTS = ("W_enc", "W_dec", "b_enc", "b_dec")


@pytest.fixture(scope="module")
def models(tok):
    from universality_lib.models.transformer import make_transformer

    t = make_transformer(TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, n_ctx=64), len(tok), seed=0,
                         tokenizer=tok, device="cpu").eval()
    m = zoo.build(presets.get("smoke").replace(sae=CFG), "M0", tokenizer=tok).eval()
    return {"transformer": t, "mamba": m}


def _same(a, b):
    for k in WEIGHTS:
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["transformer", "mamba"])
def test_shared_pass_equals_each_sae_trained_alone(family, models, rows, tmp_path):
    """Layers 0 and 1 with seed 0, and the seed-1 twin of layer 1: one forward pass per batch for all three."""
    model = models[family]
    cfg = CFG if family == "transformer" else SAEConfig(**{**CFG.__dict__, "l0_target": 0.2})  # λ steering too
    jobs = [(0, 0), (1, 0), (1, 1)]
    shared = saes.train_shared(model, jobs, cfg, rows, progress=False, threads=1,
                               folders=[tmp_path / f"L{l}-s{s}" for l, s in jobs])
    for (layer, seed), res in zip(jobs, shared):
        alone = saes.train(model, layer, cfg, rows, seed=seed, progress=False, threads=1)
        _same(res.sae, alone.sae)
        assert [r["mse_loss"] for r in res.log] == pytest.approx([r["mse_loss"] for r in alone.log], rel=1e-5)
        assert res.info["l1_coefficient_final"] == pytest.approx(alone.info["l1_coefficient_final"], rel=1e-5)
        assert res.info["dead_features_train"] == alone.info["dead_features_train"]
        assert res.info["shared_pass"]["saes"] == 3 and res.sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
        # the folder is a sae-lens folder like the one-by-one path's
        from sae_lens import SAE

        _same(SAE.load_from_disk(tmp_path / f"L{layer}-s{seed}"), alone.sae)
    assert not torch.equal(shared[1].sae.W_enc, shared[2].sae.W_enc)  # the twin is another SAE


def test_shared_pass_refuses_a_job_twice(models, rows):
    with pytest.raises(UniversalityError, match="once"):
        saes.train_shared(models["mamba"], [(0, 0), (0, 0)], CFG, rows, progress=False)


@pytest.mark.parametrize("shared_max", [None, 3])
def test_train_all_shared_writes_the_one_by_one_entries(tmp_path, monkeypatch, shared_max):
    """The shared pass (default; all of a model's SAEs at once, or ``shared_max`` per pass) and the one-by-one path
    fill the same cache keys with the same SAEs."""
    P = presets.get("smoke").replace(sae=CFG)
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path / "one"))
    one = saes.train_all(P, names=["M0"], workers=1, progress=False, shared=False)
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path / "shared"))
    P = P.replace(sae=dataclasses.replace(CFG, shared_max=shared_max))
    both = saes.train_all(P, names=["M0"], workers=1, progress=False)
    assert [(r["model"], r["layer"], r["seed"]) for r in both] == saes.jobs(P, ["M0"])
    assert not any(r["cached"] for r in both)
    assert [r["folder"].split("/")[-1] for r in both] == [r["folder"].split("/")[-1] for r in one]
    for a, b in zip(one, both):
        cache.verify_manifest(b["folder"])
        _same(saes.load_folder(a["folder"]), saes.load_folder(b["folder"]))
    again = saes.train_all(P, names=["M0"], workers=1, progress=False)
    assert all(r["cached"] for r in again)


def test_pick_in_band():
    freq = np.array([0.0, 5e-4, 2e-3, 0.01, 0.1, 0.3])
    score = np.array([9.0, 8.0, 1.0, 3.0, 2.0, 7.0])
    assert saes.pick_in_band(freq, score, 2, lo=1e-3, hi=0.05) == [3, 2]  # in band, best score first
    assert saes.pick_in_band(freq, score, None, lo=1e-3, hi=0.2) == [3, 4, 2]
    assert saes.pick_in_band(freq, score, 4, lo=1e-3, hi=0.05) == [1, 5, 3, 4]  # too few: every live feature
    live = np.array([True, True, True, False, True, True])
    assert saes.pick_in_band(freq, score, 2, lo=1e-3, hi=0.2, live=live) == [4, 2]
    assert saes.pick_in_band(freq, score, None, lo=0.5, hi=0.6, live=True, min_count=1) == [0, 1, 5, 3, 4, 2]
    assert saes.pick_features(freq, score, n=2) == saes.pick_in_band(freq, score, 2, lo=1e-3, hi=0.05)
