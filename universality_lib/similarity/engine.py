"""Streaming Pearson correlations between two sets of units (SAE features or neurons) on one token stream.

For every layer pair ``(a, b)`` the engine accumulates, over chunks of tokens, the sufficient statistics

    n,  s1_i = Σ_t (x_ti - K_i),  s2_i = Σ_t (x_ti - K_i)²,  (same for y with shifts K_j),
    S_ij = Σ_t (x_ti - K_i)(y_tj - K_j)                                   [F_a, F_b] float64

and at the end forms, block by block (never the whole [F_a, F_b] Pearson matrix at once),

    C_ij = S_ij - s1_i s1_j / n,   V_i = s2_i - s1_i² / n,   r_ij = C_ij / sqrt(V_i V_j)

and keeps ``max_j r_ij`` / ``argmax_j`` (direction a→b) and ``max_i r_ij`` / ``argmax_i`` (b→a).

Numerical method ("shifted data", Chan, Golub & LeVeque 1983). The one-pass formula
``nΣxy - ΣxΣy`` loses about ``log10(1 + m²/σ²)`` digits to cancellation (m the mean, σ the standard
deviation); the authors used it in float32 with bf16 inputs. Here:

* products are exact (a float32 times a float32 fits in a float64) and every sum is float64;
* each unit gets a shift ``K`` fixed on the first chunk: its first-chunk mean when it is *dense* (fires
  on more than ``dense_threshold`` of the first chunk's tokens, e.g. every neuron), else 0, which keeps
  sparse SAE features sparse (the same rule in both back ends, so they accumulate the same numbers; in a
  float32 matmul, unshifted zeros also add no rounding). The rounding error of ``r`` is then at most about
  ``γ (1 + |m-K|/σ)_a (1 + |m-K|/σ)_b`` with ``γ = (chunk + n_chunks) ε64 ≈ 1e-12``; for a sparse unit of
  density p, ``|m|/σ ≈ sqrt(p / (1 - p))`` < 1 below p = 0.5, and for a shifted unit ``|m-K|/σ`` is
  small. The largest factor seen is kept in the result (``meta["shift_condition"]``).

Back ends (the same statistics, the same answer to about 1e-12):

* ``"sparse"`` (CPU): only products of units active on the same token are formed. A numba kernel walks,
  for each feature i of a (its tokens in this chunk), the features j of b active on the same token and
  adds ``x_ti y_tj`` into row i of S (race-free over i; cost ∝ Σ_t L0_a(t) L0_b(t)). Dense (shifted)
  units go through a dense float64 block instead.
* ``"dense"``: ``S += (X - K)ᵀ (Y - K)`` with torch on any device; ``dtype=float64`` is exact,
  ``float32`` is the fast variant for GPUs (its chunk products round in float32; the chunk sums are
  still added in float64).

Units that never fire or have zero variance in the sample are *excluded*: their r is NaN, they are never a
best match, and they are counted (``live`` masks), not scored 0.

Glossary: ``n`` tokens, ``t`` tokens in a chunk, ``F_a`` / ``F_b`` units of a layer of model a / b,
``K`` per-unit shift, ``S`` cross sums, ``r`` Pearson correlation, L0 active units per token.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from numba import njit, prange

from ..errors import UniversalityError

__all__ = ["PairStats", "pearson_reference", "BACKENDS"]

BACKENDS = ("sparse", "dense")
EPS64 = np.finfo(np.float64).eps


# ----------------------------------------------------------------------------- numba kernels (sparse back end)
@njit(cache=True, parallel=True)
def _coact_ss(acc, xt_ptr, xt_tok, xt_val, y_ptr, y_col, y_val):  # pragma: no cover - compiled
    """acc[i, j] += Σ_t x_ti y_tj over tokens where both are non-zero. x as Xᵀ CSR (feature -> tokens), y as
    CSR (token -> features); acc [F_a, F_b] float64, row i owned by one thread."""
    for i in prange(len(xt_ptr) - 1):
        for p in range(xt_ptr[i], xt_ptr[i + 1]):
            t = xt_tok[p]
            v = np.float64(xt_val[p])
            for q in range(y_ptr[t], y_ptr[t + 1]):
                acc[i, y_col[q]] += v * np.float64(y_val[q])


@njit(cache=True, parallel=True)
def _coact_sd(acc, xt_ptr, xt_tok, xt_val, yd, ycols):  # pragma: no cover - compiled
    """acc[i, ycols[k]] += Σ_t x_ti yd[t, k]: sparse units of a against the dense (shifted) units of b."""
    for i in prange(len(xt_ptr) - 1):
        for p in range(xt_ptr[i], xt_ptr[i + 1]):
            t = xt_tok[p]
            v = np.float64(xt_val[p])
            for k in range(len(ycols)):
                acc[i, ycols[k]] += v * yd[t, k]


# ----------------------------------------------------------------------------- one chunk of one unit set
def _as_csr(chunk) -> sp.csr_matrix:
    if sp.issparse(chunk):
        return sp.csr_matrix(chunk, dtype=np.float32)
    arr = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
    return sp.csr_matrix(arr.astype(np.float32, copy=False))


def _as_dense(chunk, device, dtype) -> torch.Tensor:
    if sp.issparse(chunk):
        chunk = chunk.toarray()
    t = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.asarray(chunk))
    return t.to(device=device, dtype=dtype)


class _Units:
    """Per-unit float64 sums of one layer of one model: n, shift K, s1, s2, nnz, and this chunk's pieces."""

    def __init__(self, size: int, backend: str, dense_threshold: float, device, dtype):
        self.size, self.backend, self.thr = int(size), backend, dense_threshold
        self.device, self.dtype = device, dtype
        self.n = 0
        self.K = None  # [F] float64 shift, fixed on the first chunk
        self.dense = None  # [F] bool: shifted units (sparse back end: the densely firing ones)
        z = lambda: np.zeros(self.size, dtype=np.float64)  # noqa: E731
        self.s1, self.s2, self.nnz = z(), z(), np.zeros(self.size, dtype=np.int64)

    def _fix_shift(self, density: np.ndarray, mean: np.ndarray) -> None:
        self.dense = density > self.thr
        self.K = np.where(self.dense, mean, 0.0)
        self.dcols = np.flatnonzero(self.dense).astype(np.int64)

    def load(self, chunk) -> int:
        """Take one chunk [t, F] (dense array / tensor or scipy CSR); update the per-unit sums; keep the pieces
        the cross products need. Returns t."""
        if chunk.shape[1] != self.size:
            raise UniversalityError(f"a chunk has {chunk.shape[1]} units where this layer has {self.size}: every chunk "
                                    f"of a layer must come from the same SAE / hook.")
        t = int(chunk.shape[0])
        if self.backend == "dense":
            x = _as_dense(chunk, self.device, torch.float64)  # [t, F]
            if self.K is None:
                self._fix_shift((x != 0).double().mean(0).cpu().numpy(), x.mean(0).cpu().numpy())
                self.K_t = torch.from_numpy(self.K).to(self.device)
            xs = x - self.K_t  # [t, F] shifted, float64
            self.s1 += xs.sum(0).cpu().numpy()
            self.s2 += xs.pow(2).sum(0).cpu().numpy()
            self.nnz += (x != 0).sum(0).cpu().numpy()
            self.xs = xs.to(self.dtype)
        else:
            csr = _as_csr(chunk)
            csr.eliminate_zeros()
            cols, vals = csr.indices, csr.data.astype(np.float64)
            cnt = np.bincount(cols, minlength=self.size)
            if self.K is None:
                self._fix_shift(cnt / max(t, 1), np.bincount(cols, weights=vals, minlength=self.size) / max(t, 1))
            keep = ~self.dense[cols]  # entries of the sparse (unshifted) units
            self.s1 += np.bincount(cols[keep], weights=vals[keep], minlength=self.size)
            self.s2 += np.bincount(cols[keep], weights=vals[keep] ** 2, minlength=self.size)
            self.nnz += cnt
            if keep.all():
                self.sp = csr
            else:  # the same matrix without the dense units' entries (global column ids kept)
                rows_ = np.repeat(np.arange(t), np.diff(csr.indptr))
                self.sp = sp.csr_matrix((csr.data[keep], (rows_[keep], cols[keep])), shape=csr.shape)
            self.spT = self.sp.tocsc()  # Xᵀ as CSR: indptr over features, indices = tokens
            if len(self.dcols):
                xd = csr[:, self.dcols].toarray().astype(np.float64) - self.K[self.dcols]  # [t, |D|]
                self.s1[self.dcols] += xd.sum(0)
                self.s2[self.dcols] += (xd ** 2).sum(0)
                self.xd = np.ascontiguousarray(xd)
        self.n += t
        return t

    def variance(self) -> np.ndarray:
        """Σ (x - m)² per unit (not divided by n)."""
        return self.s2 - self.s1 ** 2 / max(self.n, 1)

    def live(self) -> np.ndarray:
        """Units with a usable variance: fired at least once and not constant (to rounding)."""
        v = self.variance()
        return (self.nnz > 0) & (v > 1e-9 * self.s2) & (self.s2 > 0)

    def condition(self) -> float:
        """max over live units of 1 + |m - K| / σ (the factor in the rounding-error bound)."""
        live = self.live()
        if not live.any() or self.n == 0:
            return 1.0
        sd = np.sqrt(self.variance()[live] / self.n)
        return float(1.0 + np.max(np.abs(self.s1[live] / self.n) / sd))


