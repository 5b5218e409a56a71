"""The MPPC engine: exactness of both back ends against a float64 two-pass reference, known correlations,
excluded units, refused stream mismatches, the saved result, best-match layers, and an end-to-end pass over
smoke tokens with tiny random models (a one-block Transformer and the untrained Mamba M0)."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from universality_lib import cache, corpus, presets, zoo
from universality_lib import similarity as sim
from universality_lib.errors import StreamMismatchError, UniversalityError
from universality_lib.presets import TransformerConfig
from universality_lib.similarity import MPPCResult, PairStats, pearson_reference

TOL = 1e-6


def _sparse_features(rng, n, f, density, scale=1.0):
    """Non-negative sparse activations [n, f] with per-feature firing rates ``density`` (scalar or [f])."""
    fire = rng.random((n, f)) < density
    return (fire * rng.exponential(scale, (n, f))).astype(np.float32)


def _data(seed=0, n=3000, fa=60, fb=45):
    """x: sparse features, a few dense ones with a large mean (1e3 σ), one never firing and one constant;
    y: noisy copies of some x features plus its own sparse and dense-with-offset units."""
    rng = np.random.default_rng(seed)
    x = _sparse_features(rng, n, fa, rng.uniform(0.005, 0.2, fa))
    x[:, 0:3] = rng.normal(1000.0, 1.0, (n, 3))  # dense, mean / σ = 1000
    x[:, 3] = 0.0  # never fires
    x[:, 4] = 2.5  # constant
    y = _sparse_features(rng, n, fb, 0.05)
    y[:, :30] += 0.8 * x[:, 10:40] + 0.1 * x[:, 0:1]
    y[:, 40:44] = rng.normal(-300.0, 0.5, (n, 4)) + 0.2 * x[:, 1:2]  # dense with offset, correlated with x1
    return x, y.astype(np.float32)


def _feed(st, x, y, sizes=(700, 1000, 333, 967)):
    """Feed uneven chunks (one of them as scipy CSR)."""
    i, k = 0, 0
    while i < len(x):
        t = sizes[k % len(sizes)]
        xa, ya = x[i:i + t], y[i:i + t]
        if k == 1:
            xa = sp.csr_matrix(xa)
        st.update({0: xa}, {0: torch.from_numpy(ya)})
        i, k = i + t, k + 1
    return st


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("backend", ["sparse", "dense"])
def test_exact_against_the_float64_two_pass_reference(backend):
    x, y = _data()
    ref = pearson_reference(x, y)
    st = _feed(PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend=backend), x, y)
    r = st.pearson(0, 0)
    assert np.array_equal(np.isnan(r), np.isnan(ref))  # the same units are excluded
    assert np.nanmax(np.abs(r - ref)) <= TOL
    assert st.error_bound() <= TOL  # the stated bound says so too
    assert st.n == len(x) and st.n_chunks == 4


def test_both_back_ends_agree_and_the_naive_float32_formula_does_not():
    x, y = _data(seed=1)
    rs = _feed(PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend="sparse"), x, y).pearson(0, 0)
    rd = _feed(PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend="dense"), x, y).pearson(0, 0)
    assert np.nanmax(np.abs(rs - rd)) <= 1e-9
    # the one-pass float32 formula (n Σxy - Σx Σy) / ... on the same data: cancellation on the offset units
    x32, y32, n = x.astype(np.float32), y.astype(np.float32), np.float32(len(x))
    sxy = x32.T @ y32
    cov = n * sxy - np.outer(x32.sum(0), y32.sum(0))
    vx = n * (x32 * x32).sum(0) - x32.sum(0) ** 2
    vy = n * (y32 * y32).sum(0) - y32.sum(0) ** 2
    with np.errstate(all="ignore"):
        naive = cov / np.sqrt(np.clip(np.outer(vx, vy), 1e-12, None))
    ref = pearson_reference(x, y)
    ok = np.isfinite(ref)
    assert np.max(np.abs(naive[ok] - ref[ok])) > 1e-2  # why the shift is needed
    assert np.max(np.abs(rs[ok] - ref[ok])) <= TOL


def test_known_correlations_are_recovered():
    rng = np.random.default_rng(2)
    n, f = 40_000, 30
    x = _sparse_features(rng, n, f, 0.1)
    perm = rng.permutation(f)
    rho = np.linspace(0.3, 0.95, f)  # population correlation of y_j with x_perm[j]
    noise = _sparse_features(rng, n, f, 0.1)  # same distribution as x, independent
    # y = rho x + sqrt(1 - rho^2) noise has correlation rho with x (equal variances, independent noise)
    y = (rho * x[:, perm] + np.sqrt(1 - rho ** 2) * noise).astype(np.float32)
    st = _feed(PairStats({0: f}, {0: f}), x, y, sizes=(4096,))
    pm = st.pair_max(0, 0)
    assert (pm["b_idx"] == perm).all()  # every y unit finds its source
    assert np.abs(pm["b_val"] - rho).max() < 0.03  # sampling error at n = 40k
    ref = pearson_reference(x, y)
    assert np.abs(pm["b_val"] - ref.max(0)).max() <= TOL
    assert np.abs(pm["a_val"] - ref.max(1)).max() <= TOL and (pm["a_idx"] == ref.argmax(1)).all()


# ----------------------------------------------------------------------------- excluded units
def test_dead_and_constant_units_are_excluded_not_scored():
    x, y = _data(seed=3)
    st = _feed(PairStats({0: x.shape[1]}, {0: y.shape[1]}), x, y)
    pm = st.pair_max(0, 0)
    assert np.isnan(pm["a_val"][3]) and np.isnan(pm["a_val"][4])
    assert pm["a_idx"][3] == -1 and pm["a_idx"][4] == -1
    assert not np.isin(pm["b_idx"], [3, 4]).any()  # never anybody's best match
    res = MPPCResult.from_stats([st], "X", "Y")
    c = res.counts("a")
    assert c == {"n_units": x.shape[1], "live": x.shape[1] - 2, "excluded": 2, "never_fired": 1, "constant": 1}
    assert len(res.values("a")) == x.shape[1] - 2 and np.isfinite(res.values("a")).all()
    s = res.summary("a", n_boot=200)
    assert s["excluded"] == 2 and s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert s["mean"] == pytest.approx(np.nanmean(pm["a_val"]))


def test_bad_chunks_are_refused():
    st = PairStats({0: 5}, {0: 4})
    with pytest.raises(UniversalityError, match="units"):
        st.update({0: np.zeros((3, 6), np.float32)}, {0: np.zeros((3, 4), np.float32)})
    st = PairStats({0: 5}, {0: 4})
    with pytest.raises(UniversalityError, match="same tokens"):
        st.update({0: np.zeros((3, 5), np.float32)}, {0: np.zeros((2, 4), np.float32)})
    with pytest.raises(UniversalityError, match="back end"):
        PairStats({0: 5}, {0: 4}, backend="bf16")


# ----------------------------------------------------------------------------- layers, saving
def test_best_match_layer_and_index_over_layers():
    rng = np.random.default_rng(4)
    n = 4000
    xs = {k: _sparse_features(rng, n, 20, 0.1) for k in (0, 1)}
    ys = {k: _sparse_features(rng, n, 25, 0.1) for k in (0, 1, 2)}
    ys[2][:, 7] = 3.0 * xs[1][:, 5]  # an exact (scaled) copy: r = 1 at layer 2, unit 7
    st = PairStats({k: 20 for k in xs}, {k: 25 for k in ys})
    for i in range(0, n, 1000):
        st.update({k: v[i:i + 1000] for k, v in xs.items()}, {k: v[i:i + 1000] for k, v in ys.items()})
    res = MPPCResult.from_stats([st], "X", "Y")
    val, layer, idx = res.best("a")[1]
    assert val[5] == pytest.approx(1.0, abs=1e-12) and layer[5] == 2 and idx[5] == 7
    bval, blayer, bidx = res.best("b")[2]
    assert bval[7] == pytest.approx(1.0, abs=1e-12) and blayer[7] == 1 and bidx[7] == 5
    # every unit against brute force over all layers of the other side
    ycat = np.concatenate([ys[k] for k in (0, 1, 2)], axis=1)
    owner = np.repeat([0, 1, 2], 25)
    for k in (0, 1):
        ref = pearson_reference(xs[k], ycat)
        v, lay, ix = res.best("a")[k]
        assert np.abs(v - ref.max(1)).max() <= TOL
        assert (lay == owner[ref.argmax(1)]).all() and (ix == ref.argmax(1) % 25).all()
    assert res.layer_matrix("a").shape == (2, 3)


def test_save_load_round_trip_and_cache(tmp_path):
    x, y = _data(seed=5)
    st = _feed(PairStats({0: x.shape[1]}, {0: y.shape[1]}), x, y)
    res = MPPCResult.from_stats([st], "T", "M", meta={"condition": "main", "units": "sae"})
    folder = cache.cached_folder("similarity-test", "k1", lambda tmp: res.save(tmp))
    cache.verify_manifest(folder)
    back = MPPCResult.load(folder)
    assert (back.name_a, back.name_b, back.layers_a, back.layers_b) == ("T", "M", [0], [0])
    assert back.meta["condition"] == "main" and back.meta["n_tokens"] == len(x)
    for key in res.pair[(0, 0)]:
        np.testing.assert_array_equal(back.pair[(0, 0)][key], res.pair[(0, 0)][key])
    for key in res.freq:
        np.testing.assert_array_equal(back.freq[key], res.freq[key])
        np.testing.assert_array_equal(back.live[key], res.live[key])
    assert back.summary("b", n_boot=100) == res.summary("b", n_boot=100)
    assert back.table("a").equals(res.table("a"))
    with pytest.raises(UniversalityError, match="no MPPC result"):
        MPPCResult.load(tmp_path)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(6)
    small = sim.bootstrap_mean(rng.normal(0.5, 0.2, 100), n_boot=500)
    large = sim.bootstrap_mean(rng.normal(0.5, 0.2, 10_000), n_boot=500)
    for mean, lo, hi in (small, large):
        assert lo < mean < hi
    assert (large[2] - large[1]) < (small[2] - small[1]) / 5
    assert abs(large[0] - 0.5) < 0.01


# ----------------------------------------------------------------------------- end to end, smoke tokens
@pytest.fixture(scope="module")
def tok():
    return corpus.load_tokenizer("smoke")


@pytest.fixture(scope="module")
def rows(tok):
    return corpus.token_stream("smoke", "eval", tok).rows(32, n_rows=24)


@pytest.fixture(scope="module")
def transformer(tok):
    from universality_lib.models.transformer import make_transformer

    cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, n_ctx=64)
    return make_transformer(cfg, len(tok), seed=0, tokenizer=tok, device="cpu").eval()


@pytest.fixture(scope="module")
def mamba0(tok):
    return zoo.build("smoke", "M0", tokenizer=tok).eval()


def _random_sae(d: int, f: int, layer: int, seed: int):
    """A random ReLU SAE on blocks.{layer}.hook_resid_post with a negative bias (sparse, some features dead)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    g = torch.Generator().manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=f, normalize_activations="constant_norm_rescale"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, f, generator=g))
        sae.b_enc.copy_(-torch.rand(f, generator=g) * 6.0)
        sae.b_enc[0] = -1e6  # feature 0 never fires
    sae.cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    return sae.eval()


