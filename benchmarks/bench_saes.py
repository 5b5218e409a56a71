"""Benchmark SAE training: every SAE of a preset one by one (``saes.train``) vs all SAEs of a model from one
forward pass (``saes.train_shared``, what ``saes.train_all`` runs).

For each model of the preset (T, T2, M, M0) a model with the preset's sizes and random weights (speed does not
depend on them), and random token rows after a BOS (the tokenizer is the smoke one: only its BOS id matters), so
nothing needs the trained zoo or the corpus. The preset's SAE jobs (``saes.jobs``: every layer, the seed twin on
the skyline model) are trained twice on the same rows with the same seeds, in this process with ``--threads``
torch threads: one SAE at a time (the model runs up to the SAE's layer once per SAE), then one shared pass per
model (every block once per batch, for all its SAEs). ``--tokens`` cuts each SAE's training tokens (the
preset's budget when 0); both paths scale linearly with it, so their ratio holds at the full budget too. The
JSON also gives the largest weight difference between the two paths' SAEs (0 or float rounding) and the load
average before and after (other jobs share this CPU).

    .venv/bin/python benchmarks/bench_saes.py --preset tiny --tokens 100000 [--threads 1] [--out PATH]
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

from universality_lib import corpus, presets, saes, zoo  # noqa: E402
from universality_lib.models.mamba import HookedMamba, MambaConfig  # noqa: E402
from universality_lib.models.transformer import make_transformer  # noqa: E402
from universality_lib.runtime import cpu_name  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _model(p, family: str, tok, seed: int):
    vocab = p.corpus.vocab_size
    if family == "transformer":
        return make_transformer(p.transformer, vocab, seed=seed, tokenizer=tok, device="cpu").eval()
    return HookedMamba(MambaConfig(d_model=p.mamba.d_model, n_layers=p.mamba.n_layers, d_vocab=vocab,
                                   d_state=p.mamba.d_state, d_conv=p.mamba.d_conv, expand=p.mamba.expand,
                                   n_ctx=p.transformer.n_ctx, seed=seed), tokenizer=tok).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--tokens", type=int, default=0, help="training tokens of each SAE (0: the preset's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "saes.json"))
    args = ap.parse_args()
    p = presets.get(args.preset)
    cfg = p.sae if args.tokens <= 0 else dataclasses.replace(p.sae, training_tokens=max(args.tokens, p.sae.batch_tokens))
    tok = corpus.load_tokenizer("smoke")
    g = torch.Generator().manual_seed(0)
    n_rows = max(64, 2 * cfg.training_tokens // cfg.context)
    rows = torch.randint(1, min(p.corpus.vocab_size, len(tok)), (n_rows, cfg.context), generator=g)
    rows[:, 0] = tok.bos_token_id
    todo = saes.jobs(p)
    names = list(dict.fromkeys(n for n, _, _ in todo))
    models = {n: _model(p, zoo.spec(p, n)[0], tok, seed=i) for i, n in enumerate(names)}
    for m in models.values():  # warm-up outside the timing (numba compiles the Mamba scan on first use)
        with torch.no_grad():
            m(rows[:2])
    load_start = os.getloadavg()
    # 1. one by one: the model runs once per SAE
    alone, one_by_one = {}, {}
    t0 = time.perf_counter()
    for n, layer, seed in todo:
        t1 = time.perf_counter()
        alone[(n, layer, seed)] = saes.train(models[n], layer, cfg, rows, seed=seed, progress=False,
                                             threads=args.threads).sae
        one_by_one[f"{n} L{layer} s{seed}"] = round(time.perf_counter() - t1, 2)
    serial = time.perf_counter() - t0
    # 2. shared: one forward pass per batch for all SAEs of a model
    per_model, diff = {}, 0.0
    t0 = time.perf_counter()
    for n in names:
        jobs = [(layer, seed) for m, layer, seed in todo if m == n]
        t1 = time.perf_counter()
        res = saes.train_shared(models[n], jobs, cfg, rows, progress=False, threads=args.threads)
        per_model[n] = {"saes": len(jobs), "seconds": round(time.perf_counter() - t1, 2)}
        for (layer, seed), r in zip(jobs, res):
            ref = alone[(n, layer, seed)]
            diff = max(diff, *(float((getattr(r.sae, k) - getattr(ref, k)).detach().abs().max()) for k in ("W_enc", "W_dec",
                                                                                              "b_enc", "b_dec")))
    shared = time.perf_counter() - t0
    load_end = os.getloadavg()
    speedup = serial / shared
    print(f"{len(todo)} SAEs ({p.name}, {cfg.training_tokens:,} tokens each): {serial:.1f} s one by one, "
          f"{shared:.1f} s shared ({speedup:.2f}x); max |weight difference| {diff:.3g}; load {load_start[0]:.1f}")
    full = p.sae.training_tokens / cfg.training_tokens
    out = {
        "what": "every SAE of the preset: one by one (saes.train: the model runs once per SAE) vs all SAEs of a "
                "model from one forward pass (saes.train_shared); random weights and tokens, the same rows and seeds",
        "preset": p.name, "sae_config": dataclasses.asdict(cfg) | {"seeds": list(cfg.seeds)},
        "timed_tokens": cfg.training_tokens, "threads": args.threads, "machine": cpu_name(),
        "load_average_at_start": load_start[0], "load_average": {"start": list(load_start), "end": list(load_end)},
        "n_saes": len(todo), "one_by_one": {"seconds": round(serial, 2), "per_sae_seconds": one_by_one},
        "shared": {"seconds": round(shared, 2), "per_model": per_model}, "speedup": round(speedup, 3),
        "max_abs_weight_difference": diff,
        "estimate": {"label": "ESTIMATE: the measured times scaled to the preset's full budget per SAE "
                              f"({p.sae.training_tokens:,} tokens; both paths are linear in it), one process",
                     "n_saes": len(todo), "tokens_per_sae": p.sae.training_tokens,
                     "minutes_one_by_one": round(serial * full / 60, 1), "minutes_shared": round(shared * full / 60, 1)},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"ESTIMATE at {p.sae.training_tokens:,} tokens per SAE: {out['estimate']['minutes_one_by_one']} min one by "
          f"one, {out['estimate']['minutes_shared']} min shared  -> {args.out}")


if __name__ == "__main__":
    main()
