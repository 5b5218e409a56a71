"""The ``"torch_sparse"`` MPPC back end: co-activations of the non-zero units, accumulated with torch on any device
(a GPU in practice; the CPU runs the same code in the tests), and the price of a stage from its memory traffic.

A chunk of one layer is kept as its non-zero entries sorted by token (``rows`` [E] token, ``cols`` [E] unit,
``vals`` [E] float32 or float64, ``crow`` [t+1] CSR row pointers). For a layer pair, every entry ``(t, i, x)`` of a
is paired with every entry ``(t, j, y)`` of b on the same token (``P = Σ_t L0_a(t) L0_b(t)`` pairs), and

    S.view(-1).index_add_(0, i * F_b + j, float64(x) * float64(y))                      S [F_a, F_b] float64

in spans of at most ``max_pairs`` pairs (bounded memory). A float32 product is exact in float64, and every sum is
float64, so this is exact in the sense the numba ``"sparse"`` back end is: both add the same products one token at
a time into the running sums, in another order (GPU atomics), and their results agree within the engine's
rounding bound (:meth:`PairStats.error_bound`, the same for both; 1e-14 measured on the tests' data). Shifted (densely firing) units get a dense float64 block
``xd`` [t, |D|] as in the CPU back end: sparse x dense through ``index_add_`` of ``x · xd[t]`` rows, dense x dense by
one matmul. The per-unit sums, the shifts, the dead units and the results are the engine's (``engine._Units``).

Glossary: ``t`` tokens in a chunk, ``E`` non-zero entries, ``P`` co-active pairs, ``F`` units, ``|D|`` shifted
units, L0 active units per token.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["Entries", "entries", "cross", "GPU_MEMORY", "BANDWIDTH_GBS", "PAIR_STREAMS", "stage_traffic",
           "stage_seconds_estimate"]


@dataclass
class Entries:
    """The non-zero entries of one chunk [t, F], sorted by token: rows / cols [E] int64, vals [E], crow [t+1]."""

    rows: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    crow: torch.Tensor

    def select(self, keep: torch.Tensor, t: int) -> "Entries":
        """The entries where ``keep`` [E] is True (token order kept), with their own row pointers."""
        rows = self.rows[keep]
        return Entries(rows, self.cols[keep], self.vals[keep], _crow(rows, t))

    def dense_block(self, mask: torch.Tensor, dcols: np.ndarray, K: np.ndarray, t: int) -> torch.Tensor:
        """xd [t, |D|] float64: the units ``dcols`` (whose entries are where ``mask`` [E] is True) minus their shift."""
        dev = self.vals.device
        where = torch.searchsorted(torch.from_numpy(dcols).to(dev), self.cols[mask])  # position of each unit in dcols
        xd = torch.zeros((t, len(dcols)), dtype=torch.float64, device=dev)
        xd[self.rows[mask], where] = self.vals[mask].double()
        return xd - torch.from_numpy(K[dcols]).to(dev)


def _crow(rows: torch.Tensor, t: int) -> torch.Tensor:
    crow = torch.zeros(t + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=t), 0)
    return crow


def entries(chunk, device) -> Entries:
    """A checked chunk [t, F] (tensor, array or scipy CSR, float32 / float64) as its non-zero entries on ``device``."""
    device = torch.device(device)
    if sp.issparse(chunk):
        csr = chunk.tocsr()
        csr.eliminate_zeros()
        crow = torch.from_numpy(csr.indptr.astype(np.int64)).to(device)
        rows = torch.repeat_interleave(torch.arange(csr.shape[0], device=device), crow[1:] - crow[:-1])
        return Entries(rows, torch.from_numpy(csr.indices.astype(np.int64)).to(device),
                       torch.from_numpy(csr.data).to(device), crow)
    x = (chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.asarray(chunk))).to(device)
    rows, cols = x.nonzero(as_tuple=True)  # row-major: sorted by token
    return Entries(rows, cols, x[rows, cols], _crow(rows, x.shape[0]))


def _spans(counts: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Consecutive spans [e0, e1) of entries whose ``counts`` sum to at most ``budget`` (one entry may exceed it)."""
    cum = torch.cumsum(counts, 0).cpu().numpy()
    spans, e0 = [], 0
    while e0 < len(cum):
        base = cum[e0 - 1] if e0 else 0
        e1 = max(e0 + 1, int(np.searchsorted(cum, base + budget, side="right")))
        spans.append((e0, e1))
        e0 = e1
    return spans


