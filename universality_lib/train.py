"""One training loop for both families (nanoGPT-style, a few hundred lines).

AdamW with linear warmup then cosine decay to ``min_lr_frac * lr``, gradient clipping, bf16 autocast
on a GPU, a tqdm bar, a JSONL loss log, and checkpoints every ``checkpoint_every`` steps that a later
run resumes from exactly: the data order is a pure function of (stream, batch, context, seed, step),
so a resumed run sees the same batches an uninterrupted one would have.

Curriculum (disclosed in the book): with ``repeat_frac > 0``, that fraction of the rows of every batch
carries ``repeat_span`` random tokens (drawn from the corpus' frequent tokens) that repeat: either the
whole row is that span tiled (``repeat_mode="sequence"``: the paper's induction task itself) or the span
is placed twice at random offsets inside a natural-text row (``"span"``); in "sequence" mode a share
``repeat_natural_frac`` of those rows tiles the row's own first tokens instead (copying real text), and a share
``repeat_pair_frac`` of the random ones are pair rows instead (:func:`add_pair_rows`: a short span and its
copy at random offsets among random tokens). The other rows are natural text. This gives small
models enough repeated structure to form induction circuits in a CPU budget (see the zoo section of chapter 1
and the zoo issue's note for what was tried).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import cache
from .corpus import TokenStream, iter_batches
from .errors import UniversalityError
from .presets import TrainConfig
from .runtime import default_device, resolve_device, set_threads  # noqa: F401  (train.resolve_device etc.: old paths)


CHECKPOINT = "checkpoint"  # the folder in a run's out_dir that holds the last checkpoint (model, optimizer, state)


def check_max_steps(max_steps) -> None:
    """``max_steps``: None (the whole run) or a whole number >= 1."""
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise UniversalityError(f"max_steps must be a whole number >= 1 (the steps to train in this sitting) or "
                                f"None (train to the end), got {max_steps!r}.")


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from ``cfg.lr`` down to ``min_lr_frac * cfg.lr`` (a
    family's own peak: pass ``cfg.for_family(...)``, as :func:`train` does)."""
    peak = cfg.lr
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    floor = peak * cfg.min_lr_frac
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def max_period(cfg: TrainConfig, step: int, total: int) -> int:
    """The longest period a "sequence" row may have at ``step``: grows from 2 to ``repeat_span``."""
    if cfg.repeat_ramp_frac <= 0:
        return cfg.repeat_span
    frac = step / max(1.0, cfg.repeat_ramp_frac * total)
    return max(2, min(cfg.repeat_span, int(round(2 + frac * (cfg.repeat_span - 2)))))