# ----------------------------------------------------------------------------- the accumulator
class PairStats:
    """Streaming sufficient statistics of many layer pairs of two models, filled in one pass over the tokens.

    ``sizes_a`` / ``sizes_b``: ``{layer: number of units}``; ``pairs``: the ``(layer_a, layer_b)`` pairs to
    correlate (default: all). Feed chunks with :meth:`update`; read results with :meth:`pair_max` (max /
    argmax in both directions) or :meth:`pearson` (the full matrix, for small layers and tests).
    """

    def __init__(self, sizes_a: dict, sizes_b: dict, pairs=None, *, backend: str = "sparse",
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                 dense_threshold: float = 0.25):
        if backend not in BACKENDS:
            raise UniversalityError(f"unknown back end {backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend == "sparse" and torch.device(device).type != "cpu":
            raise UniversalityError("the sparse back end runs on the CPU; use backend='dense' on a GPU.")
        self.backend, self.device, self.dtype = backend, torch.device(device), dtype
        mk = lambda f: _Units(f, backend, dense_threshold, self.device, dtype)  # noqa: E731
        self.a = {k: mk(f) for k, f in sizes_a.items()}
        self.b = {k: mk(f) for k, f in sizes_b.items()}
        self.pairs = [tuple(p) for p in (pairs if pairs is not None else
                                         [(ka, kb) for ka in sizes_a for kb in sizes_b])]
        for ka, kb in self.pairs:
            if ka not in self.a or kb not in self.b:
                raise UniversalityError(f"pair {(ka, kb)} names a layer without a size")
        self.S = {}
        for ka, kb in self.pairs:
            shape = (self.a[ka].size, self.b[kb].size)
            self.S[(ka, kb)] = (np.zeros(shape, np.float64) if backend == "sparse"
                                else torch.zeros(shape, dtype=torch.float64, device=self.device))
        self.n, self.n_chunks, self.max_chunk = 0, 0, 0

    @property
    def nbytes(self) -> int:
        return sum(8 * self.a[ka].size * self.b[kb].size for ka, kb in self.pairs)

    def update(self, a: dict, b: dict) -> None:
        """One chunk of aligned tokens: ``a[layer]`` / ``b[layer]`` are [t, F] activations of the same t tokens."""
        ts = {self.a[k].load(v) for k, v in a.items()} | {self.b[k].load(v) for k, v in b.items()}
        missing = [k for k in self.a if k not in a] + [k for k in self.b if k not in b]
        if missing or len(ts) != 1:
            raise UniversalityError(f"every layer needs a chunk of the same tokens (missing layers {missing}, "
                                    f"token counts {sorted(ts)}).")
        t = ts.pop()
        for (ka, kb), S in self.S.items():
            ua, ub = self.a[ka], self.b[kb]
            if self.backend == "dense":
                if self.dtype == torch.float64:
                    S.addmm_(ua.xs.T, ub.xs)  # [F_a, F_b], in place
                else:  # float32 products, added to the float64 sums a block of rows at a time (bounded memory)
                    step = max(1, 2**25 // max(ub.size, 1))
                    for r0 in range(0, ua.size, step):
                        S[r0:r0 + step] += ua.xs[:, r0:r0 + step].T @ ub.xs
                continue
            _coact_ss(S, ua.spT.indptr, ua.spT.indices, ua.spT.data, ub.sp.indptr, ub.sp.indices, ub.sp.data)
            if len(ub.dcols):
                _coact_sd(S, ua.spT.indptr, ua.spT.indices, ua.spT.data, ub.xd, ub.dcols)
            if len(ua.dcols):
                _coact_sd(S.T, ub.spT.indptr, ub.spT.indices, ub.spT.data, ua.xd, ua.dcols)  # dense a x sparse b = (sparse b x dense a)ᵀ
            if len(ua.dcols) and len(ub.dcols):
                block = ua.xd.T @ ub.xd  # [|D_a|, |D_b|] float64
                if len(ua.dcols) == ua.size and len(ub.dcols) == ub.size:
                    S += block
                else:
                    S[np.ix_(ua.dcols, ub.dcols)] += block
        self.n += t
        self.n_chunks += 1
        self.max_chunk = max(self.max_chunk, t)

    # ------------------------------------------------------------------------- results
    def error_bound(self) -> float:
        """A bound on the rounding error of any r (see the module docstring)."""
        ca = max((u.condition() for u in self.a.values()), default=1.0)
        cb = max((u.condition() for u in self.b.values()), default=1.0)
        eps_chunk = torch.finfo(self.dtype).eps if self.backend == "dense" else EPS64  # products summed in a chunk
        return 4 * (self.max_chunk * eps_chunk + self.n_chunks * EPS64) * ca * cb

    def _blocks(self, ka, kb, rows: int = 1024):
        """Yield (r0, r [rows, F_b] float64 Pearson block with NaN at excluded units) for one pair."""
        ua, ub = self.a[ka], self.b[kb]
        n = max(self.n, 1)
        S = self.S[(ka, kb)]
        S = torch.from_numpy(S) if isinstance(S, np.ndarray) else S
        dev = S.device
        t = lambda v: torch.from_numpy(np.ascontiguousarray(v)).to(dev)  # noqa: E731
        s1a, s1b = t(ua.s1), t(ub.s1)
        sda = torch.where(t(ua.live()), t(ua.variance()).clamp_min(0).sqrt(), torch.nan)
        sdb = torch.where(t(ub.live()), t(ub.variance()).clamp_min(0).sqrt(), torch.nan)
        for r0 in range(0, ua.size, rows):
            r1 = min(ua.size, r0 + rows)
            C = S[r0:r1] - s1a[r0:r1, None] * s1b[None, :] / n  # [rows, F_b] centred co-moment
            yield r0, (C / (sda[r0:r1, None] * sdb[None, :])).clamp(-1.0, 1.0)

    def pearson(self, ka, kb, rows=None) -> np.ndarray:
        """The Pearson matrix [F_a, F_b] (float64, NaN where a unit is excluded); with ``rows`` (indices of a's
        units) only those rows, [len(rows), F_b]."""
        if rows is None:
            return np.concatenate([r.cpu().numpy() for _, r in self._blocks(ka, kb)])
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.b[kb].size))
        for r0, r in self._blocks(ka, kb):
            hit = (rows >= r0) & (rows < r0 + len(r))
            if hit.any():
                out[hit] = r[torch.from_numpy(rows[hit] - r0).to(r.device)].cpu().numpy()
        return out

    def pair_max(self, ka, kb) -> dict:
        """Best match of every unit in both directions: ``a_val`` / ``a_idx`` [F_a] (max / argmax over b's
        units) and ``b_val`` / ``b_idx`` [F_b]; NaN / -1 where the unit is excluded or has no live partner."""
        fa, fb = self.a[ka].size, self.b[kb].size
        a_val, a_idx = np.full(fa, np.nan), np.full(fa, -1, np.int64)
        b_val, b_idx = torch.full((fb,), -math.inf, dtype=torch.float64), torch.full((fb,), -1, dtype=torch.long)
        for r0, r in self._blocks(ka, kb):
            r = torch.nan_to_num(r, nan=-math.inf)  # excluded units never win
            v, i = r.max(dim=1)
            ok = torch.isfinite(v).cpu().numpy()
            a_val[r0:r0 + len(v)][ok] = v.cpu().numpy()[ok]
            a_idx[r0:r0 + len(v)][ok] = i.cpu().numpy()[ok]
            cv, ci = r.max(dim=0)
            better = (cv > b_val.to(cv.device)).cpu()
            b_val[better] = cv.cpu()[better]
            b_idx[better] = ci.cpu()[better] + r0
        b_val, b_idx = b_val.numpy(), b_idx.numpy()
        bad = ~np.isfinite(b_val)
        b_val[bad], b_idx[bad] = np.nan, -1
        return {"a_val": a_val, "a_idx": a_idx, "b_val": b_val, "b_idx": b_idx}


def pearson_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Float64 two-pass Pearson matrix [F_a, F_b] of x [n, F_a] and y [n, F_b] (the tests' reference);
    NaN where a column has zero variance."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    vx, vy = (xc ** 2).sum(0), (yc ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc.T @ yc) / np.sqrt(np.outer(vx, vy))
    r[vx == 0, :] = np.nan
    r[:, vy == 0] = np.nan
    return r