def _saes(model, f, seed):
    return {k: _random_sae(model.cfg.d_model, f, k, seed + k) for k in range(model.cfg.n_layers)}


def test_end_to_end_on_smoke_tokens_every_back_end(transformer, mamba0, rows, tok):
    sa = sim.Source("T", transformer, rows, "sae", _saes(transformer, 48, 0))
    sb = sim.Source("M0", mamba0, rows, "sae", _saes(mamba0, 64, 10))
    na, nb = sim.Source("T", transformer, rows, "neurons"), sim.Source("M0", mamba0, rows, "neurons")
    assert na.sizes() == {0: 32, 1: 32}
    assert nb.sizes() == {k: 2 * mamba0.cfg.d_model * mamba0.cfg.expand for k in range(mamba0.cfg.n_layers)}
    pairs = {"sae": (sa, sb), "neurons": (na, nb)}
    out = {be: sim.compute(pairs, backend=be, chunk_tokens=200, progress=False) for be in sim.BACKENDS}
    # several passes under a tiny memory budget give the same numbers
    split = sim.compute(pairs, backend="sparse", chunk_tokens=200, max_gb=2e-5, progress=False)
    assert split["sae"].meta["passes"] > 4  # the budget holds about one layer pair per pass
    assert split["sae"].layers_a == [0, 1] and split["sae"].layers_b == list(range(mamba0.cfg.n_layers))
    mask = rows != tok.bos_token_id
    n_tok = int(mask.sum())
    with torch.no_grad():
        _, ca = transformer.run_with_cache(rows)
        _, cb = mamba0.run_with_cache(rows)
    ua, ub = sa.units_of(ca, mask), sb.units_of(cb, mask)
    va, vb = na.units_of(ca, mask), nb.units_of(cb, mask)
    assert va[1].shape == (n_tok, 32)
    for cond, (xa, xb) in {"sae": (ua, ub), "neurons": (va, vb)}.items():
        for res in (*(out[be][cond] for be in sim.BACKENDS), split[cond]):
            assert res.meta["n_tokens"] == n_tok and res.meta["stream_sha"] == sim.rows_hash(rows)
            for k, (v, lay, ix) in res.best("a").items():
                ref = np.concatenate([pearson_reference(xa[k].numpy(), xb[kb].numpy()) for kb in sorted(xb)], 1)
                live = np.isfinite(ref).any(1)
                assert np.array_equal(np.isfinite(v), live)
                assert np.abs(v[live] - np.nanmax(ref[live], 1)).max() <= TOL
    r = out["sparse"]["sae"]
    assert r.counts("a")["never_fired"] >= 2  # feature 0 of each layer
    ts, td = out["sparse"]["sae"].table("b"), out["dense"]["sae"].table("b")
    assert np.allclose(ts["mppc"], td["mppc"], atol=1e-9, equal_nan=True)
    assert np.allclose(ts["mppc"], out["torch_sparse"]["sae"].table("b")["mppc"], atol=1e-9, equal_nan=True)
    tab = sim.summary_table(out["sparse"], n_boot=50)
    assert set(tab["condition"]) == {"sae", "neurons"} and len(tab) == 4


