"""Is M's missing lone-pair induction a matter of distance? (issue 14) Clean p(B) by the tokens before the first A
(``zoo_check.prob_B_by_prefix``) at gaps of 4 to 32 tokens from the first A to the final A, for the shipped T and M
and, optionally, a trial M's checkpoint folder (``--trial DIR``, e.g. the scratch run of session 10).

    python benchmarks/zoo_prefix_gaps.py [--trial DIR] [--prompts 256]

Writes ``benchmarks/results/zoo_prefix_gaps.json``: {gap: {model: {k: mean p(B)}}}, with the load average and wall time.
A model with induction predicts B at every k; one that copies only what opens its row, at k = 0 only.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from universality_lib import corpus, zoo, zoo_check
from universality_lib.presets import get

OUT = Path(__file__).parent / "results" / "zoo_prefix_gaps.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trial", default=None, help="a trial M's checkpoint folder (zoo.load_folder)")
    ap.add_argument("--prompts", type=int, default=256)
    args = ap.parse_args()
    p = get("tiny")
    tok = corpus.load_tokenizer(p)
    models = {"T": zoo.load(p, "T"), "M": zoo.load(p, "M")}
    if args.trial:
        models["M_trial"] = zoo.load_folder(args.trial, tok).eval()
    load, t0 = os.getloadavg()[0], time.time()
    gaps = {}
    for gap in (4, 8, 16, 32):
        tab = zoo_check.prob_B_by_prefix(models, p, prefixes=[0, 8, 32], gap=gap, n_prompts=args.prompts)
        gaps[str(gap)] = {name: {str(k): round(float(v), 4) for k, v in col.items()} for name, col in tab.items()}
        print("gap", gap, gaps[str(gap)])
    OUT.write_text(json.dumps({"trial": args.trial, "prompts": args.prompts, "load_at_start": round(load, 2),
                               "wall_s": round(time.time() - t0, 1), "by_gap": gaps}, indent=1) + "\n")


if __name__ == "__main__":
    main()
