"""SAEs: sae-lens training for both families, the verified cache, metrics on hand-set SAEs, bad inputs.

Everything here is smoke-sized: the models are a one-block Transformer built here and the untrained
Mamba ``M0`` (nothing is trained but SAEs of a few thousand tokens)."""
import json
import shutil

import pytest
import torch

from universality_lib import activations as acts
from universality_lib import cache, corpus, presets, saes, zoo
from universality_lib.errors import IntegrityError, UniversalityError
from universality_lib.presets import SAEConfig, TransformerConfig

TINY_SAE = SAEConfig(expansion_factor=2, l1_coefficient=1.0, training_tokens=4096, batch_tokens=256, lr=3e-3,
                     context=64, n_batches_in_buffer=8, store_batch_rows=8, dead_feature_window=50, eval_tokens=1024)


@pytest.fixture(scope="module")
def P():
    return presets.get("smoke").replace(sae=TINY_SAE)


@pytest.fixture(scope="module")
def tok():
    return corpus.load_tokenizer("smoke")


@pytest.fixture(scope="module")
def rows(tok):
    return corpus.token_stream("smoke", "sae_train", tok).rows(64)


@pytest.fixture(scope="module")
def eval_rows(tok):
    return corpus.token_stream("smoke", "eval", tok).rows(64, n_rows=8)


@pytest.fixture(scope="module")
def transformer(tok):
    from universality_lib.models.transformer import make_transformer

    cfg = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=64)
    return make_transformer(cfg, len(tok), seed=0, tokenizer=tok, device="cpu").eval()


@pytest.fixture(scope="module")
def mamba0(P, tok):
    return zoo.build(P, "M0", tokenizer=tok).eval()


# ----------------------------------------------------------------------------- training, both families
@pytest.mark.parametrize("which", ["transformer", "mamba0"])
def test_training_works_for_both_families(which, request, rows, eval_rows, tmp_path):
    from sae_lens import SAE

    model = request.getfixturevalue(which)
    res = saes.train(model, 0, TINY_SAE, rows, seed=0, folder=tmp_path / "sae", progress=False)
    d = model.cfg.d_model
    assert res.sae.cfg.d_in == d and res.sae.cfg.d_sae == 2 * d
    assert res.sae.cfg.normalize_activations == "constant_norm_rescale"
    assert res.sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert res.sae.cfg.metadata.prepend_bos is False
    assert res.info["training_tokens"] == 16 * 256 and res.info["tokens_per_second"] > 0
    assert len(res.log) > 3 and res.log[-1]["tokens"] == 16 * 256
    assert res.log[-1]["mse_loss"] < res.log[0]["mse_loss"]  # it learned something
    # sae-lens' own loader reads the folder
    again = SAE.load_from_disk(tmp_path / "sae")
    x = torch.randn(5, d)
    assert torch.allclose(again.encode(x), res.sae.encode(x))
    m = saes.evaluate(res.sae, model, eval_rows)
    assert 0 < m["l0"] <= 2 * d and m["n_tokens"] == int((eval_rows != corpus.load_tokenizer("smoke").bos_token_id).sum())
    assert m["fve"] > 0  # better than predicting the mean


def test_topk_option(mamba0, rows, eval_rows):
    cfg = presets.SAEConfig(**{**TINY_SAE.__dict__, "architecture": "topk", "k": 4})
    res = saes.train(mamba0, 1, cfg, rows, progress=False)
    assert res.sae.cfg.architecture() == "topk"
    m = saes.evaluate(res.sae, mamba0, eval_rows)
    assert m["l0"] <= 4 + 1e-9


