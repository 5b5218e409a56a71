"""The Off-by-One motif: in Mamba a token's information enters the SSM state one position *later* (paper digest
2.6 item 4, claim C9), while in a Transformer the information a head writes sits at the token's own position.

Why one position later? In a Mamba block the state update at position t reads the conv output there,

    c_t = bias + Σ_k w_k ⊙ x_in_{t-k}        (k = 0..K-1, the lag; K = 4 taps)
    x_t = SiLU(c_t),   Δ_t, B_t = f(x_t),    h_t = Ā_t ⊙ h_{t-1} + Δ_t B_t x_t   ("the state write at t")

so the write at t can carry the tokens t-1, t-2, t-3 as well as t. If a layer weighs lag 1 most, the token B is
written into its state at B+1. The experiments (all on the exact scan, B -> B' corruption unless noted):

1. :func:`position_sweep`: in each layer, the last state rebuilt with the clean recurrence except the update at
   one position p = B+k, k in 0..3, which comes from the corrupted run (``circuits.mamba.rebuild_state``), other
   layers' last states frozen to clean: a layers x offsets grid. ``abar_shift=1`` reproduces the authors' index
   (the corrupted Ā taken at p+1). The induction layer is the top layer of chapter 5's state-history sweep
   (:func:`induction_layer`).
2. :func:`state_write_variants`: the induction layer's sweep again, with the authors' Ā index and with one conv
   tap **knocked out of the corruption**: the corrupted update at p is recomputed from a conv output that reads
   the corrupted x_in at every lag except lag k, where it reads the clean x_in,

       c~_p = c^corr_p - w_k ⊙ (x_in^corr_{p-k} - x_in^clean_{p-k}),   then x~, Δ~, B~ from c~_p as the block does,

   so the clean run and the model's weights are untouched, and only the route "input at p-k -> tap k -> write at
   p" is cut. If the effect at B+1 comes from B through tap 1, knocking out lag 1 removes it.
3. :func:`head_offset_sweep` (Transformer control): chapter 5's head @B -> induction head -> logits, with the
   sender at B+k for k in 0..3 (``sender_offset``); and :func:`residual_offset_sweep`: ``hook_resid_pre`` of
   every layer patched at B+k (both families).
4. :func:`write_decomposition`: how much of each position's conv output and state write comes from lag k, from
   the conv weights and the measured inputs (energy shares that sum to 1).

Glossary: ``n`` prompts, ``L`` positions, ``T`` = L-1 the last position, ``E`` d_inner, ``N`` d_state, ``K``
d_conv, ``k`` a lag or an offset from B, ``w_k`` the conv weight of lag k (``conv1d.weight[:, 0, K-1-k]``),
``x_in`` the conv input (``hook_in_proj``), ``c`` the conv output (``hook_conv``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import UniversalityError
from ..presets import Preset, get as get_preset
from . import mamba as cm
from . import transformer as ct
from .effects import Effects, stack
from .patching import Batch, patch, position_mask, resid_pre_name, run_cache, set_value, sweep
from .task import InductionPrompts, TaskConfig, task_config

OFFSETS = (0, 1, 2, 3)  # B, B+1, B+2, B+3: the positions whose conv window holds B (K = 4)

# The authors' off-by-one prompts: 129 random tokens, A at 0, B at 1, A again at the end; 128 prompts. The
# smoke preset only checks that every step runs (exact scans are slow): short rows, few prompts.
PRESET_TASKS = {
    "smoke": dict(seq_len=24, n_prompts=8, batch_size=8),
    "tiny": dict(n_prompts=128, batch_size=32),
    "paper": dict(n_prompts=128, batch_size=4, prepend_bos=False),
    "paper_t4": dict(n_prompts=128, batch_size=4, prepend_bos=False),  # the Colab T4 plan: the paper's prompts
}


def offset_label(k: int) -> str:
    return "B" if k == 0 else f"B{k:+d}"


def task(preset: "str | Preset", **overrides) -> TaskConfig:
    """The off-by-one prompts of ``preset``: A first in the random body, then B, A again at the end; 129 tokens
    (fewer when the model context is smaller, and at smoke)."""
    p = get_preset(preset)
    kw = dict(PRESET_TASKS.get(p.name, {}))
    bos = kw.get("prepend_bos", True)
    kw["seq_len"] = min(kw.get("seq_len", 129), p.transformer.n_ctx - int(bos))
    kw.update(max_a_pos=1)  # A at position 0 of the body (1 with BOS)
    kw.update(overrides)
    return TaskConfig(**kw)


def layer_sweep_task(preset: "str | Preset", **overrides) -> TaskConfig:
    """Chapter 5's prompts (length 64, A in the first half) with this chapter's number of prompts: the state-history
    sweep that picks the induction layer runs on them (the hub presets: chapter 5's own count)."""
    p = get_preset(preset)
    kw = {} if p.needs_internet else {k: v for k, v in PRESET_TASKS.get(p.name, {}).items()
                                      if k in ("n_prompts", "batch_size")}
    kw.update(overrides)
    return task_config(p, **kw)


def offset_sets(offsets: Sequence[int] = OFFSETS) -> dict:
    """``{"B": at B, "B+1": at B+1, ...}``: position sets for ``circuits.mamba.state_patching``."""
    return {offset_label(k): cm.at("b", k) for k in offsets}


def _check_offsets(prompts: InductionPrompts, offsets) -> list[int]:
    offsets = [int(k) for k in offsets]
    if not offsets or min(offsets) < 0 or int((prompts.pos_b.max() + max(offsets))) >= prompts.last:
        raise UniversalityError(f"offsets {offsets}: B+k must lie before the last position ({prompts.last})")
    return offsets


# ----------------------------------------------------------------------------------- Mamba: the position sweep
def induction_layer(model, prompts: InductionPrompts, progress: bool = True) -> tuple[int, Effects]:
    """Chapter 5's state-history sweep (``circuits.mamba.state_patching``, B -> B'): the layer whose corrupted
    state history lowers the B logit most, and the sweep."""
    eff = cm.state_patching(model, prompts, progress=progress)
    return int(eff.top("logit_B").split()[-1]), eff


def position_sweep(model, prompts: InductionPrompts, layers=None, offsets: Sequence[int] = OFFSETS,
                   abar_shift: int = 0, progress: bool = True) -> Effects:
    """The authors' sweep in every layer of ``layers``: the last state rebuilt with the corrupted update at B+k
    only. Grid: layers x offsets (labels ``"B"``, ``"B+1"`` ...)."""
    offsets = _check_offsets(prompts, offsets)
    return cm.state_patching(model, prompts, layers=layers, position_sets=offset_sets(offsets), corruption="b",
                             abar_shift=abar_shift, progress=progress,
                             experiment="state write at B+k -> state -> logits")


def peak(effects: Effects, row: str | None = None, col: str | None = None, metric: str = "logit_B") -> dict:
    """The profile of one grid row (default: the first row) or, with ``col``, of one column across the rows, and
    its peak, the entry with the largest |Δ|: ``{"labels", "deltas", "ses", "index", "label", "delta", "se"}``.
    E.g. one layer's Δ over the offsets B..B+3, or one sender head's Δ over the offsets."""
    if effects.rows is None:
        labels, d, se = list(effects.labels), effects.delta(metric), effects.delta_se(metric)
    else:
        g, s = effects.grid(metric), effects.delta_se(metric).reshape(len(effects.rows), len(effects.cols))
        if col is not None:
            if col not in effects.cols:
                raise UniversalityError(f"Effects {effects.experiment}: no column {col!r} (have {effects.cols})")
            j = effects.cols.index(col)
            labels, d, se = list(effects.rows), g[:, j], s[:, j]
        else:
            row = effects.rows[0] if row is None else row
            if row not in effects.rows:
                raise UniversalityError(f"Effects {effects.experiment}: no row {row!r} (have {effects.rows})")
            i = effects.rows.index(row)
            labels, d, se = list(effects.cols), g[i], s[i]
    i = int(np.argmax(np.abs(d)))
    return {"labels": labels, "deltas": [float(v) for v in d], "ses": [float(v) for v in se], "index": i,
            "label": labels[i], "delta": float(d[i]), "se": float(se[i])}


# ----------------------------------------------------------------------------------- the conv, lag by lag
def conv_taps(block) -> torch.Tensor:
    """The conv weights by lag: [E, K], column k multiplies x_in_{t-k}."""
    w = block.conv1d.weight[:, 0, :]  # [E,K], index j multiplies x_in_{t-(K-1)+j}
    return w.flip(-1)


def conv_contributions(block, x_in: torch.Tensor) -> torch.Tensor:
    """c^(k)_t = w_k ⊙ x_in_{t-k} for every lag: [K, n, L, E] (zero where t-k < 0). Their sum plus the conv
    bias is the conv output ``hook_conv``."""
    w = conv_taps(block).to(x_in.dtype)  # [E,K]
    L = x_in.shape[1]
    return torch.stack([F.pad(x_in, (0, 0, k, 0))[:, :L] * w[:, k] for k in range(w.shape[1])])  # [K,n,L,E]


def ssm_inputs_from_conv(block, conv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, Δ, B) from a conv output [.., E], computed as the block does: x = SiLU(c), (Δ_1, B, C) = x_proj(x),
    Δ = softplus(dt_proj(Δ_1)). Shapes [.., E], [.., E], [.., N]."""
    R, N = block.cfg.dt_rank, block.cfg.d_state
    x = F.silu(conv)  # [..,E]
    d1, B, _ = block.x_proj(x).split([R, N, N], dim=-1)  # [..,R], [..,N]
    return x, F.softplus(block.dt_proj(d1)), B


@torch.no_grad()
def knockout_scan_inputs(model, batch: Batch, layer: int, lag: int) -> cm.ScanInputs:
    """The corrupted run's recurrence inputs in ``layer``, with lag ``lag`` knocked out of the corruption: every
    conv output reads the clean x_in at that lag (module docstring, item 2)."""
    blk = model.blocks[layer]
    xc, xk = batch.clean_cache[f"blocks.{layer}.hook_in_proj"], batch.corrupt_cache[f"blocks.{layer}.hook_in_proj"]
    L = xc.shape[1]
    w = conv_taps(blk)[:, lag].to(xc.dtype)  # [E]
    shift = lambda v: F.pad(v, (0, 0, lag, 0))[:, :L]  # noqa: E731  x_{t-lag}
    conv = batch.corrupt_cache[f"blocks.{layer}.hook_conv"] - w * (shift(xk) - shift(xc))  # [n,L,E]
    x, delta, B = ssm_inputs_from_conv(blk, conv)
    A = -torch.exp(blk.A_log.float()).to(x.device)  # [E,N]
    return cm.ScanInputs(delta, B, x, A)


@dataclass(frozen=True)
class Variant:
    """How the corrupted update at B+k is built: ``knockout`` = a lag whose conv tap keeps reading the clean
    input (None: none), ``abar_shift`` = 1 for the authors' Ā at p+1."""

    knockout: int | None = None
    abar_shift: int = 0


def default_variants(K: int = 4) -> dict[str, Variant]:
    """The authors' Ā index and each lag knocked out in turn (the sweep as written is row ``layer l`` of
    :func:`position_sweep`)."""
    v = {"authors' Ā at p+1": Variant(abar_shift=1)}
    v.update({f"lag {k} knocked out": Variant(knockout=k) for k in range(K)})
    return v


def state_write_variants(model, prompts: InductionPrompts, layer: int, variants: "dict[str, Variant] | None" = None,
                         offsets: Sequence[int] = OFFSETS, progress: bool = True) -> Effects:
    """The position sweep in one layer under each variant (B -> B' corruption; other layers' last states
    frozen). Grid: variants x offsets."""
    cm._check(model, prompts)
    (layer,) = cm._layers(model, [layer])
    offsets = _check_offsets(prompts, offsets)
    variants = variants if variants is not None else default_variants(model.cfg.d_conv)
    K = model.cfg.d_conv
    bad = [v for v in variants.values() if v.knockout is not None and not 0 <= v.knockout < K]
    if bad or not variants:
        raise UniversalityError(f"variants {bad or variants}: knock out a lag in 0..{K - 1}")
    T, nl = prompts.last, model.cfg.n_layers
    names = ([cm.h_name(l, T) for l in range(nl)] + cm.scan_names(layer)
             + [f"blocks.{layer}.hook_in_proj", f"blocks.{layer}.hook_conv"])
    comps = [(v, k) for v in variants for k in offsets]
    memo: dict = {}

    @torch.no_grad()
    def make(comp, b):
        label, k = comp
        var = variants[label]
        if memo.get("batch") is not b:  # recurrence inputs once per batch and variant
            memo.clear()
            memo["batch"] = b
        key = var.knockout
        if key not in memo:
            memo[key] = (cm.scan_inputs(model, b.corrupt_cache, layer) if key is None
                         else knockout_scan_inputs(model, b, layer, key))
        hooks = [patch(cm.h_name(l, T), b.clean_cache[cm.h_name(l, T)]) for l in range(nl) if l != layer]
        mask = position_mask(b.pos_b + k, len(b.clean), T + 1)
        h = cm.rebuild_state(cm.scan_inputs(model, b.clean_cache, layer), memo[key], mask, T,
                             abar_shift=var.abar_shift)
        hooks.append(set_value(cm.h_name(layer, T), h))
        return hooks

    cols = [offset_label(k) for k in offsets]
    return sweep(model, prompts, "b", names, comps, make, [f"{v} @{offset_label(k)}" for v, k in comps],
                 f"layer {layer}: state write at B+k, variants", rows=list(variants), cols=cols,
                 run_kwargs=cm.EXACT, progress=progress, meta={"layer": layer, "offsets": offsets},
                 start_layer=lambda comp: layer)


# ----------------------------------------------------------------------------------- the Transformer control
def head_offset_sweep(model, prompts: InductionPrompts, receiver, offsets: Sequence[int] = OFFSETS,
                      corruption: str = "random", progress: bool = True) -> Effects:
    """Chapter 5's head @B -> ``receiver`` -> logits with the senders at B+k instead, for every k. Grid: offsets x
    sender heads."""
    offsets = _check_offsets(prompts, offsets)
    parts = [ct.head_to_head_to_logits(model, prompts, receiver, corruption=corruption, sender_offset=k,
                                       progress=progress) for k in offsets]
    return stack(parts, [offset_label(k) for k in offsets], f"head @B+k -> {parts[0].meta['receiver']} -> logits",
                 meta={"offsets": offsets, "sender_offset": None})


def residual_offset_sweep(model, prompts: InductionPrompts, offsets: Sequence[int] = OFFSETS, layers=None,
                          corruption: str = "b", progress: bool = True) -> Effects:
    """The residual stream entering each layer (``hook_resid_pre``) patched from the corrupted run at one
    position B+k (activation patching: every path from there onward is left open). Works for both families
    (Mamba on the fast scan). Grid: layers x offsets."""
    offsets = _check_offsets(prompts, offsets)
    nl = model.cfg.n_layers
    layers = list(range(nl)) if layers is None else [int(l) for l in layers]
    if not layers or any(not 0 <= l < nl for l in layers):
        raise UniversalityError(f"layers {layers}: the model has {nl} layers")
    names = [resid_pre_name(l) for l in layers]
    comps = [(l, k) for l in layers for k in offsets]

    def make(comp, b):
        l, k = comp
        return [patch(resid_pre_name(l), b.corrupt_cache[resid_pre_name(l)], b.pos_b + k)]

    return sweep(model, prompts, corruption, names, comps, make,
                 [f"resid_pre {l} @{offset_label(k)}" for l, k in comps], "residual stream at B+k -> logits",
                 rows=[f"resid_pre {l}" for l in layers], cols=[offset_label(k) for k in offsets], progress=progress,
                 meta={"offsets": offsets}, start_layer=lambda comp: comp[0])


# ----------------------------------------------------------------------------------- the write, lag by lag
@dataclass
class WriteDecomposition:
    """Shares of each lag k in a layer's conv output and state write, [len(layers), K] each (rows sum to 1).

    * ``weight``: ||w_k||² / Σ_j ||w_j||², from the weights alone (what equal, white inputs would give);
    * ``conv``: Σ ||w_k ⊙ x_in_{t-k}||² / Σ_j (...), the energy of each lag's term in the conv output;
    * ``write``: Σ ||W_t - W_t^(-k)||² / Σ_j (...), where W_t = Δ_t ⊙ x_t ⊗ B_t [E, N] is the state write at
      t and W^(-k) the write recomputed without lag k's term in the conv (a knock-out share: how much the write
      changes when the token k back is removed).

    Sums run over the chosen positions t of every prompt."""

    layers: list[int]
    lags: list[int]
    weight: np.ndarray
    conv: np.ndarray
    write: np.ndarray
    n_positions: int
    where: str

    def table(self):
        import pandas as pd

        rows = []
        for i, l in enumerate(self.layers):
            for k in self.lags:
                rows.append({"layer": l, "lag": k, "weights": self.weight[i, k], "conv term": self.conv[i, k],
                             "state write": self.write[i, k]})
        return pd.DataFrame(rows).set_index(["layer", "lag"])

    def row(self, layer: int) -> dict[str, np.ndarray]:
        i = self.layers.index(int(layer))
        return {"weights": self.weight[i], "conv term": self.conv[i], "state write": self.write[i]}


def _write_factors(block, conv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, B) with the state write W = u ⊗ B: u = Δ ⊙ x [m, E], B [m, N]."""
    x, delta, B = ssm_inputs_from_conv(block, conv)
    return delta * x, B


@torch.no_grad()
def write_decomposition(model, prompts: InductionPrompts, layers=None, positions=None,
                        progress: bool = True) -> WriteDecomposition:
    """:class:`WriteDecomposition` of ``layers`` (default all) over ``positions``: None = every position t >= K-1
    (all lags inside the row), or a function of the prompts giving one position per row (e.g. ``lambda p:
    p.pos_b + 1``). One fast-scan run per batch."""
    if "blocks.0.hook_in_proj" not in model.hook_dict or not hasattr(model.cfg, "d_conv"):
        raise UniversalityError("write_decomposition needs a HookedMamba (blocks.{l}.hook_in_proj and a conv)")
    nl, K = model.cfg.n_layers, model.cfg.d_conv
    layers = list(range(nl)) if layers is None else [int(l) for l in layers]
    if not layers or any(not 0 <= l < nl for l in layers):
        raise UniversalityError(f"layers {layers}: the model has {nl} layers")
    e_conv = np.zeros((len(layers), K))
    e_write = np.zeros((len(layers), K))
    count = 0
    names = [f"blocks.{l}.hook_in_proj" for l in layers]
    for b in tqdm(list(prompts.batches()), desc="write decomposition", disable=not progress, leave=False):
        n, L = b.tokens.shape
        _, cache = run_cache(model, b.tokens, names)
        if positions is None:
            if L < K:
                raise UniversalityError(f"rows of {L} tokens are shorter than the conv ({K})")
            sel = torch.zeros(n, L, dtype=torch.bool)
            sel[:, K - 1:] = True
        else:
            sel = position_mask(positions(b), n, L)
        count += int(sel.sum())
        for i, l in enumerate(layers):
            blk = model.blocks[l]
            parts = conv_contributions(blk, cache[names[i]].float())[:, sel.to(cache[names[i]].device)]  # [K,m,E]
            bias = blk.conv1d.bias.float() if blk.conv1d.bias is not None else 0.0
            conv = parts.sum(0) + bias  # [m,E]
            u, B = (v.double() for v in _write_factors(blk, conv))  # [m,E], [m,N]
            for k in range(K):
                e_conv[i, k] += float(parts[k].double().pow(2).sum())
                u_k, B_k = (v.double() for v in _write_factors(blk, conv - parts[k]))
                # ||u B^T - u_k B_k^T||_F^2 without the [m,E,N] matrices (float64; exactly 0 when nothing changed)
                sq = ((u * u).sum(-1) * (B * B).sum(-1) + (u_k * u_k).sum(-1) * (B_k * B_k).sum(-1)
                      - 2 * (u * u_k).sum(-1) * (B * B_k).sum(-1))  # [m]
                e_write[i, k] += float(sq.clamp_min(0).sum())
    w = np.stack([conv_taps(model.blocks[l]).detach().double().pow(2).sum(0).cpu().numpy() for l in layers])
    norm = lambda a: a / np.where(a.sum(1, keepdims=True) > 0, a.sum(1, keepdims=True), 1.0)  # noqa: E731
    where = "every position t >= K-1" if positions is None else getattr(positions, "__name__", "chosen positions")
    return WriteDecomposition(layers, list(range(K)), norm(w), norm(e_conv), norm(e_write), count, where)
