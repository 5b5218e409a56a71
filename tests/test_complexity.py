"""Complexity proxies on synthetic features with known answers: a feature that is a function of the token has
token R^2 = 1 and context dependence 0; pure noise has R^2 about 0; a share of token variance is recovered; a
feature gated by the previous token loses its activation when the context is replaced; entropy of the top
tokens is 0 for one token and log2(k) for k tokens; Spearman with its interval and binned means."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import spearmanr

from universality_lib import complexity as cx
from universality_lib.errors import UniversalityError
from universality_lib.feature_sample import FeatureSample

V = 12  # vocabulary of the synthetic rows


def _eps2_dense(a, tokens):
    """Adjusted R^2 of a one-way ANOVA, written out densely (the reference)."""
    n, g = len(a), len(np.unique(tokens))
    ss_t = ((a - a.mean()) ** 2).sum()
    ss_w = sum(((a[tokens == v] - a[tokens == v].mean()) ** 2).sum() for v in np.unique(tokens))
    return 1 - (ss_w / (n - g)) / (ss_t / (n - 1))


def test_token_r2_known_answers():
    rng = np.random.default_rng(0)
    n = 20_000
    tokens = rng.integers(0, V, n)
    table = rng.exponential(1.0, V) * (rng.random(V) < 0.5)  # activation per token (half the tokens: 0)
    table[0] = 2.0
    f_tok = table[tokens]  # a function of the token
    noise = rng.exponential(1.0, n) * (rng.random(n) < 0.1)  # independent of the token
    mix = f_tok + noise  # token share of the variance: var(f_tok) / (var(f_tok) + var(noise))
    sparse_rand = rng.exponential(1.0, n) * (rng.random(n) < 0.05) * (tokens < 6)
    a = np.stack([f_tok, noise, mix, sparse_rand, np.zeros(n)], 1)
    r2 = cx.token_r2(sp.csr_matrix(a), tokens)
    assert r2[0] == pytest.approx(1.0, abs=1e-12)
    assert abs(r2[1]) < 0.01
    assert r2[2] == pytest.approx(f_tok.var() / (f_tok.var() + noise.var()), abs=0.02)
    assert r2[3] == pytest.approx(_eps2_dense(a[:, 3], tokens), abs=1e-9)
    assert np.isnan(r2[4])  # constant: undefined
    np.testing.assert_allclose(cx.density(sp.csr_matrix(a)), (a != 0).mean(0))
    with pytest.raises(UniversalityError, match="disagree"):
        cx.token_r2(sp.csr_matrix(a), tokens[:-1])


def test_top_token_entropy():
    tokens = np.array([3, 3, 3, 3, 1, 2, 4, 5, 6, 7])
    a = np.zeros((10, 3), np.float32)
    a[:4, 0] = [4, 3, 2, 1]  # always token 3
    a[:, 1] = np.arange(10) + 1.0  # top 4: positions 9, 8, 7, 6 -> four different tokens
    e = cx.top_token_entropy(sp.csr_matrix(a), tokens, k=4)
    assert e[0] == 0.0 and e[1] == pytest.approx(2.0) and np.isnan(e[2])
    assert list(cx.top_positions(sp.csr_matrix(a), 2)[1]) == [9, 8]


def _encode(batch):
    """A causal synthetic 'model' with one layer of three features: f0 = [token == 3] (context-free),
    f1 = [token == 3 and previous token == 5] (needs its context), f2 = [token == 3] * (1 + [5 anywhere before])."""
    b = batch.long()
    is3 = (b == 3).float()
    prev5 = torch.zeros_like(is3)
    prev5[:, 1:] = (b[:, :-1] == 5).float()
    seen5 = (torch.cumsum((b == 5).float(), 1) - (b == 5).float() > 0).float()
    return {0: torch.stack([is3, is3 * prev5, is3 * (1 + seen5)], -1)}


def _sample(n=60, L=24, vocab=50, seed=0):
    """Random rows over ``vocab`` tokens, "5 3" planted at a different position in every other row (so that a
    donor row rarely brings a "5" right before the kept "3": about 1 / vocab of the time)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(1, vocab, (n, L), generator=g)
    rows[:, 0] = 0  # BOS
    for r in range(0, n, 2):
        p = 2 + (r // 2) % (L - 3)
        rows[r, p], rows[r, p + 1] = 5, 3
    mask = rows != 0
    acts = _encode(rows)[0][mask].numpy()  # [n_tok, 3]
    return FeatureSample("toy", rows, torch.nonzero(mask).numpy(), rows[mask].numpy(), {0: np.arange(3)},
                         {0: sp.csr_matrix(acts)})


def test_context_dependence_known_answers():
    s = _sample()
    feats = pd.DataFrame({"layer": [0, 0, 0], "unit": [0, 1, 2], "mppc": [0.9, 0.5, 0.1]})
    df = cx.measure(s, feats, encode=_encode, k=8, k_context=16, min_active=5, progress=False)
    assert df.loc[0, "context_dependence"] == pytest.approx(0.0, abs=1e-7)  # the token alone
    assert df.loc[1, "context_dependence"] > 0.8  # vanishes without the preceding "5"
    assert 0.0 < df.loc[2, "context_dependence"] < 1.0  # halves (2 -> 1) unless a donor brings a "5"
    assert df.loc[0, "token_r2"] == pytest.approx(1.0) and df.loc[0, "top_token_entropy"] == 0.0
    assert df.loc[1, "token_r2"] < df.loc[0, "token_r2"]
    np.testing.assert_allclose(df.non_token_variance, 1 - df.token_r2)
    assert (df.n_active == (s.acts[0].toarray() > 0).sum(0)).all()
    strict = cx.measure(s, feats, encode=None, min_active=10_000, progress=False)
    assert strict.token_r2.isna().all() and strict.context_dependence.isna().all()


def test_context_dependence_direct():
    rows = torch.tensor([[0, 5, 3, 1], [0, 2, 2, 2]])
    probes = {0: np.array([[0, 2, 1], [0, 2, 0]])}
    after = cx.context_dependence(_encode, rows, probes, {0: np.array([1.0, 1.0])}, progress=False)[0]
    np.testing.assert_allclose(after, [0.0, 1.0])  # the donor (row 1) has no "5" before position 2
    with pytest.raises(UniversalityError, match="position 0"):
        cx.context_dependence(_encode, rows, {0: np.array([[0, 0, 0]])}, {0: np.array([1.0])}, progress=False)


def test_statistics():
    rng = np.random.default_rng(0)
    x = rng.random(300)
    r = cx.spearman_ci(x, x**3 + 1, n_boot=200)
    assert r["rho"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(1.0) and r["n"] == 300
    y = -x + rng.normal(0, 0.3, 300)
    r = cx.spearman_ci(x, y, n_boot=300)
    assert r["rho"] == pytest.approx(spearmanr(x, y).statistic) and r["ci_low"] < r["rho"] < r["ci_high"] < 0
    r = cx.spearman_ci(x, rng.random(300), n_boot=300)
    assert r["ci_low"] < 0 < r["ci_high"]
    df = pd.DataFrame({"mppc": [0.1, 0.15, 0.5, 0.95, 1.0], "density": [1.0, 3.0, 2.0, 5.0, 7.0]})
    b = cx.binned_means(df, "density", edges=(0, 0.2, 0.6, 1.0), n_boot=100)
    assert list(b.n) == [2, 1, 2] and list(b["mean"]) == [2.0, 2.0, 6.0]
    assert (b.ci_low <= b["mean"]).all() and (b["mean"] <= b.ci_high).all()
    df["top_token_entropy"] = -df.mppc
    c = cx.correlations(df, n_boot=50).set_index("measure")
    assert c.loc["top_token_entropy", "rho"] == pytest.approx(-1.0) and c.loc["density", "rho"] > 0
    assert "non_token_variance" not in c.index  # absent measures are skipped


def test_select_features():
    t = pd.DataFrame({"layer": [0, 0, 1, 1], "unit": [0, 1, 0, 1], "mppc": [0.5, np.nan, 0.2, 0.9],
                      "freq": [0.01, 0.5, 0.0001, 0.1], "live": [True, False, True, True]})
    sel = cx.select_features(t, n_tokens=10_000, min_active=16)
    assert list(zip(sel.layer, sel.unit)) == [(0, 0), (1, 1)]
    assert len(cx.select_features(t, 10_000, max_features=1)) == 1
