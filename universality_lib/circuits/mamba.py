"""Path patching of Mamba's induction circuit on the exact per-position scan (paper digest 2.6, Mamba).

In a Mamba block the only ways one position reaches another are the 4-tap causal conv and the SSM state

    h_t = Ā_t ⊙ h_{t-1} + B̄_t x_t,    Ā_t = exp(Δ_t A),  B̄_t = Δ_t ⊗ B_t,    y_t = h_t · C_t

so the experiments patch those, reading and writing the hook points of the library's HookedMamba
(``blocks.{l}.hook_h.{t}``, ``hook_conv``, ``hook_in_proj``, ``hook_y``; Ā, B̄ are rebuilt from ``hook_delta``,
``hook_B`` and ``hook_ssm_input`` with the block's A). Runs that read or write a state use the exact scan
(``scan="exact"``, clean and patched runs alike); :func:`y_to_logits` touches no state and uses the fast one.

* :func:`rebuild_state`: the state at position T from the recurrence, with the **clean** update at every
  position except a set of positions where the update uses the **corrupted** run's Ā, B̄ and x. With no
  positions corrupted it is the clean h_T; with every position it is the corrupted h_T.
* :func:`state_patching`: for each layer (and each position set), inject that rebuilt h_T at the last
  position, with every other layer's h_T frozen to clean, and measure the metric. The authors'
  state-history sweep is the position set "every position before T" (h_T = Ā_T ⊙ h^corr_{T-1} + B̄_T x_T
  with clean Ā_T, B̄_T, x_T); the Off-by-One sweep is one position at a time, B, B+1, B+2, B+3.
* :func:`y_to_logits`: the layer's y at the last position from the run without the repeated A (others frozen).
* :func:`conv_to_state_to_logits`: in one layer, the conv output at one position p is recomputed from the
  clean conv inputs x_in except the one at p - k (lag k), taken from the corrupted run; every later layer's
  h_T is frozen, so the effect can only travel conv(p) -> this layer's state -> the last position.

Every patched run starts at the first layer it changes, from the clean residual there (``sweep``'s
``start_layer``): the layers before it would only recompute the clean run, and the freezes there are no-ops.

Glossary: ``n`` prompts, ``L`` positions, ``T`` = L-1 the last position, ``E`` d_inner, ``N`` d_state,
``K`` d_conv, ``l`` layer; positions are absolute indices into the prompt (BOS included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import UniversalityError
from ..models.scan import causal_conv1d, discretize
from .effects import Effects
from .patching import Batch, patch, position_mask, set_value, sweep
from .task import InductionPrompts

EXACT = {"scan": "exact"}
SCAN_HOOKS = ("hook_delta", "hook_B", "hook_ssm_input")


def h_name(layer: int, t: int) -> str:
    return f"blocks.{layer}.hook_h.{t}"


def _check(model, prompts: InductionPrompts):
    if "blocks.0.hook_h.0" not in model.hook_dict:
        raise UniversalityError("Mamba path patching needs the library's HookedMamba (blocks.{l}.hook_h.{t})")
    if prompts.tokens.shape[1] > model.cfg.n_ctx:
        raise UniversalityError(f"prompts of {prompts.tokens.shape[1]} tokens exceed the model's n_ctx="
                                f"{model.cfg.n_ctx} (one hook_h.t per position)")


def _layers(model, layers) -> list[int]:
    nl = model.cfg.n_layers
    out = list(range(nl)) if layers is None else [int(l) for l in layers]
    bad = [l for l in out if not 0 <= l < nl]
    if bad or not out:
        raise UniversalityError(f"layers {bad or out} out of range: the model has {nl} layers")
    return out


# ------------------------------------------------------------------------------------ the state rebuild
@dataclass
class ScanInputs:
    """What one layer's recurrence reads, from one run: Δ [n,L,E], B [n,L,N], x [n,L,E] and A [E,N]."""

    delta: torch.Tensor
    B: torch.Tensor
    x: torch.Tensor
    A: torch.Tensor

    def terms(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ā_t, B̄_t x_t), both [n,E,N], computed exactly as the exact scan does."""
        A_bar, B_bar = discretize(self.delta[:, t], self.A, self.B[:, t])  # [n,E,N] each
        return A_bar, B_bar * self.x[:, t].unsqueeze(-1)


def scan_names(layer: int) -> list[str]:
    return [f"blocks.{layer}.{h}" for h in SCAN_HOOKS]


def scan_inputs(model, cache: dict, layer: int) -> ScanInputs:
    """The layer's recurrence inputs from a cache holding :func:`scan_names` (layer)."""
    n = scan_names(layer)
    A = -torch.exp(model.blocks[layer].A_log.float())  # [E,N], as hook_A
    return ScanInputs(cache[n[0]], cache[n[1]], cache[n[2]], A.to(cache[n[0]].device))


