"""Effects of a path-patching sweep, as one tidy object for tables, records and plots.

A sweep patches one *component* at a time (a head, a layer's state, a conv input position ...) and measures
the metric on every prompt. :class:`Effects` keeps the per-prompt values, so every summary is a paired
difference with its standard error:

    Δ_c = mean_i ( metric_patched[c, i] - metric_clean[i] ),   se_c = std_i(...) / sqrt(n)

Metric names: ``"logit_B"`` / ``"prob_B"`` (the induction target), and ``"logit_B'"`` / ``"prob_B'"`` when
the corruption replaced B by B' (the authors' "real" and "fake" logits).

How many prompts a sweep needs follows from that standard error (:class:`~.precision.Precision`): the verdict is
*resolved* once the top component's and the runner-up's standard errors are both at most ``se_frac`` of the gap
between their |Δ| (0.1: the gap is at least 10 standard errors of either). A sweep checks the rule after every
batch and records the first count at which it held (``meta["n_needed"]``); with ``TaskConfig.stop_early`` it also
stops there (:func:`universality_lib.circuits.patching.sweep`).

Glossary: ``C`` components, ``n`` prompts; ``rows`` x ``cols`` folds the C components into a heat-map grid
(layers x heads, output positions x input lags ...), row-major.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UniversalityError
from .precision import Precision, order
from .task import Estimate, estimate



def dominant(delta: float, delta_se: float, ratio_to_second: float, direction: str = "down", ratio: float = 1.5,
             z: float = 3.0) -> bool:
    """The book's criterion for "one component dominates" (claims C6 and C7): the top component's mean change
    ``delta`` goes in ``direction`` by more than ``z`` standard errors, and its |Δ| is at least ``ratio`` times the
    runner-up's."""
    right_way = delta < 0 if direction == "down" else delta > 0 if direction == "up" else delta != 0
    return bool(right_way and abs(delta) > z * delta_se and ratio_to_second >= ratio)

@dataclass
class Effects:
    experiment: str
    labels: list[str]  # [C] one name per component, e.g. "L1H3", "layer 2"
    clean: dict[str, np.ndarray]  # metric -> [n]
    patched: dict[str, np.ndarray]  # metric -> [C, n]
    rows: list[str] | None = None  # heat-map rows (len(rows) * len(cols) == C)
    cols: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        C = len(self.labels)
        for k, v in self.patched.items():
            if v.shape[0] != C or v.shape[1:] != self.clean[k].shape:
                raise UniversalityError(f"Effects {self.experiment}: {k} has shape {v.shape}, expected ({C}, n)")
        if (self.rows is None) != (self.cols is None) or (self.rows is not None and len(self.rows) * len(self.cols) != C):
            raise UniversalityError(f"Effects {self.experiment}: rows x cols must fold the {C} components")

    # ------------------------------------------------------------------ basic numbers
    @property
    def metrics(self) -> list[str]:
        return list(self.clean)

    @property
    def n_prompts(self) -> int:
        return int(next(iter(self.clean.values())).shape[0])

    def _check(self, metric: str) -> None:
        if metric not in self.clean:
            raise UniversalityError(f"Effects {self.experiment}: no metric {metric!r} (have {self.metrics})")

    def clean_estimate(self, metric: str = "logit_B") -> Estimate:
        self._check(metric)
        return estimate(self.clean[metric])

    def patched_mean(self, metric: str = "logit_B") -> np.ndarray:
        self._check(metric)
        return self.patched[metric].mean(axis=1)  # [C]

    def delta(self, metric: str = "logit_B") -> np.ndarray:
        """Mean paired change of the metric per component: [C]."""
        self._check(metric)
        return (self.patched[metric] - self.clean[metric][None]).mean(axis=1)

    def delta_se(self, metric: str = "logit_B") -> np.ndarray:
        self._check(metric)
        d = self.patched[metric] - self.clean[metric][None]  # [C, n]
        n = d.shape[1]
        return d.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.full(d.shape[0], np.nan)

    # ------------------------------------------------------------------ the dominant component
    def order(self, metric: str = "logit_B", direction: str = "down") -> np.ndarray:
        """Component indices, strongest first: the largest decrease (``"down"``), increase (``"up"``) or
        absolute change (``"abs"``)."""
        return order(self.delta(metric), direction)

    def top(self, metric: str = "logit_B", direction: str = "down") -> str:
        return self.labels[int(self.order(metric, direction)[0])]

    def share(self, metric: str = "logit_B", direction: str = "down") -> float:
        """|Δ| of the top component over the sum of |Δ| of all components (1 = it carries everything)."""
        d = np.abs(self.delta(metric))
        tot = d.sum()
        return float(d[self.order(metric, direction)[0]] / tot) if tot > 0 else float("nan")

    def ratio_to_second(self, metric: str = "logit_B", direction: str = "down") -> float:
        """|Δ| of the top component over |Δ| of the runner-up (by absolute change)."""
        d = np.abs(self.delta(metric))
        i = int(self.order(metric, direction)[0])
        rest = np.delete(d, i)
        if rest.size == 0:
            return float("inf")
        second = rest.max()
        return float(d[i] / second) if second > 0 else float("inf")

    def dominates(self, metric: str = "logit_B", direction: str = "down", ratio: float = 1.5, z: float = 3.0) -> bool:
        """The book's criterion for "one component dominates": the top component moves the metric in
        ``direction`` by more than ``z`` standard errors, and by at least ``ratio`` times the runner-up's |Δ|."""
        i = int(self.order(metric, direction)[0])
        return dominant(float(self.delta(metric)[i]), float(self.delta_se(metric)[i]),
                        self.ratio_to_second(metric, direction), direction, ratio, z)

    def summary(self, metric: str = "logit_B", direction: str = "down") -> dict:
        """The top component and its numbers (a dict for ``results.record`` and prose)."""
        i = int(self.order(metric, direction)[0])
        c = self.clean_estimate(metric)
        return {"experiment": self.experiment, "metric": metric, "top": self.labels[i],
                "clean": c.mean, "clean_se": c.se, "patched": float(self.patched_mean(metric)[i]),
                "delta": float(self.delta(metric)[i]), "delta_se": float(self.delta_se(metric)[i]),
                "share": self.share(metric, direction), "ratio_to_second": self.ratio_to_second(metric, direction),
                "n_prompts": self.n_prompts, "n_needed": self.meta.get("n_needed")}

    def resolved(self, rule: "Precision | None" = None) -> bool:
        """Whether this sweep's prompts meet the stopping rule ``rule`` (default :class:`Precision`())."""
        rule = rule or Precision()
        self._check(rule.metric)
        return rule.resolved(self.delta(rule.metric), self.delta_se(rule.metric), self.n_prompts)

    # ------------------------------------------------------------------ tables and grids
    def table(self):
        """One row per component: clean, patched, Δ and its standard error for every metric."""
        import pandas as pd

        df = pd.DataFrame({"component": self.labels})
        if self.rows is not None:
            df["row"] = [r for r in self.rows for _ in self.cols]
            df["col"] = [c for _ in self.rows for c in self.cols]
        for m in self.metrics:
            df[f"clean {m}"] = float(self.clean[m].mean())
            df[f"patched {m}"] = self.patched_mean(m)
            df[f"Δ {m}"] = self.delta(m)
            df[f"se {m}"] = self.delta_se(m)
        return df.set_index("component")

    def grid(self, metric: str = "logit_B", what: str = "delta") -> np.ndarray:
        """[len(rows), len(cols)] array of Δ (``what="delta"``) or the patched mean (``"patched"``)."""
        if self.rows is None:
            raise UniversalityError(f"Effects {self.experiment} has no grid (rows/cols not set)")
        v = {"delta": self.delta, "patched": self.patched_mean}[what](metric)
        return v.reshape(len(self.rows), len(self.cols))

    # ------------------------------------------------------------------ reshaping
    def select_rows(self, rows, experiment: str | None = None) -> "Effects":
        """The components of the grid rows named in ``rows`` (labels of ``self.rows``), as a new Effects with
        the same columns (e.g. one layer's row of a layers x offsets sweep)."""
        if self.rows is None:
            raise UniversalityError(f"Effects {self.experiment} has no grid rows to select from")
        rows = [rows] if isinstance(rows, str) else list(rows)
        missing = [r for r in rows if r not in self.rows]
        if missing:
            raise UniversalityError(f"Effects {self.experiment}: no rows {missing} (have {self.rows})")
        nc = len(self.cols)
        idx = [self.rows.index(r) * nc + j for r in rows for j in range(nc)]
        return Effects(experiment or self.experiment, [self.labels[i] for i in idx], dict(self.clean),
                       {m: v[idx] for m, v in self.patched.items()}, rows=rows, cols=list(self.cols),
                       meta=dict(self.meta))