def test_l0_target_steers_the_l1_weight(transformer, rows, eval_rows):
    """Two targets 8x apart, the same start λ: λ moves each SAE's L0 towards its own target (a fixed λ gives
    one L0 for both), and the λ it ended with is saved and logged."""
    base = dict(TINY_SAE.__dict__, expansion_factor=8, training_tokens=40 * 256, l0_gain=0.1)
    out = {}
    for target in (0.04, 0.32):
        res = saes.train(transformer, 0, SAEConfig(**{**base, "l0_target": target}), rows, progress=False)
        m = saes.evaluate(res.sae, transformer, eval_rows)
        out[target] = (m["l0_frac"], res.info["l1_coefficient_final"], [r["l1_coefficient"] for r in res.log])
    (l0_lo, lam_lo, curve_lo), (l0_hi, lam_hi, _) = out[0.04], out[0.32]
    assert l0_lo < l0_hi and lam_lo > lam_hi  # sparser target: larger λ
    assert abs(l0_lo - 0.04) < abs(l0_hi - 0.04) and abs(l0_hi - 0.32) < abs(l0_lo - 0.32)
    assert curve_lo[-1] == pytest.approx(lam_lo, rel=1e-4) and len(set(curve_lo)) > 3  # λ moved during training
    fixed = saes.train(transformer, 0, SAEConfig(**base), rows, progress=False)
    assert fixed.info["l1_coefficient_final"] == pytest.approx(TINY_SAE.l1_coefficient)


def test_total_train_minutes():
    assert saes.total_train_minutes([60, 60], [True, True], 90.0, workers=2) == (1.5, "measured")
    assert saes.total_train_minutes([60, 60], [True, False], 30.0, workers=2) == (1.0, "estimated")
    with pytest.raises(UniversalityError, match="wall times"):
        saes.total_train_minutes([60], [True, True], 1.0, workers=1)


def test_special_positions_are_left_out(transformer, tok):
    assert saes.special_ids(transformer) == [tok.bos_token_id]
    r = torch.tensor([[tok.bos_token_id, 5, 6, tok.bos_token_id, 7]])
    assert acts.token_mask(r, [tok.bos_token_id]).tolist() == [[False, True, True, False, True]]


