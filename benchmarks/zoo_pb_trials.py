"""Chapter 5's clean p(B) (issue 14): short fine-tuning trials of a shipped tiny model, one curriculum per arm.

The shipped M copies random and natural spans (the zoo check's induction ratios pass) but predicts B on chapter 5's
prompts only when A is among the first tokens after BOS (``zoo_check.prob_B_by_prefix``). Each arm continues
training the shipped M for ``--steps`` steps of the tiny recipe's batches (same data order, no period ramp, cosine from
``--lr``) and probes clean p(B) (256 prompts) every 50 steps, overall and by gap:

* ``control``: the shipped recipe;
* ``pairs``: half of the random tiled rows become pair rows (``TrainConfig.repeat_pair_frac``), spans 2-8;
* ``longpairs``: the same with spans 2-32 (``pair_max_span``);
* ``allpairs``: every random tiled row a pair row, spans 2-16;
* ``offsets``: a tiled row's first copy after 0-32 tokens (``TrainConfig.tile_offset_max``), not right after BOS;
* ``offsetpairs``: ``offsets`` and ``pairs`` together (the recipe of the from-scratch trial of session 10).

    python benchmarks/zoo_pb_trials.py ARM [--model M] [--steps 150] [--lr 1e-3] [--threads 1] [--from DIR]

``--from DIR`` starts from the model a ``train --dest`` installed in ``DIR/<model>`` instead of the shipped one (for
the trial models of recipe_trials.json; the entry's key says which).

Writes ``benchmarks/results/zoo_pb_trials.json`` (one entry per model and arm, merged with earlier runs) with
the probe rows, the machine's load average at the start and the wall time. A trial, not the recipe: a model that ships is trained
from scratch by ``python -m universality_lib train``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from universality_lib import corpus, zoo
from universality_lib.circuits.task import insert_prefix, make_prompts, prob_B, task_config, task_vocab
from universality_lib.presets import get
from universality_lib.train import train

from _out import merge_entry

OUT = Path(__file__).parent / "results" / "zoo_pb_trials.json"
ARMS = {"control": dict(), "pairs": dict(repeat_pair_frac=0.5, pair_max_span=8),
        "longpairs": dict(repeat_pair_frac=0.5, pair_max_span=32),
        "allpairs": dict(repeat_pair_frac=1.0, pair_max_span=16),
        "offsets": dict(tile_offset_max=32), "offsetpairs": dict(tile_offset_max=32, repeat_pair_frac=0.5)}
GAP_BINS = ((30, 45), (45, 60), (60, 66))


def probe_fn(p, tok, n_prompts: int = 256):
    """eval_fn for train(): clean p(B) on chapter 5's prompts, overall and per gap bin, and on prompts with A after
    0 and 8 random tokens, the final A 32 tokens later (zoo_check.prob_B_by_prefix's prompts)."""
    vocab = task_vocab(p, tok)
    prompts = make_prompts(vocab, task_config(p, n_prompts=n_prompts), bos_id=tok.bos_token_id)
    gap = prompts.last - prompts.pos_a  # [n]
    opening = make_prompts(vocab, task_config(p, seq_len=33, max_a_pos=1, n_prompts=n_prompts), bos_id=tok.bos_token_id)
    shifted = {k: insert_prefix(opening, k, seed=k) for k in (0, 8)}

    def probe(model) -> dict:
        pb = prob_B(model, prompts)
        out = {"pB": float(pb.mean())}
        for lo, hi in GAP_BINS:
            out[f"pB_gap{lo}-{hi - 1}"] = float(pb[(gap >= lo) & (gap < hi)].mean())
        for k, pr in shifted.items():
            out[f"pB_prefix{k}"] = float(prob_B(model, pr).mean())
        return out
    return probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arm", choices=sorted(ARMS))
    ap.add_argument("--model", default="M", choices=("T", "T2", "M"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--from", dest="start", default=None, help="a `train --dest` folder to start from")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = get("tiny")
    tok = corpus.load_tokenizer(p)
    model = zoo.load_folder(Path(args.start) / args.model, tok) if args.start else zoo.load(p, args.model)
    probe = probe_fn(p, tok)
    start = {"step": 0, **probe(model)}
    cfg = replace(p.train, tokens=args.steps * p.train.batch_size * p.train.context, lr=args.lr, mamba_lr=args.lr,
                  warmup_steps=10, repeat_ramp_frac=0.0, eval_every=50, log_every=25, checkpoint_every=50,
                  **ARMS[args.arm])
    load, t0 = os.getloadavg()[0], time.time()
    with tempfile.TemporaryDirectory() as work:
        train(model, corpus.token_stream(p, "lm_train", tok), cfg, Path(work) / args.arm, seed=0,
              save_model=zoo.save_model, load_weights=zoo.load_weights, progress=False, eval_fn=probe,
              repeat_vocab=corpus.frequent_tokens(corpus.token_stream(p, "eval", tok), 1000))
        rows = [start] + [{k: v for k, v in r.items() if k == "step" or k == "loss" or k.startswith("pB")}
                          for r in json.loads("[" + ",".join((Path(work) / args.arm / "log.jsonl").read_text()
                                                             .splitlines()) + "]") if "pB" in r]
    entry = {"model": args.model, "arm": args.arm, "curriculum": ARMS[args.arm], "steps": args.steps, "lr": args.lr,
             "threads": args.threads, "load_at_start": round(load, 2), "wall_s": round(time.time() - t0, 1),
             "probe": rows, **({"from": args.start} if args.start else {})}
    merge_entry(OUT, f"{args.model} {args.arm}" + (f" from {Path(args.start).name}" if args.start else ""), entry)
    for r in rows:
        print(args.model, args.arm, r)


if __name__ == "__main__":
    main()