def add_repeats(batch: torch.Tensor, cfg: TrainConfig, vocab: torch.Tensor, step: int,
                total: int | None = None) -> torch.Tensor:
    """Put repeated random tokens into ``repeat_frac`` of the rows (deterministic in ``step``).

    ``total``: the run's number of steps (for the period ramp; None: no ramp). In "sequence" mode the last
    ``cfg.repeat_pair_frac`` of the random rows are pair rows (:func:`add_pair_rows`); at 0 the batches are exactly
    those of a recipe without pair rows."""
    if cfg.repeat_frac <= 0:
        return batch
    B, T = batch.shape
    S = cfg.repeat_span
    if cfg.repeat_mode not in ("span", "sequence"):
        raise UniversalityError(f"repeat_mode {cfg.repeat_mode!r}: choose 'span' or 'sequence'")
    need = 2 * S if cfg.repeat_mode == "sequence" else 2 * S + 1  # sequence: BOS + a copy + at least S-1 more
    if need > T:
        raise UniversalityError(f"repeat_span {S} is too long for context {T}: need {need} <= context")
    if isinstance(cfg.tile_offset_max, bool) or not isinstance(cfg.tile_offset_max, int) or cfg.tile_offset_max < 0:
        raise UniversalityError(f"tile_offset_max {cfg.tile_offset_max!r}: a whole number of tokens >= 0 "
                                f"(0: every tiled row's first copy starts right after BOS)")
    if cfg.repeat_pair_frac > 0 and not 2 <= cfg.pair_max_span <= S // 2:
        raise UniversalityError(f"pair_max_span {cfg.pair_max_span}: a pair row's span and its copy must fit in one "
                                f"window of repeat_span {S} tokens; choose 2 <= pair_max_span <= {S // 2}")
    g = torch.Generator().manual_seed(cfg.data_seed * 1_000_003 + step)
    n = int(round(cfg.repeat_frac * B))
    batch = batch.clone()
    if cfg.repeat_mode == "sequence":  # the whole row after BOS: span, span, ... (tiled)
        hi = max_period(cfg, step, total) if total else S
        lo = min(max(1, cfg.repeat_min_period), hi)
        n_natural = int(round(cfg.repeat_natural_frac * n))  # the first rows of the n copy the row's own text
        n_pair = int(round(cfg.repeat_pair_frac * (n - n_natural)))  # the last rows of the n: pair rows
        for r in range(n - n_pair):
            # a random period per row: a fixed period lets a model copy from a fixed offset instead of
            # doing induction (measured: trained at period 63 only, a 2-layer T failed the period-64 check);
            # short periods first (the ramp) give a Mamba a gradient toward copying (measured: without them
            # a 4-layer M stayed at the unigram loss on pure repeated rows for 3.5M tokens)
            S_r = int(torch.randint(lo, hi + 1, (1,), generator=g))
            # the first copy starts after `off` tokens (0: right after BOS); room is left for half a second copy
            off = (int(torch.randint(0, min(cfg.tile_offset_max, T - 1 - S_r - S_r // 2) + 1, (1,), generator=g))
                   if cfg.tile_offset_max > 0 else 0)
            if r < n_natural:  # natural text: the row's S_r tokens after the offset, tiled (copying real text)
                span = batch[r, 1 + off:1 + off + S_r].clone()
            else:  # random tokens: a random prefix of `off` tokens, then the span tiled
                span = vocab[torch.randint(0, len(vocab), (S_r,), generator=g)]
                if off:
                    batch[r, 1:1 + off] = vocab[torch.randint(0, len(vocab), (off,), generator=g)]
            batch[r, 1 + off:] = span.repeat(-(-(T - 1 - off) // S_r))[:T - 1 - off]
        for r in range(n - n_pair, n):
            batch[r, 1:] = add_pair_rows(T - 1, S, vocab, g, max_span=cfg.pair_max_span)
        return batch
    for r in range(n):
        span = vocab[torch.randint(0, len(vocab), (S,), generator=g)]
        a = int(torch.randint(1, T - 2 * S + 1, (1,), generator=g))  # first copy in [1, T-2S]
        b = int(torch.randint(a + S, T - S + 1, (1,), generator=g))  # second copy after the first
        batch[r, a:a + S] = span
        batch[r, b:b + S] = span
    return batch


def describe_curriculum(cfg: TrainConfig) -> str:
    """One sentence (markdown) of the curriculum both families train with, a Mamba's own fields named apart
    (chapter 1 prints it under the training table)."""
    if cfg.repeat_frac <= 0:
        return "no curriculum: every row is natural text"
    if cfg.repeat_mode != "sequence":
        return f"**{cfg.repeat_frac:.0%}** of the rows carry a random span of {cfg.repeat_span} tokens placed twice"

    def tiles(c: TrainConfig) -> str:
        parts = []
        if c.tile_offset_max:
            parts.append(f"the first copy starts after 0 to {c.tile_offset_max} tokens (the row's own text or random "
                         f"tokens), not right after BOS")
        if c.repeat_pair_frac:
            parts.append(f"{c.repeat_pair_frac:.0%} of the random rows are pair rows instead (in every window of "
                         f"{c.repeat_span} random tokens, a span of 2 to {c.pair_max_span} tokens and its copy at "
                         f"random places)")
        return "; ".join(parts)

    ramp = (f", the longest period growing from 2 to {cfg.repeat_span} over the first {cfg.repeat_ramp_frac:.0%} of "
            f"the steps" if cfg.repeat_ramp_frac > 0 else "")
    text = (f"**{cfg.repeat_frac:.0%}** of the rows carry a sequence tiled over the row, its period drawn in "
            f"[{cfg.repeat_min_period}, {cfg.repeat_span}]{ramp}; {cfg.repeat_natural_frac:.0%} of those rows tile the "
            f"row's own text, the others random tokens")
    shared, mamba = tiles(cfg.for_family("transformer")), tiles(cfg.for_family("mamba"))
    if shared:
        text += f"; {shared}"
    if mamba != shared:
        text += f"; for the Mamba only, {mamba}" if mamba else "; the Mamba trains without them"
    return text


def add_pair_rows(length: int, window: int, vocab: torch.Tensor, g: torch.Generator,
                  min_span: int = 2, max_span: int = 8) -> torch.Tensor:
    """One pair row: LongTensor [length] of random ``vocab`` tokens, cut into windows of ``window`` tokens; in each
    window a random span of ``s`` in [min_span, max_span] tokens sits at a random offset and again ``gap`` tokens
    later, the gap uniform in [s, window - s] (chapter 5's prompt has one A B pair in 64 random tokens; here the first
    copy is anywhere, not at the row's start as in a tiled row)."""
    row = vocab[torch.randint(0, len(vocab), (length,), generator=g)]
    for start in range(0, length - 2 * max_span + 1, window):
        w = min(window, length - start)
        s = int(torch.randint(min_span, max_span + 1, (1,), generator=g))
        gap = int(torch.randint(s, w - s + 1, (1,), generator=g))
        a = start + int(torch.randint(0, w - gap - s + 1, (1,), generator=g))
        row[a + gap:a + gap + s] = row[a:a + s]
    return row


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    wall_seconds: float = 0.0
    last_loss: float = float("nan")


def configure_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over two groups, weight decay on the matrices only (nanoGPT's ``GPT.configure_optimizers``): no decay
    on embeddings, biases, norms, and Mamba's ``A_log`` and ``D`` (as mamba_ssm's ``_no_weight_decay``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.dim() < 2 or "embed" in name.lower() or name.endswith(("A_log", ".D"))
        (no_decay if skip else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")


def _save_checkpoint(model, opt, state: TrainState, folder: Path, save_model) -> None:
    """Atomically replace ``folder`` with model + optimizer + state."""
    with cache.building(folder) as tmp:
        save_model(model, tmp)
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        cache.atomic_write_json(tmp / "state.json", asdict(state))


def _load_checkpoint(model, opt, folder: Path, load_weights) -> TrainState:
    cache.verify_manifest(folder, required=("model.safetensors", "optimizer.pt", "state.json"),
                          fix=f"delete {folder} to start this run again from step 0")
    load_weights(model, folder)
    opt.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    return TrainState(**json.loads((folder / "state.json").read_text()))


def train(model, stream: TokenStream, cfg: TrainConfig, out_dir: str | Path, *, seed: int,
          save_model, load_weights, repeat_vocab: torch.Tensor | None = None,
          eval_fn=None, device: torch.device | None = None, progress: bool = True,
          max_steps: int | None = None) -> TrainState:
    """Train ``model`` on ``stream`` for ``cfg.tokens`` tokens, resuming from ``out_dir/checkpoint``.

    ``save_model(model, folder)`` / ``load_weights(model, folder)`` are the family's own (de)serialisers.
    ``eval_fn(model) -> dict`` is called every ``eval_every`` steps and logged. ``max_steps`` stops early
    (a sitting of a longer resumable run). Returns the final state; the log is ``out_dir/log.jsonl``.
    One run at a time per ``out_dir``: a second one waits for the first, then resumes from its checkpoint.
    Ctrl-C stops at once; the last checkpoint is kept, and running again resumes from it.
    """
    device = resolve_device(device)
    check_max_steps(max_steps)
    if repeat_vocab is None and cfg.repeat_frac > 0:
        raise UniversalityError("repeat_frac > 0 needs repeat_vocab (the tokens to draw random spans from)")
    out_dir = cache.writable_dir(out_dir, "the training folder", "choose another --work-dir (work_dir=)")
    with cache.locked(out_dir), torch.enable_grad():  # a notebook may have switched gradients off
        return _train(model, stream, cfg, out_dir, seed, save_model, load_weights, repeat_vocab, eval_fn, device,
                      progress, max_steps)


def _check_recipe(out_dir: Path, cfg: TrainConfig, seed: int) -> None:
    """A run resumes only under the recipe it began with: ``out_dir/recipe.json`` holds the resolved config and seed
    (written at the first sitting); another recipe is one clear error, before any step (a changed preset would
    otherwise continue the old run with other batches)."""
    recipe = json.loads(json.dumps({"seed": seed, "train": asdict(cfg)}))
    path = out_dir / "recipe.json"
    if not path.exists():
        cache.atomic_write_json(path, recipe)
        return
    began = json.loads(path.read_text())
    default = json.loads(json.dumps(asdict(TrainConfig())))  # a field newer than the run: it began at the default
    diff = sorted(k for k in set(began["train"]) | set(recipe["train"])
                  if began["train"].get(k, default.get(k)) != recipe["train"].get(k, default.get(k)))
    if began["seed"] != seed:
        diff.insert(0, "seed")
    if diff:
        raise UniversalityError(f"the run in {out_dir} began with another recipe (differs in {', '.join(diff)}): "
                                f"train with the recipe it began with, or delete {out_dir} to start again")


def _train(model, stream, cfg, out_dir: Path, seed, save_model, load_weights, repeat_vocab, eval_fn, device,
           progress, max_steps) -> TrainState:
    """(the run's lock held) :func:`train`."""
    from tqdm import tqdm

    from .models import family

    model.to(device).train()
    cfg = cfg.for_family(family(model))  # a Mamba's own lr / curriculum fields (TrainConfig.mamba_*)
    _check_recipe(out_dir, cfg, seed)
    total = cfg.steps
    opt = configure_optimizer(model, cfg, device)
    ckpt = out_dir / CHECKPOINT
    cache.recover(ckpt)  # a run killed while replacing its checkpoint left the previous one aside
    state = TrainState()
    if ckpt.exists():
        state = _load_checkpoint(model, opt, ckpt, load_weights)
        model.to(device)
        print(f"[train] resuming from step {state.step}/{total} ({state.tokens:,} tokens)")
    _trim_log(out_dir / "log.jsonl", state.step)
    saved = state.step
    seed_data = cfg.data_seed + 7919 * seed
    batches = iter_batches(stream, cfg.batch_size, cfg.context, seed_data, start_step=state.step)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    log = open(out_dir / "log.jsonl", "a")
    stop = total if max_steps is None else min(total, state.step + max_steps)
    # few, slow updates: in an executed notebook every update is kept as a line of output
    bar = tqdm(total=total, initial=state.step, disable=not progress, desc=out_dir.name, unit="step",
               mininterval=10, miniters=max(1, total // 20))
    t0 = time.time()
    wall0 = state.wall_seconds
    try:
        while state.step < stop:
            lr = lr_at(state.step, total, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = add_repeats(next(batches), cfg, repeat_vocab, state.step, total).to(device)
            with autocast:
                loss = model(batch, return_type="loss")
            if not torch.isfinite(loss):
                raise UniversalityError(f"loss became {loss.item()} at step {state.step}: lower the learning "
                                        f"rate; the last good checkpoint is in {ckpt}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            state.step += 1
            state.tokens += batch.numel()
            state.last_loss = loss.item()
            state.wall_seconds = wall0 + time.time() - t0
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == stop:
                row = {"step": state.step, "tokens": state.tokens, "loss": state.last_loss, "lr": lr,
                       "grad_norm": float(gnorm), "wall": round(state.wall_seconds, 2)}
                if eval_fn is not None and (state.step % cfg.eval_every == 0 or state.step == total):
                    model.eval()
                    row.update(eval_fn(model))
                    model.train()
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{state.last_loss:.3f}")
            if state.step % cfg.checkpoint_every == 0 or state.step == stop:
                _save_checkpoint(model, opt, state, ckpt, save_model)
                saved = state.step
    except KeyboardInterrupt:
        print(f"\n[train] interrupted at step {state.step}/{total}; the last checkpoint (step {saved}) is in {ckpt}: "
              f"run the same command again to resume from it.", flush=True)
        raise
    finally:
        bar.close()
        log.close()
    model.eval()
    return state


def _log_rows(path: Path) -> list[dict]:
    """The rows of a JSONL loss log, in file order (a line cut short by a kill is skipped)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def _trim_log(path: Path, step: int) -> None:
    """Keep the log rows of steps <= ``step``: a resumed run logs the steps after its checkpoint again."""
    if path.exists():
        keep = [r for r in _log_rows(path) if r["step"] <= step]
        cache.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def read_log(out_dir: str | Path) -> list[dict]:
    """The JSONL loss log of a run, one row per step (later rows win when a log repeats a step)."""
    rows = {r["step"]: r for r in _log_rows(Path(out_dir) / "log.jsonl")}
    return [rows[k] for k in sorted(rows)]

