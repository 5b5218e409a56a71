"""Residual-stream activations of either model family, read through the shared hook names.

Both families expose ``blocks.{l}.hook_resid_post`` ([B, L, D], the residual stream after block ``l``):
the TransformerLens ``HookedTransformer`` and the library's ``HookedMamba`` (fast scan: the hooks on the
residual stream all fire without the per-position loop).

Positions holding the special token (``<|endoftext|>``, which is BOS at position 0 and the document
separator inside rows) are left out of SAE training and statistics, as the authors drop BOS positions:
:func:`token_mask` says which positions count.

Shapes: ``n`` rows, ``L`` positions per row, ``D`` d_model.
"""
from __future__ import annotations

import math

import torch

from .errors import UniversalityError
from .models import family as model_family
from .runtime import model_device

__all__ = ["resid_post_hook", "check_hook", "hook_width", "check_rows", "resid_post", "token_mask", "normalise_tokens"]


def resid_post_hook(layer: int) -> str:
    """The hook name of the residual stream after block ``layer``."""
    return f"blocks.{int(layer)}.hook_resid_post"


def check_hook(model, hook_name: str) -> None:
    """Raise a clear error when ``model`` has no hook point called ``hook_name``."""
    if hook_name not in model.hook_dict:
        n = model.cfg.n_layers
        raise UniversalityError(
            f"the {model_family(model)} model has no hook point {hook_name!r}: it has {n} blocks, so the residual "
            f"stream hooks are blocks.0.hook_resid_post ... blocks.{n - 1}.hook_resid_post."
        )


def hook_width(model, hook_name: str) -> int:
    """The last dimension of the activation at ``hook_name`` (d_model for the residual stream)."""
    check_hook(model, hook_name)
    if hook_name.endswith(("hook_resid_post", "hook_resid_pre", "hook_embed", "hook_out_proj", "hook_norm")):
        return int(model.cfg.d_model)
    with torch.no_grad():  # anything else: ask the model (one token)
        dev = model_device(model)
        _, cache = model.run_with_cache(torch.zeros(1, 2, dtype=torch.long, device=dev), names_filter=[hook_name])
    return int(cache[hook_name].shape[-1])


def check_rows(model, rows, what: str = "rows", min_len: int = 1) -> torch.Tensor:
    """Raise a clear error unless ``rows`` is an integer tensor [n >= 1, L >= min_len] of token ids that the model's
    vocabulary holds (checked when the model has ``cfg.d_vocab``); return it as a tensor."""
    rows = torch.as_tensor(rows)
    if rows.dim() != 2 or rows.shape[0] == 0 or rows.shape[1] < min_len:
        raise UniversalityError(
            f"{what} must be a LongTensor [n, L] with n >= 1 rows of L >= {min_len} token ids, got shape "
            f"{tuple(rows.shape)}: pass at least one row (e.g. TokenStream.rows(context)).")
    if rows.dtype.is_floating_point or rows.dtype.is_complex or rows.dtype == torch.bool:
        raise UniversalityError(
            f"{what} must hold integer token ids, got dtype {rows.dtype}: pass token ids (model.to_tokens, "
            f"TokenStream.rows); a dataset of empty texts, for one, gives float rows.")
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    lo, hi = int(rows.min()), int(rows.max())
    if lo < 0 or (vocab is not None and hi >= vocab):
        has = f"ids 0..{vocab - 1}" if vocab is not None else "non-negative ids"
        raise UniversalityError(
            f"{what} hold token ids {lo}..{hi}, but the model's vocabulary has {has}: tokenize with the model's "
            f"own tokenizer (corpus.load_tokenizer(preset)).")
    return rows


@torch.no_grad()
def resid_post(model, rows: torch.Tensor, layers, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """``{layer: FloatTensor [n, L, D]}`` on the CPU: the residual stream after each block in ``layers``.

    One forward pass per batch collects every layer (it stops after the last block asked for).
    """
    layers = [int(layer) for layer in layers]
    if not layers:
        raise UniversalityError(f"layers is empty: name at least one block, e.g. layers=range({model.cfg.n_layers}).")
    names = [resid_post_hook(layer) for layer in layers]
    for name in names:
        check_hook(model, name)
    rows = check_rows(model, rows)
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    stop = max(layers) + 1
    dev = model_device(model)
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size].to(dev)
        _, cache = model.run_with_cache(batch, names_filter=names, stop_at_layer=stop)
        for layer, name in zip(layers, names):
            out[layer].append(cache[name].detach().float().cpu())  # [b, L, D]
    return {layer: torch.cat(v) for layer, v in out.items()}


def token_mask(rows: torch.Tensor, special_ids) -> torch.Tensor:
    """BoolTensor [n, L]: True where the token is an ordinary token (not BOS / a document separator)."""
    ids = torch.as_tensor(sorted({int(i) for i in special_ids}), dtype=rows.dtype)
    return ~torch.isin(rows, ids)


def normalise_tokens(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each row of ``x`` [..., D] rescaled to L2 norm sqrt(D) (the authors' token-wise normalisation)."""
    return x * (math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True).clamp_min(eps))
