"""Depth alignment: do matched features sit at corresponding depths of the two models?

An :class:`~universality_lib.similarity.MPPCResult` keeps, for every layer pair ``(l_a, l_b)``, each unit's best
correlation inside that pair (``pair[(l_a, l_b)]``). From it:

* the **layer-pair map** ``[L_a, L_b]``: the mean over a's live units of their best match within each layer pair
  (``MPPCResult.layer_matrix``, the heat-map; not recomputed here);
* the **best-layer distribution** ``[L_a, L_b]`` (:func:`best_layer_counts`): how many of layer ``l_a``'s units have
  their overall best match (their MPPC) in layer ``l_b`` of the other model;
* the **depth alignment** (:func:`depth_alignment`): Spearman's rho between the relative depth of each unit and
  that of its best match, with a bootstrap interval, and the least-squares slope of best-match layer on layer,
  to compare with the layer ratio ``L_b / L_a`` (2 for Pythia-160M vs Mamba-130M, and for the book's models).

Relative depth of block ``l`` of an ``L``-block model: ``(l + 1) / L``, the fraction of the model's blocks that
have run when its residual stream is read (``hook_resid_post``). Equal relative depth maps layer ``l_a`` to
``l_b = (l_a + 1) L_b / L_a - 1`` (``2 l_a + 1`` at a ratio of 2). Spearman's rho depends only on the order of
the layers, so it does not depend on this choice.

Every unit lies in one of ``L_a x L_b`` cells (its layer, its best match's layer), so the sample is a
contingency table: rho is computed from the table with mid-ranks for the ties (equal to
``scipy.stats.spearmanr`` on the expanded data), and the bootstrap resamples units by drawing tables from the
multinomial with the observed cell frequencies. That is exact and costs the same for 500 or 300,000 units.

Glossary: side ``a`` / ``b`` (first / second model of the condition; for ``main``, a = T and b = M), ``L_a``,
``L_b`` their layer counts, ``C`` [L_a, L_b] the table of counts, rho Spearman's rank correlation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import UniversalityError
from .similarity.result import MPPCResult, side_of
from .stats import above_zero, bootstrap_mean, bootstrap_table_spearman, spearman_from_table

__all__ = ["relative_depth", "best_layer_counts", "spearman_from_table", "DepthAlignment", "depth_alignment",
           "alignment_table"]


def relative_depth(layer, n_layers: int):
    """``(layer + 1) / n_layers``: the fraction of the blocks that have run at ``blocks.{layer}.hook_resid_post``."""
    if n_layers < 1:
        raise UniversalityError(f"n_layers must be >= 1, got {n_layers}")
    return (np.asarray(layer, np.float64) + 1.0) / n_layers


def _other(result: MPPCResult, side: str) -> str:
    return "b" if side_of(side, result.name_a, result.name_b) == "a" else "a"


def best_layer_counts(result: MPPCResult, side: str = "a", min_mppc: float | None = None) -> np.ndarray:
    """int [L_side, L_other]: the live units of each layer of ``side`` counted by the layer of their best match
    (rows follow ``result.layers(side)``, columns the other side's layers). ``min_mppc``: count only units whose
    MPPC is at least this."""
    s = side_of(side, result.name_a, result.name_b)  # 'a' / 'b' (or a model name on one side only), checked by the result
    others = list(result.layers(_other(result, s)))
    col = {k: j for j, k in enumerate(others)}
    out = np.zeros((len(result.layers(s)), len(others)), np.int64)
    for i, (k, (v, bl, _)) in enumerate(result.best(s).items()):
        ok = np.isfinite(v) & (bl >= 0)
        if min_mppc is not None:
            ok &= v >= min_mppc
        for layer, n in zip(*np.unique(bl[ok], return_counts=True)):
            out[i, col[int(layer)]] += n
    return out


@dataclass
class DepthAlignment:
    """Where one side's units find their best match in the other model (see the module docstring)."""

    side: str  # "a" or "b"
    name: str  # the model whose units are matched
    other: str  # the model they are matched in
    layers: list  # layers of ``name``
    other_layers: list
    counts: np.ndarray  # [L, L_other] units per (layer, best-match layer)
    rho: float  # Spearman rho of relative depths (unit, best match)
    ci_low: float
    ci_high: float
    n: int  # units counted
    slope: float  # least-squares slope of best-match layer on layer (in layers)
    ratio: float  # L_other / L: the slope if matches sat at equal relative depth
    mean_best: list  # per layer: [mean best-match layer, 95% low, 95% high]
    expected: list  # per layer: the best-match layer at equal relative depth
    min_mppc: float | None = None
    level: float = 0.95
    extra: dict = field(default_factory=dict)

    def holds(self) -> bool:
        """The claim's criterion: rho > 0 and its interval above 0."""
        return above_zero(self.rho, self.ci_low)

    def summary(self) -> dict:
        return {"direction": f"{self.name}→{self.other}", "min_mppc": self.min_mppc, "n": self.n, "rho": self.rho,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "slope": self.slope, "layer_ratio": self.ratio}


def depth_alignment(result: MPPCResult, side: str = "a", min_mppc: float | None = None, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> DepthAlignment:
    """Spearman's rho between the relative depth of each live unit of ``side`` and that of its best match, with a
    percentile bootstrap interval (resampling units), the slope of best-match layer on layer, the layer ratio,
    and the mean best-match layer of each layer (bootstrap interval) next to the equal-relative-depth layer."""
    s = side_of(side, result.name_a, result.name_b)  # 'a' / 'b' (or a model name on one side only), checked by the result
    o = _other(result, s)
    layers, others = list(result.layers(s)), list(result.layers(o))
    counts = best_layer_counts(result, s, min_mppc)
    n = int(counts.sum())
    if n == 0:
        raise UniversalityError(f"no live unit of side {s!r} has a best match"
                                + (f" with MPPC >= {min_mppc}" if min_mppc is not None else "") + ".")
    rho = spearman_from_table(counts)
    lo, hi = bootstrap_table_spearman(counts, n_boot, level, seed) if np.isfinite(rho) else (float("nan"), float("nan"))
    x = np.repeat(np.asarray(layers, np.float64), counts.sum(1))  # [n] layer of each unit
    y = np.concatenate([np.repeat(np.asarray(others, np.float64), row) for row in counts])  # [n] its match's layer
    slope = float(np.polyfit(x, y, 1)[0]) if len(np.unique(x)) > 1 else float("nan")
    mean_best = []
    for i in range(len(layers)):
        ys = np.repeat(np.asarray(others, np.float64), counts[i])
        mean_best.append(list(bootstrap_mean(ys, n_boot=n_boot, level=level, seed=seed)))
    n_a, n_b = len(layers), len(others)
    expected = [float((k + 1) * n_b / n_a - 1) for k in range(n_a)]
    names = (result.name_a, result.name_b) if s == "a" else (result.name_b, result.name_a)
    return DepthAlignment(s, names[0], names[1], layers, others, counts, rho, lo, hi, n, slope, n_b / n_a,
                          mean_best, expected, min_mppc, level)


def alignment_table(result: MPPCResult, side: str = "a", thresholds=(None, 0.5, 0.7), n_boot: int = 1000,
                    seed: int = 0):
    """pandas DataFrame: :meth:`DepthAlignment.summary` for all live units (``None``) and for the units whose
    MPPC is at least each threshold (rows with no such unit are left out)."""
    import pandas as pd

    rows = []
    for t in thresholds:
        try:
            rows.append(depth_alignment(result, side, t, n_boot=n_boot, seed=seed).summary())
        except UniversalityError:
            continue
    return pd.DataFrame(rows)