def test_sources_on_different_token_streams_are_refused(transformer, mamba0, rows):
    other = rows.clone()
    other[:, 5] = (other[:, 5] + 1) % 100 + 1  # one token changed in every row
    with pytest.raises(StreamMismatchError, match="different token streams"):
        sim.compute({"x": (sim.Source("T", transformer, rows, "neurons"),
                           sim.Source("M0", mamba0, other, "neurons"))}, progress=False)


def test_conditions_and_rows_follow_the_preset():
    p = presets.get("smoke")
    conds = sim.conditions(p)
    assert list(conds) == list(sim.CONDITION_ORDER)
    assert (conds["main"].a, conds["main"].b) == ("T", "M") and conds["random"].b == zoo.RANDOM_BASELINE
    assert conds["sae_seed"].a == conds["sae_seed"].b == p.sae.seed_skyline
    assert conds["sae_seed"].seed_a != conds["sae_seed"].seed_b
    assert conds["neurons_main"].units == "neurons"
    assert [presets.get(n).mppc_tokens for n in ("smoke", "paper")] == [8_000, 1_000_000]
    r = sim.mppc_rows(p)
    assert r.shape[1] == p.sae.context and (r[:, 1:] != r[0, 0]).sum() >= 0.9 * p.mppc_tokens


