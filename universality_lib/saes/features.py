"""Looking at SAE features: activations on rows, features in a frequency band, top activations, contexts.

``pick_in_band`` is the one place that picks features by how often they fire (chapters 2, 3 and 4 call it,
each with its own band).
"""
from __future__ import annotations

import numpy as np
import torch

from .. import activations as acts
from ..runtime import model_device
from .train import check_compatible, special_ids

__all__ = ["feature_acts", "in_band", "pick_in_band", "pick_features", "top_activations", "context_tokens",
           "context_text"]


@torch.no_grad()
def feature_acts(sae, model, rows: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """FloatTensor [n, L, F] of feature activations on ``rows`` (0 at special positions)."""
    hook = check_compatible(sae, model)
    rows = acts.check_rows(model, rows)
    ids = special_ids(model)
    out = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size].to(model_device(model))
        _, cache_ = model.run_with_cache(batch, names_filter=[hook])
        f = sae.encode(cache_[hook].float().to(sae.W_dec.device))  # [b, L, F]
        f = f * acts.token_mask(batch, ids).to(f.device)[..., None]
        out.append(f.cpu())
    return torch.cat(out)


def in_band(freq, lo: float, hi: float, *, live=None, min_count: int = 1) -> np.ndarray:
    """Boolean mask [F] of the features that fire on between ``lo`` and ``hi`` of the tokens (and are ``live``);
    when fewer than ``min_count`` are in that band, every live feature instead.

    ``freq`` [F]: fraction of tokens on which each feature fires; ``live`` [F] (or one bool for all): the features
    that may be picked at all (default ``freq > 0``)."""
    freq = np.asarray(freq, dtype=float)
    live = freq > 0 if live is None else np.broadcast_to(np.asarray(live, dtype=bool), freq.shape)
    band = live & (freq >= lo) & (freq <= hi)
    return band if band.sum() >= min_count else live.copy()


def pick_in_band(freq, score, n: int | None = None, *, lo: float, hi: float, live=None,
                 min_count: int | None = None) -> list[int]:
    """Positions of the ``n`` features (all when None) of :func:`in_band` with the largest ``score`` [F], largest
    first (ties in their order; NaN last). The one feature picker of the book: chapter 2 by peak activation
    (band 0.1%-5%), chapters 3 and 4 by MPPC (band 0.1%-20%)."""
    band = np.flatnonzero(in_band(freq, lo, hi, live=live, min_count=min_count or n or 1))
    score = np.asarray(score, dtype=float)
    order = band[np.argsort(-score[band], kind="stable")]
    return [int(i) for i in (order if n is None else order[:n])]


def pick_features(density: np.ndarray, max_act: np.ndarray, n: int = 3, lo: float = 1e-3, hi: float = 0.05) -> list[int]:
    """``n`` features worth looking at: firing on between ``lo`` and ``hi`` of the tokens, largest peak
    activation first (falls back to any live feature when too few are in that band)."""
    return pick_in_band(density, max_act, n, lo=lo, hi=hi)


def top_activations(fa: torch.Tensor, rows: torch.Tensor, feature: int, k: int = 4, before: int = 10,
                    after: int = 3) -> list[dict]:
    """The ``k`` strongest activations of ``feature`` in ``fa`` [n, L, F] (one per row at most): for each the
    row, position, activation and the token window ``[pos - before, pos + after]`` with its activations."""
    a = fa[..., feature]  # [n, L]
    best, pos = a.max(dim=1)  # strongest position of each row
    order = torch.argsort(best, descending=True)[:k]
    out = []
    for r in order.tolist():
        if best[r] <= 0:
            break
        p_ = int(pos[r])
        lo, hi = max(0, p_ - before), min(rows.shape[1], p_ + after + 1)
        out.append({"row": r, "pos": p_, "act": float(best[r]), "tokens": rows[r, lo:hi].tolist(),
                    "values": a[r, lo:hi].tolist()})
    return out


def context_tokens(tokenizer, examples: list[dict], sep: str = "  ‖  ") -> tuple[list[str], list[float]]:
    """The windows of :func:`top_activations` as one token list and one value list (for circuitsvis'
    ``colored_tokens``), newlines shown as ⏎ and windows joined by ``sep`` (value 0)."""
    tokens, values = [], []
    for i, ex in enumerate(examples):
        if i:
            tokens.append(sep)
            values.append(0.0)
        tokens += [tokenizer.decode([t]).replace("\n", "⏎") for t in ex["tokens"]]
        values += [float(v) for v in ex["values"]]
    return tokens, values


def context_text(tokenizer, ex: dict) -> str:
    """One window as text, the token where the feature peaks in [[double brackets]]."""
    parts = []
    peak = ex["values"].index(max(ex["values"]))
    for j, t in enumerate(ex["tokens"]):
        s = tokenizer.decode([t]).replace("\n", "⏎")
        parts.append(f"[[{s}]]" if j == peak else s)
    return "".join(parts)
