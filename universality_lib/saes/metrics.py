"""SAE quality: L0, fraction of variance explained, next-token loss recovered, dead features, density.

Metrics (:func:`evaluate`) on ``eval`` rows: L0, fraction of variance explained (in the normalised space the
SAE was trained in, and raw), next-token loss clean / with the SAE spliced in / with the residual
zero-ablated and the CE loss recovered, dead features (never fired on the eval tokens) and the feature
density (fraction of tokens on which each feature fires). The CE numbers are sae-lens' ``get_recons_loss``.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from .. import activations as acts
from .. import corpus, zoo
from ..errors import UniversalityError
from ..models import family as model_family
from ..presets import Preset, get as get_preset
from ..runtime import model_device
from .store import get, jobs
from .train import check_compatible, special_ids, threads_set_to

__all__ = ["evaluate", "evaluate_many", "eval_rows", "evaluate_all"]


@torch.no_grad()
def evaluate(sae, model, rows: torch.Tensor, hook_name: str | None = None, batch_size: int = 16,
             ignore_ids: Iterable[int] | None = None) -> dict:
    """Quality of one SAE on token ``rows`` [n, L] (BOS-first rows of the ``eval`` split).

    Returns ``n_tokens``, ``d_sae``, ``l0`` (mean active features per token), ``l0_frac`` (l0 / d_sae),
    ``fve`` (fraction of variance explained, in the per-token normalised space the SAE is trained in),
    ``fve_raw`` (on the raw residual stream), ``ce_clean``, ``ce_sae`` (SAE output spliced in at every
    non-special position), ``ce_zero`` (residual zero-ablated at every position), ``ce_recovered`` =
    (ce_zero - ce_sae) / (ce_zero - ce_clean), ``dead_frac`` / ``n_dead`` (features that never fired on
    these tokens) and ``density`` (np.ndarray [d_sae], fraction of tokens on which each feature fires).
    """
    return evaluate_many({0: (sae, hook_name)}, model, rows, batch_size=batch_size, ignore_ids=ignore_ids)[0]


@torch.no_grad()
def evaluate_many(saes: dict, model, rows: torch.Tensor, batch_size: int = 16,
                  ignore_ids: Iterable[int] | None = None) -> dict:
    """:func:`evaluate` for several SAEs of one model in shared forward passes: ``saes`` maps a key to an SAE or
    to ``(sae, hook_name)``; returns ``{key: metrics}``, each SAE's numbers those :func:`evaluate` gives it alone.

    The CE numbers are sae-lens' ``get_recons_loss`` (clean, SAE spliced in, residual zero-ablated), which runs
    the model three times per SAE after the pass that caches its activations. Here each batch of rows runs the
    model once for the clean loss and every SAE's activations, once per SAE with it spliced in, and once per
    distinct hook zero-ablated (SAE seeds on one hook share it): 1 + k + h passes instead of 4k."""
    saes = {k: v if isinstance(v, tuple) else (v, None) for k, v in saes.items()}
    if not saes:
        raise UniversalityError("evaluate_many: no SAEs given")
    hooks = {k: check_compatible(sae, model, hook) for k, (sae, hook) in saes.items()}
    rows = acts.check_rows(model, rows)
    ids = sorted(set(ignore_ids) if ignore_ids is not None else special_ids(model))
    dev = model_device(model)
    acc = {k: _Sums(sae) for k, (sae, _) in saes.items()}
    clean_ce, zero_ce = [], {h: [] for h in sorted(set(hooks.values()))}  # shared by every SAE / every SAE of a hook
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size].to(dev)
        mask = acts.token_mask(batch, ids)  # [b, L] ordinary tokens
        clean, cache_ = model.run_with_cache(batch, names_filter=sorted(zero_ce), return_type="loss",
                                             loss_per_token=True)
        for k, (sae, _) in saes.items():
            a = acc[k]
            a.add(cache_[hooks[k]].float().to(a.device)[mask.to(a.device)])
            a.ce["ce_sae"].append(_ce_with_hook(model, batch, hooks[k], _splice(sae, mask)))
        clean_ce.append(clean.float().cpu().reshape(-1))
        for h, out in zero_ce.items():
            out.append(_ce_with_hook(model, batch, h, _zero_ablate))
    results = {}
    for k, a in acc.items():
        a.ce["ce_clean"], a.ce["ce_zero"] = clean_ce, zero_ce[hooks[k]]
        results[k] = a.metrics()
    return results


def _ce_with_hook(model, batch, hook: str, fn) -> torch.Tensor:
    """Per-token next-token loss [b * (L-1)] (CPU, float32) with ``fn`` run at ``hook`` (get_recons_loss' runs)."""
    loss = model.run_with_hooks(batch, return_type="loss", fwd_hooks=[(hook, fn)], loss_per_token=True)
    return loss.float().cpu().reshape(-1)


def _splice(sae, mask: torch.Tensor):
    """get_recons_loss' ``standard_replacement_hook``: the SAE's reconstruction at the ordinary tokens (``mask``
    [b, L]), the activation itself elsewhere (the identity ActivationScaler of the book's SAEs left out)."""
    def hook_fn(activations: torch.Tensor, hook):  # noqa: ARG001
        original = activations.device
        x = activations.to(sae.device)
        new = sae.decode(sae.encode(x)).to(x.dtype)
        return torch.where(mask.to(sae.device)[..., None], new, x).to(original)
    return hook_fn


def _zero_ablate(activations: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
    """get_recons_loss' ``standard_zero_ablate_hook``."""
    return torch.zeros_like(activations)


class _Sums:
    """Running sums of one SAE's metrics over the batches of :func:`evaluate_many`."""

    def __init__(self, sae):
        self.sae, self.device = sae, sae.W_dec.device
        self.d_sae = int(sae.cfg.d_sae)
        self.fires = torch.zeros(self.d_sae, dtype=torch.float64)
        self.n_tok, self.l0_sum = 0, 0.0
        # sum of |x|^2 and of |x - x_hat|^2 (normalised and raw), and the sums of x for the variance
        self.s = {k: 0.0 for k in ("sq_n", "err_n", "sq_r", "err_r")}
        self.sum_n = self.sum_r = None
        self.ce = {"ce_sae": []}  # evaluate_many adds the shared ce_clean and ce_zero lists

    def add(self, x: torch.Tensor) -> None:
        """One batch's activations at the ordinary tokens, x [t, D] raw."""
        f = self.sae.encode(x)  # [t, F]
        x_hat = self.sae.decode(f)  # [t, D] raw space
        coeff = math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # [t, 1]
        xn, xhn = x * coeff, x_hat * coeff
        active = f > 0
        self.fires += active.sum(0).double().cpu()
        self.l0_sum += active.sum().item()
        self.n_tok += x.shape[0]
        self.s["sq_n"] += xn.pow(2).sum().item()
        self.s["err_n"] += (xn - xhn).pow(2).sum().item()
        self.s["sq_r"] += x.pow(2).sum().item()
        self.s["err_r"] += (x - x_hat).pow(2).sum().item()
        self.sum_n = xn.sum(0).double() if self.sum_n is None else self.sum_n + xn.sum(0).double()
        self.sum_r = x.sum(0).double() if self.sum_r is None else self.sum_r + x.sum(0).double()

    def metrics(self) -> dict:
        if self.n_tok == 0:
            raise UniversalityError("no ordinary tokens to evaluate on (every position is BOS / a separator).")
        s, n_tok, d_sae = self.s, self.n_tok, self.d_sae
        var_n = s["sq_n"] - (self.sum_n.pow(2).sum().item() / n_tok)
        var_r = s["sq_r"] - (self.sum_r.pow(2).sum().item() / n_tok)
        out = {"n_tokens": n_tok, "d_sae": d_sae, "l0": self.l0_sum / n_tok, "l0_frac": self.l0_sum / n_tok / d_sae,
               "fve": 1.0 - s["err_n"] / var_n, "fve_raw": 1.0 - s["err_r"] / var_r}
        out.update({k: torch.cat(v).mean().item() for k, v in self.ce.items()})
        gap = out["ce_zero"] - out["ce_clean"]
        out["ce_recovered"] = (out["ce_zero"] - out["ce_sae"]) / gap if gap != 0 else float("nan")
        out["n_dead"] = int((self.fires == 0).sum().item())
        out["dead_frac"] = out["n_dead"] / d_sae
        out["density"] = (self.fires / n_tok).numpy()
        return out


def eval_rows(preset: "str | Preset") -> torch.Tensor:
    """The ``eval`` rows the metrics use: ``SAEConfig.eval_tokens`` tokens in rows of ``SAEConfig.context``."""
    p = get_preset(preset)
    stream = corpus.token_stream(p, "eval")
    available = (len(stream) - 1) // (p.sae.context - 1)
    n = max(1, min(available, math.ceil(p.sae.eval_tokens / p.sae.context)))
    return stream.rows(p.sae.context, n_rows=n)


def evaluate_all(preset: "str | Preset", names: Iterable[str] | None = None, *, seeds: Iterable[int] | None = None,
                 device: str | None = None, progress: bool = True, train_if_missing: bool = True,
                 threads: int | None = None):
    """The quality table: one row per SAE of :func:`jobs` (restricted to ``seeds`` if given).

    Returns a pandas DataFrame (model, family, layer, depth = layer / (n_layers - 1), seed, and the metrics
    of :func:`evaluate`); ``df.attrs["density"]`` maps ``(model, layer, seed)`` to the density array."""
    import pandas as pd
    from tqdm.auto import tqdm

    p = get_preset(preset)
    todo = [j for j in jobs(p, names) if seeds is None or j[2] in set(seeds)]
    rows_ = eval_rows(p)
    by_job, density = {}, {}
    cap = p.sae.shared_max or len(todo)  # at most this many SAEs share the passes, as in train_all
    bar = tqdm(total=len(todo), desc=f"SAE metrics ({p.name})", disable=not progress)
    for name in dict.fromkeys(n for n, _, _ in todo):
        model = zoo.load(p, name, device=device)
        mine = [j for j in todo if j[0] == name]
        for g in range(0, len(mine), cap):
            group = {j: get(p, name, j[1], j[2], model=model, device=device, progress=progress,
                            train_if_missing=train_if_missing, threads=threads) for j in mine[g:g + cap]}
            with threads_set_to(threads):
                by_job.update(evaluate_many(group, model, rows_))
            bar.update(len(group))
        n_layers = model.cfg.n_layers
        for j in mine:
            by_job[j] = {"model": name, "family": model_family(model), "layer": j[1],
                         "depth": j[1] / max(1, n_layers - 1), "seed": j[2], **by_job[j]}
    bar.close()
    records = []
    for j in todo:
        density[j] = by_job[j].pop("density")
        records.append(by_job[j])
    df = pd.DataFrame(records)
    df.attrs["density"] = density
    return df
