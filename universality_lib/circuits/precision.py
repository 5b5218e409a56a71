"""The precision rule of a sweep: how many prompts the dominance verdict needs (the paper used a fixed 65,536).

A sweep measures, per component c, the paired change Δ_c of a metric and its standard error se_c (see
:mod:`.effects`). The verdict "one component dominates" compares the top component with the runner-up, so the
prompts are enough once their difference is resolved: both se_top and se_runner-up at most ``se_frac`` x
(|Δ_top| - |Δ_runner-up|). :class:`RunningDelta` keeps Δ and se batch by batch, so the sweep can check the rule
as it goes (:func:`.patching.sweep`).

Glossary: ``C`` components, ``n`` prompts so far, ``b`` prompts in a batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UniversalityError

DIRECTIONS = ("down", "up", "abs")


def order(delta: np.ndarray, direction: str = "down") -> np.ndarray:
    """Component indices of the changes ``delta`` [C], strongest first: the largest decrease (``"down"``),
    increase (``"up"``) or absolute change (``"abs"``)."""
    if direction not in DIRECTIONS:
        raise UniversalityError(f"direction must be one of {', '.join(map(repr, DIRECTIONS))}, got {direction!r}")
    key = {"down": delta, "up": -delta, "abs": -np.abs(delta)}[direction]
    return np.argsort(key, kind="stable")


@dataclass(frozen=True)
class Precision:
    """The stopping rule of a sweep: its prompt count is enough once the top component is told apart from the
    runner-up, that is when both standard errors are at most ``se_frac`` x (|Δ_top| - |Δ_runner-up|), after at
    least ``min_prompts`` prompts (so the standard errors themselves are trustworthy). ``metric`` and
    ``direction`` are those of the dominance criterion (:meth:`Effects.dominates`). A single component is
    compared with no effect (runner-up |Δ| = 0). Checked after every batch, stopping at the first count where it
    holds; at 10 standard errors the extra chance of a wrong ranking this optional stopping brings is negligible."""

    se_frac: float = 0.1
    min_prompts: int = 256
    metric: str = "logit_B"
    direction: str = "down"

    def __post_init__(self):
        if not (isinstance(self.se_frac, (int, float)) and 0 < self.se_frac < 1):
            raise UniversalityError(f"Precision.se_frac must be a number in (0, 1), got {self.se_frac!r}: "
                                    "e.g. 0.1 (the gap to the runner-up is 10 standard errors)")
        if not isinstance(self.min_prompts, int) or self.min_prompts < 2:
            raise UniversalityError(f"Precision.min_prompts must be an int >= 2 (standard errors need two prompts), "
                                    f"got {self.min_prompts!r}")
        if self.direction not in DIRECTIONS:
            raise UniversalityError(f"Precision.direction must be one of {DIRECTIONS}, got {self.direction!r}")

    def gap(self, delta: np.ndarray) -> tuple[int, int | None, float]:
        """(top index, runner-up index or None, |Δ_top| - |Δ_runner-up|) of the changes ``delta`` [C]."""
        i = int(order(delta, self.direction)[0])
        a = np.abs(delta)
        rest = np.delete(np.arange(len(delta)), i)
        j = int(rest[np.argmax(a[rest])]) if rest.size else None
        return i, j, float(a[i] - (a[j] if j is not None else 0.0))

    def resolved(self, delta: np.ndarray, se: np.ndarray, n: int) -> bool:
        """Whether ``n`` prompts with these changes ``delta`` [C] and standard errors ``se`` [C] meet the rule."""
        if n < self.min_prompts:
            return False
        i, j, gap = self.gap(delta)
        worst = max(float(se[i]), float(se[j]) if j is not None else 0.0)
        return bool(np.isfinite(worst) and gap > 0 and worst <= self.se_frac * gap)

    def describe(self) -> str:
        return (f"stop once the standard errors of the top component's and the runner-up's Δ {self.metric} are both "
                f"<= {self.se_frac:g} x the gap between their |Δ| (at least {self.min_prompts} prompts)")


class RunningDelta:
    """Running mean and standard error of the paired changes of ``C`` components, fed one batch at a time (the
    same numbers as :meth:`Effects.delta` / :meth:`Effects.delta_se` over the prompts seen so far)."""

    def __init__(self, C: int):
        self.n = 0
        self.sum = np.zeros(C)  # float64 sums of d and d^2 over prompts, [C]
        self.sumsq = np.zeros(C)
        self.shift = None  # first batch's mean per component: sums of (d - shift) keep the variance accurate

    def add(self, d: np.ndarray) -> None:
        """``d`` [C, b]: patched minus clean metric of one batch."""
        d = np.asarray(d, dtype=np.float64)
        if self.shift is None:
            self.shift = d.mean(axis=1)
        x = d - self.shift[:, None]
        self.n += d.shape[1]
        self.sum += x.sum(axis=1)
        self.sumsq += (x * x).sum(axis=1)

    def delta(self) -> np.ndarray:
        return self.shift + self.sum / self.n

    def se(self) -> np.ndarray:
        if self.n < 2:
            return np.full(self.sum.shape, np.nan)
        var = np.maximum(self.sumsq - self.sum ** 2 / self.n, 0.0) / (self.n - 1)
        return np.sqrt(var / self.n)
