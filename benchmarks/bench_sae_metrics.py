"""Benchmark the SAE quality table (chapter 2's ``saes.evaluate_all``): sae-lens' ``get_recons_loss`` run SAE by SAE
(the clean, spliced and zero-ablated passes for every SAE, after a pass that caches its activations: 4 per SAE)
vs ``saes.evaluate_many`` (per model one clean pass for every SAE's activations and loss, one spliced pass per SAE,
one zero-ablated pass per hook).

The preset's models with random weights and every SAE of ``saes.jobs`` with random weights (speed does not depend on
them; bench_saes.py builds the models), on ``--tokens`` random tokens in rows of the preset's SAE context after a
BOS, in this process with ``--threads`` torch threads. The JSON gives both wall times, their ratio, the passes per
model and the largest difference between the two paths' CE numbers (0: the same passes on the same inputs), with
the load average before and after (other jobs share this CPU).

    .venv/bin/python benchmarks/bench_sae_metrics.py --preset tiny [--tokens 8192] [--threads 2] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _out import write_json  # noqa: E402
from bench_saes import _model  # noqa: E402

from universality_lib import corpus, presets, saes, zoo  # noqa: E402
from universality_lib.runtime import cpu_name  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _sae(d: int, d_sae: int, layer: int, seed: int):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed * 1000 + layer)
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=d_sae, normalize_activations="constant_norm_rescale"))
    sae.cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    return sae


def _one_by_one(sae, model, rows, ids, batch: int) -> dict:
    """The CE numbers of the per-SAE path: a caching pass, then get_recons_loss' three passes, every batch."""
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    hook = sae.cfg.metadata.hook_name
    ce = {"ce_loss_without_sae": [], "ce_loss_with_sae": [], "ce_loss_with_ablation": []}
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            b = rows[i:i + batch]
            model.run_with_cache(b, names_filter=[hook])
            m = get_recons_loss(sae, model, ActivationScaler(), b, compute_kl=False, compute_ce_loss=True,
                                ignore_tokens=ids, hook_name=hook)
            for k in ce:
                ce[k].append(m[k].float().reshape(-1))
    return {k: torch.cat(v).mean().item() for k, v in ce.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--tokens", type=int, default=8192, help="eval tokens (the tiny preset evaluates 50,000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sae_metrics.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = presets.get(args.preset)
    tok = corpus.load_tokenizer("smoke")
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(1, min(p.corpus.vocab_size, len(tok)), (max(1, args.tokens // p.sae.context), p.sae.context),
                         generator=g)
    rows[:, 0] = tok.bos_token_id
    todo = saes.jobs(p)
    names = list(dict.fromkeys(n for n, _, _ in todo))
    models = {n: _model(p, zoo.spec(p, n)[0], tok, seed=i) for i, n in enumerate(names)}
    for m in models.values():  # warm-up outside the timing (numba compiles the Mamba scan on first use)
        with torch.no_grad():
            m(rows[:2])
    d_sae = p.sae.expansion_factor
    group = {n: {(n, l, s): _sae(models[n].cfg.d_model, d_sae * models[n].cfg.d_model, l, s)
                 for m, l, s in todo if m == n} for n in names}
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    old = {j: _one_by_one(sae, models[n], rows, [tok.bos_token_id], 16) for n in names for j, sae in group[n].items()}
    t_old = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = {}
    for n in names:
        new.update(saes.evaluate_many(group[n], models[n], rows, batch_size=16))
    t_new = time.perf_counter() - t0
    pairs = (("ce_clean", "ce_loss_without_sae"), ("ce_sae", "ce_loss_with_sae"), ("ce_zero", "ce_loss_with_ablation"))
    diff = max(abs(new[j][a] - old[j][b]) for j in old for a, b in pairs)
    passes = {n: {"one_by_one": 4 * len(group[n]),
                  "shared": 1 + len(group[n]) + len({l for _, l, _ in group[n]})} for n in names}
    out = {"what": "SAE quality table: get_recons_loss SAE by SAE vs saes.evaluate_many (shared passes)",
           "preset": p.name, "saes": len(todo), "tokens": int(rows.numel()), "threads": args.threads,
           "machine": cpu_name(), "load_average_start": [round(x, 2) for x in load_start],
           "load_average_end": [round(x, 2) for x in os.getloadavg()],
           "seconds_one_by_one": round(t_old, 2), "seconds_shared": round(t_new, 2),
           "speed_ratio": round(t_old / t_new, 2), "passes_per_batch": passes, "max_abs_ce_difference": diff}
    write_json(out, args.out)


if __name__ == "__main__":
    main()
