"""Path patching, written once for both families as small functions over hook names.

Activation patching runs the model on the **clean** prompt and replaces some activations by their values
on a **corrupted** prompt; the change of the metric measures how much the clean result depends on them.
*Path* patching restricts that dependence to chosen paths: every other component that could carry the
effect onward is **frozen** to its clean value, so only the paths that avoid the frozen components survive.
For example, "head -> logits" patches one head's output at the last position and freezes every other
head there, leaving the head's direct path (and the MLP at that position) to the logits.

A *hook* here is a TransformerLens forward hook, ``(hook_name, fn(activation, hook) -> activation)``; lists
of hooks are passed to ``model.run_with_hooks``. Both ``HookedTransformer`` and the library's
``HookedMamba`` accept them, under the same names (``blocks.{l}.attn.hook_z``, ``blocks.{l}.hook_h.{t}``,
``blocks.{l}.hook_conv`` ...). Several hooks on one point run in the order given.

Positions. Most patches act at one position per prompt (the last token, B, ...), which differs from row to
row. ``positions`` is therefore any of: ``None`` (every position, or a hook without a position axis such as
``hook_h.{t}``), an int (the same for all rows; negative counts from the end), a list of ints (same), a LongTensor
[n] (one per row) or [n, k] (k per row). Out-of-range tensor entries (e.g. a conv input before the
sequence start) are skipped for that row.

Glossary: ``n`` prompts in the batch, ``L`` positions, ``k`` positions per row, ``H`` heads, ``d`` d_head.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UniversalityError
from ..runtime import model_device
from .effects import Effects
from .precision import RunningDelta
from .task import InductionPrompts, target_scores

Hook = tuple  # (hook_name, fn)


def row_positions(positions, n: int, L: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, pos), both LongTensor [m]: the (row, position) pairs named by ``positions`` (see the module
    docstring), with out-of-range pairs dropped."""
    if isinstance(positions, int):
        pos = torch.full((n, 1), positions, dtype=torch.long)
    elif torch.is_tensor(positions):
        pos = positions.long().cpu()
        if pos.dim() == 1:
            pos = pos[:, None]
        if pos.dim() != 2 or pos.shape[0] != n:
            raise UniversalityError(f"positions tensor of shape {tuple(positions.shape)} does not match {n} rows")
    elif isinstance(positions, Sequence):
        pos = torch.tensor(list(positions), dtype=torch.long).reshape(1, -1).expand(n, -1)
    else:
        raise UniversalityError(f"positions must be an int, a list of ints or a LongTensor, got {type(positions)}")
    if not torch.is_tensor(positions):  # ints count from the end when negative; tensor entries < 0 are skipped
        pos = torch.where(pos < 0, pos + L, pos)
    rows = torch.arange(n)[:, None].expand_as(pos)
    ok = (pos >= 0) & (pos < L)
    return rows[ok].to(device), pos[ok].to(device)


def position_mask(positions, n: int, L: int) -> torch.Tensor:
    """BoolTensor [n, L], True at the positions named by ``positions`` (None = none)."""
    mask = torch.zeros(n, L, dtype=torch.bool)
    if positions is None:
        return mask
    rows, pos = row_positions(positions, n, L)
    mask[rows, pos] = True
    return mask


def patch(name: str, source: torch.Tensor, positions=None, index: tuple = ()) -> Hook:
    """Hook replacing ``act[row, pos, *index]`` by ``source[row, pos, *index]`` (``source`` has the
    activation's shape, e.g. a cache entry of the corrupted run). ``positions=None`` replaces the whole
    activation (restricted to ``index`` along the dims after batch)."""

    def fn(act, hook):
        out = act.clone()
        src = source.to(act.device, act.dtype)
        if positions is None:
            sl = (slice(None),) + tuple(index)
            out[sl] = src[sl]
            return out
        rows, pos = row_positions(positions, act.shape[0], act.shape[1], act.device)
        out[(rows, pos) + tuple(index)] = src[(rows, pos) + tuple(index)]
        return out

    return (name, fn)


