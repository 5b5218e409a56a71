"""Is the models' lone-pair recall tied to BOS? (issue 14) Clean p(B) with and without the BOS token that opens every
training row, for the shipped T, T2 and M.

Every tiled training row opens with BOS and its first copy starts right after it, so a model may learn to copy
"relative to BOS" rather than to do induction. Chapter 5's prompts keep BOS (``TaskConfig.prepend_bos``: the book's
models saw it on every row; the authors' prompts had none). Two measures, each with BOS and without it (the same random
tokens, the BOS dropped):

* chapter 5's prompts (A in the first 32 tokens of a 64-token random body, the final A at the end);
* prompts whose first A sits after ``k`` random tokens, the final A 32 tokens after it
  (``zoo_check.prob_B_by_prefix``, ``bos=True`` / ``False``);
* the same with the final A ``gap`` tokens after the first (3 to 32; ``k`` 0, 4, 16): a model whose recall fades as
  more pairs come between (the state's capacity, for a Mamba) does better at small gaps; a model that copies only
  from the row's start does no better at a gap of 3 than at 32 once ``k`` > 0.

    python benchmarks/zoo_bos_trials.py [--prompts 256] [--threads 2]

Writes ``benchmarks/results/zoo_bos_trials.json``: {model: {"bos" | "no_bos": {"chapter5": p, "k": {k: p},
"gap": {gap: {k: p}}}}}, with the load average and the wall time.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from universality_lib import corpus, zoo, zoo_check
from universality_lib.circuits.task import make_prompts, prob_B, task_config, task_vocab
from universality_lib.presets import get

from _out import write_json

OUT = Path(__file__).parent / "results" / "zoo_bos_trials.json"
PREFIXES = (0, 1, 2, 4, 8, 16)
GAP = 32
GAPS, GAP_PREFIXES = (3, 4, 8, 16, 32), (0, 4, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = get("tiny")
    tok = corpus.load_tokenizer(p)
    vocab = task_vocab(p, tok)
    models = {name: zoo.load(p, name) for name in ("T", "T2", "M")}
    load, t0 = os.getloadavg()[0], time.time()
    out = {name: {} for name in models}
    for bos in (True, False):
        by_prefix = zoo_check.prob_B_by_prefix(models, p, prefixes=PREFIXES, gap=GAP, n_prompts=args.prompts, bos=bos)
        chapter5 = make_prompts(vocab, task_config(p, n_prompts=args.prompts, prepend_bos=bos),
                                bos_id=tok.bos_token_id if bos else None)
        by_gap = {g: zoo_check.prob_B_by_prefix(models, p, prefixes=GAP_PREFIXES, gap=g, n_prompts=args.prompts,
                                                bos=bos) for g in GAPS}
        for name, model in models.items():
            out[name]["bos" if bos else "no_bos"] = {
                "chapter5": round(float(prob_B(model, chapter5).mean()), 4),
                "k": {str(k): round(float(v), 4) for k, v in by_prefix[name].items()},
                "gap": {str(g): {str(k): round(float(v), 4) for k, v in df[name].items()} for g, df in by_gap.items()}}
    for name in models:
        print(name, out[name], flush=True)
    write_json({"prompts": args.prompts, "gap": GAP, "gaps": list(GAPS), "threads": args.threads, "load_at_start": round(load, 2),
                "wall_s": round(time.time() - t0, 1), "by_model": out}, str(OUT))


if __name__ == "__main__":
    main()
