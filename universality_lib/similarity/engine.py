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

* inputs keep their precision (float32, or float64; 16-bit chunks widen exactly to float32); products of
  float32 values are exact in float64, float64 products round once, and every sum is float64;
* each unit gets a shift ``K`` fixed on the first chunk: its first-chunk mean when it is *dense* (fires
  on more than ``dense_threshold`` of the first chunk's tokens, e.g. every neuron), else 0, which keeps
  sparse SAE features sparse (the same rule in both back ends, so they accumulate the same numbers; in a
  float32 matmul, unshifted zeros also add no rounding). The rounding error of ``r`` is then at most about
  ``γ (1 + |m-K|/σ)_a (1 + |m-K|/σ)_b`` with ``γ = 4 (terms ε + n_chunks ε64)``, ``terms`` the most products
  one running sum takes: a chunk's length for the dense back end (ε of its ``dtype``), and for the sparse ones
  (which add a product per token) also the most tokens a sparse unit fired on (ε64; <= 1e-10 at 1M tokens);
  for a sparse unit of density p, ``|m|/σ ≈ sqrt(p / (1 - p))`` < 1 below p = 0.5, and for a shifted unit ``|m-K|/σ`` is
  small. The largest factor seen is kept in the result (``meta["shift_condition"]``).

Back ends (the same statistics, the same answer to about 1e-12):

* ``"sparse"`` (CPU): only products of units active on the same token are formed. A numba kernel walks,
  for each feature i of a (its tokens in this chunk), the features j of b active on the same token and
  adds ``x_ti y_tj`` into row i of S (race-free over i; cost ∝ Σ_t L0_a(t) L0_b(t)). Dense (shifted)
  units go through a dense float64 block instead.
* ``"torch_sparse"`` (any torch device; the default on a GPU, :func:`default_backend`): the same co-active
  products as ``"sparse"``, paired with torch ops and added with ``index_add_`` in float64 (``torch_sparse.py``).
* ``"dense"``: ``S += (X - K)ᵀ (Y - K)`` with torch on any device; ``dtype=float64`` is exact,
  ``float32`` is the fast variant for GPUs and the cross-check (its chunk products round in float32; the chunk
  sums are still added in float64); 16-bit dtypes are refused.

Input: every chunk of an update is checked before any sum changes (2-D ``[t, F]`` numpy / torch / scipy, a float
dtype, finite values, the same ``t`` and a chunk for every layer); a refused update leaves the statistics as they
were. Chunks of 0 tokens are skipped; reading results before any token was fed is refused.

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
from . import torch_sparse as tsp

__all__ = ["PairStats", "pearson_reference", "BACKENDS", "default_backend"]

BACKENDS = ("sparse", "dense", "torch_sparse")
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


# ----------------------------------------------------------------------------- checking one chunk
_WIDEN = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float32,
          torch.float64: torch.float64}  # half precision widens exactly; float32 / float64 keep their precision
_NP_WIDEN = {np.dtype(np.float16): np.float32, np.dtype(np.float32): np.float32, np.dtype(np.float64): np.float64}


def _check_chunk(chunk, size: int, where: str, start: int):
    """One layer's chunk [t, size] checked and returned in its own precision (float16 / bfloat16 widened exactly to
    float32, a scipy matrix as a CSR copy): a numpy array, a dense torch tensor or a scipy sparse matrix of finite
    float16 / bfloat16 / float32 / float64 values. Anything else raises one UniversalityError; nothing is changed.
    ``where`` names the layer, ``start`` is the chunk's first token in the stream (for the messages)."""
    expected = (f"expected a 2-D [tokens, {size}] float array (numpy array, torch tensor or scipy sparse matrix; "
                f"flatten batch and position first, e.g. acts[mask])")
    if sp.issparse(chunk):
        dtype = chunk.dtype
    elif isinstance(chunk, torch.Tensor):
        if chunk.layout != torch.strided:
            raise UniversalityError(f"{where}: {expected}, got a torch tensor with layout {chunk.layout}; "
                                    f"pass chunk.to_dense().")
        dtype = chunk.dtype
    elif isinstance(chunk, np.ndarray):
        dtype = chunk.dtype
    else:
        raise UniversalityError(f"{where}: {expected}, got {type(chunk).__name__}; convert it with np.asarray.")
    if chunk.ndim != 2 or chunk.shape[1] != size:
        raise UniversalityError(f"{where}: {expected}, got shape {tuple(chunk.shape)}: every chunk of a layer must "
                                f"have the {size} units of its SAE / hook.")
    widen = _WIDEN if isinstance(chunk, torch.Tensor) else _NP_WIDEN
    if dtype not in widen:
        raise UniversalityError(f"{where}: {expected}, got dtype {dtype}; cast it to float32 or float64.")
    if sp.issparse(chunk):
        chunk = sp.csr_matrix(chunk, dtype=widen[dtype], copy=True)
    else:
        chunk = chunk.to(widen[dtype]) if isinstance(chunk, torch.Tensor) else chunk.astype(widen[dtype], copy=False)
    bad = _first_non_finite(chunk)
    if bad is not None:
        tok, unit, value = bad
        raise UniversalityError(f"{where}: activation {value} at token {tok} of this chunk (token {start + tok} of "
                                f"the stream), unit {unit}: activations must be finite. Look for an overflow in the "
                                f"model or SAE (run them in float32); nothing was updated.")
    return chunk


