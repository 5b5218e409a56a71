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

__all__ = ["evaluate", "eval_rows", "evaluate_all"]


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
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    hook = check_compatible(sae, model, hook_name)
    rows = acts.check_rows(model, rows)
    ids = sorted(set(ignore_ids) if ignore_ids is not None else special_ids(model))
    dev = model_device(model)
    sae_dev = sae.W_dec.device
    d_sae = int(sae.cfg.d_sae)
    fires = torch.zeros(d_sae, dtype=torch.float64)
    n_tok, l0_sum = 0, 0.0
    # running sums for the variance: sum of x, sum of |x|^2, sum of |x - x_hat|^2 (normalised and raw)
    s = {k: 0.0 for k in ("sq_n", "err_n", "sq_r", "err_r")}
    sum_n = sum_r = None
    ce = {"ce_clean": [], "ce_sae": [], "ce_zero": []}
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size].to(dev)
        _, cache_ = model.run_with_cache(batch, names_filter=[hook])
        x = cache_[hook].float().to(sae_dev)[acts.token_mask(batch, ids).to(sae_dev)]  # [t, D]
        f = sae.encode(x)  # [t, F]
        x_hat = sae.decode(f)  # [t, D] raw space
        coeff = math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # [t, 1]
        xn, xhn = x * coeff, x_hat * coeff
        active = f > 0
        fires += active.sum(0).double().cpu()
        l0_sum += active.sum().item()
        n_tok += x.shape[0]
        s["sq_n"] += xn.pow(2).sum().item()
        s["err_n"] += (xn - xhn).pow(2).sum().item()
        s["sq_r"] += x.pow(2).sum().item()
        s["err_r"] += (x - x_hat).pow(2).sum().item()
        sum_n = xn.sum(0).double() if sum_n is None else sum_n + xn.sum(0).double()
        sum_r = x.sum(0).double() if sum_r is None else sum_r + x.sum(0).double()
        m = get_recons_loss(sae, model, ActivationScaler(), batch, compute_kl=False, compute_ce_loss=True,
                            ignore_tokens=ids, hook_name=hook)
        ce["ce_clean"].append(m["ce_loss_without_sae"].float().cpu().reshape(-1))
        ce["ce_sae"].append(m["ce_loss_with_sae"].float().cpu().reshape(-1))
        ce["ce_zero"].append(m["ce_loss_with_ablation"].float().cpu().reshape(-1))
    if n_tok == 0:
        raise UniversalityError("no ordinary tokens to evaluate on (every position is BOS / a separator).")
    var_n = s["sq_n"] - (sum_n.pow(2).sum().item() / n_tok)
    var_r = s["sq_r"] - (sum_r.pow(2).sum().item() / n_tok)
    out = {"n_tokens": n_tok, "d_sae": d_sae, "l0": l0_sum / n_tok, "l0_frac": l0_sum / n_tok / d_sae,
           "fve": 1.0 - s["err_n"] / var_n, "fve_raw": 1.0 - s["err_r"] / var_r}
    out.update({k: torch.cat(v).mean().item() for k, v in ce.items()})
    gap = out["ce_zero"] - out["ce_clean"]
    out["ce_recovered"] = (out["ce_zero"] - out["ce_sae"]) / gap if gap != 0 else float("nan")
    density = (fires / n_tok).numpy()
    out["n_dead"] = int((fires == 0).sum().item())
    out["dead_frac"] = out["n_dead"] / d_sae
    out["density"] = density
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
    records, density = [], {}
    model, loaded = None, None
    for name, layer, seed in tqdm(todo, desc=f"SAE metrics ({p.name})", disable=not progress):
        if loaded != name:
            model, loaded = zoo.load(p, name, device=device), name
        sae = get(p, name, layer, seed, model=model, device=device, progress=progress,
                  train_if_missing=train_if_missing, threads=threads)
        with threads_set_to(threads):
            m = evaluate(sae, model, rows_)
        density[(name, layer, seed)] = m.pop("density")
        n_layers = model.cfg.n_layers
        records.append({"model": name, "family": model_family(model), "layer": layer,
                        "depth": layer / max(1, n_layers - 1), "seed": seed, **m})
    df = pd.DataFrame(records)
    df.attrs["density"] = density
    return df
