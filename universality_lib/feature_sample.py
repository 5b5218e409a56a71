"""SAE feature activations of one model on a token sample, kept sparse, with their tokens and positions.

Chapter 4 looks at individual features: their complexity (complexity.py) and their strongest contexts next to
those of their match (explorer.py). Both need, for a chosen set of features, every activation on a sample of
token rows. :func:`collect` runs the model once per batch of rows, encodes the residual stream with each layer's
SAE exactly as the MPPC engine does (``similarity.Source.units_of``: the same hooks, the same special positions
left out), and keeps only the chosen features, as a scipy CSR matrix per layer.

Sample layout: the ordinary tokens (not BOS / separators) of ``rows`` [n, L] in row-major order, ``n_tok`` of
them; ``index[k] = (row, pos)`` and ``tokens[k]`` say where token ``k`` sits and what it is.

Glossary: ``n`` rows, ``L`` positions per row, ``n_tok`` ordinary tokens, ``F_l`` features kept in layer ``l``
(``units[l]`` their SAE indices), ``k`` contexts per feature.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from . import saes as saes_mod
from .activations import token_mask
from .errors import UniversalityError
from .runtime import model_device

__all__ = ["FeatureSample", "collect"]


@dataclass
class FeatureSample:
    """Sparse activations of the kept features of each layer on the ordinary tokens of ``rows``."""

    name: str  # the model (zoo name)
    rows: torch.Tensor  # [n, L] token rows
    index: np.ndarray  # [n_tok, 2] (row, pos) of each ordinary token
    tokens: np.ndarray  # [n_tok] token id
    units: dict  # layer -> int array [F_l] of SAE feature indices kept
    acts: dict  # layer -> scipy.sparse.csr_matrix [n_tok, F_l] float32

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def _col(self, layer: int, unit: int) -> int:
        if layer not in self.units:
            raise UniversalityError(f"layer {layer} of {self.name} is not in this sample (layers {sorted(self.units)})")
        where = np.flatnonzero(self.units[layer] == unit)
        if len(where) == 0:
            raise UniversalityError(f"feature {unit} of {self.name} layer {layer} was not collected in this sample")
        return int(where[0])

    def column(self, layer: int, unit: int) -> np.ndarray:
        """float32 [n_tok]: the feature's activation on every ordinary token of the sample."""
        return self.acts[layer][:, self._col(layer, unit)].toarray().ravel()

    def grid(self, layer: int, unit: int) -> torch.Tensor:
        """FloatTensor [n, L, 1]: the activation laid out on the rows (0 at special positions), the shape that
        ``saes.top_activations`` reads."""
        g = np.zeros(tuple(self.rows.shape), np.float32)
        g[self.index[:, 0], self.index[:, 1]] = self.column(layer, unit)
        return torch.from_numpy(g)[..., None]

    def top_contexts(self, layer: int, unit: int, k: int = 4, before: int = 10, after: int = 3) -> list[dict]:
        """The ``k`` strongest activations (one per row at most) with their token windows
        (``saes.top_activations``)."""
        return saes_mod.top_activations(self.grid(layer, unit), self.rows, 0, k=k, before=before, after=after)


@torch.no_grad()
def collect(model, saes: dict, rows: torch.Tensor, units: dict | None = None, *, name: str = "model",
            batch_rows: int = 16, progress: bool = True) -> FeatureSample:
    """Activations of the features ``units`` (``{layer: [feature index, ...]}``; default: every feature of every
    SAE in ``saes``) of ``model`` on the ordinary tokens of ``rows`` [n, L]. ``saes``: ``{layer: sae_lens.SAE}``
    reading ``blocks.{layer}.hook_resid_post``."""
    from tqdm.auto import tqdm

    from .similarity import Source

    rows = torch.as_tensor(rows)
    if rows.dim() != 2:
        raise UniversalityError(f"rows must be a LongTensor [n, L], got shape {tuple(rows.shape)}")
    if units is None:
        units = {k: range(int(s.cfg.d_sae)) for k, s in saes.items()}
    units = {int(k): np.asarray(sorted(set(int(i) for i in v)), np.int64) for k, v in units.items()}
    missing = sorted(set(units) - set(saes))
    if missing:
        raise UniversalityError(f"no SAE given for layer(s) {missing} of {name}")
    src = Source(name, model, rows, "sae", {k: saes[k] for k in units})
    hooks = sorted({h for hs in src.hooks.values() for h in hs})
    stop = max(units) + 1
    special = saes_mod.special_ids(model)
    dev = model_device(model)
    mask_all = token_mask(rows, special)  # [n, L]
    parts = {k: [] for k in units}
    for r0 in tqdm(range(0, len(rows), batch_rows), desc=f"features of {name}", disable=not progress):
        batch = rows[r0:r0 + batch_rows].to(dev)
        mask = mask_all[r0:r0 + batch_rows].to(dev)
        _, cache_ = model.run_with_cache(batch, names_filter=hooks, stop_at_layer=stop)
        for k, f in src.units_of(cache_, mask).items():  # [t, F]
            parts[k].append(sp.csr_matrix(f[:, torch.as_tensor(units[k], device=f.device)].cpu().numpy()))
    index = torch.nonzero(mask_all).numpy()  # [n_tok, 2] row-major, the order of the masked tokens
    tokens = rows[mask_all].numpy()
    acts = {k: sp.vstack(v).tocsr().astype(np.float32) if v else sp.csr_matrix((0, len(units[k])), dtype=np.float32)
            for k, v in parts.items()}
    return FeatureSample(name, rows, index, tokens, units, acts)