def _first_non_finite(chunk):
    """(token, unit, value) of the first NaN / ±inf of a chunk (CSR, tensor or array), or None."""
    if sp.issparse(chunk):
        bad = np.flatnonzero(~np.isfinite(chunk.data))
        if not len(bad):
            return None
        p = int(bad[0])
        return int(np.searchsorted(chunk.indptr, p, side="right") - 1), int(chunk.indices[p]), float(chunk.data[p])
    if isinstance(chunk, torch.Tensor):
        if bool(torch.isfinite(chunk).all()):
            return None
        tok, unit = (~torch.isfinite(chunk)).nonzero()[0].tolist()
    else:
        bad = np.argwhere(~np.isfinite(chunk))
        if not len(bad):
            return None
        tok, unit = bad[0].tolist()
    return tok, unit, float(chunk[tok, unit])


def _size(size, where: str) -> int:
    """A layer's number of units: an integer >= 1."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise UniversalityError(f"{where}: expected a number of units >= 1 (an int), got {size!r}.")
    return int(size)


# ----------------------------------------------------------------------------- one chunk of one unit set
def _as_csr(chunk) -> sp.csr_matrix:
    """A checked chunk as scipy CSR in its own precision (float32 or float64), explicit zeros removed."""
    if isinstance(chunk, torch.Tensor):
        chunk = chunk.detach().cpu().numpy()
    csr = chunk if sp.issparse(chunk) else sp.csr_matrix(chunk)
    csr.eliminate_zeros()
    return csr


def _as_dense(chunk, device) -> torch.Tensor:
    if sp.issparse(chunk):
        chunk = chunk.toarray()
    t = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.asarray(chunk))
    return t.to(device=device, dtype=torch.float64)


def _host(v) -> np.ndarray:
    return v.cpu().numpy() if isinstance(v, torch.Tensor) else v


class _Units:
    """Per-unit float64 sums of one layer of one model: n, shift K, s1, s2, nnz, and this chunk's pieces."""

    def __init__(self, size: int, backend: str, dense_threshold: float, device, dtype):
        self.size, self.backend, self.thr = int(size), backend, dense_threshold
        self.device, self.dtype = device, dtype
        self.n = 0
        self.K = None  # [F] float64 shift, fixed on the first chunk
        self.dense = None  # [F] bool: shifted units (sparse back ends: the densely firing ones)
        z = lambda: np.zeros(self.size, dtype=np.float64)  # noqa: E731
        self.s1, self.s2, self.nnz = z(), z(), np.zeros(self.size, dtype=np.int64)

    def _fix_shift(self, density: np.ndarray, mean: np.ndarray) -> None:
        self.dense = density > self.thr
        self.K = np.where(self.dense, mean, 0.0)
        self.dcols = np.flatnonzero(self.dense).astype(np.int64)
        self.dense_t = torch.from_numpy(self.dense).to(self.device)

    def prepare(self, chunk):
        """A checked chunk in this back end's form (changes no state): CSR, a float64 tensor, or device entries."""
        if self.backend == "dense":
            return _as_dense(chunk, self.device)
        if self.backend == "torch_sparse":
            return tsp.entries(chunk, self.device)
        return _as_csr(chunk)

    def _sparse_sums(self, cols, vals, t: int):
        """Add a chunk's entries (unit ``cols`` [E], float64 ``vals`` [E], numpy or torch) to nnz, s1, s2 (fixing
        the shift on the first chunk); returns the mask [E] of the entries of sparse (unshifted) units."""
        xp = torch if isinstance(cols, torch.Tensor) else np
        count = lambda c, w=None: _host(xp.bincount(c, weights=w, minlength=self.size))  # noqa: E731
        cnt = count(cols)
        if self.K is None:
            self._fix_shift(cnt / t, count(cols, vals) / t)
        keep = ~(self.dense_t if xp is torch else self.dense)[cols]
        self.s1 += count(cols[keep], vals[keep])
        self.s2 += count(cols[keep], vals[keep] ** 2)
        self.nnz += cnt
        return keep

    def _dense_sums(self, xd) -> None:
        """Add the shifted dense units' block xd [t, |D|] (float64, numpy or torch) to s1, s2; keep it."""
        self.s1[self.dcols] += _host(xd.sum(0))
        self.s2[self.dcols] += _host((xd ** 2).sum(0))
        self.xd = xd

    def load(self, prep, t: int) -> None:
        """Take one prepared chunk of ``t`` >= 1 tokens; update the per-unit sums; keep the pieces the cross
        products need."""
        if self.backend == "dense":
            x = prep  # [t, F] float64
            if self.K is None:
                self._fix_shift((x != 0).double().mean(0).cpu().numpy(), x.mean(0).cpu().numpy())
                self.K_t = torch.from_numpy(self.K).to(self.device)
            xs = x - self.K_t  # [t, F] shifted, float64
            self.s1 += xs.sum(0).cpu().numpy()
            self.s2 += xs.pow(2).sum(0).cpu().numpy()
            self.nnz += (x != 0).sum(0).cpu().numpy()
            self.xs = xs.to(self.dtype)
        elif self.backend == "torch_sparse":
            keep = self._sparse_sums(prep.cols, prep.vals.double(), t)
            self.ent = prep.select(keep, t)  # the sparse units' entries, rows still sorted
            if len(self.dcols):
                self._dense_sums(prep.dense_block(~keep, self.dcols, self.K, t))
        else:
            csr = prep
            cols, vals = csr.indices, csr.data.astype(np.float64)
            keep = self._sparse_sums(cols, vals, t)
            if keep.all():
                self.sp = csr
            else:  # the same matrix without the dense units' entries (global column ids kept)
                rows_ = np.repeat(np.arange(t), np.diff(csr.indptr))
                self.sp = sp.csr_matrix((csr.data[keep], (rows_[keep], cols[keep])), shape=csr.shape)
            self.spT = self.sp.tocsc()  # Xᵀ as CSR: indptr over features, indices = tokens
            if len(self.dcols):
                self._dense_sums(np.ascontiguousarray(csr[:, self.dcols].toarray().astype(np.float64)
                                                      - self.K[self.dcols]))  # [t, |D|]
        self.n += t

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

    def sparse_terms(self) -> int:
        """The most tokens on which one sparse (unshifted) unit fired: the most terms a sparse back end adds, one
        token at a time, into one running cross sum."""
        return int(self.nnz[~self.dense].max(initial=0)) if self.dense is not None else 0


