"""Benchmark SAE training (universality_lib.saes.train, i.e. sae-lens' ActivationsStore + SAETrainer).

Measures training tokens/s for one SAE on the residual stream after the *last* block (the most expensive
layer: the model runs every block) of a Transformer and a Mamba with a preset's sizes and that preset's
SAEConfig, on a short run (``--tokens``). The model weights are random (speed does not depend on them) and
the rows are random tokens after a BOS, so nothing needs the trained zoo or the preset's corpus; the
tokenizer is the smoke one (only its BOS id matters). From the measured rates it estimates the wall time
of all SAEs of the preset (``saes.jobs``): an ESTIMATE, labelled as such in the JSON.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--tokens", type=int, default=100_000, help="training tokens of each timed SAE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "saes.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = presets.get(args.preset)
    cfg = presets.SAEConfig(**{**p.sae.__dict__, "training_tokens": max(args.tokens, p.sae.batch_tokens)})
    tok = corpus.load_tokenizer("smoke")
    vocab = p.corpus.vocab_size
    models = {
        "transformer": make_transformer(p.transformer, vocab, seed=0, tokenizer=tok, device="cpu").eval(),
        "mamba": HookedMamba(MambaConfig(d_model=p.mamba.d_model, n_layers=p.mamba.n_layers, d_vocab=vocab,
                                         d_state=p.mamba.d_state, d_conv=p.mamba.d_conv, expand=p.mamba.expand,
                                         n_ctx=p.transformer.n_ctx, seed=0), tokenizer=tok).eval(),
    }
    g = torch.Generator().manual_seed(0)
    n_rows = max(64, 4 * cfg.training_tokens // cfg.context)
    rows = torch.randint(1, min(vocab, len(tok)), (n_rows, cfg.context), generator=g)
    rows[:, 0] = tok.bos_token_id
    rate = {}
    runs = []
    for family, model in models.items():
        layer = model.cfg.n_layers - 1
        with torch.no_grad():  # warm-up outside the timing (numba compiles the Mamba scan on first use)
            model(rows[:2], stop_at_layer=1)
        t0 = time.perf_counter()
        res = saes.train(model, layer, cfg, rows, seed=0, progress=False)
        runs.append({"family": family, "layer": layer, "d_model": model.cfg.d_model, "d_sae": res.info["d_sae"],
                     "training_tokens": res.info["training_tokens"], "wall_seconds": res.info["wall_seconds"],
                     "tokens_per_second": res.info["tokens_per_second"],
                     "overhead_seconds": round(time.perf_counter() - t0 - res.info["wall_seconds"], 2)})
        rate[family] = res.info["tokens_per_second"]
        print(f"{family:12s} L{layer}  d_sae {res.info['d_sae']:6d}  {res.info['tokens_per_second']:10,.0f} tokens/s")
    # estimate for the whole preset: every job at its family's last-layer rate (an upper bound per job)
    est = 0.0
    for name, layer, seed in saes.jobs(p):
        family = "transformer" if name in ("T", "T2") else "mamba"
        est += p.sae.training_tokens / rate[family]
    out = {
        "what": "SAE training tokens/s (sae-lens ActivationsStore + SAETrainer via universality_lib.saes.train), "
                "last block, random weights and tokens",
        "preset": p.name, "sae_config": p.sae.__dict__ | {"seeds": list(p.sae.seeds)},
        "timed_tokens": cfg.training_tokens, "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()} ({platform.system()})",
        "load_average_at_start": os.getloadavg()[0], "runs": runs,
        "estimate": {"label": "ESTIMATE: all SAEs of the preset at the measured last-layer rates",
                     "n_saes": len(saes.jobs(p)), "tokens_per_sae": p.sae.training_tokens,
                     "minutes": round(est / 60, 1)},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"ESTIMATE for all {len(saes.jobs(p))} {p.name} SAEs: {est / 60:.1f} min  -> {args.out}")


if __name__ == "__main__":
    main()
