"""HookedMamba: a Mamba-1 language model with TransformerLens-style hook points (MambaLens-compatible names).

The architecture is exactly mamba_ssm's ``MambaLMHeadModel`` / HF ``MambaForCausalLM`` (Mamba-1); the code
follows johnma2006/mamba-minimal's ``model.py``, with a hook point on every tensor:

    r_0 = embed(tokens)
    for each block:  r <- r + out_proj( SSM( SiLU(conv(x_in)) ) * SiLU(z) ),   [x_in, z] = in_proj(RMSNorm(r))
    logits = lm_head(RMSNorm_f(r))

Dimensions (lower case in every shape comment, so that ``B`` and ``C`` are the SSM matrices)
    b batch    l positions    d d_model    e d_inner = int(expand * d)    n d_state    r dt_rank    k d_conv    v d_vocab

Glossary: our name, mamba_ssm's (``Mamba.forward`` and ``selective_scan_ref``), the hook point (MambaLens' name)
    ours      shape      mamba_ssm                                         hook point (blocks.{l}.)
    resid     [b,l,d]    residual                                          hook_resid_pre, hook_resid_post
    hidden    [b,l,d]    hidden_states = norm(residual)                    hook_normalized_input
    x_in      [b,l,e]    x of ``x, z = xz.chunk(2)``                       hook_in_proj
    z         [b,l,e]    z (the gate; "skip" in MambaLens)                 hook_skip
    conv      [b,l,e]    conv1d(x)[..., :l]                                hook_conv
    x         [b,l,e]    x = act(conv1d(x)); ``u`` in selective_scan_fn    hook_ssm_input
    delta_1   [b,l,r]    dt of ``dt, B, C = split(x_dbl)``                 hook_delta_1
    delta_2   [b,l,e]    dt_proj.weight @ dt + delta_bias                  hook_delta_2
    delta     [b,l,e]    delta = softplus(delta + delta_bias)              hook_delta
    A         [e,n]      A = -exp(A_log.float())                           hook_A
    B, C      [b,l,n]    B, C of ``dt, B, C = split(x_dbl)``               hook_B, hook_C
    A_bar     [b,l,e,n]  deltaA = exp(delta A)                             hook_A_bar      (exact only)
    B_bar     [b,l,e,n]  delta B  (deltaB_u = delta B u)                   hook_B_bar      (exact only)
    h         [b,e,n]    x, the state, in selective_scan_ref               hook_h_start, hook_h.{t} (exact only)
    y         [b,l,e]    y = h . C, before ``+ u * D``                     hook_y
    ssm_out   [b,l,e]    out = y + u * D                                   hook_ssm_output
    gated     [b,l,e]    out * silu(z)                                     hook_after_skip
    out       [b,l,d]    out_proj(out)                                     hook_out_proj
    Model level: hook_embed [b,l,d], hook_norm [b,l,d] (norm_f), hook_logits [b,l,v]. Parameters keep
    mamba_ssm's names (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj, norm); the file formats' names
    are in :mod:`.mamba_io`. The recurrence h_t = A_bar_t h_{t-1} + B_bar_t x_t, y_t = h_t C_t is in :mod:`.scan`.

Scan modes. ``"exact"`` runs :func:`universality_lib.models.scan.reference_scan`, the per-position PyTorch loop,
with A_bar/B_bar materialised when ``hook_A_bar`` / ``hook_B_bar`` are hooked (else made position by position,
:func:`~universality_lib.models.scan.reference_scan_stepwise`: the same numbers) and every state passing through
``hook_h.{t}``: patching h_t changes
h_{t+1} = A_bar_{t+1} h_t + B_bar_{t+1} x_{t+1} and everything after. ``"fast"`` runs the fused numba scan (no
[b,l,e,n] tensors, no per-position hooks) but still fires every other hook, so activation collection works in
fast mode. The rule (our choice): with ``scan=None`` a run is fast *unless* a hook is attached to one of
:data:`EXACT_ONLY_HOOKS`, in which case it is exact (so ``run_with_cache()`` with no filter, which hooks
everything, is exact). An explicit ``scan="fast"`` together with hooks on exact-only points raises
:class:`UniversalityError`, except in ``run_with_cache(..., scan="fast")`` where they are left out of the cache.

Length. Neither scan has a length limit. Only positions t < ``cfg.n_ctx`` (default 1024) have a ``hook_h.{t}``
point; set it when loading (``HookedMamba.from_pretrained(path, n_ctx=4096)``). An exact run that hooks states
(e.g. ``run_with_cache()`` with no filter) of a longer sequence is refused rather than cached in part.

Precision. A float64 model computes in float64 throughout (A, the RMSNorm statistics, the numba float64 scan),
whereas HF rounds A and its norms to float32 at any dtype; bfloat16/float16 models compute A and the norm
statistics in float32, as mamba_ssm does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens import HookedRootModule, HookedTransformer
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.hook_points import HookPoint

from ..errors import UniversalityError
from . import mamba_io
from .mamba_config import MambaConfig
from .scan import causal_conv1d, discretize, reference_scan, reference_scan_stepwise, selective_scan_fast

__all__ = ["MambaConfig", "HookedMamba", "MambaBlock", "RMSNorm", "EXACT_ONLY_HOOKS"]

# The hook points only the exact scan fires (hook_h: every hook_h.{t}). The one list: the mode rule, the
# fast-mode cache filter and the error message all read it.
EXACT_ONLY_HOOKS = ("hook_A_bar", "hook_B_bar", "hook_h_start", "hook_h")
_EXACT_ONLY_RE = re.compile(r"(^|\.)(%s)$" % "|".join(n + r"\.\d+" if n == "hook_h" else n for n in EXACT_ONLY_HOOKS))
# a block's hook points, in forward order (hook_h is a list of n_ctx points, one per position)
BLOCK_HOOKS = ("hook_resid_pre", "hook_normalized_input", "hook_in_proj", "hook_skip", "hook_conv", "hook_ssm_input",
               "hook_delta_1", "hook_delta_2", "hook_delta", "hook_A", "hook_B", "hook_C", "hook_A_bar", "hook_B_bar",
               "hook_h_start", "hook_h", "hook_y", "hook_ssm_output", "hook_after_skip", "hook_out_proj",
               "hook_resid_post")


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of A and of the RMSNorm statistics: at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def _has_hooks(hp: nn.Module) -> bool:
    """True when a HookPoint has any hook attached (forward or backward; TL registers both as forward hooks)."""
    return bool(hp._forward_hooks) or bool(hp._forward_pre_hooks)


class RMSNorm(nn.Module):
    """mamba_ssm's ``RMSNorm`` (mamba-minimal ``RMSNorm``): statistics in at least float32, then the weight."""

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))  # [d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(_stat_dtype(x.dtype))  # [b,l,d] float32, or float64 for a float64 model
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)  # [b,l,d]
        return self.weight * xf.to(x.dtype)  # [b,l,d]