def rebuild_state(clean: ScanInputs, corrupt: ScanInputs, corrupt_mask: torch.Tensor, t_end: int | None = None,
                  abar_shift: int = 0) -> torch.Tensor:
    """h_{t_end} [n,E,N] from h_{-1} = 0 with the clean update at every position, except where
    ``corrupt_mask`` [n, L] is True: there the update ``Ā_t h + B̄_t x_t`` uses the corrupted run's values.

    ``abar_shift=1`` takes the corrupted Ā from position t+1 instead of t, as the authors' Off-by-One notebook
    did (digest 2.6, item 4); 0 is the recurrence as written."""
    n, L = clean.x.shape[:2]
    t_end = L - 1 if t_end is None else t_end
    if corrupt_mask.shape != (n, L):
        raise UniversalityError(f"corrupt_mask must be [n, L] = [{n}, {L}], got {tuple(corrupt_mask.shape)}")
    if not 0 <= t_end < L:
        raise UniversalityError(f"t_end={t_end} outside [0, {L})")
    mask = corrupt_mask.to(clean.x.device)
    h = clean.x.new_zeros(n, clean.x.shape[2], clean.A.shape[1])  # [n,E,N]
    for t in range(t_end + 1):
        A_bar, Bx = clean.terms(t)  # [n,E,N] each
        if bool(mask[:, t].any()):
            A_k, _ = corrupt.terms(min(t + abar_shift, L - 1))
            _, Bx_k = corrupt.terms(t)
            sel = mask[:, t, None, None]  # [n,1,1]
            A_bar, Bx = torch.where(sel, A_k, A_bar), torch.where(sel, Bx_k, Bx)
        h = A_bar * h + Bx  # [n,E,N]
    return h


# ------------------------------------------------------------------------------------ position sets
def history(batch: Batch) -> list[int]:
    """Every position before the last: the state-history patch h_T = Ā_T h^corr_{T-1} + B̄_T x_T."""
    return list(range(batch.last))


def at(anchor: str, offset: int = 0) -> Callable[[Batch], torch.Tensor]:
    """One position per prompt, relative to ``anchor`` ("a", "b" or "last"): e.g. ``at("b", 1)`` is B+1."""
    if anchor not in ("a", "b", "last"):
        raise UniversalityError(f"anchor must be 'a', 'b' or 'last', got {anchor!r}")

    def fn(batch: Batch) -> torch.Tensor:
        base = {"a": batch.pos_a, "b": batch.pos_b}.get(anchor)
        if base is None:
            base = torch.full_like(batch.pos_a, batch.last)
        return base + offset

    fn.__name__ = f"{anchor}{offset:+d}"
    return fn


# ------------------------------------------------------------------------------------ experiments
def state_patching(model, prompts: InductionPrompts, layers=None, position_sets: "dict[str, Callable] | None" = None,
                   corruption: str = "b", abar_shift: int = 0, progress: bool = True,
                   experiment: str = "SSM state -> logits") -> Effects:
    """For each layer and each named position set, the last-position state rebuilt with the corrupted
    update at those positions (:func:`rebuild_state`), other layers' last states frozen to clean.

    ``position_sets`` maps a label to a function of the batch giving positions (default: ``{"history":
    history}``, the authors' layer sweep). Grid: layers x position sets. The off-by-one sweep is
    ``position_sets={f"B+{k}": at("b", k) for k in range(4)}``."""
    _check(model, prompts)
    layers = _layers(model, layers)
    sets = position_sets or {"history": history}
    T = prompts.last
    nl = model.cfg.n_layers
    names = [h_name(l, T) for l in range(nl)] + [n for l in layers for n in scan_names(l)]
    comps = [(l, s) for l in layers for s in sets]

    def make(comp, b):
        l, label = comp
        hooks = [patch(h_name(k, T), b.clean_cache[h_name(k, T)]) for k in range(nl) if k != l]  # freeze
        mask = position_mask(sets[label](b), len(b.clean), T + 1)
        h = rebuild_state(scan_inputs(model, b.clean_cache, l), scan_inputs(model, b.corrupt_cache, l), mask, T,
                          abar_shift=abar_shift)
        hooks.append(set_value(h_name(l, T), h))
        return hooks

    labels = [f"layer {l}" if len(sets) == 1 else f"layer {l} @{s}" for l, s in comps]
    return sweep(model, prompts, corruption, names, comps, make, labels, experiment,
                 rows=[f"layer {l}" for l in layers], cols=list(sets), run_kwargs=EXACT, progress=progress,
                 meta={"abar_shift": abar_shift}, start_layer=lambda comp: comp[0])


