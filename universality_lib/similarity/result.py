"""The tidy MPPC result of one condition (two models, all their layer pairs, both directions), saved as npz + json.

For unit ``i`` of layer ``l`` of model a (direction a→b):

    MPPC_i = max over layers l' of b, max over units j of layer l'  r(x_i, y_j)

with the best-match layer ``l'`` and index ``j``; the same for b's units against a. Units excluded from the
sample (never fired, or constant) have MPPC NaN and are counted, not scored 0. The per-pair maxima
(``pair[(l, l')]``) are kept too: they are the depth analysis' input.

Files: ``result.json`` (names, layers, meta) and ``result.npz`` (``{side}{layer}_freq``, ``{side}{layer}_live``
and ``P{la}_{lb}_{a,b}_{val,idx}`` arrays).

Glossary: side ``"a"`` / ``"b"`` (the first / second model of the condition), ``F`` units per layer,
freq = fraction of the sample's tokens on which a unit is non-zero.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import atomic_write_json
from ..errors import UniversalityError
from ..stats import bootstrap_mean

__all__ = ["MPPCResult", "bootstrap_mean", "paired", "side_of", "THRESHOLDS"]

THRESHOLDS = (0.5, 0.7, 0.9)
_FORMAT = 1


def side_of(side: str, name_a: str | None = None, name_b: str | None = None) -> str:
    """``"a"`` or ``"b"``: a side of a condition, given as itself or (with the names) as a model name that is on
    one side only. The one check of a side for the result, depth and the explorer."""
    if side in ("a", "b"):
        return side
    if name_a is not None and side == name_a and side != name_b:
        return "a"
    if name_b is not None and side == name_b and side != name_a:
        return "b"
    names = f" (or a model name that is only on one side: {name_a!r} / {name_b!r})" if name_a is not None else \
        " (the condition's first model or its second)"
    raise UniversalityError(f"side must be 'a' or 'b'{names}, got {side!r}")


@dataclass
class MPPCResult:
    """MPPC of every unit of two models in both directions (see the module docstring)."""

    name_a: str
    name_b: str
    layers_a: list
    layers_b: list
    freq: dict  # (side, layer) -> [F] fraction of tokens on which the unit is non-zero
    live: dict  # (side, layer) -> [F] bool, False = excluded (never fired / constant)
    pair: dict  # (la, lb) -> {"a_val", "a_idx" [F_a], "b_val", "b_idx" [F_b]}
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------------- building
    @classmethod
    def from_stats(cls, stats_list, name_a: str, name_b: str, meta: dict | None = None) -> "MPPCResult":
        """Collect the pair maxima of one or more ``PairStats`` that saw the same tokens (one per pass)."""
        stats_list = list(stats_list)
        first = stats_list[0]
        pair, freq, live = {}, {}, {}
        bound = 0.0
        for st in stats_list:
            if st.n != first.n:
                raise UniversalityError(f"the passes saw different token counts ({st.n} vs {first.n}).")
            for side, units in (("a", st.a), ("b", st.b)):
                for k, u in units.items():
                    freq[(side, k)] = u.nnz / max(u.n, 1)
                    live[(side, k)] = u.live()
            for ka, kb in st.pairs:
                pair[(ka, kb)] = st.pair_max(ka, kb)
            bound = max(bound, st.error_bound())
        meta = {**(meta or {}), "n_tokens": int(first.n), "backend": first.backend, "error_bound": bound}
        layers_a = sorted({k for st in stats_list for k in st.a})  # a pass may hold only some layers
        layers_b = sorted({k for st in stats_list for k in st.b})
        missing = [(ka, kb) for ka in layers_a for kb in layers_b if (ka, kb) not in pair]
        if missing:
            raise UniversalityError(f"the passes leave layer pairs uncomputed: {missing}")
        return cls(name_a, name_b, layers_a, layers_b, freq, live, pair, meta)

    # ------------------------------------------------------------------------- reading
    def _side(self, side: str) -> str:
        return side_of(side, self.name_a, self.name_b)

    def layers(self, side: str = "a") -> list:
        return self.layers_a if self._side(side) == "a" else self.layers_b

    def best(self, side: str = "a", layer=None) -> dict:
        """``{layer: (mppc [F], best_layer [F], best_index [F])}`` over the other model's layers."""
        s = self._side(side)
        out = {}
        for k in (self.layers(s) if layer is None else [layer]):
            others = self.layers_b if s == "a" else self.layers_a
            vals = np.stack([self.pair[(k, o) if s == "a" else (o, k)][f"{s}_val"] for o in others])  # [L_o, F]
            idxs = np.stack([self.pair[(k, o) if s == "a" else (o, k)][f"{s}_idx"] for o in others])
            filled = np.where(np.isnan(vals), -np.inf, vals)
            which = filled.argmax(0)
            best = vals[which, np.arange(vals.shape[1])]
            ok = np.isfinite(filled.max(0)) & self.live[(s, k)]
            out[k] = (np.where(ok, best, np.nan), np.where(ok, np.asarray(others)[which], -1),
                      np.where(ok, idxs[which, np.arange(vals.shape[1])], -1))
        return out

    def table(self, side: str = "a"):
        """pandas DataFrame, one row per unit: layer, unit, mppc, best_layer, best_index, freq, live."""
        import pandas as pd

        s = self._side(side)
        frames = []
        for k, (v, bl, bi) in self.best(s).items():
            frames.append(pd.DataFrame({"layer": k, "unit": np.arange(len(v)), "mppc": v, "best_layer": bl,
                                        "best_index": bi, "freq": self.freq[(s, k)], "live": self.live[(s, k)]}))
        return pd.concat(frames, ignore_index=True)

    def values(self, side: str = "a") -> np.ndarray:
        """MPPC of every live unit of one side, all layers (the distribution that is plotted)."""
        v = np.concatenate([b[0] for b in self.best(side).values()])
        return v[np.isfinite(v)]

    def counts(self, side: str = "a") -> dict:
        s = self._side(side)
        n = sum(len(self.live[(s, k)]) for k in self.layers(s))
        never = sum(int((self.freq[(s, k)] == 0).sum()) for k in self.layers(s))
        excluded = sum(int((~self.live[(s, k)]).sum()) for k in self.layers(s))
        return {"n_units": n, "live": n - excluded, "excluded": excluded, "never_fired": never,
                "constant": excluded - never}

    def summary(self, side: str = "a", thresholds=THRESHOLDS, n_boot: int = 1000, seed: int = 0) -> dict:
        """Mean MPPC with its bootstrap 95% interval, the fraction of live units above each threshold, counts."""
        v = self.values(side)
        mean, lo, hi = bootstrap_mean(v, n_boot=n_boot, seed=seed)
        out = {"mean": mean, "ci_low": lo, "ci_high": hi, "median": float(np.median(v)) if len(v) else float("nan")}
        for t in thresholds:
            out[f"frac_above_{t}"] = float((v > t).mean()) if len(v) else float("nan")
        return {**out, **self.counts(side)}

    def layer_matrix(self, side: str = "a") -> np.ndarray:
        """[L_a, L_b]: the mean over live units of one side of their best match within each layer pair."""
        s = self._side(side)
        m = np.full((len(self.layers_a), len(self.layers_b)), np.nan)
        for i, ka in enumerate(self.layers_a):
            for j, kb in enumerate(self.layers_b):
                v = self.pair[(ka, kb)][f"{s}_val"]
                if np.isfinite(v).any():
                    m[i, j] = np.nanmean(v)
        return m

    # ------------------------------------------------------------------------- saving
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for (s, k), v in self.freq.items():
            arrays[f"{s}{k}_freq"] = v
            arrays[f"{s}{k}_live"] = self.live[(s, k)]
        for (ka, kb), d in self.pair.items():
            for name, v in d.items():
                arrays[f"P{ka}_{kb}_{name}"] = v
        np.savez_compressed(folder / "result.npz", **arrays)
        atomic_write_json(folder / "result.json", {"format": _FORMAT, "name_a": self.name_a, "name_b": self.name_b,
                                                   "layers_a": list(self.layers_a), "layers_b": list(self.layers_b),
                                                   "meta": self.meta})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "MPPCResult":
        folder = Path(folder)
        if not (folder / "result.json").exists():
            raise UniversalityError(f"{folder} holds no MPPC result (result.json missing).")
        info = json.loads((folder / "result.json").read_text())
        with np.load(folder / "result.npz") as z:
            arrays = {k: z[k] for k in z.files}
        la, lb = info["layers_a"], info["layers_b"]
        freq = {(s, k): arrays[f"{s}{k}_freq"] for s, ks in (("a", la), ("b", lb)) for k in ks}
        live = {(s, k): arrays[f"{s}{k}_live"].astype(bool) for s, ks in (("a", la), ("b", lb)) for k in ks}
        pair = {(ka, kb): {n: arrays[f"P{ka}_{kb}_{n}"] for n in ("a_val", "a_idx", "b_val", "b_idx")}
                for ka in la for kb in lb if f"P{ka}_{kb}_a_val" in arrays}
        return cls(info["name_a"], info["name_b"], la, lb, freq, live, pair, info["meta"])