# ----------------------------------------------------------------------------- the cache
def test_cache_round_trip_corruption_and_other_config(P, mamba0, capsys):
    from sae_lens import SAE

    first = saes.get(P, "M0", 0, model=mamba0, progress=False)
    folder = saes.folder_for(P, "M0", 0)
    assert (folder / cache.MANIFEST).exists() and (folder / "cfg.json").exists()
    meta = saes.info(folder)
    assert meta["model"] == "M0" and meta["layer"] == 0 and meta["sae_config"]["expansion_factor"] == 2
    assert meta["model_hash"] == saes.model_hash(P, "M0")
    # loaded, not retrained, the second time; sae-lens' own loader reads the cache folder too
    mtime = (folder / "sae_weights.safetensors").stat().st_mtime_ns
    second = saes.get(P, "M0", 0, model=mamba0, progress=False)
    assert (folder / "sae_weights.safetensors").stat().st_mtime_ns == mtime
    assert torch.equal(second.W_enc, first.W_enc)
    assert torch.equal(SAE.load_from_disk(folder).W_dec, first.W_dec)
    # another SAE seed is another entry with other weights
    other_seed = saes.get(P, "M0", 0, seed=1, model=mamba0, progress=False)
    assert saes.folder_for(P, "M0", 0, seed=1) != folder
    assert not torch.equal(other_seed.W_enc, first.W_enc)

    # a corrupt entry is detected and retrained (same seed, same data: the same weights again)
    with open(folder / "sae_weights.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    capsys.readouterr()
    healed = saes.get(P, "M0", 0, model=mamba0, progress=False)
    assert "failed verification" in capsys.readouterr().out
    cache.verify_manifest(folder)
    assert torch.allclose(healed.W_enc, first.W_enc, atol=1e-5)

    # an entry written by another config, found where this config's SAE should be: a clear error
    P2 = P.replace(sae=SAEConfig(**{**TINY_SAE.__dict__, "expansion_factor": 3}))
    target = saes.folder_for(P2, "M0", 0)
    shutil.copytree(folder, target)
    try:
        with pytest.raises(UniversalityError, match=r"another configuration: sae_config\.expansion_factor = 2 in "
                                                    r"the cache entry, 3 asked for"):
            saes.get(P2, "M0", 0, model=mamba0, progress=False)
    finally:
        shutil.rmtree(target)


def test_a_corrupt_entry_is_refused_not_retrained_without_train_if_missing(P, mamba0):
    """Before: get(train_if_missing=False) checked only that the manifest existed, then retrained the corrupt SAE."""
    saes.get(P, "M0", 0, model=mamba0, progress=False)
    weights = saes.folder_for(P, "M0", 0) / "sae_weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-8] + b"\x00" * 8)
    try:
        with pytest.raises(IntegrityError, match="is corrupt and train_if_missing=False does not retrain it"):
            saes.get(P, "M0", 0, model=mamba0, progress=False, train_if_missing=False)
        assert weights.read_bytes()[-8:] == b"\x00" * 8  # refused and left as it was, not retrained
    finally:
        weights.write_bytes(good)
    with pytest.raises(UniversalityError, match="no cached SAE for M0 layer 0 seed 7"):
        saes.get(P, "M0", 0, seed=7, model=mamba0, progress=False, train_if_missing=False)


def test_load_folder_checks_the_model(P, mamba0, transformer):
    saes.get(P, "M0", 0, model=mamba0, progress=False)
    with pytest.raises(UniversalityError, match="d_in mismatch: the SAE expects d_in=32 but 'blocks.0.hook_resid_post'"):
        saes.load_folder(saes.folder_for(P, "M0", 0), model=transformer)


def test_model_hash_is_the_checkpoint_manifest(P, monkeypatch, tmp_path):
    folder = tmp_path / "T"
    with cache.building(folder) as tmp:
        (tmp / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(zoo, "model_dir", lambda preset, name: folder)
    h = saes.model_hash(P, "T")
    assert h == cache.verify_manifest(folder)[:16]
    with cache.building(folder) as tmp:
        (tmp / "model.safetensors").write_bytes(b"other weights")
    assert saes.model_hash(P, "T") != h


def test_jobs_cover_every_layer_and_the_seed_skyline():
    j = saes.jobs("tiny")
    p = presets.get("tiny")
    assert sorted({n for n, _, _ in j}) == ["M", "M0", "T", "T2"]
    assert len([x for x in j if x[0] == "M0"]) == p.mamba.n_layers
    assert [x for x in j if x[0] == "T" and x[2] == 1] == [("T", layer, 1) for layer in range(p.transformer.n_layers)]
    assert {s for n, _, s in j if n != "T"} == {0}
    assert len(j) == 3 * p.transformer.n_layers + 2 * p.mamba.n_layers


# ----------------------------------------------------------------------------- metrics on known SAEs
def _hand_sae(d: int, keep: int, normalize: str = "none"):
    """f = [ReLU(x_:keep), ReLU(-x_:keep)], x_hat = the first ``keep`` coordinates of x, the rest 0."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * keep, normalize_activations=normalize))
    eye = torch.eye(d)[:, :keep]  # [d, keep]
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye.T, -eye.T], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    return sae


@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale"])
def test_identity_sae_metrics(transformer, eval_rows, normalize):
    d = transformer.cfg.d_model
    m = saes.evaluate(_hand_sae(d, d, normalize), transformer, eval_rows)
    assert m["fve"] == pytest.approx(1.0, abs=1e-5) and m["fve_raw"] == pytest.approx(1.0, abs=1e-5)
    assert m["l0"] == pytest.approx(d)  # every coordinate is non-zero: exactly one of each pair fires
    assert m["l0_frac"] == pytest.approx(0.5)
    assert m["ce_sae"] == pytest.approx(m["ce_clean"], abs=1e-4)
    assert m["ce_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert m["ce_zero"] != pytest.approx(m["ce_clean"], abs=1e-3)
    assert m["density"].sum() == pytest.approx(m["l0"])


def test_half_sae_metrics_match_a_direct_computation(transformer, eval_rows, tok):
    d, keep = transformer.cfg.d_model, 5
    m = saes.evaluate(_hand_sae(d, keep), transformer, eval_rows)
    x = acts.resid_post(transformer, eval_rows, [0])[0][acts.token_mask(eval_rows, [tok.bos_token_id])]  # [t, d]
    xc = x - x.mean(0)
    # the residual is the dropped coordinates themselves (not centred); the variance is centred
    assert m["fve_raw"] == pytest.approx(1 - (x[:, keep:].pow(2).sum() / xc.pow(2).sum()).item(), rel=1e-4)
    xn = acts.normalise_tokens(x)
    xnc = xn - xn.mean(0)
    err = xn[:, keep:].pow(2).sum()
    assert m["fve"] == pytest.approx(1 - (err / xnc.pow(2).sum()).item(), rel=1e-4)
    assert m["l0"] == pytest.approx(float((x[:, :keep] != 0).sum(-1).float().mean()))
    assert m["n_dead"] == int((m["density"] == 0).sum()) and 0 <= m["dead_frac"] <= 1


@pytest.mark.parametrize("which", ["transformer", "mamba0"])
def test_evaluate_many_matches_get_recons_loss_sae_by_sae(which, request, eval_rows, tok):
    """The shared passes of evaluate_many (one clean pass, one per SAE, one zero-ablated pass per hook) give each
    SAE exactly the CE numbers of sae-lens' get_recons_loss run for it alone, and the other metrics of evaluate."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    model = request.getfixturevalue(which)
    d = model.cfg.d_model
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    group = {}
    for k, (hook, norm) in enumerate([("blocks.0.hook_resid_post", "none"), ("blocks.0.hook_resid_post",
                                      "constant_norm_rescale"), (last, "constant_norm_rescale")]):
        torch.manual_seed(k)
        sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=3 * d, normalize_activations=norm))
        sae.cfg.metadata.hook_name = hook
        group[k] = sae
    many = saes.evaluate_many(group, model, eval_rows, batch_size=3)
    ids = [tok.bos_token_id]
    for k, sae in group.items():
        ce = {"ce_loss_without_sae": [], "ce_loss_with_sae": [], "ce_loss_with_ablation": []}
        for i in range(0, len(eval_rows), 3):
            m = get_recons_loss(sae, model, ActivationScaler(), eval_rows[i:i + 3], compute_kl=False,
                                compute_ce_loss=True, ignore_tokens=ids, hook_name=sae.cfg.metadata.hook_name)
            for name in ce:
                ce[name].append(m[name].float().reshape(-1))
        ref = {n: torch.cat(v).mean().item() for n, v in ce.items()}
        got = many[k]
        assert (got["ce_clean"], got["ce_sae"], got["ce_zero"]) == (
            ref["ce_loss_without_sae"], ref["ce_loss_with_sae"], ref["ce_loss_with_ablation"])
        alone = saes.evaluate(sae, model, eval_rows, batch_size=3)
        assert {n: v for n, v in got.items() if n != "density"} == {n: v for n, v in alone.items() if n != "density"}
        assert (got["density"] == alone["density"]).all()
    with pytest.raises(UniversalityError, match="no SAEs"):
        saes.evaluate_many({}, model, eval_rows)


