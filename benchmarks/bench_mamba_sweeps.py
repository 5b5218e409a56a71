"""Benchmark the Mamba path-patching sweeps of chapters 5 and 6 (``circuits.mamba``, ``circuits.off_by_one``): each
patched run from the tokens through every layer on the exact scan with A_bar, B_bar materialised as [b, l, e, n]
tensors (the library before ``sweep(start_layer=...)`` and ``reference_scan_stepwise``) vs the library now (each
patched run starts at the first layer it changes, from the clean residual there, and the exact scan makes A_bar_t,
B_bar_t position by position).

Both paths run in this process, one after the other, on the preset's shipped models and on the first ``--prompts``
prompts of each chapter's task (``--threads`` torch threads). The JSON gives, per sweep, both wall times, their
ratio and the largest difference between the two paths' clean and patched metrics (0.0: the same numbers), with the
load average before and after (other jobs share this CPU).

    .venv/bin/python benchmarks/bench_mamba_sweeps.py --preset tiny [--prompts 64] [--threads 2] [--out PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _out import write_json  # noqa: E402

from universality_lib import corpus, presets, zoo  # noqa: E402
from universality_lib.circuits import make_prompts, task_config, task_vocab  # noqa: E402
from universality_lib.circuits import mamba as cm  # noqa: E402
from universality_lib.circuits import off_by_one as ob  # noqa: E402
from universality_lib.circuits import patching as pt  # noqa: E402
from universality_lib.models import mamba as mm  # noqa: E402
from universality_lib.models import scan  # noqa: E402
from universality_lib.runtime import cpu_name  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def before():
    """The library as it was: every patched run from the tokens, A_bar / B_bar materialised in the exact scan."""
    saved = cm.sweep, ob.sweep, mm.reference_scan_stepwise
    from_tokens = lambda *a, start_layer=None, **k: pt.sweep(*a, **k)  # noqa: E731
    cm.sweep = ob.sweep = from_tokens
    mm.reference_scan_stepwise = lambda delta, A, B, x, C, h0=None, state_hook=None: scan.reference_scan(  # noqa: E731
        *scan.discretize(delta, A, B), x, C, h0=h0, state_hook=state_hook)
    try:
        yield
    finally:
        cm.sweep, ob.sweep, mm.reference_scan_stepwise = saved


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "mamba_sweeps.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    P = presets.get(a.preset)
    tok = corpus.load_tokenizer(P)
    M = zoo.load(P, "M")
    vocab, bos = task_vocab(P, tok), tok.bos_token_id
    ch5 = make_prompts(vocab, task_config(P), bos_id=bos).subset(slice(0, a.prompts))
    ch6 = make_prompts(vocab, ob.task(P), bos_id=bos).subset(slice(0, a.prompts))
    last, mid = M.cfg.n_layers - 1, M.cfg.n_layers // 2
    sweeps = {  # chapter 5's and 6's calls; the conv and variant sweeps in the last layer (the tiny M's key layer)
        "ch5 state history": lambda: cm.state_patching(M, ch5, progress=False),
        "ch5 y -> logits": lambda: cm.y_to_logits(M, ch5, progress=False),
        f"ch5 conv -> state, layer {last}": lambda: cm.conv_to_state_to_logits(M, ch5, last, (0, 1, 2, 3),
                                                                                progress=False),
        f"conv -> state, layer {mid}": lambda: cm.conv_to_state_to_logits(M, ch5, mid, (0, 1, 2, 3), progress=False),
        "ch6 position sweep": lambda: ob.position_sweep(M, ch6, progress=False),
        f"ch6 write variants, layer {last}": lambda: ob.state_write_variants(M, ch6, last, progress=False),
        "ch6 residual, Mamba": lambda: ob.residual_offset_sweep(M, ch6, progress=False),
    }
    load0 = os.getloadavg()
    rows = {}
    for name, run in sweeps.items():
        with before():
            t = time.perf_counter()
            old = run()
            t_old = time.perf_counter() - t
        t = time.perf_counter()
        new = run()
        t_new = time.perf_counter() - t
        diff = max(float(np.abs(getattr(old, part)[m] - getattr(new, part)[m]).max())
                   for part in ("clean", "patched") for m in old.clean)
        rows[name] = {"before_s": round(t_old, 2), "now_s": round(t_new, 2), "speedup": round(t_old / t_new, 2),
                      "max_abs_diff": diff, "components": len(new.labels)}
        print(name, rows[name], flush=True)
    total_old = sum(r["before_s"] for r in rows.values())
    total_new = sum(r["now_s"] for r in rows.values())
    write_json({"benchmark": "mamba_sweeps", "preset": P.name, "prompts": a.prompts, "threads": a.threads,
                "cpu": cpu_name(), "load_before": [round(v, 2) for v in load0],
                "load_after": [round(v, 2) for v in os.getloadavg()], "sweeps": rows,
                "total_before_s": round(total_old, 1), "total_now_s": round(total_new, 1),
                "total_speedup": round(total_old / total_new, 2)}, a.out)


if __name__ == "__main__":
    main()