def stack(parts, rows, experiment: str, columns: str = "labels", meta: dict | None = None) -> Effects:
    """One Effects from several sweeps over the **same prompts** (same clean values): part ``i`` becomes grid row
    ``rows[i]``. Its columns are its component labels (``columns="labels"``; e.g. the same head sweep at positions
    B, B+1, B+2 ... stacked into an offsets x heads grid) or its grid columns (``columns="cols"``, for one-row
    grids such as one layer's row of a layers x offsets sweep); every part must have the same. Labels of the
    result: ``"{row} {column}"``."""
    parts = list(parts)
    rows = list(rows)
    if not parts or len(parts) != len(rows):
        raise UniversalityError("stack: one row label per part (and at least one part)")
    if columns not in ("labels", "cols"):
        raise UniversalityError(f"stack: columns must be 'labels' or 'cols', got {columns!r}")
    if columns == "cols" and any(p.rows is None or len(p.rows) != 1 for p in parts):
        raise UniversalityError("stack(columns='cols') needs one-row grids (see Effects.select_rows)")
    cols_of = (lambda e: list(e.labels)) if columns == "labels" else (lambda e: list(e.cols))  # noqa: E731
    first, cols = parts[0], cols_of(parts[0])
    for p in parts[1:]:
        if cols_of(p) != cols or set(p.metrics) != set(first.metrics):
            raise UniversalityError(f"stack: {p.experiment} has other components or metrics than {first.experiment}")
        if p.n_prompts != first.n_prompts:
            raise UniversalityError(f"stack: {p.experiment} used {p.n_prompts} prompts, {first.experiment} "
                                    f"{first.n_prompts}: stack sweeps over the same prompts (TaskConfig.stop_early "
                                    "off, or the same n_prompts)")
        if any(not np.allclose(p.clean[m], first.clean[m]) for m in first.metrics):
            raise UniversalityError(f"stack: {p.experiment} was measured on other prompts (clean values differ)")
    labels = [f"{r} {c}" for r in rows for c in cols]
    patched = {m: np.concatenate([p.patched[m] for p in parts], axis=0) for m in first.metrics}
    info = dict(first.meta)
    info.update(meta or {})
    return Effects(experiment, labels, dict(first.clean), patched, rows=rows, cols=cols, meta=info)
