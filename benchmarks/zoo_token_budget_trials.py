"""Issue 14's held-out loss criterion: would more training tokens bring the shipped Mamba within 3% of its Transformer?

A trial, not the recipe. The shipped M ends its 1,953 steps (16M tokens) at 1.036x T's held-out loss. This script
continues it past that budget on **the next batches of the same data order** (``corpus.iter_batches`` from step
1,953 on, so no batch is seen twice), with the curriculum's ramp complete and a constant learning rate (default: the
rate the shipped run ended at, ``mamba_lr * min_lr_frac``) and a fresh AdamW state (the shipped zoo keeps no
optimizer), whose moments are first estimated over ``--moment-steps`` batches at rate 0. The training steps are
counted on from there (so they start at 1,953 + moment steps).
A longer cosine schedule from scratch is the recipe this stands in for; continuing at the floor rate is the cheaper,
conservative proxy (a schedule that decays over the longer budget spends more of it at higher rates).

Every ``--eval-every`` steps it measures what ``python -m universality_lib check`` measures for M: the held-out loss
and its ratio to the shipped T's, the natural-text induction ratios (English, code), the period-64 check and chapter
5's clean p(B). ``--model T`` is the control: the shipped T continued alike (its own final rate, 2e-4), the ratio
then the shipped M's loss over the continued T's.

    python benchmarks/zoo_token_budget_trials.py [--model M] [--steps 800] [--lr 5e-4] [--threads 1]

Writes ``benchmarks/results/zoo_token_budget_trials.json`` (one entry per lr and steps, merged with earlier runs)
with the probe rows, the load average at the start and the wall time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from universality_lib import corpus, zoo, zoo_check
from universality_lib.presets import get
from universality_lib.train import TrainState, _save_checkpoint, configure_optimizer, read_log, train

from _out import merge_entry

OUT = Path(__file__).parent / "results" / "zoo_token_budget_trials.json"


def probe_fn(p, name: str, other_loss: float):
    """eval_fn for train(): the zoo check's measures of model ``name`` alone, and M's held-out loss over T's, the other
    model's loss (``other_loss``) being the shipped one's."""
    def probe(model) -> dict:
        loss, _ = zoo_check.heldout_loss(model, p)
        ratio = loss / other_loss if name == "M" else other_loss / loss
        out = {"heldout_loss": round(loss, 5), "loss_ratio": round(ratio, 5)}
        for c in zoo_check.criteria(p, {name: model}):
            out[c.criterion] = round(float(c.value), 5)
        return out
    return probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="M", choices=("M", "T"),
                    help="the model to continue (T: the control, does the Transformer gain as much?)")
    ap.add_argument("--steps", type=int, default=800, help="steps past the shipped budget")
    ap.add_argument("--lr", type=float, default=None, help="constant rate (default: the shipped run's final rate)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--moment-steps", type=int, default=50,
                    help="batches that estimate the fresh optimizer's moments at rate 0 before the trial trains")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = get("tiny")
    tok = corpus.load_tokenizer(p)
    other = "T" if args.model == "M" else "M"
    family = zoo.spec(p, args.model)[0]
    model = zoo.load(p, args.model)
    shipped = p.train.for_family(family)
    done_steps = shipped.steps  # 1,953 at tiny
    lr = shipped.lr * shipped.min_lr_frac if args.lr is None else args.lr
    other_loss, _ = zoo_check.heldout_loss(zoo.load(p, other), p)
    probe = probe_fn(p, args.model, other_loss)
    start = {"step": done_steps, **probe(model)}
    print("start", start, flush=True)
    # the whole schedule constant (no warm-up, floor = peak); the ramp is complete at every step past the budget
    def recipe(rate: float, steps: int):
        return replace(p.train, tokens=steps * shipped.batch_size * shipped.context, lr=rate, mamba_lr=rate,
                       min_lr_frac=1.0, warmup_steps=0, eval_every=args.eval_every,
                       log_every=args.eval_every // 2, checkpoint_every=args.eval_every)

    begin = done_steps + args.moment_steps  # the first step that learns
    cfg = recipe(lr, begin + args.steps)
    load, t0 = os.getloadavg()[0], time.time()
    stream = corpus.token_stream(p, "lm_train", tok)
    vocab = corpus.frequent_tokens(corpus.token_stream(p, "eval", tok), 1000)
    with tempfile.TemporaryDirectory() as work:
        moments, run = Path(work) / "moments", Path(work) / "more"
        opt = configure_optimizer(model, cfg.for_family(family), torch.device("cpu"))
        _save_checkpoint(model, opt, TrainState(step=done_steps, tokens=shipped.tokens), moments / "checkpoint",
                         zoo.save_model)  # the run starts at step done_steps: the data order's next batches
        # a fresh AdamW's first updates move every weight by about lr (m / sqrt(v) = sign(g)): the moments are
        # estimated over moment_steps batches at rate 0 first (the weights do not move)
        train(model, stream, recipe(0.0, begin), moments, seed=0, save_model=zoo.save_model,
              load_weights=zoo.load_weights, progress=True, repeat_vocab=vocab)
        shutil.copytree(moments / "checkpoint", run / "checkpoint")
        train(model, stream, cfg, run, seed=0, save_model=zoo.save_model, load_weights=zoo.load_weights,
              progress=True, eval_fn=probe, repeat_vocab=vocab)
        rows = [start] + [{k: v for k, v in r.items() if k not in ("tokens", "lr", "grad_norm")}
                          for r in read_log(run) if "heldout_loss" in r]
    entry = {"model": args.model, "start": "shipped", "steps_past_budget": args.steps,
             "moment_steps": args.moment_steps, "lr": lr, f"{other}_heldout_loss": other_loss,
             "threads": args.threads, "load_at_start": round(load, 2), "wall_s": round(time.time() - t0, 1),
             "probe": rows}
    merge_entry(OUT, f"{args.model} lr{lr:g} +{args.steps}", entry)
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