def test_a_feature_that_never_fires_is_dead(transformer, eval_rows):
    sae = _hand_sae(transformer.cfg.d_model, 3)
    with torch.no_grad():
        sae.b_enc[0] = -1e6  # feature 0 can never fire
    m = saes.evaluate(sae, transformer, eval_rows)
    assert m["density"][0] == 0 and m["n_dead"] >= 1


def test_top_activations_and_feature_choice(transformer, eval_rows):
    sae = _hand_sae(transformer.cfg.d_model, 4)
    fa = saes.feature_acts(sae, transformer, eval_rows)
    assert fa.shape == (*eval_rows.shape, 8)
    assert (fa[:, 0] == 0).all()  # BOS position
    top = saes.top_activations(fa, eval_rows, feature=2, k=3)
    assert len(top) == 3 and top[0]["act"] >= top[1]["act"] >= top[2]["act"] > 0
    assert top[0]["act"] == pytest.approx(float(fa[..., 2].max()))
    assert eval_rows[top[0]["row"], top[0]["pos"]].item() in top[0]["tokens"]
    dens = (fa > 0).float().mean((0, 1)).numpy()
    picked = saes.pick_features(dens, fa.amax((0, 1)).numpy(), n=2, lo=0.0, hi=1.0)
    assert len(picked) == 2 and all(dens[i] > 0 for i in picked)