def _coact_ss(S: torch.Tensor, a: Entries, b: Entries, max_pairs: int) -> None:
    """S [F_a, F_b] += Σ_t x_ti y_tj over every pair of entries of a and b on the same token."""
    dev, fb = S.device, S.shape[1]
    n_b = (b.crow[1:] - b.crow[:-1])[a.rows]  # [E_a] b entries on each a entry's token
    b_val = b.vals.double()  # [E_b]
    flat_S = S.view(-1)
    for e0, e1 in _spans(n_b, max_pairs):
        cnt = n_b[e0:e1]
        off = b.crow[a.rows[e0:e1]] - (torch.cumsum(cnt, 0) - cnt)  # [e] b entry of pair 0 of each a entry's block
        loc = torch.repeat_interleave(torch.arange(e1 - e0, device=dev), cnt)  # [P] the a entry (in the span)
        q = off[loc] + torch.arange(len(loc), device=dev)  # [P] the b entry
        flat = (a.cols[e0:e1] * fb)[loc] + b.cols[q]  # [P] i * F_b + j
        flat_S.index_add_(0, flat, a.vals[e0:e1].double()[loc] * b_val[q])


def _coact_sd(a: Entries, yd: torch.Tensor, f_a: int, max_pairs: int) -> torch.Tensor:
    """[F_a, |D|] float64: Σ_t x_ti yd[t, k], the sparse entries of a against b's dense (shifted) block yd [t, |D|]."""
    out = torch.zeros((f_a, yd.shape[1]), dtype=torch.float64, device=yd.device)
    step = max(1, max_pairs // max(yd.shape[1], 1))
    for e0 in range(0, len(a.rows), step):
        sl = slice(e0, e0 + step)
        out.index_add_(0, a.cols[sl], a.vals[sl].double()[:, None] * yd[a.rows[sl]])  # [E, |D|] rows
    return out


def cross(S: torch.Tensor, ua, ub, max_pairs: int) -> None:
    """Add one chunk's cross sums of two loaded ``engine._Units`` (torch_sparse) into S [F_a, F_b] float64."""
    _coact_ss(S, ua.ent, ub.ent, max_pairs)
    da, db = (torch.from_numpy(u.dcols).to(S.device) for u in (ua, ub))
    if len(db):
        S[:, db] += _coact_sd(ua.ent, ub.xd, ua.size, max_pairs)
    if len(da):
        S[da, :] += _coact_sd(ub.ent, ua.xd, ub.size, max_pairs).T
    if len(da) and len(db):
        S[da[:, None], db] += ua.xd.T @ ub.xd  # [|D_a|, |D_b|]


# ----------------------------------------------------------------------------- price from memory traffic
# vendor datasheets: memory bandwidth (GB/s) and memory (GB) of the appendix's GPUs
GPU_MEMORY = {"Colab T4": (320.0, 16.0), "A100 (40 GB)": (1555.0, 40.0), "H100 (80 GB, SXM)": (3350.0, 80.0)}
BANDWIDTH_GBS = {k: bw for k, (bw, _) in GPU_MEMORY.items()}
SECTOR = 32  # bytes: the DRAM transaction of one scattered 8-byte atomic add (read and written back)
# bytes per co-active pair that _coact_ss streams through memory ([P] int64 / float64 arrays; an op reads its [P]
# inputs and writes its output, a gather also reads one 8-byte source element per pair); per-entry ([E]) work is
# ~L0 times smaller and left out
PAIR_STREAMS = {"loc (repeat_interleave)": 8, "off[loc]": 24, "arange": 8, "q = off[loc] + arange": 24,
                "(cols_a F_b)[loc]": 24, "cols_b[q]": 24, "flat = i F_b + j": 24, "vals_a[loc]": 24,
                "vals_b[q]": 24, "product": 24, "index_add_ reads flat and product": 16}
BYTES_PER_PAIR_STREAMS = sum(PAIR_STREAMS.values())  # 224
# passes of 8 F_a F_b bytes over S: zeroing it, then PairStats._blocks / pair_max (read S, write C, the outer
# product of s1 and of the σ's, the division, clamp, nan_to_num, the two max reductions)
SUM_PASSES = 1 + 12


def stage_traffic(gpu_memory_gb: float, *, n_pairs: int = 864, n_tokens: int = 1_000_000, d_sae: int = 24_576,
                  d_model: int = 768, l0: float = 50.0, n_layer_sets: int | None = None) -> dict:
    """Bytes the ``torch_sparse`` back end moves through GPU memory in one MPPC stage, by part, and the passes over
    the tokens it needs when half of ``gpu_memory_gb`` holds the float64 sums (``experiments.default_max_gb``);
    see :func:`stage_seconds_estimate` for the assumptions.

    ``n_layer_sets``: the distinct (model, layer, SAE) code sets of the stage when ``experiments.compute`` keeps
    each set's codes for every pass (``similarity.codes``; paper: 84): each is encoded once and every model runs
    once (``model_passes`` 1); None: every pass encodes its layers and runs its models again."""
    pair_bytes = 8 * d_sae * d_sae
    per_pass = max(1, int(0.5 * gpu_memory_gb * 1e9 // pair_bytes))  # layer pairs whose S fit the budget
    passes = -(-n_pairs // per_pass)
    layer_chunks = float(passes) * (1 + per_pass) * n_tokens  # tokens x layers read: one a layer, <= per_pass b
    encoded = layer_chunks if n_layer_sets is None else float(n_layer_sets) * n_tokens  # tokens x layers encoded
    pairs = float(n_pairs) * n_tokens * l0 * l0  # co-active (i, j) products
    parts = {
        "pair_streams": pairs * BYTES_PER_PAIR_STREAMS,
        "scatter_atomics": pairs * 2 * SECTOR,
        # each encoded layer's dense [t, F] float32 codes written by the SAE encode and read by nonzero; each layer
        # read's entries (rows, cols, vals: written and read); its [F] per-unit sums are per chunk and negligible
        "inputs": encoded * 2 * d_sae * 4 + layer_chunks * l0 * 3 * 8 * 2,
        "sums": float(n_pairs) * pair_bytes * SUM_PASSES,
    }
    return {**parts, "total": sum(parts.values()), "co_active_pairs": pairs, "pairs_per_pass": per_pass,
            "passes": passes, "model_passes": passes if n_layer_sets is None else 1,
            "encode_flops_not_priced": encoded * 2 * d_model * d_sae,
            "kept_codes_gb": 0.0 if n_layer_sets is None else encoded * l0 * 8 / 1e9}


def stage_seconds_estimate(gpu: str = "A100 (40 GB)", *, efficiency: float = 0.5, **traffic) -> dict:
    """ESTIMATED seconds of the paper's MPPC stage on the ``torch_sparse`` back end from its memory traffic:
    bytes moved / (the GPU's datasheet memory bandwidth x ``efficiency``). Not measured (no GPU was lent where
    this was written); FLOPs are not priced.

    Assumptions (the defaults of :func:`stage_traffic`, overridable through ``traffic``):

    * the 864 SAE layer pairs of chapter 3 (main 288, random 288, model seed 144, SAE seed 144) over the paper's
      1,000,000 tokens, d_sae = 24,576 on both sides (32 x 768);
    * L0 = 50 active features per token on each side, independently (``n_tokens x L0²`` co-active pairs per layer
      pair): the benchmark's synthetic SAE codes, not a measured L0 of the paper preset's SAEs; the cost grows as
      L0²; no shifted (densely firing) units;
    * half the GPU's memory holds the float64 sums (4.8 GB per pair), so the pairs take several passes over the
      tokens (``passes`` in the result); each pass encodes one layer of a and at most one layer of b per pair;
    * every scattered 8-byte atomic add into ``S`` misses the cache (S is GBs) and costs a 32-byte sector read
      and written back; every [P] array of :data:`PAIR_STREAMS` goes through DRAM once;
    * ``efficiency``: the fraction of the datasheet bandwidth these gathers and scatters reach (0.5 assumed, as
      the appendix's FLOP efficiency); bandwidths and memory: :data:`GPU_MEMORY` (datasheets);
    * not priced: the model forward passes and the SAE encodes' FLOPs, repeated every pass; their FLOPs are
      returned as ``encode_flops_not_priced`` (SAE encodes only) for the appendix to price at its FLOP rates.

    Returns ``{"gpu", "bandwidth_gbs", "bytes", "seconds", "hours", "passes", "parts": {part: seconds},
    "encode_flops_not_priced", "model_passes", "kept_codes_gb", "label"}``."""
    bw_gbs, mem_gb = GPU_MEMORY[gpu]
    bw = bw_gbs * 1e9 * efficiency
    t = stage_traffic(mem_gb, **traffic)
    parts = {k: t[k] / bw for k in ("pair_streams", "scatter_atomics", "inputs", "sums")}
    return {"gpu": gpu, "bandwidth_gbs": bw_gbs, "bytes": t["total"], "seconds": t["total"] / bw,
            "hours": t["total"] / bw / 3600, "passes": t["passes"], "parts": parts,
            "encode_flops_not_priced": t["encode_flops_not_priced"], "model_passes": t["model_passes"],
            "kept_codes_gb": t["kept_codes_gb"],
            "label": "ESTIMATE from memory traffic (not measured, FLOPs not priced)"}
