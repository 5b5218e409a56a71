"""Selective-scan implementations for :mod:`universality_lib.models.mamba`.

The selective scan is the inner recurrence of a Mamba-1 block. For each batch row b, channel e
(of the E = d_inner channels) and state index n (of the N = d_state):

    A_bar[t, e, n] = exp(delta[t, e] * A[e, n])                      (discretised A, "hook_A_bar")
    B_bar[t, e, n] = delta[t, e] * B[t, n]                           (discretised B, "hook_B_bar")
    h[t, e, n]     = A_bar[t, e, n] * h[t-1, e, n] + B_bar[t, e, n] * x[t, e]     (h[-1] = 0)
    y[t, e]        = sum_n h[t, e, n] * C[t, n]                      ("hook_y": no D skip here)

Names and shapes (as in :mod:`.mamba`'s glossary; dimensions are lower case in shape comments, and the sizes
are ``Bsz, L, E, N`` in code, so that ``B`` and ``C`` are always the SSM matrices)
    b batch   l positions   e d_inner (SSM channels)   n d_state (state size per channel)   k _CHUNK / d_conv
    x      [b, l, e]  the SSM input, SiLU of the conv output (mamba_ssm's ``u`` in ``selective_scan_fn``)
    delta  [b, l, e]  the step size after softplus (mamba_ssm's ``delta``, after ``delta_softplus``)
    A      [e, n]     the (negative) state matrix, A = -exp(A_log)
    B, C   [b, l, n]  the input-dependent input / output matrices
    h      [b, e, n]  the state (``x`` in mamba_ssm's ``selective_scan_ref``)
    y      [b, l, e]  h . C, without the D skip (the caller adds x * D)

Each public function mirrors an official one: :func:`discretize` and :func:`reference_scan` are the two halves
of mamba_ssm's ``selective_scan_ref`` (and of mamba-minimal's ``MambaBlock.selective_scan``) with ``D=None,
z=None``; :func:`selective_scan_fast` is ``selective_scan_fn`` (same arguments, same result, without D and z);
:func:`causal_conv1d` is ``causal_conv1d_fn`` of the causal-conv1d package in [b, l, e] layout.

Two implementations live here.

1. :func:`reference_scan` / :func:`selective_scan_reference`: the exact per-position loop in plain
   PyTorch. It takes the materialised A_bar and B_bar (so a caller can hook them), and it calls a
   ``state_hook(t, h)`` after every position, so the state h_t can be read or *replaced*; the next
   position is computed from whatever the hook returned. Autograd differentiates it. This is the
   specification; everything else is tested against it. :func:`reference_scan_stepwise` is the same loop
   with A_bar_t, B_bar_t made at each position (no [b, l, e, n] tensors; equal numbers, about twice as fast).

2. :func:`selective_scan_fast`: a fused kernel for training and activation collection. With numba it
   is a ``torch.autograd.Function`` (:class:`_NumbaSelectiveScan`) around two ``numba.njit(parallel=True)``
   kernels; ``numba.prange`` runs over (batch row x block of ``_EBLOCK`` channels) tasks, using
   ``min(torch.get_num_threads(), numba max)`` threads. A_bar and B_bar are never materialised as
   [b, l, e, n] tensors: they are computed inside the kernel with a branch-free polynomial ``exp`` in
   float32 (2^k built from IEEE bits, relative error < 2e-7, i.e. float32 rounding) and ``math.exp`` in
   float64 (so the float64 gradcheck sees the exact function). A float64 ``HookedMamba`` takes these float64
   kernels: its A = -exp(A_log) is float64 too (``tests/test_mamba_loading.py`` checks it). Loop order is t -> n -> e with the channel
   loop innermost over local C-contiguous buffers (state stored [n, e_block], A transposed to [n, e]), so
   LLVM emits 16-wide AVX-512 / 8-wide AVX2 code with no gathers; this (and removing a table lookup that
   compiled to gathers) took the forward from 36 ms to ~4 ms per layer at b=16, l=256, e=256, n=16.

   Forward: walk t = 0..L-1, keep the [n, e_block] state in a small local buffer, write y[t]. Every K
   (= ``_CHUNK``) positions the state *entering* the chunk is saved to ``h_chk`` [b, l/k, n, e]; this is
   the only thing saved besides the inputs (4 MB for b=16, l=256, e=256, n=16 at K=16), so memory is
   O(b l e n / K) instead of O(b l e n).

   Backward (hand-written, reverse-mode of the recurrence above). Let g_y[t, e] be the incoming
   gradient and G[t, e, n] = dLoss/dh[t, e, n] (total, i.e. including the path through h[t+1]):

       G[t]      = g_y[t] * C[t] + A_bar[t+1] * G[t+1]        (G[l] = 0)
       g_C[t, n]  += sum_e g_y[t, e] * h[t, e, n]
       g_Abar[t] = G[t] * h[t-1]
       g_delta[t, e] = sum_n ( g_Abar[t] * A_bar[t] * A[e, n]  +  G[t] * B[t, n] * x[t, e] )
       g_A[e, n]  += sum_t g_Abar[t] * A_bar[t] * delta[t, e]
       g_B[t, n]  += sum_e G[t] * delta[t, e] * x[t, e]
       g_x[t, e]  = sum_n G[t] * delta[t, e] * B[t, n]

   h[t-1] is needed while walking t backwards. The kernel goes over the chunks from last to first:
   it *recomputes* the chunk's states forward from the saved ``h_chk`` entry (storing h and A_bar for the
   K positions in a per-task buffer that stays in L2 cache), then walks the chunk backwards applying
   the formulas above. So the backward costs one extra forward recompute and no [b, l, e, n] storage.
   Sums over e (for g_B, g_C) are accumulated per channel block and reduced in torch afterwards;
   the sum over b for g_A likewise. This is checked against autograd through the reference scan
   (``torch.autograd.gradcheck`` in float64 and ``allclose`` in float32) in ``tests/test_mamba.py``.

   Without numba, :func:`selective_scan_fast` falls back to :func:`_torch_chunked_scan`, a pure-PyTorch
   scan (autograd backward) that never materialises more than one chunk of A_bar/B_bar at a time. It is
   slow (the Python loop over positions) but exact and warning-free.

:func:`causal_conv1d` is the block's depthwise causal conv in [b, l, e] layout (numba forward/backward,
no transposes, contiguous output; ``F.conv1d`` fallback), checked against ``nn.Conv1d`` and by gradcheck.

Threads: numba picks its threading layer (``omp`` in this venv, which is safe to call from several Python
threads); if it falls back to ``workqueue``, do not call these kernels concurrently from several threads.

The CUDA kernel of ``mamba_ssm`` (``selective_scan_fn``) is used by :func:`selective_scan_fast` only when
it is importable *and* the tensors are on CUDA; it is never required.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

try:  # optional, CPU fast path
    import numba
    import numba.extending
    import numpy as np
    from numba import njit, prange

    HAVE_NUMBA = True
except Exception:  # pragma: no cover - exercised only where numba is missing
    numba = None
    np = None
    HAVE_NUMBA = False

try:  # optional, CUDA fast path; never required
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_ssm_scan_fn
except Exception:  # mamba_ssm absent or broken (the usual case on CPU)
    _mamba_ssm_scan_fn = None

__all__ = [
    "HAVE_NUMBA",
    "reference_scan",
    "reference_scan_stepwise",
    "selective_scan_reference",
    "selective_scan_fast",
    "discretize",
    "causal_conv1d",
]

_CHUNK = 16  # K: positions per checkpoint chunk in the numba kernels
_EBLOCK = 64  # channels per prange task


# --------------------------------------------------------------------------------------------------
# 1. Exact per-position reference scan
# --------------------------------------------------------------------------------------------------
def discretize(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor):
    """Zero-order-hold A and Euler B, as in Mamba-1 (and MambaLens): mamba_ssm ``selective_scan_ref``'s ``deltaA``
    and ``deltaB_u`` (before the product with u), mamba-minimal ``selective_scan``'s ``deltaA`` / ``deltaB_u``.

    Returns ``(A_bar, B_bar)``, both [b, l, e, n]: ``A_bar = exp(delta * A)``, ``B_bar = delta * B``. The same
    call on one position (delta [b, e], B [b, n]) gives that position's [b, e, n] pair.
    """
    A_bar = torch.exp(delta.unsqueeze(-1) * A)  # [b,l,e,n] = exp([b,l,e,1] * [e,n])
    B_bar = delta.unsqueeze(-1) * B.unsqueeze(-2)  # [b,l,e,n] = [b,l,e,1] * [b,l,1,n]
    return A_bar, B_bar


def reference_scan(
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    x: torch.Tensor,
    C: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    state_hook: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """Exact recurrence, one position at a time. Returns y (h·C, no D skip), [b, l, e].

    The loop of mamba_ssm's ``selective_scan_ref`` (``x = deltaA[:, :, i] * x + deltaB_u[:, :, i]``; y = x . C),
    with the state named h and a hook after every position.

    Args:
        A_bar, B_bar: [b, l, e, n] discretised matrices (see :func:`discretize`).
        x: [b, l, e] SSM input.
        C: [b, l, n] output matrix.
        h0: optional initial state [b, e, n] (zeros if None).
        state_hook: if given, called as ``h = state_hook(t, h)`` after the update at position t; the
            returned tensor is what position t+1 is computed from and what y[t] reads.
    """
    # unbind (not A_bar[:, t]) so autograd stacks the per-position grads once instead of L full-size adds
    A_t, B_t = A_bar.unbind(1), B_bar.unbind(1)  # L x [b,e,n]
    return _recurrence(lambda t: (A_t[t], B_t[t]), x, C, h0, state_hook)


def reference_scan_stepwise(
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    x: torch.Tensor,
    C: torch.Tensor,
    h0: Optional[torch.Tensor] = None,
    state_hook: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """:func:`reference_scan` ``(*discretize(delta, A, B), x, C, h0, state_hook)``, with each position's A_bar_t and
    B_bar_t made by :func:`discretize` when the loop reaches it: the same elementwise formulas, so the same numbers
    (tested), without the two [b, l, e, n] tensors. The exact scan of a block whose ``hook_A_bar`` / ``hook_B_bar``
    nobody hooks; the loop stays in cache instead of streaming 2 x b·l·e·n floats through memory.

    Args: delta [b, l, e], A [e, n], B [b, l, n]; the rest as :func:`reference_scan`."""
    d_t, B_t = delta.unbind(1), B.unbind(1)  # L x [b,e] / [b,n]
    return _recurrence(lambda t: discretize(d_t[t], A, B_t[t]), x, C, h0, state_hook)


def _recurrence(terms: Callable[[int], tuple], x: torch.Tensor, C: torch.Tensor, h0, state_hook) -> torch.Tensor:
    """The loop both reference scans share: ``terms(t)`` gives (A_bar_t, B_bar_t), [b, e, n] each."""
    Bsz, L, E = x.shape
    h = h0 if h0 is not None else x.new_zeros(Bsz, E, C.shape[-1])  # [b,e,n]
    ys = []
    x_t, C_t = x.unbind(1), C.unbind(1)  # L x [b,e] / [b,n]
    for t in range(L):
        A_bar, B_bar = terms(t)  # [b,e,n] each
        h = A_bar * h + B_bar * x_t[t].unsqueeze(-1)  # [b,e,n]
        if state_hook is not None:
            h = state_hook(t, h)  # [b,e,n]
        ys.append(torch.matmul(h, C_t[t].unsqueeze(-1)).squeeze(-1))  # [b,e] = [b,e,n] @ [b,n,1]
    return torch.stack(ys, dim=1)  # [b,l,e]


def selective_scan_reference(x, delta, A, B, C, state_hook=None):
    """mamba_ssm ``selective_scan_ref(u=x, delta, A, B, C)`` without D and z: :func:`discretize`, then
    :func:`reference_scan`. Returns y [b, l, e]."""
    A_bar, B_bar = discretize(delta, A, B)  # [b,l,e,n] each
    return reference_scan(A_bar, B_bar, x, C, state_hook=state_hook)


# --------------------------------------------------------------------------------------------------
# 2a. Pure-PyTorch fallback (no numba)
# --------------------------------------------------------------------------------------------------
def _torch_chunked_scan(x, delta, A, B, C, chunk: int = 32):
    """``selective_scan_ref`` in plain PyTorch; materialises A_bar/B_bar one chunk of positions at a time."""
    Bsz, L, E = x.shape
    N = A.shape[1]
    h = x.new_zeros(Bsz, E, N)  # [b,e,n]
    ys = []
    for s in range(0, L, chunk):
        A_bar, B_bar = discretize(delta[:, s : s + chunk], A, B[:, s : s + chunk])  # [b,k,e,n]
        Bx = (B_bar * x[:, s : s + chunk].unsqueeze(-1)).unbind(1)  # K x [b,e,n]
        A_k, C_k = A_bar.unbind(1), C[:, s : s + chunk].unbind(1)  # K x [b,e,n], K x [b,n]
        for k in range(len(A_k)):
            h = A_k[k] * h + Bx[k]  # [b,e,n]
            ys.append(torch.matmul(h, C_k[k].unsqueeze(-1)).squeeze(-1))  # [b,e]
    return torch.stack(ys, dim=1)  # [b,l,e]


# --------------------------------------------------------------------------------------------------
# 2b. numba kernels
# --------------------------------------------------------------------------------------------------
if HAVE_NUMBA:
    from llvmlite import ir as _llvm_ir

    @numba.extending.intrinsic
    def _bits_to_f32(typingctx, v):
        """Reinterpret the low 32 bits of an integer as a float32 (an LLVM bitcast; vectorises)."""
        if not isinstance(v, numba.types.Integer):
            return None

        def codegen(context, builder, signature, args):
            iv = args[0]
            if iv.type.width > 32:
                iv = builder.trunc(iv, _llvm_ir.IntType(32))
            return builder.bitcast(iv, _llvm_ir.FloatType())

        return numba.types.float32(v), codegen

    @njit(inline="always", fastmath=True)
    def _exp_f32(v):
        """exp(v) for v <= 0 in float32 as 2^k * poly(f). No table, no branch: LLVM vectorises it.

        v = k ln2 + f with k = round(v / ln2) in [-126, 0] and |f| <= ln2/2; poly is the degree-6 Taylor
        series of e^f (relative error < 2e-7); 2^k is built from its IEEE-754 bits ((k + 127) << 23)."""
        v = max(v, np.float32(-87.0))
        z = v * np.float32(1.4426950408889634)  # v / ln 2
        kf = np.floor(z + np.float32(0.5))  # nearest integer (float32; math.floor would give int64), in [-126, 0]
        f = (z - kf) * np.float32(0.6931471805599453)  # |f| <= ln2 / 2
        p = np.float32(1.0) + f * (
            np.float32(1.0)
            + f
            * (
                np.float32(0.5)
                + f
                * (
                    np.float32(1.0 / 6.0)
                    + f * (np.float32(1.0 / 24.0) + f * (np.float32(1.0 / 120.0) + f * np.float32(1.0 / 720.0)))
                )
            )
        )
        return p * _bits_to_f32((np.int32(kf) + np.int32(127)) << np.int32(23))

    def _exp(v):  # pragma: no cover - replaced by the overload below inside numba code
        return math.exp(v)

    @numba.extending.overload(_exp, inline="always", jit_options={"fastmath": True})
    def _exp_overload(v):
        """Compile-time dispatch on dtype: polynomial exp for float32, libm exp otherwise."""
        if v == numba.types.float32:
            return lambda v: _exp_f32(v)
        return lambda v: math.exp(v)

    @njit(parallel=True, fastmath=True, cache=True)
    def _scan_fwd(x, delta, AT, B, C, y, h_chk):
        # x, delta, y: [b,l,e]; AT: [n,e] (A transposed); B, C: [b,l,n]; h_chk: [b,nc,n,e] (state entering chunk)
        # Loop order t -> n -> e: the innermost loop runs over contiguous channels (SIMD over e).
        Bsz, L, E = x.shape
        N = AT.shape[0]
        K = _CHUNK
        nEB = (E + _EBLOCK - 1) // _EBLOCK
        for task in prange(Bsz * nEB):
            b = task // nEB
            e0 = (task % nEB) * _EBLOCK
            Eb = min(E, e0 + _EBLOCK) - e0
            h = np.zeros((N, Eb), dtype=x.dtype)  # [n,eb]
            deltav = np.empty(Eb, dtype=x.dtype)  # [eb] delta[t]
            dxv = np.empty(Eb, dtype=x.dtype)  # [eb] delta[t] * x[t]
            acc = np.empty(Eb, dtype=x.dtype)  # [eb] y[t]
            ATb = np.empty((N, Eb), dtype=x.dtype)  # [n,eb] local C-contiguous copy
            ATb[:, :] = AT[:, e0 : e0 + Eb]
            # (hot loops only index rows of local C-contiguous arrays with the loop variable: numba then
            #  emits no wrap-around selects and LLVM uses contiguous SIMD loads instead of gathers)
            for t in range(L):
                if t % K == 0:
                    h_chk[b, t // K, :, e0 : e0 + Eb] = h
                deltav[:] = delta[b, t, e0 : e0 + Eb]
                dxv[:] = x[b, t, e0 : e0 + Eb]
                for i in range(Eb):
                    dxv[i] = deltav[i] * dxv[i]
                    acc[i] = 0
                for n in range(N):
                    bn = B[b, t, n]
                    cn = C[b, t, n]
                    hn = h[n]  # [eb]
                    an = ATb[n]  # [eb]
                    for i in range(Eb):
                        hv = _exp(deltav[i] * an[i]) * hn[i] + dxv[i] * bn
                        hn[i] = hv
                        acc[i] += hv * cn
                y[b, t, e0 : e0 + Eb] = acc

    @njit(parallel=True, fastmath=True, cache=True)
    def _scan_bwd(x, delta, AT, B, C, h_chk, gy, gx, gdelta, gA_part, gB_part, gC_part):
        # gx, gdelta: [b,l,e]; gA_part: [b,n,e]; gB_part, gC_part: [neb,b,l,n] (partial sums over channel blocks)
        Bsz, L, E = x.shape
        N = AT.shape[0]
        K = _CHUNK
        nC = (L + K - 1) // K
        nEB = (E + _EBLOCK - 1) // _EBLOCK
        for task in prange(Bsz * nEB):
            b = task // nEB
            eb = task % nEB
            e0 = eb * _EBLOCK
            Eb = min(E, e0 + _EBLOCK) - e0
            ATb = np.empty((N, Eb), dtype=x.dtype)  # [n,eb] local C-contiguous copy
            ATb[:, :] = AT[:, e0 : e0 + Eb]
            G = np.zeros((N, Eb), dtype=x.dtype)  # [n,eb] dLoss/dh[t] from h[t+1] (carried backwards)
            hbuf = np.empty((K + 1, N, Eb), dtype=x.dtype)  # [k+1,n,eb] h[s-1 .. s+K-1]
            abuf = np.empty((K, N, Eb), dtype=x.dtype)  # [k,n,eb] A_bar in the chunk
            gA = np.zeros((N, Eb), dtype=x.dtype)  # [n,eb]
            deltav = np.empty(Eb, dtype=x.dtype)
            xv = np.empty(Eb, dtype=x.dtype)
            dxv = np.empty(Eb, dtype=x.dtype)
            gyv = np.empty(Eb, dtype=x.dtype)
            gdv = np.empty(Eb, dtype=x.dtype)
            gxv = np.empty(Eb, dtype=x.dtype)
            for c in range(nC - 1, -1, -1):
                s = c * K
                kk = min(K, L - s)
                # 1) recompute the chunk's states (and A_bar) from the checkpoint
                hbuf[0] = h_chk[b, c, :, e0 : e0 + Eb]
                for k in range(kk):
                    t = s + k
                    deltav[:] = delta[b, t, e0 : e0 + Eb]
                    dxv[:] = x[b, t, e0 : e0 + Eb]
                    for i in range(Eb):
                        dxv[i] = deltav[i] * dxv[i]
                    for n in range(N):
                        bn = B[b, t, n]
                        an = ATb[n]  # [eb]
                        ab = abuf[k, n]  # [eb]
                        hp = hbuf[k, n]  # [eb]
                        hc = hbuf[k + 1, n]  # [eb]
                        for i in range(Eb):
                            a = _exp(deltav[i] * an[i])
                            ab[i] = a
                            hc[i] = a * hp[i] + dxv[i] * bn
                # 2) walk the chunk backwards
                for k in range(kk - 1, -1, -1):
                    t = s + k
                    deltav[:] = delta[b, t, e0 : e0 + Eb]
                    xv[:] = x[b, t, e0 : e0 + Eb]
                    gyv[:] = gy[b, t, e0 : e0 + Eb]
                    for i in range(Eb):
                        dxv[i] = deltav[i] * xv[i]
                        gdv[i] = 0
                        gxv[i] = 0
                    for n in range(N):
                        bn = B[b, t, n]
                        cn = C[b, t, n]
                        an = ATb[n]  # [eb]
                        ab = abuf[k, n]  # [eb]
                        hp = hbuf[k, n]  # [eb] h[t-1]
                        hc = hbuf[k + 1, n]  # [eb] h[t]
                        Gn = G[n]  # [eb]
                        gAn = gA[n]  # [eb]
                        sB = deltav[0] * 0
                        sC = deltav[0] * 0
                        for i in range(Eb):
                            sC += gyv[i] * hc[i]
                            Gv = Gn[i] + gyv[i] * cn  # total dLoss/dh[t]
                            a = ab[i]
                            gab = Gv * hp[i] * a  # dLoss/dA_bar * A_bar
                            gdv[i] += gab * an[i] + Gv * bn * xv[i]
                            gAn[i] += gab * deltav[i]
                            sB += Gv * dxv[i]
                            gxv[i] += Gv * bn
                            Gn[i] = Gv * a
                        gB_part[eb, b, t, n] = sB
                        gC_part[eb, b, t, n] = sC
                    for i in range(Eb):
                        gxv[i] = gxv[i] * deltav[i]
                    gdelta[b, t, e0 : e0 + Eb] = gdv
                    gx[b, t, e0 : e0 + Eb] = gxv
            gA_part[b, :, e0 : e0 + Eb] = gA

    def _set_threads():
        want = torch.get_num_threads()
        n = max(1, min(want, numba.config.NUMBA_NUM_THREADS))
        if numba.get_num_threads() != n:  # (the first call starts numba's OpenMP pool)
            numba.set_num_threads(n)
        if torch.get_num_threads() != want:  # starting that pool resets the OpenMP thread count torch shares
            torch.set_num_threads(want)

    class _NumbaSelectiveScan(torch.autograd.Function):
        """y = scan(x, delta, A, B, C) with the numba forward/backward kernels (see module docstring)."""

        @staticmethod
        def forward(ctx, x, delta, A, B, C):
            x = x.detach().contiguous()  # [b,l,e]
            delta = delta.detach().contiguous()  # [b,l,e]
            A = A.detach().contiguous()  # [e,n]
            B = B.detach().contiguous()  # [b,l,n]
            C = C.detach().contiguous()  # [b,l,n]
            AT = A.t().contiguous()  # [n,e]
            Bsz, L, E = x.shape
            N = A.shape[1]
            nC = (L + _CHUNK - 1) // _CHUNK
            y = torch.empty_like(x)  # [b,l,e]
            h_chk = x.new_empty(Bsz, nC, N, E)  # [b,nc,n,e]
            _set_threads()
            _scan_fwd(x.numpy(), delta.numpy(), AT.numpy(), B.numpy(), C.numpy(), y.numpy(), h_chk.numpy())
            ctx.save_for_backward(x, delta, AT, B, C, h_chk)
            return y

        @staticmethod
        def backward(ctx, gy):
            x, delta, AT, B, C, h_chk = ctx.saved_tensors
            gy = gy.contiguous()  # [b,l,e]
            Bsz, L, E = x.shape
            N = AT.shape[0]
            nEB = (E + _EBLOCK - 1) // _EBLOCK
            gx = torch.empty_like(x)  # [b,l,e]
            gdelta = torch.empty_like(delta)  # [b,l,e]
            gA_part = x.new_empty(Bsz, N, E)  # [b,n,e]
            gB_part = x.new_empty(nEB, Bsz, L, N)  # [neb,b,l,n]
            gC_part = x.new_empty(nEB, Bsz, L, N)  # [neb,b,l,n]
            _set_threads()
            _scan_bwd(
                x.numpy(), delta.numpy(), AT.numpy(), B.numpy(), C.numpy(), h_chk.numpy(), gy.numpy(),
                gx.numpy(), gdelta.numpy(), gA_part.numpy(), gB_part.numpy(), gC_part.numpy(),
            )
            return gx, gdelta, gA_part.sum(0).t(), gB_part.sum(0), gC_part.sum(0)


if HAVE_NUMBA:

    @njit(parallel=True, fastmath=True, cache=True)
    def _conv_fwd(x, w, bias, out):
        # x, out: [b,l,e]; w: [k,e] (taps transposed); bias: [e]. out[t] = bias + sum_k w[k] * x[t-(K-1)+k]
        Bsz, L, E = x.shape
        K = w.shape[0]
        for task in prange(Bsz * L):
            b = task // L
            t = task % L
            acc = np.empty(E, dtype=x.dtype)
            acc[:] = bias
            for k in range(K):
                s = t - (K - 1) + k
                if s >= 0:
                    xs = x[b, s]  # [e]
                    wk = w[k]  # [e]
                    for e in range(E):
                        acc[e] += wk[e] * xs[e]
            out[b, t] = acc

    @njit(parallel=True, fastmath=True, cache=True)
    def _conv_bwd(x, w, g, gx, gw_part):
        # g: [b,l,e] grad of out; gx: [b,l,e]; gw_part: [b,k,e] (summed over b by the caller)
        Bsz, L, E = x.shape
        K = w.shape[0]
        for b in prange(Bsz):
            gw = np.zeros((K, E), dtype=x.dtype)
            acc = np.empty(E, dtype=x.dtype)
            for s in range(L):
                acc[:] = 0
                xs = x[b, s]  # [e]
                for k in range(K):
                    t = s + (K - 1) - k  # out[t] used x[s] through tap k
                    if t < L:
                        gt = g[b, t]  # [e]
                        wk = w[k]  # [e]
                        gwk = gw[k]  # [e]
                        for e in range(E):
                            acc[e] += wk[e] * gt[e]
                            gwk[e] += gt[e] * xs[e]
                gx[b, s] = acc
            gw_part[b] = gw

    class _NumbaCausalConv(torch.autograd.Function):
        """Causal depthwise conv1d in [b,l,e] layout (no transposes), numba forward and backward."""

        @staticmethod
        def forward(ctx, x, weight, bias):
            x = x.detach().contiguous()  # [b,l,e]
            E, _, K = weight.shape
            wT = weight.detach().reshape(E, K).t().contiguous()  # [k,e]
            b = bias.detach().contiguous() if bias is not None else x.new_zeros(E)  # [e]
            out = torch.empty_like(x)  # [b,l,e]
            _set_threads()
            _conv_fwd(x.numpy(), wT.numpy(), b.numpy(), out.numpy())
            ctx.save_for_backward(x, wT)
            ctx.has_bias = bias is not None
            return out

        @staticmethod
        def backward(ctx, g):
            x, wT = ctx.saved_tensors
            g = g.contiguous()  # [b,l,e]
            Bsz, L, E = x.shape
            K = wT.shape[0]
            gx = torch.empty_like(x)  # [b,l,e]
            gw_part = x.new_empty(Bsz, K, E)  # [b,k,e]
            _set_threads()
            _conv_bwd(x.numpy(), wT.numpy(), g.numpy(), gx.numpy(), gw_part.numpy())
            gw = gw_part.sum(0).t().reshape(E, 1, K)  # [e,1,k]
            gb = g.sum((0, 1)) if ctx.has_bias else None  # [e]
            return gx, gw, gb


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Causal depthwise conv over positions in [b, l, e] layout: out[t] = bias + sum_k w[:, k] x[t-(K-1)+k].
    causal-conv1d's ``causal_conv1d_fn`` (mamba_ssm: ``conv1d(x)[..., :l]``), without the activation.

    Same numbers as ``nn.Conv1d(E, E, K, groups=E, padding=K-1)`` on [b, e, l] keeping the first L outputs.
    numba kernel (no transposes, contiguous output) on CPU float32/float64, else ``F.conv1d``."""
    if _numba_ok(x, weight) and (bias is None or bias.dtype == x.dtype):
        return _NumbaCausalConv.apply(x, weight, bias)
    L = x.shape[1]
    return F.conv1d(x.transpose(1, 2), weight, bias, padding=weight.shape[-1] - 1, groups=weight.shape[0])[
        ..., :L
    ].transpose(1, 2)  # [b,l,e]