# ----------------------------------------------------------------------------- bad input
def test_bad_hook_name(P, mamba0, rows):
    with pytest.raises(UniversalityError, match=r"no hook point 'blocks\.9\.hook_resid_post'.*blocks\.3\.hook_resid_post"):
        saes.train(mamba0, 9, TINY_SAE, rows, progress=False)
    with pytest.raises(UniversalityError, match=r"no hook point 'blocks\.9\.hook_resid_post'"):
        saes.get(P, "M0", 9, model=mamba0, progress=False)


def test_d_in_mismatch(transformer, eval_rows):
    sae = _hand_sae(8, 4)  # d_in 8, the model has 16
    with pytest.raises(UniversalityError, match="d_in mismatch: the SAE expects d_in=8 .* width 16"):
        saes.evaluate(sae, transformer, eval_rows)


def test_sae_of_another_hook(transformer, eval_rows):
    sae = _hand_sae(16, 4)
    with pytest.raises(UniversalityError, match="trained on 'blocks.0.hook_resid_post', not on 'hook_embed'"):
        saes.evaluate(sae, transformer, eval_rows, hook_name="hook_embed")


def test_bad_configs(mamba0, rows):
    with pytest.raises(UniversalityError, match="unknown SAE architecture 'gated'"):
        saes.train(mamba0, 0, SAEConfig(**{**TINY_SAE.__dict__, "architecture": "gated"}), rows, progress=False)
    with pytest.raises(UniversalityError, match="mixing buffer"):
        saes.train(mamba0, 0, SAEConfig(**{**TINY_SAE.__dict__, "n_batches_in_buffer": 1}), rows, progress=False)
    with pytest.raises(UniversalityError, match="topk SAE sets its L0 with k"):
        saes.train(mamba0, 0, SAEConfig(**{**TINY_SAE.__dict__, "architecture": "topk", "l0_target": 0.1}), rows,
                   progress=False)
    with pytest.raises(UniversalityError, match="fraction of the dictionary"):
        saes.train(mamba0, 0, SAEConfig(**{**TINY_SAE.__dict__, "l0_target": 5.0}), rows, progress=False)
    with pytest.raises(UniversalityError, match="unknown model 'X'"):
        saes.get("smoke", "X", 0)


def test_every_preset_has_one_sae_config_for_both_families():
    for name in presets.NAMES:
        p = presets.get(name)
        assert isinstance(p.sae, SAEConfig) and p.sae.architecture == "standard"
        assert p.sae.context <= p.transformer.n_ctx
        assert p.sae.n_batches_in_buffer * p.sae.context >= p.sae.batch_tokens
        assert p.sae.seed_skyline in zoo.names(p) and len(p.sae.seeds) >= 2
    json.dumps(presets.get("tiny").to_dict())  # still serialisable


def test_train_all_in_worker_processes_matches_one_process(P, mamba0, rows, tmp_path):
    out = saes.train_all(P, names=["M0"], workers=2, progress=False)
    assert [(r["model"], r["layer"], r["seed"]) for r in out] == saes.jobs(P, ["M0"])
    again = saes.train_all(P, names=["M0"], workers=1, progress=False)
    assert all(r["cached"] for r in again)  # the second run finds every SAE in the cache
    # the SAE a worker trained is the SAE one process trains with the same seed and one thread
    direct = saes.train(mamba0, 1, P.sae, rows, seed=0, progress=False, threads=1)
    from_worker = saes.get(P, "M0", 1, model=mamba0, progress=False, train_if_missing=False)
    assert torch.allclose(direct.sae.W_enc, from_worker.W_enc, atol=1e-5)
    with pytest.raises(Exception, match="workers"):
        saes.train_all(P, names=["M0"], workers=0, progress=False)
