"""Trials of the SAE recipe against the quality targets of issue 14 (FVE >= 0.8, L0 5-10% of the dictionary, dead
<= 10%, CE loss recovered >= 0.8), one SAE at a time, on the shipped zoo.

Each trial trains one SAE (``saes.train``, what the book's cache runs, with the preset's ``SAEConfig`` and the changes
given by ``--set field=value``) on ``blocks.{layer}.hook_resid_post`` of one zoo model, on the preset's ``sae_train``
rows, and measures it as chapter 2 does (``saes.evaluate`` on ``metrics.eval_rows``). Nothing is cached: the book's
SAEs are untouched. Each run appends one row (the changes, the metrics, the wall time, the threads and the load
average before and after: other jobs share this CPU) to the JSON file, so trials made at different times stay in one
table. The hardest cases on the shipped zoo (session 12's book): M0 block 7 (FVE 0.748), M block 2 (L0 10.06%),
M block 7 and T2 block 3 (FVE 0.807 / 0.801).

    .venv/bin/python benchmarks/sae_quality_trials.py --model M0 --layer 7 [--set lr=0.002 --set batch_tokens=1024]
        [--threads 1] [--tag NAME] [--out PATH]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _out import write_json  # noqa: E402
from universality_lib import corpus, presets, saes, zoo  # noqa: E402
from universality_lib.runtime import cpu_name  # noqa: E402
from universality_lib.saes import metrics  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _value(field: dataclasses.Field, text: str):
    """``text`` parsed as the type of the SAEConfig field's default (float, int, bool, None or str)."""
    if text == "None":
        return None
    default = field.default
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, int) and not isinstance(default, bool):
        return int(text)
    if isinstance(default, float) or default is None:
        return float(text)
    return text


def changed_config(base, sets: list[str]):
    """``base`` (an SAEConfig) with each ``field=value`` of ``sets`` replaced; an unknown field is one clear error."""
    fields = {f.name: f for f in dataclasses.fields(base)}
    changes = {}
    for s in sets:
        name, _, text = s.partition("=")
        if name not in fields or not text:
            raise SystemExit(f"--set {s!r}: give field=value with a field of SAEConfig ({', '.join(fields)})")
        changes[name] = _value(fields[name], text)
    return dataclasses.replace(base, **changes), changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--model", default="M0")
    ap.add_argument("--layer", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="SAEConfig field=value (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sae_quality_trials.json"))
    args = ap.parse_args()
    p = presets.get(args.preset)
    cfg, changes = changed_config(p.sae, args.set)
    torch.set_num_threads(args.threads)
    model = zoo.load(p, args.model)
    rows = corpus.token_stream(p, "sae_train").rows(cfg.context)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    res = saes.train(model, args.layer, cfg, rows, seed=args.seed, progress=False, threads=args.threads)
    wall = time.perf_counter() - t0
    m = metrics.evaluate(res.sae, model, metrics.eval_rows(p), hook_name=f"blocks.{args.layer}.hook_resid_post")
    m.pop("density", None)
    row = {"tag": args.tag, "preset": p.name, "model": args.model, "layer": args.layer, "seed": args.seed,
           "changes": changes, "fve": m["fve"], "l0_frac": m["l0_frac"], "dead_frac": m["dead_frac"],
           "ce_recovered": m["ce_recovered"], "train_wall_s": round(wall, 1), "threads": args.threads,
           "cpu": cpu_name(), "loadavg_before": [round(x, 2) for x in load0],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime())}
    old = json.load(open(args.out)) if os.path.exists(args.out) else {"trials": []}
    old["trials"].append(row)
    write_json(old, args.out)


if __name__ == "__main__":
    main()