# ----------------------------------------------------------------------------- the accumulator
def default_backend(device) -> str:
    """The back end for a device: ``"torch_sparse"`` on a GPU, the numba ``"sparse"`` one on the CPU."""
    return "sparse" if torch.device(device).type == "cpu" else "torch_sparse"


class PairStats:
    """Streaming sufficient statistics of many layer pairs of two models, filled in one pass over the tokens.

    ``sizes_a`` / ``sizes_b``: ``{layer: number of units}``; ``pairs``: the ``(layer_a, layer_b)`` pairs to
    correlate (default: all). ``dtype`` is the dense back end's chunk-product precision (float64 or float32); the
    sparse back ends always multiply and add in float64. ``max_pairs``: the most co-active pairs the torch_sparse
    back end forms at once (its working memory, ~100 bytes a pair). Feed chunks with :meth:`update`; read results with
    :meth:`pair_max` (max / argmax in both directions) or :meth:`pearson` (the full matrix, for small layers and
    tests). Every argument and chunk is checked before any state changes; a refused chunk leaves the sums as they
    were.
    """

    def __init__(self, sizes_a: dict, sizes_b: dict, pairs=None, *, backend: str = "sparse",
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                 dense_threshold: float = 0.25, max_pairs: int = 2**24):
        if backend not in BACKENDS:
            raise UniversalityError(f"unknown back end {backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend == "sparse" and torch.device(device).type != "cpu":
            raise UniversalityError("the sparse back end runs on the CPU; use backend='torch_sparse' on a GPU.")
        if backend == "dense" and dtype not in (torch.float64, torch.float32):
            raise UniversalityError(f"the dense back end multiplies in float64 (exact) or float32, got dtype={dtype}: "
                                    f"16-bit products lose 3-4 digits and change best matches; use float32.")
        if backend != "dense" and dtype != torch.float64:
            raise UniversalityError(f"the {backend} back end always accumulates in float64, got dtype={dtype}: leave "
                                    f"dtype at its default (it sets the dense back end's precision).")
        if isinstance(max_pairs, bool) or not isinstance(max_pairs, (int, np.integer)) or max_pairs < 1:
            raise UniversalityError(f"max_pairs is a number of pairs >= 1 (an int), got {max_pairs!r}.")
        if not 0.0 <= dense_threshold <= 1.0:
            raise UniversalityError(f"dense_threshold is a fraction of tokens in [0, 1], got {dense_threshold!r}.")
        for side, sizes in (("a", sizes_a), ("b", sizes_b)):
            if not isinstance(sizes, dict) or not sizes:
                raise UniversalityError(f"sizes_{side}: expected a non-empty {{layer: number of units}} dict, "
                                        f"got {sizes!r}.")
        self.backend, self.device, self.dtype, self.max_pairs = backend, torch.device(device), dtype, int(max_pairs)
        mk = lambda side, k, f: _Units(_size(f, f"layer {k!r} of side {side}"), backend, dense_threshold,  # noqa: E731
                                       self.device, dtype)
        self.a = {k: mk("a", k, f) for k, f in sizes_a.items()}
        self.b = {k: mk("b", k, f) for k, f in sizes_b.items()}
        self.pairs = [tuple(p) for p in (pairs if pairs is not None else
                                         [(ka, kb) for ka in sizes_a for kb in sizes_b])]
        if not self.pairs:
            raise UniversalityError("pairs is empty: name at least one (layer_a, layer_b) pair, or pass None for all.")
        for ka, kb in self.pairs:
            if ka not in self.a or kb not in self.b:
                raise UniversalityError(f"pair {(ka, kb)} names a layer without a size (layers of a: {list(self.a)}, "
                                        f"of b: {list(self.b)})")
        self.S = {}
        for ka, kb in self.pairs:
            shape = (self.a[ka].size, self.b[kb].size)
            self.S[(ka, kb)] = (np.zeros(shape, np.float64) if backend == "sparse"
                                else torch.zeros(shape, dtype=torch.float64, device=self.device))
        self.n, self.n_chunks, self.max_chunk = 0, 0, 0

    @property
    def nbytes(self) -> int:
        return sum(8 * self.a[ka].size * self.b[kb].size for ka, kb in self.pairs)

    def _checked(self, a: dict, b: dict) -> tuple[dict, int]:
        """Every layer's chunk checked and prepared, ``({(side, layer): prepared}, t)``; raises before any change."""
        out, ts = {}, {}
        for side, units, chunks in (("a", self.a, a), ("b", self.b, b)):
            if not isinstance(chunks, dict):
                raise UniversalityError(f"side {side}: expected a {{layer: chunk [tokens, units]}} dict, got "
                                        f"{type(chunks).__name__}.")
            if set(chunks) != set(units):
                raise UniversalityError(f"side {side}: expected a chunk for each of the layers {list(units)}, got "
                                        f"layers {list(chunks)} (missing {[k for k in units if k not in chunks]}, "
                                        f"unknown {[k for k in chunks if k not in units]}).")
            for k, u in units.items():
                c = _check_chunk(chunks[k], u.size, f"layer {k!r} of side {side}", self.n)
                ts[(side, k)] = int(c.shape[0])
                out[(side, k)] = c
        if len(set(ts.values())) != 1:
            raise UniversalityError(f"every layer needs a chunk of the same tokens, got token counts {ts}.")
        t = next(iter(ts.values()))
        units = {**{("a", k): u for k, u in self.a.items()}, **{("b", k): u for k, u in self.b.items()}}
        return ({key: units[key].prepare(c) for key, c in out.items()} if t else {}), t

    def update(self, a: dict, b: dict) -> None:
        """One chunk of aligned tokens: ``a[layer]`` / ``b[layer]`` are [t, F] activations of the same t tokens,
        one for every layer of each side. A chunk of 0 tokens is checked and skipped."""
        prepared, t = self._checked(a, b)
        if t == 0:
            return
        for (side, k), prep in prepared.items():
            (self.a if side == "a" else self.b)[k].load(prep, t)
        for (ka, kb), S in self.S.items():
            ua, ub = self.a[ka], self.b[kb]
            if self.backend == "dense":
                self._cross_dense(S, ua, ub)
            elif self.backend == "torch_sparse":
                tsp.cross(S, ua, ub, self.max_pairs)
            else:
                self._cross_sparse(S, ua, ub)
        self.n += t
        self.n_chunks += 1
        self.max_chunk = max(self.max_chunk, t)

    def _cross_dense(self, S, ua, ub) -> None:
        if self.dtype == torch.float64:
            S.addmm_(ua.xs.T, ub.xs)  # [F_a, F_b], in place
        else:  # float32 products, added to the float64 sums a block of rows at a time (bounded memory)
            step = max(1, 2**25 // max(ub.size, 1))
            for r0 in range(0, ua.size, step):
                S[r0:r0 + step] += ua.xs[:, r0:r0 + step].T @ ub.xs

    @staticmethod
    def _cross_sparse(S, ua, ub) -> None:
        _coact_ss(S, ua.spT.indptr, ua.spT.indices, ua.spT.data, ub.sp.indptr, ub.sp.indices, ub.sp.data)
        if len(ub.dcols):
            _coact_sd(S, ua.spT.indptr, ua.spT.indices, ua.spT.data, ub.xd, ub.dcols)
        if len(ua.dcols):  # dense a x sparse b = (sparse b x dense a)ᵀ, summed into a contiguous block first: written
            # through S.T, every product would land in another row of S (9x slower at F = 1,536, measured)
            block = np.zeros((ub.size, len(ua.dcols)))  # [F_b, |D_a|]
            _coact_sd(block, ub.spT.indptr, ub.spT.indices, ub.spT.data, ua.xd, np.arange(len(ua.dcols)))
            S[ua.dcols] += block.T
        if len(ua.dcols) and len(ub.dcols):
            block = ua.xd.T @ ub.xd  # [|D_a|, |D_b|] float64
            if len(ua.dcols) == ua.size and len(ub.dcols) == ub.size:
                S += block
            else:
                S[np.ix_(ua.dcols, ub.dcols)] += block

    # ------------------------------------------------------------------------- results
    def _check_fed(self) -> None:
        if self.n == 0:
            raise UniversalityError("no tokens were fed: call update with at least one chunk of >= 1 token before "
                                    "reading correlations (an empty sample would report every unit as never fired).")

    def error_bound(self) -> float:
        """A bound on the rounding error of any r (see the module docstring)."""
        self._check_fed()
        ca = max(u.condition() for u in self.a.values())
        cb = max(u.condition() for u in self.b.values())
        if self.backend == "dense":  # products summed in a chunk (in dtype), each chunk added once
            terms, eps_chunk = self.max_chunk, torch.finfo(self.dtype).eps
        else:  # float64 products added one token at a time into the running sums, or in dense blocks per chunk
            terms = max(self.max_chunk, *(u.sparse_terms() for u in (*self.a.values(), *self.b.values())))
            eps_chunk = EPS64
        return 4 * (terms * eps_chunk + self.n_chunks * EPS64) * ca * cb

    def _blocks(self, ka, kb, rows: int = 1024):
        """Yield (r0, r [rows, F_b] float64 Pearson block with NaN at excluded units) for one pair."""
        self._check_fed()
        ua, ub = self.a[ka], self.b[kb]
        n = self.n
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