def test_default_memory_budget_of_a_pass(monkeypatch):
    from types import SimpleNamespace

    from universality_lib.similarity import experiments

    assert experiments.default_max_gb("cpu") == 4.0
    # a GPU gets half its memory: at the paper's size (4.8 GB per SAE layer pair) 4 GB would mean a pass per pair
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=80 * 2**30))
    assert experiments.default_max_gb("cuda:0") == 40.0


def test_paired_scores_the_same_units_of_two_conditions():
    from universality_lib.similarity import paired

    def result(name_b, vals, live):
        n = len(vals)
        pair = {(0, 0): {"a_val": np.asarray(vals, float), "a_idx": np.zeros(n, int), "b_val": np.zeros(1),
                         "b_idx": np.zeros(1, int)}}
        return MPPCResult("T", name_b, [0], [0], {("a", 0): np.full(n, 0.1), ("b", 0): np.full(1, 0.1)},
                          {("a", 0): np.asarray(live), ("b", 0): np.ones(1, bool)}, pair)

    main = result("M", [0.9, 0.5, np.nan, 0.3], [True, True, False, True])
    rand = result("M0", [0.85, 0.2, np.nan, 0.4], [True, True, False, False])
    df = paired(main, rand)
    assert df.unit.tolist() == [0, 1] and np.allclose(df["diff"], [0.05, 0.3])  # unit 3 is dead in the second
    with pytest.raises(UniversalityError, match="same units"):
        paired(main, result("M", [0.1, 0.2], [True, True]))
