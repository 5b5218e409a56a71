"""Depth alignment: Spearman's rho from a contingency table equals scipy's on the expanded data; a planted
alignment gives rho > 0 with an interval above 0, a planted anti-alignment rho < 0, independent layers an
interval around 0; best-layer counts and the slope against the layer ratio on a synthetic MPPCResult."""
import numpy as np
import pytest
from scipy.stats import spearmanr

from universality_lib import depth
from universality_lib.errors import UniversalityError
from universality_lib.similarity import MPPCResult


def _result(best_layer_of, la=(0, 1, 2), lb=(0, 1, 2, 3, 4, 5), f=40, seed=0, dead=3):
    """A synthetic MPPCResult: unit i of a-layer ka has its best match (value 0.9) in b-layer
    ``best_layer_of(ka, i, rng)``; every other layer pair holds values below 0.5. The first ``dead`` units of
    each a-layer are excluded (NaN, live False)."""
    rng = np.random.default_rng(seed)
    pair = {}
    targets = {ka: np.array([best_layer_of(ka, i, rng) for i in range(f)]) for ka in la}
    for ka in la:
        for kb in lb:
            a_val = rng.uniform(0.0, 0.5, f)
            a_val[targets[ka] == kb] = 0.9
            a_val[:dead] = np.nan
            pair[(ka, kb)] = {"a_val": a_val, "a_idx": rng.integers(0, f, f),
                              "b_val": rng.uniform(0.0, 0.5, f), "b_idx": rng.integers(0, f, f)}
    freq = {(s, k): np.full(f, 0.01) for s, ks in (("a", la), ("b", lb)) for k in ks}
    live = {(s, k): np.ones(f, bool) for s, ks in (("a", la), ("b", lb)) for k in ks}
    for ka in la:
        live[("a", ka)][:dead] = False
    return MPPCResult("T", "M", list(la), list(lb), freq, live, pair), targets


def test_spearman_from_table_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, 500)
    y = np.clip(x * 2 + rng.integers(-2, 3, 500), 0, 7)
    table = np.zeros((4, 8), int)
    np.add.at(table, (x, y), 1)
    assert depth.spearman_from_table(table) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(depth.spearman_from_table(np.array([[5, 3, 2]])))  # one row category: undefined


def test_planted_alignment_gives_positive_rho_and_slope_near_ratio():
    # a-layer k matches b-layer 2k or 2k+1 (equal relative depth at a ratio of 2), one unit in ten elsewhere
    res, targets = _result(lambda k, i, rng: (2 * k + (i % 2)) if i % 10 else int(rng.integers(0, 6)))
    al = depth.depth_alignment(res, "a", n_boot=300)
    assert al.rho > 0.5 and al.ci_low > 0 and al.holds()
    assert al.n == 3 * (40 - 3)
    assert al.ratio == 2.0 and al.expected == [1.0, 3.0, 5.0]
    assert 1.2 < al.slope < 2.5
    counts = depth.best_layer_counts(res, "a")
    for i, ka in enumerate(res.layers_a):
        want = np.bincount(targets[ka][3:], minlength=6)
        np.testing.assert_array_equal(counts[i], want)
    for i in range(3):  # the mean best-match layer of a-layer k is near 2k + 0.5, inside its interval
        m, lo, hi = al.mean_best[i]
        assert lo <= m <= hi and abs(m - (2 * i + 0.5)) < 1.0


def test_anti_alignment_and_independence():
    anti, _ = _result(lambda k, i, rng: 5 - 2 * k - (i % 2))
    al = depth.depth_alignment(anti, "a", n_boot=300)
    assert al.rho < -0.5 and al.ci_high < 0 and not al.holds()
    indep, _ = _result(lambda k, i, rng: int(rng.integers(0, 6)), f=400, seed=3)
    al = depth.depth_alignment(indep, "a", n_boot=300)
    assert al.ci_low < 0 < al.ci_high and abs(al.rho) < 0.15


def test_threshold_and_table():
    res, _ = _result(lambda k, i, rng: 2 * k)
    assert depth.best_layer_counts(res, "a", min_mppc=0.95).sum() == 0
    with pytest.raises(UniversalityError, match="no live unit"):
        depth.depth_alignment(res, "a", min_mppc=0.95)
    tab = depth.alignment_table(res, "a", thresholds=(None, 0.8, 0.95), n_boot=100)
    assert list(tab.min_mppc.fillna(-1)) == [-1, 0.8]  # the empty threshold is left out
    assert (tab.rho > 0.9).all()
    np.testing.assert_allclose(depth.relative_depth([0, 1, 3], 4), [0.25, 0.5, 1.0])
