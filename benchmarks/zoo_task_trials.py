"""Chapter 5's clean p(B) (issue 14): can a tiny model learn the induction task when trained on nothing else?

A capacity diagnostic, not a recipe: every step draws fresh chapter-5 prompts (``circuits.task.make_prompts``, seeds
10,000 + step, disjoint from the probe's) and the loss is the cross-entropy of B at the last position only, so the
whole gradient goes to lone-pair recall. The probe is clean p(B) on 256 of chapter 5's own prompts (seed 0) every
``--probe-every`` steps. Two starts:

* ``shipped``: the shipped tiny model (``--model M`` or ``T``), fine-tuned;
* ``fresh``: the model's untrained initialisation (``--layers N`` overrides its number of blocks, e.g. a 2-block M).

    python benchmarks/zoo_task_trials.py shipped --model M --steps 200 --lr 1e-3
    python benchmarks/zoo_task_trials.py fresh --model M --layers 2 --steps 750 --lr 3e-3

AdamW (betas 0.9 / 0.95, weight decay 0.1), a 50-step linear warm-up then a constant rate, gradients clipped at 1,
batches of 64 prompts. Writes ``benchmarks/results/zoo_task_trials.json`` (one entry per start, model, blocks and lr,
merged with earlier runs) with the probe rows, the load average at the start and the wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from universality_lib import corpus, zoo
from universality_lib.circuits.task import make_prompts, prob_B, task_config, task_vocab
from universality_lib.presets import get

from _out import merge_entry

OUT = Path(__file__).parent / "results" / "zoo_task_trials.json"
TRAIN_SEED0 = 10_000  # the training prompts' seeds: TRAIN_SEED0 + step (chapter 5 and the probe use seed 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("start", choices=("shipped", "fresh"))
    ap.add_argument("--model", default="M", choices=("T", "T2", "M"))
    ap.add_argument("--layers", type=int, default=None, help="fresh only: blocks of the model (default: the preset's)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--probe-every", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.layers is not None and args.start == "shipped":
        ap.error("--layers changes a fresh model only (a shipped model has its own blocks)")
    torch.set_num_threads(args.threads)
    p = get("tiny")
    family = dict((n, f) for n, f, _ in p.zoo)[args.model]
    if args.layers is not None:
        size = replace(p.transformer if family == "transformer" else p.mamba, n_layers=args.layers)
        p = p.replace(**{"transformer" if family == "transformer" else "mamba": size})
    tok = corpus.load_tokenizer(p)
    vocab = task_vocab(p, tok)
    model = zoo.load(p, args.model) if args.start == "shipped" else zoo.build(p, args.model, tok)
    model.train()
    probe_prompts = make_prompts(vocab, task_config(p, n_prompts=256, seed=0), bos_id=tok.bos_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rows, load, t0 = [], os.getloadavg()[0], time.time()

    def probe(step: int, loss: float | None) -> None:
        model.eval()
        rows.append({"step": step, "pB": round(float(prob_B(model, probe_prompts).mean()), 5),
                     "loss_B": None if loss is None else round(loss, 4), "t_s": round(time.time() - t0, 1)})
        model.train()
        print(json.dumps(rows[-1]), flush=True)

    probe(0, None)
    for step in range(1, args.steps + 1):
        pr = make_prompts(vocab, task_config(p, n_prompts=args.batch, seed=TRAIN_SEED0 + step), bos_id=tok.bos_token_id)
        logits = model(pr.tokens, return_type="logits")  # [n, L, V]; the last position predicts B
        loss = torch.nn.functional.cross_entropy(logits[:, -1], pr.b)
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 50)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.probe_every == 0 or step == args.steps:
            probe(step, loss.item())
    blocks = model.cfg.n_layers
    entry = {"start": args.start, "model": args.model, "blocks": blocks,
             "parameters": sum(x.numel() for x in model.parameters()), "steps": args.steps, "lr": args.lr,
             "batch": args.batch, "threads": args.threads, "load_at_start": round(load, 2),
             "wall_s": round(time.time() - t0, 1), "probe": rows}
    merge_entry(OUT, f"{args.start} {args.model} L{blocks} lr{args.lr:g}", entry)


if __name__ == "__main__":
    main()