def y_to_logits(model, prompts: InductionPrompts, layers=None, corruption: str = "no_repeat",
                progress: bool = True) -> Effects:
    """Each layer's y = h·C at the last position from the corrupted run (default: no repeated A), the
    other layers' y there frozen to clean. Grid: layers x 1."""
    _check(model, prompts)
    layers = _layers(model, layers)
    nl = model.cfg.n_layers
    names = [f"blocks.{l}.hook_y" for l in range(nl)]

    def make(l, b):
        hooks = [patch(names[k], b.clean_cache[names[k]], b.last) for k in range(nl) if k != l]
        hooks.append(patch(names[l], b.corrupt_cache[names[l]], b.last))
        return hooks

    return sweep(model, prompts, corruption, names, layers, make, [f"layer {l}" for l in layers], "y -> logits",
                 rows=[f"layer {l}" for l in layers], cols=["y"], progress=progress,  # no state hook: fast scan
                 start_layer=lambda l: l)


def conv_to_state_to_logits(model, prompts: InductionPrompts, layer: int, out_offsets: Sequence[int] = (0, 1, 2),
                            lags: Sequence[int] | None = None, corruption: str = "ab", anchor: str = "b",
                            progress: bool = True) -> Effects:
    """In ``layer``, the conv output at position ``anchor + o`` recomputed with the conv input x_in at
    ``anchor + o - k`` from the corrupted run (default: A and B replaced), for every ``o`` in ``out_offsets``
    and lag ``k`` in ``lags`` (default 0..K-1); later layers' last states frozen to clean.
    Grid: output offsets x lags. Rows whose input position falls before the sequence start are left
    unpatched (the conv reads zero padding there, which no token can change)."""
    _check(model, prompts)
    (layer,) = _layers(model, [layer])
    K = model.cfg.d_conv
    lags = list(range(K)) if lags is None else [int(k) for k in lags]
    if any(not 0 <= k < K for k in lags):
        raise UniversalityError(f"lags {lags}: the conv reads lags 0..{K - 1}")
    T = prompts.last
    nl = model.cfg.n_layers
    blk = model.blocks[layer]
    x_name, c_name = f"blocks.{layer}.hook_in_proj", f"blocks.{layer}.hook_conv"
    later = [h_name(l, T) for l in range(layer + 1, nl)]
    comps = [(o, k) for o in out_offsets for k in lags]
    where = at(anchor)

    def make(comp, b):
        o, k = comp
        p_out = where(b) + o  # [n]
        if bool((p_out > T).any()):
            raise UniversalityError(f"conv output offset {o} runs past the end of the prompt")
        x_in = b.clean_cache[x_name].clone()  # [n,L,E]
        p_in = p_out - k
        rows = torch.nonzero(p_in >= 0).flatten()
        x_in[rows.to(x_in.device), p_in[rows].to(x_in.device)] = b.corrupt_cache[x_name][rows.to(x_in.device),
                                                                                          p_in[rows].to(x_in.device)]
        conv = causal_conv1d(x_in, blk.conv1d.weight, blk.conv1d.bias)  # [n,L,E]
        value = conv[torch.arange(len(p_out), device=conv.device), p_out.to(conv.device)]  # [n,E]
        hooks = [set_value(c_name, value, p_out)]
        hooks += [patch(n, b.clean_cache[n]) for n in later]
        return hooks

    sign = lambda v: f"{anchor.upper()}{v:+d}" if v else anchor.upper()  # noqa: E731
    labels = [f"conv@{sign(o)} <- x_in@{sign(o - k)}" for o, k in comps]
    return sweep(model, prompts, corruption, [x_name] + later, comps, make, labels,
                 f"layer {layer}: conv input -> conv -> state -> logits",
                 rows=[f"conv @{sign(o)}" for o in out_offsets], cols=[f"lag {k}" for k in lags], run_kwargs=EXACT,
                 progress=progress, meta={"layer": layer, "anchor": anchor, "out_offsets": list(out_offsets),
                                          "lags": lags}, start_layer=lambda comp: layer)