def set_value(name: str, value: torch.Tensor, positions=None, index: tuple = ()) -> Hook:
    """Hook writing ``value`` (one entry per row: [n, ...]) at one position per row (``positions`` an int or
    a LongTensor [n]), or over the whole activation when ``positions`` is None (``value`` then has the
    activation's shape: e.g. a rebuilt state for ``hook_h.{t}``)."""

    def fn(act, hook):
        out = act.clone()
        v = value.to(act.device, act.dtype)
        if positions is None:
            out[(slice(None),) + tuple(index)] = v
            return out
        n = act.shape[0]
        pos = torch.full((n,), positions, dtype=torch.long) if isinstance(positions, int) else positions.long().cpu()
        if pos.dim() != 1 or pos.shape[0] != n:
            raise UniversalityError("set_value: positions must be an int or a LongTensor [n] (one per row)")
        pos = torch.where(pos < 0, pos + act.shape[1], pos).to(act.device)
        out[(torch.arange(n, device=act.device), pos) + tuple(index)] = v
        return out

    return (name, fn)


def freeze(names: Iterable[str], clean: dict, positions=None) -> list[Hook]:
    """Hooks holding every named activation at ``positions`` to its clean value (from the clean cache)."""
    return [patch(n, clean[n], positions) for n in names]


def recorder(name: str, store: dict) -> Hook:
    """Hook that saves the activation it sees into ``store[name]`` (unchanged)."""

    def fn(act, hook):
        store[name] = act.detach().clone()
        return act

    return (name, fn)


@torch.no_grad()
def run_cache(model, tokens: torch.Tensor, names: Iterable[str], **run_kwargs) -> tuple[torch.Tensor, dict]:
    """Logits [n, L, V] and ``{name: activation}`` for the named hooks (a plain dict of tensors)."""
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in model.hook_dict]
    if unknown:
        raise UniversalityError(f"no hook point(s) {unknown[:3]} in this model")
    logits, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=lambda n: n in set(names),
                                         **run_kwargs)
    return logits, {n: cache[n] for n in names}


@torch.no_grad()
def run_patched(model, input: torch.Tensor, hooks: list[Hook], **run_kwargs) -> torch.Tensor:
    """Logits of ``model`` on ``input`` (tokens, or with ``start_at_layer`` the residual entering that block) with
    ``hooks`` applied (or the residual when ``stop_at_layer`` is given)."""
    for n, _ in hooks:
        if n not in model.hook_dict:
            raise UniversalityError(f"no hook point {n!r} in this model")
    return model.run_with_hooks(input.to(model_device(model)), fwd_hooks=list(hooks), **run_kwargs)


def resid_pre_name(layer: int) -> str:
    """The residual stream entering block ``layer`` (both families)."""
    return f"blocks.{layer}.hook_resid_pre"


# ------------------------------------------------------------------------------------------ the sweep
class Batch:
    """What one batch of a sweep gives a component's hook builder."""

    def __init__(self, model, clean: InductionPrompts, corrupt: InductionPrompts, clean_cache: dict,
                 corrupt_cache: dict, run_kwargs: dict):
        self.model = model
        self.clean = clean  # InductionPrompts (CPU)
        self.corrupt = corrupt
        self.clean_cache = clean_cache  # {name: tensor} on the model's device
        self.corrupt_cache = corrupt_cache
        self.run_kwargs = run_kwargs
        self.last = clean.last  # int, the last position
        self.pos_a = clean.pos_a  # [n] CPU
        self.pos_b = clean.pos_b


def targets_of(prompts: InductionPrompts, corrupt: InductionPrompts | None) -> dict[str, torch.Tensor]:
    """The tokens whose logit is measured: B, and B' when the corruption replaced B."""
    out = {"B": prompts.b}
    if corrupt is not None and corrupt.b_prime is not None:
        out["B'"] = corrupt.b_prime
    return out


