"""Benchmark SAE training (universality_lib.saes.train, i.e. sae-lens' ActivationsStore + SAETrainer).

Measures training tokens/s for one SAE on the residual stream after the *last* block (the most expensive
layer: the model runs every block) of a Transformer and a Mamba with a preset's sizes and that preset's
SAEConfig, on a short run (``--tokens``). The model weights are random (speed does not depend on them) and
the rows are random tokens after a BOS, so nothing needs the trained zoo or the preset's corpus; the
tokenizer is the smoke one (only its BOS id matters).

Two measurements in one run: the two SAEs one after the other in this process (``--threads`` torch threads),
then the same two side by side in ``SAEConfig.workers`` single-threaded worker processes, as
``saes.train_all`` runs them. Their ratio is the speed-up of the workers on this machine. From the rates it
estimates the wall time of all SAEs of the preset (``saes.jobs``): an ESTIMATE, labelled as such in the JSON.

    .venv/bin/python benchmarks/bench_saes.py --preset tiny --tokens 100000 [--threads 1] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from universality_lib import corpus, presets, saes  # noqa: E402
from universality_lib.models.mamba import HookedMamba, MambaConfig  # noqa: E402
from universality_lib.models.transformer import make_transformer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _setup(preset: str, tokens: int):
    p = presets.get(preset)
    cfg = presets.SAEConfig(**{**p.sae.__dict__, "training_tokens": max(tokens, p.sae.batch_tokens)})
    tok = corpus.load_tokenizer("smoke")
    vocab = p.corpus.vocab_size
    g = torch.Generator().manual_seed(0)
    n_rows = max(64, 4 * cfg.training_tokens // cfg.context)
    rows = torch.randint(1, min(vocab, len(tok)), (n_rows, cfg.context), generator=g)
    rows[:, 0] = tok.bos_token_id
    return p, cfg, tok, vocab, rows


def _model(p, family: str, tok, vocab: int):
    if family == "transformer":
        return make_transformer(p.transformer, vocab, seed=0, tokenizer=tok, device="cpu").eval()
    return HookedMamba(MambaConfig(d_model=p.mamba.d_model, n_layers=p.mamba.n_layers, d_vocab=vocab,
                                   d_state=p.mamba.d_state, d_conv=p.mamba.d_conv, expand=p.mamba.expand,
                                   n_ctx=p.transformer.n_ctx, seed=0), tokenizer=tok).eval()


def _time_one(preset: str, tokens: int, family: str, threads: int) -> dict:
    """Train one SAE on the last block of a random ``family`` model; runs in a worker process too."""
    torch.set_num_threads(threads)
    p, cfg, tok, vocab, rows = _setup(preset, tokens)
    model = _model(p, family, tok, vocab)
    layer = model.cfg.n_layers - 1
    with torch.no_grad():  # warm-up outside the timing (numba compiles the Mamba scan on first use)
        model(rows[:2], stop_at_layer=1)
    t0 = time.perf_counter()
    res = saes.train(model, layer, cfg, rows, seed=0, progress=False)
    return {"family": family, "layer": layer, "d_model": model.cfg.d_model, "d_sae": res.info["d_sae"],
            "training_tokens": res.info["training_tokens"], "wall_seconds": res.info["wall_seconds"],
            "tokens_per_second": res.info["tokens_per_second"],
            "overhead_seconds": round(time.perf_counter() - t0 - res.info["wall_seconds"], 2)}


def main() -> None:
    import concurrent.futures as cf
    import multiprocessing as mp

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--tokens", type=int, default=100_000, help="training tokens of each timed SAE")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the one-after-the-other run")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "saes.json"))
    args = ap.parse_args()
    p = presets.get(args.preset)
    families = ("transformer", "mamba")
    load = os.getloadavg()[0]
    # 1. one after the other, in this process
    t0 = time.perf_counter()
    runs = [_time_one(p.name, args.tokens, f, args.threads) for f in families]
    serial = time.perf_counter() - t0
    for r in runs:
        print(f"{r['family']:12s} L{r['layer']}  d_sae {r['d_sae']:6d}  {r['tokens_per_second']:10,.0f} tokens/s")
    rate = {r["family"]: r["tokens_per_second"] for r in runs}
    # 2. side by side in worker processes, one thread each (as saes.train_all)
    workers = max(1, p.sae.workers)
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        pool.submit(int, 0).result()  # start the workers before the clock
        t0 = time.perf_counter()
        par_runs = list(pool.map(_time_one, [p.name] * 2, [args.tokens] * 2, families, [1, 1]))
        parallel = time.perf_counter() - t0
    speedup = serial / parallel
    print(f"both SAEs: {serial:.1f} s one after the other, {parallel:.1f} s in {workers} workers ({speedup:.2f}x)")
    # estimate for the whole preset: every job at its family's last-layer rate (an upper bound per job), one
    # after the other; with the preset's workers, divided by their measured speed-up
    one = sum(p.sae.training_tokens / rate["transformer" if name in ("T", "T2") else "mamba"]
              for name, layer, seed in saes.jobs(p))
    est = one / speedup if workers > 1 else one
    out = {
        "what": "SAE training tokens/s (sae-lens ActivationsStore + SAETrainer via universality_lib.saes.train), "
                "last block, random weights and tokens; one after the other vs side by side in worker processes",
        "preset": p.name, "sae_config": p.sae.__dict__ | {"seeds": list(p.sae.seeds)},
        "timed_tokens": runs[0]["training_tokens"], "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()} ({platform.system()})",
        "load_average_at_start": load, "runs": runs,
        "workers": {"n": workers, "runs": par_runs, "serial_seconds": round(serial, 2),
                    "parallel_seconds": round(parallel, 2), "speedup": round(speedup, 3)},
        "estimate": {"label": "ESTIMATE: all SAEs of the preset at the measured last-layer rates, divided by the "
                              "measured speed-up of the workers",
                     "n_saes": len(saes.jobs(p)), "tokens_per_sae": p.sae.training_tokens,
                     "minutes": round(est / 60, 1), "minutes_one_process": round(one / 60, 1)},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"ESTIMATE for all {len(saes.jobs(p))} {p.name} SAEs: {est / 60:.1f} min with {workers} worker(s), "
          f"{one / 60:.1f} min in one process with {args.threads} threads  -> {args.out}")


if __name__ == "__main__":
    main()