class MambaBlock(nn.Module):
    """One residual block: mamba_ssm's ``Block`` (norm + residual) around its ``Mamba`` mixer, with hook points."""

    def __init__(self, cfg: MambaConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        d, e, n, r, k = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        fk = dict(device=cfg.device, dtype=cfg.dtype)
        self.norm = RMSNorm(d, cfg.rms_norm_eps, **fk)  # weight [d]
        self.in_proj = nn.Linear(d, 2 * e, bias=cfg.bias, **fk)  # [2e,d]: rows 0..e-1 -> x_in, e.. -> z
        self.conv1d = nn.Conv1d(e, e, k, groups=e, padding=k - 1, bias=cfg.conv_bias, **fk)  # weight [e,1,k]
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False, **fk)  # [r+2n,e] -> x_dbl = (delta_1, B, C)
        self.dt_proj = nn.Linear(r, e, bias=True, **fk)  # [e,r], bias [e]
        self.A_log = nn.Parameter(torch.zeros(e, n, **fk))  # [e,n]
        self.D = nn.Parameter(torch.ones(e, **fk))  # [e]
        self.out_proj = nn.Linear(e, d, bias=cfg.bias, **fk)  # [d,e]
        for name in BLOCK_HOOKS:  # shapes: the glossary in the module docstring
            setattr(self, name, nn.ModuleList([HookPoint() for _ in range(cfg.n_ctx)]) if name == "hook_h"
                    else HookPoint())

    def forward(self, resid: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """mamba-minimal ``ResidualBlock.forward`` + ``MambaBlock.forward`` (mamba_ssm ``Mamba.forward``)."""
        resid = self.hook_resid_pre(resid)  # [b,l,d]
        hidden = self.hook_normalized_input(self.norm(resid))  # [b,l,d]
        # in_proj as two matmuls on the halves of its weight (x, z = xz.chunk(2)): contiguous, no slice backward
        W_x, W_z = self.in_proj.weight.split(self.cfg.d_inner, dim=0)  # [e,d] each
        b_x, b_z = self.in_proj.bias.split(self.cfg.d_inner) if self.in_proj.bias is not None else (None, None)
        x_in = self.hook_in_proj(F.linear(hidden, W_x, b_x))  # [b,l,e]
        z = self.hook_skip(F.linear(hidden, W_z, b_z))  # [b,l,e]
        conv = self.hook_conv(causal_conv1d(x_in, self.conv1d.weight, self.conv1d.bias))  # [b,l,e] causal, depthwise
        x = self.hook_ssm_input(F.silu(conv))  # [b,l,e]

        delta, A, B, C = self.ssm_params(x)  # [b,l,e], [e,n], [b,l,n], [b,l,n]
        y = self.hook_y(self.selective_scan(x, delta, A, B, C, exact))  # [b,l,e]
        ssm_out = self.hook_ssm_output(y + x * self.D)  # [b,l,e]
        gated = self.hook_after_skip(ssm_out * F.silu(z))  # [b,l,e]
        out = self.hook_out_proj(self.out_proj(gated))  # [b,l,d]
        return self.hook_resid_post(resid + out)  # [b,l,d]

    def ssm_params(self, x: torch.Tensor):
        """The input-dependent SSM parameters (delta, A, B, C) of x [b,l,e]: mamba-minimal ``MambaBlock.ssm``
        up to its ``selective_scan`` call (mamba_ssm: ``x_dbl = x_proj(x); dt, B, C = split(x_dbl)``)."""
        cfg = self.cfg
        delta_1, B, C = self.x_proj(x).split([cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)  # [b,l,r],[b,l,n]x2
        delta_1 = self.hook_delta_1(delta_1)  # [b,l,r]
        B, C = self.hook_B(B), self.hook_C(C)  # [b,l,n] each
        delta_2 = self.hook_delta_2(self.dt_proj(delta_1))  # [b,l,e] (bias included)
        delta = self.hook_delta(F.softplus(delta_2))  # [b,l,e]
        A = self.hook_A(-torch.exp(self.A_log.to(_stat_dtype(self.A_log.dtype))))  # [e,n]
        return delta, A, B, C

    def selective_scan(self, x, delta, A, B, C, exact: bool) -> torch.Tensor:
        """y = h . C [b,l,e] (no D skip), exact or fast: mamba-minimal ``MambaBlock.selective_scan`` / mamba_ssm
        ``selective_scan_fn`` without D and z. Exact: :func:`.scan.reference_scan` through the hook points
        hook_A_bar, hook_B_bar, hook_h_start and hook_h.{t}; fast: :func:`.scan.selective_scan_fast`."""
        if not exact:
            return selective_scan_fast(x, delta, A, B, C)  # [b,l,e]
        h0 = self.hook_h_start(x.new_zeros(x.shape[0], self.cfg.d_inner, self.cfg.d_state))  # [b,e,n]
        hooked = set(self.hooked_states(x.shape[1]))  # positions past n_ctx have no hook (HookedMamba.forward checks)
        state_hook = (lambda t, h: self.hook_h[t](h) if t in hooked else h) if hooked else None  # h: [b,e,n]
        if not (_has_hooks(self.hook_A_bar) or _has_hooks(self.hook_B_bar)):  # nobody reads them: never build them
            return reference_scan_stepwise(delta, A, B, x, C, h0=h0, state_hook=state_hook)  # [b,l,e]
        A_bar, B_bar = discretize(delta, A, B)  # [b,l,e,n] each
        A_bar, B_bar = self.hook_A_bar(A_bar), self.hook_B_bar(B_bar)  # [b,l,e,n] each
        return reference_scan(A_bar, B_bar, x, C, h0=h0, state_hook=state_hook)  # [b,l,e]

    def hooked_states(self, l: int) -> List[int]:
        """The positions t < l whose ``hook_h.{t}`` has a hook attached."""
        return [t for t in range(min(l, len(self.hook_h))) if _has_hooks(self.hook_h[t])]

    def needs_exact(self, l: int) -> bool:
        """True when a hook is attached to an exact-only point (:data:`EXACT_ONLY_HOOKS`) a run of l positions fires."""
        fixed = [getattr(self, name) for name in EXACT_ONLY_HOOKS if name != "hook_h"]
        return any(map(_has_hooks, fixed)) or bool(self.hooked_states(l))


class HookedMamba(HookedRootModule):
    """Mamba-1 LM with hook points (mamba-minimal ``Mamba``, mamba_ssm ``MambaLMHeadModel``); see the module docstring.

    Args:
        cfg: a :class:`MambaConfig` (or a dict for :meth:`MambaConfig.from_dict`).
        tokenizer: optional HF tokenizer (``PreTrainedTokenizerFast``); needed by ``to_tokens`` & co.
    """

    def __init__(self, cfg: Union[MambaConfig, Dict[str, Any]], tokenizer=None):
        super().__init__()
        cfg = MambaConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        self.cfg = cfg
        fk = dict(device=cfg.device, dtype=cfg.dtype)
        seeded = torch.random.fork_rng(devices=[]) if cfg.seed is not None else contextlib.nullcontext()
        with seeded:
            if cfg.seed is not None:
                torch.manual_seed(cfg.seed)
            self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model, **fk)  # [v,d]
            self.hook_embed = HookPoint()  # [b,l,d]
            self.blocks = nn.ModuleList([MambaBlock(cfg, layer) for layer in range(cfg.n_layers)])
            self.norm_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps, **fk)  # [d]
            self.hook_norm = HookPoint()  # [b,l,d]
            self.lm_head = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False, **fk)  # [v,d]
            if cfg.tie_embeddings:
                self.lm_head.weight = self.embed.weight
            self.hook_logits = HookPoint()  # [b,l,v]
            self._init_weights()
        self.tokenizer = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)
        self.setup()

    @torch.no_grad()
    def _init_weights(self):
        """mamba_ssm's ``Mamba.__init__`` + ``_init_weights``: S4D-real A_log, D=1, dt bias = softplus^-1(U_log[dt_min,
        dt_max]), dt_proj weight U(±r^-0.5 * dt_scale), zero linear biases, embedding N(0, initializer_range), out_proj
        kaiming-uniform rescaled by 1/sqrt(n_layers) (prenorm residual rescale, one residual per block)."""
        cfg = self.cfg
        e, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
        nn.init.normal_(self.embed.weight, std=cfg.initializer_range)
        if not cfg.tie_embeddings:  # mamba_ssm leaves an untied lm_head at nn.Linear's default init
            nn.init.kaiming_uniform_(self.lm_head.weight, a=math.sqrt(5))
        for blk in self.blocks:
            dt_init_std = r**-0.5 * cfg.dt_scale
            nn.init.uniform_(blk.dt_proj.weight, -dt_init_std, dt_init_std)
            dt = torch.exp(torch.rand(e, dtype=torch.float64) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                           + math.log(cfg.dt_min)).clamp(min=cfg.dt_init_floor)  # [e]
            blk.dt_proj.bias.copy_((dt + torch.log(-torch.expm1(-dt))).to(blk.dt_proj.bias.dtype))  # inverse softplus
            A = torch.arange(1, n + 1, dtype=_stat_dtype(blk.A_log.dtype)).repeat(e, 1)  # [e,n]
            blk.A_log.copy_(torch.log(A).to(blk.A_log.dtype))
            blk.D.fill_(1.0)
            for lin in (blk.in_proj, blk.out_proj):
                if lin.bias is not None:
                    lin.bias.zero_()
            nn.init.kaiming_uniform_(blk.out_proj.weight, a=math.sqrt(5))
            blk.out_proj.weight /= math.sqrt(cfg.n_layers)

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.weight  # [v,d]

    @property
    def W_U(self) -> torch.Tensor:
        return self.lm_head.weight.T  # [d,v]

    # ------------------------------------------------------------------ tokenizer: TransformerLens' own methods
    def set_tokenizer(self, tokenizer) -> None:
        """Attach an HF tokenizer (pad = EOS when it has no pad token), as HookedTransformer.set_tokenizer does."""
        self.tokenizer = tokenizer
        if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token
        try:
            ids = tokenizer("a")["input_ids"]
            self.cfg.tokenizer_prepends_bos = bool(ids) and ids[0] == tokenizer.bos_token_id
        except Exception:
            self.cfg.tokenizer_prepends_bos = False

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise UniversalityError("this HookedMamba has no tokenizer: pass HookedMamba(cfg, tokenizer="
                                    "AutoTokenizer.from_pretrained(dir)) or call model.set_tokenizer(tok)")

    def to_tokens(self, input, prepend_bos=None, padding_side=None, move_to_device=True, truncate=True):
        """``HookedTransformer.to_tokens``: a string or list of strings -> tokens [b,l] (BOS prepended by default)."""
        self._need_tokenizer()
        return HookedTransformer.to_tokens(self, input, prepend_bos, padding_side, move_to_device, truncate)

    def to_str_tokens(self, input, prepend_bos=None, padding_side=None):
        """``HookedTransformer.to_str_tokens``: a string, [l] / [1,l] tokens or a list of them -> token strings."""
        self._need_tokenizer()
        return HookedTransformer.to_str_tokens(self, input, prepend_bos, padding_side)

    def to_string(self, tokens):
        """``HookedTransformer.to_string``: [l] tokens -> a string, [b,l] -> a list of strings."""
        self._need_tokenizer()
        return HookedTransformer.to_string(self, tokens)

    # ------------------------------------------------------------------ hook bookkeeping
    def _busy_hook_points(self) -> list:
        """The hook points that hold a hook or a context. TransformerLens' reset walks every point on each
        ``run_with_hooks`` / ``run_with_cache``: here over 2,000 of them (a ``hook_h.{t}`` per position and block),
        16 ms a reset at tiny; on an idle point removing hooks and clearing the context change nothing."""
        return [hp for hp in self.hook_dict.values() if hp.fwd_hooks or hp.bwd_hooks or hp.ctx]

    def remove_all_hook_fns(self, direction="both", including_permanent: bool = False, level=None) -> None:
        """``HookedRootModule.remove_all_hook_fns``, visiting only the busy hook points (the same effect)."""
        for hp in self._busy_hook_points():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        """``HookedRootModule.clear_contexts``, visiting only the busy hook points (the same effect)."""
        for hp in self._busy_hook_points():
            hp.clear_context()

    # ------------------------------------------------------------------ forward
    def _resolve_scan(self, scan: Optional[str], l: int) -> bool:
        """True for the exact scan (the rule is in the module docstring)."""
        if scan not in (None, "fast", "exact"):
            raise UniversalityError(f"scan must be 'fast' or 'exact', got {scan!r}")
        if scan == "exact":
            return True
        hooked = [blk.layer for blk in self.blocks if blk.needs_exact(l)]
        if hooked and scan == "fast":
            raise UniversalityError(f"scan='fast' but hooks are attached to exact-only points ({'/'.join(EXACT_ONLY_HOOKS)}"
                                    f".t) in blocks {hooked}; use scan='exact' or scan=None (auto)")
        return bool(hooked)

    def _check_state_hooks(self, l: int) -> None:
        """Refuse an exact run that hooks states but is longer than the n_ctx positions that have a hook_h.t."""
        n = self.cfg.n_ctx
        hooked = [blk.layer for blk in self.blocks if blk.hooked_states(l)] if l > n else []
        if hooked:
            raise UniversalityError(
                f"hooks on hook_h.t in blocks {hooked}, but the sequence has {l} positions and only the first "
                f"n_ctx={n} have a hook_h.t: load the model with n_ctx={l} or more (HookedMamba.from_pretrained(path, "
                f"n_ctx={l}), or HookedMamba(dataclasses.replace(cfg, n_ctx={l}))), or leave hook_h.t out "
                f"(names_filter); the scan itself has no length limit")

    def forward(self, input: Union[torch.Tensor, str, List[str]], return_type: Optional[str] = "logits",
                scan: Optional[str] = None, stop_at_layer: Optional[int] = None, prepend_bos: Optional[bool] = None,
                loss_per_token: bool = False, start_at_layer: Optional[int] = None,
                tokens: Optional[torch.Tensor] = None, **ignored: Any):
        """Run the model (mamba-minimal ``Mamba.forward``).

        Args:
            input: LongTensor tokens [b,l] (or [l]), or a string / list of strings (tokenized with
                :meth:`to_tokens`, ``prepend_bos`` applies only then).
            return_type: "logits" -> [b,l,v]; "loss" -> mean next-token cross-entropy (per token [b,l-1]
                with ``loss_per_token=True``); "both" -> (logits, loss); None -> None.
            scan: "fast", "exact" or None (fast, switched to exact when an exact-only hook point has a hook).
            stop_at_layer: if given, run blocks ``0..stop_at_layer-1`` and return that residual [b,l,d]
                (negative values count from the end, as in TransformerLens).
            start_at_layer: if given, ``input`` is the residual stream entering that block (``hook_resid_pre``,
                [b,l,d] float) and the run starts there (inclusive; negative counts from the end), as
                ``HookedTransformer.forward(start_at_layer=...)``; a loss then needs ``tokens`` [b,l].
            **ignored: extra TransformerLens/sae-lens keyword arguments (e.g. ``padding_side``) are accepted
                and ignored.
        """
        if return_type not in ("logits", "loss", "both", None):
            raise UniversalityError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        n_layers = self.cfg.n_layers
        first = 0
        if start_at_layer is not None:
            first = int(start_at_layer) + (n_layers if start_at_layer < 0 else 0)
            resid = input
            if not torch.is_tensor(resid) or not resid.is_floating_point() or resid.dim() != 3 \
                    or resid.shape[-1] != self.cfg.d_model or not 0 <= first < n_layers:
                raise UniversalityError(f"start_at_layer={start_at_layer} needs the residual stream entering that block "
                                        f"as input, a float tensor [B, L, d_model={self.cfg.d_model}], and a layer in "
                                        f"0..{n_layers - 1} (negative counts from the end)")
            if return_type in ("loss", "both") and tokens is None:
                raise UniversalityError("a loss from start_at_layer needs tokens=[B, L] (as HookedTransformer.forward)")
            length = resid.shape[1]
        else:
            tokens = self.to_tokens(input, prepend_bos=prepend_bos) if isinstance(input, (str, list)) else input
        if tokens is not None:
            if not torch.is_tensor(tokens) or tokens.dtype not in (torch.long, torch.int, torch.int32, torch.int16):
                raise UniversalityError("HookedMamba.forward expects a LongTensor of token ids [B, L], a str or a "
                                        "list[str]")
            tokens = (tokens.unsqueeze(0) if tokens.dim() == 1 else tokens).to(self.embed.weight.device).long()  # [b,l]
            if start_at_layer is not None and tokens.shape != resid.shape[:2]:
                raise UniversalityError(f"start_at_layer: tokens {tuple(tokens.shape)} do not match the residual "
                                        f"stream's [B, L] = {tuple(resid.shape[:2])}")
            length = tokens.shape[1]
        if length == 0:
            raise UniversalityError("HookedMamba.forward got 0 tokens per row: give at least one token")
        if return_type in ("loss", "both") and length < 2:
            raise UniversalityError(f"a next-token loss needs at least 2 tokens per row, got {length} (an "
                                    f"empty string is only BOS): give longer input, or return_type='logits'")
        exact = self._resolve_scan(scan, length)
        if exact:
            self._check_state_hooks(length)
        n_run = n_layers
        if stop_at_layer is not None:
            n_run = stop_at_layer if stop_at_layer >= 0 else n_layers + stop_at_layer

        if start_at_layer is None:
            resid = self.hook_embed(self.embed(tokens))  # [b,l,d]
        for blk in self.blocks[first:n_run]:
            resid = blk(resid, exact=exact)  # [b,l,d]
        if stop_at_layer is not None:
            return resid  # [b,l,d]
        logits = self.hook_logits(self.lm_head(self.hook_norm(self.norm_f(resid))))  # [b,l,v]
        if return_type in ("logits", None):
            return logits if return_type else None
        loss = self.loss_fn(logits, tokens, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    @staticmethod
    def loss_fn(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
        """Next-token cross-entropy (``HookedTransformer.loss_fn``): logits[:, :-1] predict tokens[:, 1:]."""
        b, l, v = logits.shape
        # targets shifted left; the last position gets ignore_index, so logits are never sliced/copied
        tgt = torch.cat([tokens[:, 1:], tokens.new_full((b, 1), -100)], dim=1)  # [b,l]
        loss = F.cross_entropy(logits.reshape(-1, v).float(), tgt.reshape(-1), ignore_index=-100, reduction="none")
        loss = loss.view(b, l)[:, :-1]  # [b,l-1]
        return loss if per_token else loss.mean()

    def run_with_cache(self, *model_args, names_filter=None, return_cache_object: bool = True, **kwargs):
        """TransformerLens ``run_with_cache``. Returns ``(output, ActivationCache)``.

        With ``scan="fast"`` the exact-only hook points are removed from ``names_filter`` (they do not
        fire in fast mode); otherwise asking for them switches the run to the exact scan."""
        if kwargs.get("scan") == "fast":
            base = names_filter
            if base is None:
                keep = lambda name: True  # noqa: E731
            elif isinstance(base, str):
                keep = lambda name, s=base: name == s  # noqa: E731
            elif callable(base):
                keep = base
            else:
                keep = lambda name, s=frozenset(base): name in s  # noqa: E731
            names_filter = lambda name: keep(name) and not _EXACT_ONLY_RE.search(name)  # noqa: E731
        out, cache = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
        if return_cache_object:
            cache = ActivationCache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache

    # ------------------------------------------------------------------ checkpoints (formats: models/mamba_io.py)
    def save(self, folder) -> None:
        """Write our format: ``config.json`` + ``model.safetensors`` (+ the tokenizer, if any), atomic per file."""
        mamba_io.save(folder, self.cfg, self.state_dict(), self.tokenizer)

    @classmethod
    def from_checkpoint(cls, ck: "mamba_io.Checkpoint") -> "HookedMamba":
        """The model of a :class:`.mamba_io.Checkpoint` (sizes and names checked against its config.json)."""
        model = cls(dataclasses.replace(ck.cfg, seed=0), tokenizer=ck.tokenizer)  # seed 0: leave the global RNG alone
        model.cfg.seed = ck.cfg.seed
        mamba_io.load_weights(model, ck)
        return model

    @classmethod
    def load(cls, folder, tokenizer=None, device=None, dtype=None, n_ctx: Optional[int] = None) -> "HookedMamba":
        """Load a folder written by :meth:`save`; ``device``, ``dtype`` and ``n_ctx`` override the saved ones."""
        return cls.from_checkpoint(mamba_io.read_own(folder, tokenizer, device, dtype, n_ctx))

    @classmethod
    def from_state_spaces(cls, path, tokenizer=None, device=None, dtype=None, n_ctx: Optional[int] = None):
        """Load a mamba_ssm ``MambaLMHeadModel`` folder (:func:`.mamba_io.read_state_spaces`)."""
        return cls.from_checkpoint(mamba_io.read_state_spaces(path, tokenizer, device, dtype, n_ctx))

    @classmethod
    def from_hf(cls, path, tokenizer=None, device=None, dtype=None, n_ctx: Optional[int] = None) -> "HookedMamba":
        """Load a transformers ``MambaForCausalLM`` folder (:func:`.mamba_io.read_hf`)."""
        return cls.from_checkpoint(mamba_io.read_hf(path, tokenizer, device, dtype, n_ctx))

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer=None, device=None, dtype=None,
                        n_ctx: Optional[int] = None) -> "HookedMamba":
        """A local folder in any format, or a hub repo id such as the paper's ``"state-spaces/mamba-130m"``
        (:func:`.mamba_io.read_pretrained`). ``n_ctx``: the number of ``hook_h.{t}`` points."""
        return cls.from_checkpoint(mamba_io.read_pretrained(name_or_path, tokenizer, device, dtype, n_ctx))