def sweep(model, prompts: InductionPrompts, corruption: str, cache_names: Iterable[str], components: Sequence,
          make_hooks: Callable[[object, Batch], list[Hook]], labels: Sequence[str], experiment: str,
          rows=None, cols=None, run_kwargs: dict | None = None, progress: bool = True, meta: dict | None = None,
          start_layer: Callable[[object], int] | None = None) -> Effects:
    """Patch each component in turn over all prompts; returns the per-prompt metrics as :class:`Effects`.

    For each batch: the clean and the corrupted prompts run once with ``cache_names`` cached; the clean
    metric comes from the clean run; then for every component ``make_hooks(component, batch)`` gives the
    hooks of one patched run on the clean prompt.

    ``start_layer(component)``, when given, is the first block that component's hooks change. Every block
    before it computes exactly what the clean run did, so its patched run starts there, from the clean
    run's ``blocks.{l}.hook_resid_pre`` (``start_at_layer=l``, as in TransformerLens), instead of from the
    tokens: the same numbers for fewer blocks. Hooks on earlier blocks are then never called, so they must be
    freezes to clean values (no-ops there); the tests compare every such sweep with a run from the tokens.

    After every batch the precision rule of ``prompts.config`` (:meth:`TaskConfig.precision`, on ``logit_B``
    decreases) is checked; ``meta["n_needed"]`` is the first count at which it held (None: not within the
    prompts). With ``TaskConfig.stop_early`` the sweep stops there, and the result holds the prompts used.
    """
    run_kwargs = dict(run_kwargs or {})
    if len(labels) != len(components):
        raise UniversalityError("sweep: one label per component")
    first = [0 if start_layer is None else int(start_layer(c)) for c in components]
    if any(not 0 <= f < model.cfg.n_layers for f in first):
        raise UniversalityError(f"sweep: start layers {sorted(set(first))} outside 0..{model.cfg.n_layers - 1}")
    cache_names = list(cache_names) + [resid_pre_name(f) for f in sorted(set(first)) if f > 0]
    corrupt_all = prompts.corrupt(corruption)
    targets = targets_of(prompts, corrupt_all)
    clean_v: dict[str, list] = {f"{k}_{t}": [] for t in targets for k in ("logit", "prob")}
    patched_v: dict[str, list] = {m: [] for m in clean_v}
    rule, running, n_needed = prompts.config.precision(), RunningDelta(len(components)), None
    bs = prompts.config.batch_size
    starts = range(0, len(prompts), bs)
    for s in tqdm(starts, desc=experiment, disable=not progress, leave=False):
        sl = slice(s, s + bs)
        clean, corrupt = prompts.subset(sl), corrupt_all.subset(sl)
        logits, cc = run_cache(model, clean.tokens, cache_names, **run_kwargs)
        _, kc = run_cache(model, corrupt.tokens, cache_names, **run_kwargs)
        batch = Batch(model, clean, corrupt, cc, kc, run_kwargs)
        tg = {t: v[sl] for t, v in targets.items()}
        for t, v in tg.items():
            lg, pr = target_scores(logits, v)
            clean_v[f"logit_{t}"].append(lg.numpy())
            clean_v[f"prob_{t}"].append(pr.numpy())
        per_comp = {m: [] for m in clean_v}
        for comp, f in zip(components, first):
            start = dict(input=cc[resid_pre_name(f)], start_at_layer=f) if f > 0 else dict(input=clean.tokens)
            out = run_patched(model, hooks=make_hooks(comp, batch), **start, **run_kwargs)
            for t, v in tg.items():
                lg, pr = target_scores(out, v)
                per_comp[f"logit_{t}"].append(lg.numpy())
                per_comp[f"prob_{t}"].append(pr.numpy())
        for m in per_comp:
            patched_v[m].append(np.stack(per_comp[m]))  # [C, b]
        running.add(patched_v[rule.metric][-1] - clean_v[rule.metric][-1][None])
        if n_needed is None and rule.resolved(running.delta(), running.se(), running.n):
            n_needed = running.n
            if prompts.config.stop_early:
                break
    clean_np = {m: np.concatenate(v) for m, v in clean_v.items()}
    patched_np = {m: np.concatenate(v, axis=1) for m, v in patched_v.items()}
    info = {"corruption": corruption, "n_prompts": running.n, "n_drawn": len(prompts), "n_needed": n_needed,
            "stop_early": prompts.config.stop_early, "precision_rule": rule.describe(),
            "seq_len": prompts.tokens.shape[1]}
    info.update(meta or {})
    return Effects(experiment, list(labels), clean_np, patched_np, rows=rows, cols=cols, meta=info)