def _numba_ok(*ts) -> bool:
    return (
        HAVE_NUMBA
        and all(t.device.type == "cpu" for t in ts)
        and ts[0].dtype in (torch.float32, torch.float64)
        and all(t.dtype == ts[0].dtype for t in ts)
    )


def selective_scan_fast(x, delta, A, B, C) -> torch.Tensor:
    """Fast selective scan, y = h·C without the D skip, [b, l, e]; differentiable. mamba_ssm's
    ``selective_scan_fn(u=x, delta, A, B, C)`` (D=None, z=None, delta_softplus already applied).

    Args:
        x: [b, l, e] SSM input; delta: [b, l, e] step sizes (after softplus); A: [e, n] (negative);
        B, C: [b, l, n].

    Dispatch: mamba_ssm's CUDA kernel if importable and on CUDA; the numba kernels on CPU (float32 /
    float64); otherwise the pure-PyTorch chunked scan.
    """
    if _mamba_ssm_scan_fn is not None and x.is_cuda:
        y = _mamba_ssm_scan_fn(
            x.transpose(1, 2).contiguous(),  # [b,e,l]
            delta.transpose(1, 2).contiguous(),  # [b,e,l]
            A.contiguous(),  # [e,n]
            B.transpose(1, 2).contiguous(),  # [b,n,l]
            C.transpose(1, 2).contiguous(),  # [b,n,l]
        )
        return y.transpose(1, 2)  # [b,l,e]
    if _numba_ok(x, delta, A, B, C):
        return _NumbaSelectiveScan.apply(x, delta, A, B, C)
    return _torch_chunked_scan(x, delta, A, B, C)
