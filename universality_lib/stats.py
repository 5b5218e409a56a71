"""Statistics the chapters share: bootstrap intervals and Spearman's rank correlation.

* :func:`bootstrap_mean`: a mean and its percentile bootstrap interval (chapters 3-4: MPPC means, binned means);
* :func:`spearman_ci`: Spearman's rho of paired values with a bootstrap interval over pairs (chapter 4: complexity);
* :func:`spearman_from_table` / :func:`bootstrap_table_spearman`: the same rho from a contingency table of ordered
  categories, mid-ranks for ties (chapter 4: depth alignment).
"""
from __future__ import annotations

import math

import numpy as np


def ranks(a) -> np.ndarray:
    """Ranks 1..n of ``a``, ties given their mid-rank (scipy.stats.rankdata's "average")."""
    from scipy.stats import rankdata

    return rankdata(a)


def spearman(a, b) -> float:
    """Spearman's rho of paired samples ``a``, ``b`` (Pearson's r of their mid-ranks); NaN if either is constant."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    d = math.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / d) if d > 0 else float("nan")


def bootstrap_mean(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its percentile bootstrap interval (resampling units)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // len(v))  # resamples per batch (bounded memory)
    for i in range(0, n_boot, step):
        k = min(step, n_boot - i)
        means[i:i + k] = v[rng.integers(0, len(v), size=(k, len(v)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def spearman_ci(x, y, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Spearman's rho of the finite pairs of ``x`` and ``y``, its percentile bootstrap interval (resampling
    pairs) and the number of pairs."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 3:
        return {"rho": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": n}
    r = spearman(x, y)
    rng = np.random.default_rng(seed)
    boots = np.array([spearman(x[i], y[i]) for i in rng.integers(0, n, size=(n_boot, n))])
    boots = boots[np.isfinite(boots)]
    lo, hi = (np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if len(boots) else (np.nan, np.nan))
    return {"rho": r, "ci_low": float(lo), "ci_high": float(hi), "n": n}


def spearman_from_table(counts) -> float:
    """Spearman's rho of the (row, column) pairs counted in ``counts`` [R, S] (rows and columns in increasing
    order), ties given mid-ranks; NaN when either margin has a single occupied category."""
    c = np.asarray(counts, np.float64)
    n = c.sum()
    if n <= 0:
        return float("nan")
    r, s = c.sum(1), c.sum(0)  # [R], [S] margins
    rank_r = np.cumsum(r) - (r - 1) / 2.0  # mid-rank of each row category
    rank_s = np.cumsum(s) - (s - 1) / 2.0
    mr, ms = (r * rank_r).sum() / n, (s * rank_s).sum() / n
    dr, ds = rank_r - mr, rank_s - ms
    var_r, var_s = (r * dr**2).sum(), (s * ds**2).sum()
    if var_r <= 0 or var_s <= 0:
        return float("nan")
    return float((c * np.outer(dr, ds)).sum() / np.sqrt(var_r * var_s))


def bootstrap_table_spearman(counts: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of :func:`spearman_from_table`, resampling the counted pairs
    (a multinomial draw of the same total from the table's cell frequencies)."""
    c = np.asarray(counts, np.int64)
    n = int(c.sum())
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, (c / n).ravel(), size=n_boot).reshape(n_boot, *c.shape)  # [n_boot, R, S]
    rhos = np.array([spearman_from_table(d) for d in draws])
    rhos = rhos[np.isfinite(rhos)]
    if len(rhos) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(rhos, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def above_zero(estimate: float, low: float) -> bool:
    """A positive ``estimate`` whose interval lies above 0 (its ``low`` end > 0); False for NaN."""
    return bool(math.isfinite(estimate) and estimate > 0 and low > 0)


def below_zero(estimate: float, high: float) -> bool:
    """A negative ``estimate`` whose interval lies below 0 (its ``high`` end < 0); False for NaN."""
    return bool(math.isfinite(estimate) and estimate < 0 and high < 0)
