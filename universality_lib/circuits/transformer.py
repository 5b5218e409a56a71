"""Path patching of the Transformer's induction circuit, per attention head (paper digest 2.6, Pythia).

A head's output before W_O is ``blocks.{l}.attn.hook_z`` [n, L, H, d]; patching it for one head index
changes exactly that head's contribution to the residual stream.

1. :func:`head_to_logits`: for every head (l, h), its z at the **last** position is taken from a fresh
   random sequence, while every other head's z at the last position is frozen to its clean value. What
   survives is the head's path to the logits that does not pass through another head at that position
   (the direct path, and the MLPs). The induction head is the one whose patch lowers the B logit most.
2. :func:`head_to_head_to_logits`: for every earlier head (l, h), its z at **position B** is taken from the
   corrupted run (other heads at B frozen to clean); the model runs up to the *receiver* (the induction head)
   and its z at the last position is recorded; that value alone is then patched into a clean run with the
   other last-position heads frozen. This isolates sender -> receiver (through its keys/values at B) ->
   logits. The previous-token head is the sender whose patch lowers the B logit most.

:func:`attention_scores` and :func:`attention_patterns` give the attention the two heads pay where the
circuit says they should (last -> B for the induction head, B -> A for the previous-token head).

Glossary: ``l`` layer, ``h`` head, ``n`` prompts, ``L`` positions, ``H`` heads per layer, ``d`` d_head.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UniversalityError
from .effects import Effects
from ..runtime import model_device
from .patching import freeze, patch, recorder, run_patched, sweep
from .task import InductionPrompts


def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def parse_head(label: str) -> tuple[int, int]:
    """``"L1H3"`` -> (1, 3)."""
    try:
        l, h = label[1:].split("H")
        return int(l), int(h)
    except Exception:
        raise UniversalityError(f"not a head label like 'L1H3': {label!r}") from None


def best_head(effects: Effects, min_layer: int = 1, metric: str = "logit_B") -> str:
    """The head with the largest decrease of ``metric`` among layers >= ``min_layer`` (an induction head
    needs an earlier head to compose with, so the receiver of :func:`head_to_head_to_logits` sits in layer 1
    or above)."""
    for i in effects.order(metric, "down"):
        if parse_head(effects.labels[int(i)])[0] >= min_layer:
            return effects.labels[int(i)]
    raise UniversalityError(f"no head in layers >= {min_layer} among {effects.labels}")


def _check(model, prompts: InductionPrompts):
    if not hasattr(model.cfg, "n_heads") or z_name(0) not in model.hook_dict:
        raise UniversalityError("Transformer path patching needs a HookedTransformer (attn.hook_z per layer)")
    if prompts.tokens.shape[1] > model.cfg.n_ctx:
        raise UniversalityError(f"prompts of {prompts.tokens.shape[1]} tokens exceed the model context {model.cfg.n_ctx}")


def head_to_logits(model, prompts: InductionPrompts, corruption: str = "random", progress: bool = True) -> Effects:
    """Effect of each head's output at the last position on the B metric (other heads frozen there).
    Grid: layers x heads."""
    _check(model, prompts)
    nl, nh = model.cfg.n_layers, model.cfg.n_heads
    names = [z_name(l) for l in range(nl)]
    comps = [(l, h) for l in range(nl) for h in range(nh)]

    def make(comp, b):
        l, h = comp
        hooks = freeze(names, b.clean_cache, b.last)  # every head at the last position -> clean
        hooks.append(patch(z_name(l), b.corrupt_cache[z_name(l)], b.last, index=(h,)))  # this head -> corrupt
        return hooks

    return sweep(model, prompts, corruption, names, comps, make, [head_label(*c) for c in comps],
                 "head -> logits", rows=[f"L{l}" for l in range(nl)], cols=[f"H{h}" for h in range(nh)],
                 progress=progress)


def head_to_head_to_logits(model, prompts: InductionPrompts, receiver: "tuple[int, int] | str",
                           corruption: str = "random", sender_offset: int = 0, progress: bool = True) -> Effects:
    """Effect of each earlier head's output at position B + ``sender_offset`` on the B metric, carried only
    through the ``receiver`` head at the last position. Grid: sender layers (< receiver's) x heads.

    ``sender_offset=1`` patches at B+1 instead (the Transformer control of the Off-by-One chapter)."""
    _check(model, prompts)
    rl, rh = parse_head(receiver) if isinstance(receiver, str) else receiver
    nl, nh = model.cfg.n_layers, model.cfg.n_heads
    if not (0 < rl < nl and 0 <= rh < nh):
        raise UniversalityError(f"receiver L{rl}H{rh}: need a head in layers 1..{nl - 1} (senders sit below it)")
    names = [z_name(l) for l in range(nl)]
    comps = [(l, h) for l in range(rl) for h in range(nh)]

    def make(comp, b):
        l, h = comp
        at = b.pos_b + sender_offset  # [n]
        store: dict = {}
        step1 = freeze(names[:rl + 1], b.clean_cache, at)  # every head at the sender position -> clean
        step1.append(patch(z_name(l), b.corrupt_cache[z_name(l)], at, index=(h,)))  # this sender -> corrupt
        step1.append(recorder(z_name(rl), store))
        run_patched(b.model, b.clean.tokens, step1, stop_at_layer=rl + 1)
        hooks = freeze(names, b.clean_cache, b.last)  # every head at the last position -> clean ...
        hooks.append(patch(z_name(rl), store[z_name(rl)], b.last, index=(rh,)))  # ... but the receiver's
        return hooks

    return sweep(model, prompts, corruption, names, comps, make, [head_label(*c) for c in comps],
                 f"head @B{sender_offset:+d} -> L{rl}H{rh} -> logits" if sender_offset else f"head @B -> L{rl}H{rh} -> logits",
                 rows=[f"L{l}" for l in range(rl)], cols=[f"H{h}" for h in range(nh)], progress=progress,
                 meta={"receiver": head_label(rl, rh), "sender_offset": sender_offset})


@torch.no_grad()
def attention_scores(model, prompts: InductionPrompts, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Mean attention weights of every head on the circuit's positions: ``"last->B"`` (what an induction head
    does) and ``"B->A"`` (what a previous-token head does at B). Each [n_layers, n_heads]."""
    _check(model, prompts)
    nl = model.cfg.n_layers
    sums = {"last->B": 0.0, "B->A": 0.0}
    for b in prompts.batches(batch_size):
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(nl)]
        _, cache = model.run_with_cache(b.tokens.to(model_device(model)), names_filter=lambda n: n in names)
        dev = model_device(model)
        rows, pb, pa = torch.arange(len(b), device=dev), b.pos_b.to(dev), b.pos_a.to(dev)
        ind = torch.stack([cache[n][rows, :, b.last, pb].float().cpu() for n in names])  # [nl, n, H]
        prev = torch.stack([cache[n][rows, :, pb, pa].float().cpu() for n in names])  # [nl, n, H]
        sums["last->B"] = sums["last->B"] + ind.sum(1)
        sums["B->A"] = sums["B->A"] + prev.sum(1)
    return {k: (v / len(prompts)).numpy() for k, v in sums.items()}


@torch.no_grad()
def attention_patterns(model, tokens: torch.Tensor, heads: list) -> tuple[torch.Tensor, list[str]]:
    """Attention patterns [len(heads), L, L] (query, key) of the named heads on one prompt ``tokens`` [L],
    and their labels: the arguments of ``circuitsvis.attention.attention_heads``."""
    hs = [parse_head(h) if isinstance(h, str) else tuple(h) for h in heads]
    names = {f"blocks.{l}.attn.hook_pattern" for l, _ in hs}
    _, cache = model.run_with_cache(tokens.reshape(1, -1).to(model_device(model)), names_filter=lambda n: n in names)
    pats = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, h].float().cpu() for l, h in hs])
    return pats, [head_label(l, h) for l, h in hs]