def paired(x: MPPCResult, y: MPPCResult, side: str = "a"):
    """One row per unit of ``side`` that is live in both results, with its MPPC in each: ``x`` and ``y`` must
    score the same units (e.g. ``main`` = T vs M and ``random`` = T vs M0, side ``"a"`` = T's features).
    pandas DataFrame: layer, unit, freq, mppc_x, mppc_y, diff = mppc_x - mppc_y."""
    tx, ty = x.table(side), y.table(side)
    name_x = x.name_a if x._side(side) == "a" else x.name_b
    name_y = y.name_a if y._side(side) == "a" else y.name_b
    if name_x != name_y or len(tx) != len(ty) or not (tx[["layer", "unit"]].values == ty[["layer", "unit"]].values).all():
        raise UniversalityError(f"the two results do not score the same units on side {side!r} "
                                f"({name_x} with {len(tx)} units vs {name_y} with {len(ty)})")
    keep = (tx.live & ty.live).to_numpy()
    out = tx.loc[keep, ["layer", "unit", "freq"]].reset_index(drop=True)
    out["mppc_x"] = tx.mppc.to_numpy()[keep]
    out["mppc_y"] = ty.mppc.to_numpy()[keep]
    out["diff"] = out.mppc_x - out.mppc_y
    return out
