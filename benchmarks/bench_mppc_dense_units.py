"""Benchmark the sparse MPPC back end's densely firing (shifted) units: the cross sums of sparse units of one side
against the dense units of the other, written straight into the [F_a, F_b] sums (``S.T``, strided: every product
lands in another row of S, the engine before this benchmark) vs summed into a contiguous block first
(``engine._cross_sparse`` now). Synthetic activations at the tiny preset's sizes: F = 1,536 features per side,
power-law frequencies up to 30% and ``--dense`` units firing on half the tokens (a unit is dense above 25%), one
chunk of ``--tokens`` tokens, 1 numba thread. The JSON gives both times, their ratio, the largest difference between
the two sums and the load average (other jobs share this CPU).

    .venv/bin/python benchmarks/bench_mppc_dense_units.py [--tokens 4096] [--dense 40] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numba
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _out import write_json  # noqa: E402

from universality_lib.runtime import cpu_name  # noqa: E402
from universality_lib.similarity.engine import PairStats, _coact_sd  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=1536)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--dense", type=int, default=40, help="units per side that fire on half the tokens")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "mppc_dense_units.json"))
    args = ap.parse_args()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    F, T = args.features, args.tokens
    rng = np.random.default_rng(0)

    def layer():
        freq = rng.random(F) ** 3 * 0.3
        freq[:args.dense] = 0.5
        return torch.from_numpy(((rng.random((T, F)) < freq) * rng.random((T, F))).astype(np.float32))

    st = PairStats({0: F}, {0: F}, backend="sparse")
    st.update({0: layer()}, {0: layer()})
    ua, ub = st.a[0], st.b[0]
    strided, blocked = np.zeros((F, F)), np.zeros((F, F))
    load = os.getloadavg()
    times = {"strided": [], "blocked": []}
    for _ in range(args.reps + 1):  # the first round compiles
        t0 = time.perf_counter()
        _coact_sd(strided.T, ub.spT.indptr, ub.spT.indices, ub.spT.data, ua.xd, ua.dcols)
        t1 = time.perf_counter()
        block = np.zeros((ub.size, len(ua.dcols)))
        _coact_sd(block, ub.spT.indptr, ub.spT.indices, ub.spT.data, ua.xd, np.arange(len(ua.dcols)))
        blocked[ua.dcols] += block.T
        t2 = time.perf_counter()
        times["strided"].append(t1 - t0)
        times["blocked"].append(t2 - t1)
    best = {k: min(v[1:]) for k, v in times.items()}
    out = {"what": "sparse MPPC back end: sparse x dense-unit cross sums written through S.T vs a contiguous block",
           "features": F, "tokens": T, "dense_units": [len(ua.dcols), len(ub.dcols)], "numba_threads": 1,
           "machine": cpu_name(), "load_average_start": [round(x, 2) for x in load],
           "seconds_best_strided": round(best["strided"], 4), "seconds_best_blocked": round(best["blocked"], 4),
           "speed_ratio": round(best["strided"] / best["blocked"], 2),
           "max_abs_difference_of_sums": float(np.abs(strided - blocked).max()),
           "max_abs_sum": float(np.abs(strided).max())}
    write_json(out, args.out)


if __name__ == "__main__":
    main()
