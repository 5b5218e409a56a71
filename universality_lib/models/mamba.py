"""HookedMamba: a Mamba-1 language model with TransformerLens-style hook points (MambaLens-compatible names).

The architecture is exactly mamba_ssm's ``MambaLMHeadModel`` / HF ``MambaForCausalLM`` (Mamba-1):

    r_0 = embed(tokens)
    for each block:  r <- r + out_proj( SSM( SiLU(conv(x_in)) ) * SiLU(z) ),   [x_in, z] = in_proj(RMSNorm(r))
    logits = lm_head(RMSNorm_f(r))

Glossary of symbols (used in the shape comments on every tensor line)
    B   batch size                          L   sequence length (positions)
    D   d_model (residual width)            E   d_inner = int(expand * D) (SSM channels)
    N   d_state (state size per channel)    R   dt_rank (rank of the Δ projection, ceil(D/16) by default)
    K   d_conv (causal depthwise conv width, 4)
    V   d_vocab (vocabulary size, *padded*: mamba-130m pads 50277 -> 50280; logits have V columns)
    x_in  in_proj's x branch [B,L,E]        z   in_proj's gate branch [B,L,E] ("skip" in MambaLens)
    x   SSM input SiLU(conv(x_in)) [B,L,E]  Δ (delta)  softplus(dt_proj(x_proj_Δ(x)) + bias) [B,L,E]
    A   -exp(A_log) [E,N]                   Bm, C  input-dependent SSM matrices [B,L,N]
    Ā (A_bar) = exp(Δ A) [B,L,E,N]          B̄ (B_bar) = Δ ⊗ Bm [B,L,E,N]
    h_t = Ā_t h_{t-1} + B̄_t x_t  [B,E,N]    y_t = h_t · C_t [B,L,E]     ssm_out = y + D ⊙ x

Hook points (names as in MambaLens, the tool the paper used; semantics match at every shared name)
    hook_embed                                   [B,L,D]
    blocks.{l}.hook_resid_pre                    [B,L,D]   residual entering block l
    blocks.{l}.hook_normalized_input             [B,L,D]   RMSNorm(resid_pre)
    blocks.{l}.hook_in_proj                      [B,L,E]   x branch of in_proj
    blocks.{l}.hook_skip                         [B,L,E]   z (gate) branch of in_proj
    blocks.{l}.hook_conv                         [B,L,E]   causal conv output, before SiLU
    blocks.{l}.hook_ssm_input                    [B,L,E]   x = SiLU(conv)
    blocks.{l}.hook_delta_1                      [B,L,R]   low-rank Δ pre-projection
    blocks.{l}.hook_delta_2                      [B,L,E]   dt_proj output incl. bias, before softplus
    blocks.{l}.hook_delta                        [B,L,E]   Δ after softplus
    blocks.{l}.hook_A                            [E,N]     A = -exp(A_log)
    blocks.{l}.hook_B                            [B,L,N]
    blocks.{l}.hook_C                            [B,L,N]
    blocks.{l}.hook_A_bar                        [B,L,E,N] exact mode only
    blocks.{l}.hook_B_bar                        [B,L,E,N] exact mode only
    blocks.{l}.hook_h_start                      [B,E,N]   initial state (zeros), exact mode only
    blocks.{l}.hook_h.{t}                        [B,E,N]   state after position t (t < n_ctx), exact mode only
    blocks.{l}.hook_y                            [B,L,E]   h·C, without the D skip
    blocks.{l}.hook_ssm_output                   [B,L,E]   y + D ⊙ x
    blocks.{l}.hook_after_skip                   [B,L,E]   ssm_output ⊙ SiLU(z)
    blocks.{l}.hook_out_proj                     [B,L,D]   block output added to the residual
    blocks.{l}.hook_resid_post                   [B,L,D]
    hook_norm                                    [B,L,D]   final RMSNorm output
    hook_logits                                  [B,L,V]

Scan modes. ``"exact"`` runs :func:`universality_lib.models.scan.reference_scan`, the per-position
PyTorch loop, with Ā/B̄ materialised and every state passing through ``hook_h.{t}``: patching h_t changes
h_{t+1} = Ā_{t+1} h_t + B̄_{t+1} x_{t+1} and everything after. ``"fast"`` runs the fused numba scan (no
[B,L,E,N] tensors, no per-position hooks) but still fires every other hook, so activation collection
works in fast mode. The rule (our choice): with ``scan=None`` the mode is ``model.scan_mode`` (default
"fast") *unless* a hook is attached to an exact-only point (hook_A_bar, hook_B_bar, hook_h_start,
hook_h.*), in which case exact mode is used automatically (so ``run_with_cache()`` with no filter, which
hooks everything, is exact). An explicit ``scan="fast"`` together with hooks on exact-only points raises
:class:`UniversalityError`, except in ``run_with_cache(..., scan="fast")`` where exact-only names are simply
left out of the cache.

Length. Neither scan has a length limit. Only positions t < ``cfg.n_ctx`` (default 1024) have a ``hook_h.{t}``
point; set it when loading (``HookedMamba.from_pretrained(path, n_ctx=4096)``). An exact run that hooks states
(e.g. ``run_with_cache()`` with no filter) of a longer sequence is refused rather than cached in part.

Precision. A float64 model computes in float64 throughout (A, the RMSNorm statistics, the numba float64 scan),
whereas HF rounds A and its norms to float32 at any dtype; bfloat16/float16 models compute A and the norm
statistics in float32, as mamba_ssm does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens import HookedRootModule
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.hook_points import HookPoint

from .. import hub
from ..errors import UniversalityError
from .scan import causal_conv1d, discretize, reference_scan, selective_scan_fast

__all__ = ["MambaConfig", "HookedMamba", "MambaBlock", "RMSNorm", "EXACT_ONLY_HOOKS"]

EXACT_ONLY_HOOKS = ("hook_A_bar", "hook_B_bar", "hook_h_start", "hook_h")
_EXACT_ONLY_RE = re.compile(r"(^|\.)hook_(A_bar|B_bar|h_start|h\.\d+)$")
_OWN_FORMAT = "universality_lib.HookedMamba"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAMBA_TOKENIZER = "EleutherAI/gpt-neox-20b"  # the tokenizer of the state-spaces checkpoints


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of A and of the RMSNorm statistics: at least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


_CHECKED_FIELDS = ("d_model", "n_layers", "d_vocab", "d_state", "d_conv", "dt_rank", "n_ctx", "expand")


def field_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with a value of a size field of :class:`MambaConfig` (None when nothing is)."""
    if name not in _CHECKED_FIELDS:
        return None
    number = numbers.Real if name == "expand" else numbers.Integral
    if isinstance(value, bool) or not isinstance(value, number) or not value > 0:
        kind = "a positive number" if name == "expand" else "a positive integer"
        return f"must be {kind}, got {value!r} ({type(value).__name__})"
    return None


# ==================================================================================================
# Config
# ==================================================================================================
@dataclass
class MambaConfig:
    """Hyper-parameters of a Mamba-1 LM. ``d_inner`` and ``dt_rank`` are derived in ``__post_init__``.

    ``d_vocab`` is the (padded) number of rows of the embedding. ``n_ctx`` is the number of positions that
    get a ``hook_h.{t}`` hook point (exact mode only); it limits nothing else (the loaders take ``n_ctx=``).
    ``expand`` may be fractional, as in mamba_ssm (``d_inner = int(expand * d_model)``).

    Precision: the parameters are ``dtype``; ``A = -exp(A_log)`` and the RMSNorm statistics are computed in
    at least float32 (float32 for bfloat16/float16 models, as mamba_ssm does; float64 stays float64).
    """

    d_model: int
    n_layers: int
    d_vocab: int
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    dt_rank: Optional[int] = None
    n_ctx: int = 1024
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    conv_bias: bool = True
    bias: bool = False
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    initializer_range: float = 0.02
    seed: Optional[int] = None
    device: Union[str, torch.device] = "cpu"
    dtype: Union[str, torch.dtype] = torch.float32
    default_prepend_bos: bool = True
    tokenizer_prepends_bos: bool = False
    model_name: str = "custom-mamba"

    def __post_init__(self):
        if self.dt_rank in (None, "auto"):
            self.dt_rank = math.ceil(self.d_model / 16)
        self.device = torch.device(self.device)  # sae-lens calls .type on it: must not be a str
        if isinstance(self.dtype, str):
            if self.dtype.replace("torch.", "") not in _DTYPES:
                raise UniversalityError(f"MambaConfig.dtype={self.dtype!r}: use one of {sorted(_DTYPES)}")
            self.dtype = _DTYPES[self.dtype.replace("torch.", "")]
        for name in _CHECKED_FIELDS:
            problem = field_problem(name, getattr(self, name))
            if problem:
                raise UniversalityError(f"MambaConfig.{name} {problem}")
        if self.d_inner < 1:
            raise UniversalityError(f"MambaConfig: int(expand * d_model) = {self.d_inner}: use a larger expand")

    # TransformerLens-style aliases read by analysis code
    @property
    def d_inner(self) -> int:
        return int(self.expand * self.d_model)

    @property
    def n_layer(self) -> int:
        return self.n_layers

    @property
    def vocab_size(self) -> int:
        return self.d_vocab

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["device"] = str(self.device)
        d["dtype"] = _dtype_name(self.dtype)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "MambaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"d_inner"}
        if unknown:
            raise UniversalityError(f"MambaConfig.from_dict: unknown keys {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})


# ==================================================================================================
# Modules
# ==================================================================================================
class RMSNorm(nn.Module):
    """RMSNorm as in mamba_ssm / HF (statistics in at least float32, then scaled by the weight)."""

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))  # [D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(_stat_dtype(x.dtype))  # [B,L,D] float32, or float64 for a float64 model
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)  # [B,L,D]
        return self.weight * xf.to(x.dtype)  # [B,L,D]


def _has_hooks(hp: nn.Module) -> bool:
    """True when a HookPoint has any hook attached (forward or backward; TL registers both as forward hooks)."""
    return bool(hp._forward_hooks) or bool(hp._forward_pre_hooks)


class MambaBlock(nn.Module):
    """One residual Mamba-1 block with its hook points. Parameter names follow mamba_ssm's ``Mamba`` mixer."""

    def __init__(self, cfg: MambaConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        D, E, N, R, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        fk = dict(device=cfg.device, dtype=cfg.dtype)
        self.norm = RMSNorm(D, cfg.rms_norm_eps, **fk)  # weight [D]
        self.in_proj = nn.Linear(D, 2 * E, bias=cfg.bias, **fk)  # [2E,D]: rows 0..E-1 -> x_in, E.. -> z
        self.conv1d = nn.Conv1d(E, E, K, groups=E, padding=K - 1, bias=cfg.conv_bias, **fk)  # weight [E,1,K]
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False, **fk)  # [R+2N,E] -> (Δ_1, B, C)
        self.dt_proj = nn.Linear(R, E, bias=True, **fk)  # [E,R], bias [E]
        self.A_log = nn.Parameter(torch.zeros(E, N, **fk))  # [E,N]
        self.D = nn.Parameter(torch.ones(E, **fk))  # [E]
        self.out_proj = nn.Linear(E, D, bias=cfg.bias, **fk)  # [D,E]

        self.hook_resid_pre = HookPoint()  # [B,L,D]
        self.hook_normalized_input = HookPoint()  # [B,L,D]
        self.hook_in_proj = HookPoint()  # [B,L,E]
        self.hook_skip = HookPoint()  # [B,L,E]
        self.hook_conv = HookPoint()  # [B,L,E]
        self.hook_ssm_input = HookPoint()  # [B,L,E]
        self.hook_delta_1 = HookPoint()  # [B,L,R]
        self.hook_delta_2 = HookPoint()  # [B,L,E]
        self.hook_delta = HookPoint()  # [B,L,E]
        self.hook_A = HookPoint()  # [E,N]
        self.hook_B = HookPoint()  # [B,L,N]
        self.hook_C = HookPoint()  # [B,L,N]
        self.hook_A_bar = HookPoint()  # [B,L,E,N]
        self.hook_B_bar = HookPoint()  # [B,L,E,N]
        self.hook_h_start = HookPoint()  # [B,E,N]
        self.hook_h = nn.ModuleList([HookPoint() for _ in range(cfg.n_ctx)])  # each [B,E,N]
        self.hook_y = HookPoint()  # [B,L,E]
        self.hook_ssm_output = HookPoint()  # [B,L,E]
        self.hook_after_skip = HookPoint()  # [B,L,E]
        self.hook_out_proj = HookPoint()  # [B,L,D]
        self.hook_resid_post = HookPoint()  # [B,L,D]

    def hooked_states(self, L: int) -> List[int]:
        """The positions t < L whose ``hook_h.{t}`` has a hook attached."""
        return [t for t in range(min(L, len(self.hook_h))) if _has_hooks(self.hook_h[t])]

    def needs_exact(self, L: int) -> bool:
        """True when a hook is attached to a point that only the exact scan fires."""
        if _has_hooks(self.hook_A_bar) or _has_hooks(self.hook_B_bar) or _has_hooks(self.hook_h_start):
            return True
        return bool(self.hooked_states(L))

    def forward(self, resid: torch.Tensor, exact: bool = False) -> torch.Tensor:
        cfg = self.cfg
        E, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank
        Bsz, L, _ = resid.shape
        resid = self.hook_resid_pre(resid)  # [B,L,D]
        u = self.hook_normalized_input(self.norm(resid))  # [B,L,D]

        # in_proj as two matmuls on the halves of its weight: contiguous outputs, no slice backward
        W_x, W_z = self.in_proj.weight.split(E, dim=0)  # [E,D] each
        b_x, b_z = self.in_proj.bias.split(E) if self.in_proj.bias is not None else (None, None)  # [E] each
        x_in = self.hook_in_proj(F.linear(u, W_x, b_x))  # [B,L,E]
        z = self.hook_skip(F.linear(u, W_z, b_z))  # [B,L,E]

        # causal depthwise conv over positions, left padding K-1 (numba kernel in [B,L,E] layout)
        conv = self.hook_conv(causal_conv1d(x_in, self.conv1d.weight, self.conv1d.bias))  # [B,L,E]
        x = self.hook_ssm_input(F.silu(conv))  # [B,L,E]

        delta_1, Bm, C = self.x_proj(x).split([R, N, N], dim=-1)  # [B,L,R], [B,L,N], [B,L,N]
        delta_1 = self.hook_delta_1(delta_1)  # [B,L,R]
        Bm = self.hook_B(Bm)  # [B,L,N]
        C = self.hook_C(C)  # [B,L,N]
        delta_2 = self.hook_delta_2(self.dt_proj(delta_1))  # [B,L,E] (bias included)
        delta = self.hook_delta(F.softplus(delta_2))  # [B,L,E]
        A = self.hook_A(-torch.exp(self.A_log.to(_stat_dtype(self.A_log.dtype))))  # [E,N]

        if exact:
            A_bar, B_bar = discretize(delta, A, Bm)  # [B,L,E,N] each
            A_bar = self.hook_A_bar(A_bar)  # [B,L,E,N]
            B_bar = self.hook_B_bar(B_bar)  # [B,L,E,N]
            h0 = self.hook_h_start(x.new_zeros(Bsz, E, N))  # [B,E,N]
            hooked = self.hooked_states(L)  # positions past n_ctx have no hook point (HookedMamba.forward checks)
            state_hook = None
            if hooked:
                hooked_set = set(hooked)

                def state_hook(t, h):  # h: [B,E,N]
                    return self.hook_h[t](h) if t in hooked_set else h

            y = reference_scan(A_bar, B_bar, x, C, h0=h0, state_hook=state_hook)  # [B,L,E]
        else:
            y = selective_scan_fast(x, delta, A, Bm, C)  # [B,L,E]
        y = self.hook_y(y)  # [B,L,E]

        ssm_out = self.hook_ssm_output(y + x * self.D)  # [B,L,E]
        gated = self.hook_after_skip(ssm_out * F.silu(z))  # [B,L,E]
        out = self.hook_out_proj(self.out_proj(gated))  # [B,L,D]
        return self.hook_resid_post(resid + out)  # [B,L,D]


# ==================================================================================================
# Model
# ==================================================================================================
class HookedMamba(HookedRootModule):
    """Mamba-1 LM with hook points; see the module docstring for hooks and scan modes.

    Args:
        cfg: a :class:`MambaConfig` (or a dict for :meth:`MambaConfig.from_dict`).
        tokenizer: optional HF tokenizer (``PreTrainedTokenizerFast``); needed by ``to_tokens`` & co.
    """

    scan_mode: str = "fast"

    def __init__(self, cfg: Union[MambaConfig, Dict[str, Any]], tokenizer=None):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = MambaConfig.from_dict(cfg)
        self.cfg = cfg
        self.scan_mode = "fast"
        fk = dict(device=cfg.device, dtype=cfg.dtype)
        ctx = torch.random.fork_rng(devices=[]) if cfg.seed is not None else _nullcontext()
        with ctx:
            if cfg.seed is not None:
                torch.manual_seed(cfg.seed)
            self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model, **fk)  # [V,D]
            self.hook_embed = HookPoint()  # [B,L,D]
            self.blocks = nn.ModuleList([MambaBlock(cfg, l) for l in range(cfg.n_layers)])
            self.norm_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps, **fk)  # [D]
            self.hook_norm = HookPoint()  # [B,L,D]
            self.lm_head = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False, **fk)  # [V,D]
            if cfg.tie_embeddings:
                self.lm_head.weight = self.embed.weight
            self.hook_logits = HookPoint()  # [B,L,V]
            self._init_weights()
        self.tokenizer = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)
        self.setup()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def _init_weights(self):
        """mamba_ssm init: S4D-real A_log, D=1, dt bias = softplus^-1(U_log[dt_min, dt_max]), dt_proj weight
        U(±R^-0.5 * dt_scale), zero linear biases, embedding N(0, initializer_range), out_proj kaiming-uniform
        rescaled by 1/sqrt(n_layers) (prenorm residual rescale, one residual per block)."""
        cfg = self.cfg
        E, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank
        nn.init.normal_(self.embed.weight, std=cfg.initializer_range)
        if not cfg.tie_embeddings:
            # mamba_ssm leaves an untied lm_head at nn.Linear's default init
            nn.init.kaiming_uniform_(self.lm_head.weight, a=math.sqrt(5))
        for blk in self.blocks:
            dt_init_std = R**-0.5 * cfg.dt_scale
            nn.init.uniform_(blk.dt_proj.weight, -dt_init_std, dt_init_std)
            dt = torch.exp(
                torch.rand(E, dtype=torch.float64) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                + math.log(cfg.dt_min)
            ).clamp(min=cfg.dt_init_floor)  # [E]
            inv_dt = dt + torch.log(-torch.expm1(-dt))  # [E] inverse softplus
            blk.dt_proj.bias.copy_(inv_dt.to(blk.dt_proj.bias.dtype))
            A = torch.arange(1, N + 1, dtype=_stat_dtype(blk.A_log.dtype)).repeat(E, 1)  # [E,N]
            blk.A_log.copy_(torch.log(A).to(blk.A_log.dtype))
            blk.D.fill_(1.0)
            for lin in (blk.in_proj, blk.out_proj):
                if lin.bias is not None:
                    lin.bias.zero_()
            nn.init.kaiming_uniform_(blk.out_proj.weight, a=math.sqrt(5))
            blk.out_proj.weight /= math.sqrt(cfg.n_layers)

    # ------------------------------------------------------------------ TL-ish accessors
    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.weight  # [V,D]

    @property
    def W_U(self) -> torch.Tensor:
        return self.lm_head.weight.T  # [D,V]

    # ------------------------------------------------------------------ tokenizer face
    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token
        try:
            ids = tokenizer("a")["input_ids"]
            self.cfg.tokenizer_prepends_bos = bool(ids) and ids[0] == tokenizer.bos_token_id
        except Exception:
            self.cfg.tokenizer_prepends_bos = False

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise UniversalityError(
                "this HookedMamba has no tokenizer: pass HookedMamba(cfg, tokenizer=AutoTokenizer.from_pretrained(dir)) "
                "or call model.set_tokenizer(tok)"
            )
        return self.tokenizer

    def to_tokens(
        self,
        input: Union[str, List[str]],
        prepend_bos: Optional[bool] = None,
        padding_side: Optional[str] = None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> torch.Tensor:
        """Tokenize a string or list of strings to a LongTensor [B, L] (BOS = ``tokenizer.bos_token_id``).

        Lists are padded with the pad token (= EOS if the tokenizer has none) on ``padding_side``.
        ``truncate`` cuts to ``cfg.n_ctx`` positions (like TransformerLens)."""
        tok = self._need_tokenizer()
        if prepend_bos is None:
            prepend_bos = self.cfg.default_prepend_bos
        texts = [input] if isinstance(input, str) else list(input)
        seqs = []
        for t in texts:
            ids = list(tok(t, add_special_tokens=False)["input_ids"])
            if prepend_bos:
                if tok.bos_token_id is None:
                    raise UniversalityError("prepend_bos=True but the tokenizer has no bos_token")
                ids = [tok.bos_token_id] + ids
            if truncate:
                ids = ids[: self.cfg.n_ctx]
            seqs.append(ids)
        L = max(len(s) for s in seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        side = padding_side if padding_side in ("left", "right") else getattr(tok, "padding_side", "right")
        rows = [([pad] * (L - len(s)) + s) if side == "left" else (s + [pad] * (L - len(s))) for s in seqs]
        out = torch.tensor(rows, dtype=torch.long)  # [B,L]
        return out.to(self.cfg.device) if move_to_device else out

    def to_str_tokens(self, input, prepend_bos: Optional[bool] = None) -> Union[List[str], List[List[str]]]:
        """Per-token strings of a string, a 1-D/2-D token tensor, or a list of strings."""
        tok = self._need_tokenizer()
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self.to_str_tokens(s, prepend_bos=prepend_bos) for s in input]
        if isinstance(input, str):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos)[0]  # [L]
        else:
            tokens = torch.as_tensor(input)
            if tokens.dim() == 2:
                if tokens.shape[0] != 1:
                    return [self.to_str_tokens(row) for row in tokens]
                tokens = tokens[0]
        return [tok.decode([int(i)]) for i in tokens.tolist()]

    def to_string(self, tokens) -> Union[str, List[str]]:
        """Decode a 1-D token tensor/list to a string (2-D -> list of strings)."""
        tok = self._need_tokenizer()
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 2:
            return [tok.decode(row.tolist()) for row in tokens]
        return tok.decode(tokens.tolist())

    # ------------------------------------------------------------------ forward
    def _resolve_scan(self, scan: Optional[str], L: int) -> bool:
        """Returns True for the exact scan (see the module docstring for the rule)."""
        mode = scan if scan is not None else self.scan_mode
        if mode not in ("fast", "exact"):
            raise UniversalityError(f"scan must be 'fast' or 'exact', got {mode!r}")
        if mode == "exact":
            return True
        hooked = [b.layer for b in self.blocks if b.needs_exact(L)]
        if not hooked:
            return False
        if scan is None:
            return True
        raise UniversalityError(
            f"scan='fast' but hooks are attached to exact-only points (hook_A_bar/hook_B_bar/hook_h_start/hook_h.t) "
            f"in blocks {hooked}; use scan='exact' or scan=None (auto)"
        )

    def _check_state_hooks(self, L: int) -> None:
        """Refuse an exact run that hooks states but is longer than the n_ctx positions that have a hook_h.t."""
        n = self.cfg.n_ctx
        hooked = [b.layer for b in self.blocks if b.hooked_states(L)] if L > n else []
        if hooked:
            raise UniversalityError(
                f"hooks on hook_h.t in blocks {hooked}, but the sequence has {L} positions and only the first "
                f"n_ctx={n} have a hook_h.t: load the model with n_ctx={L} or more (HookedMamba.from_pretrained(path, "
                f"n_ctx={L}), or HookedMamba(dataclasses.replace(cfg, n_ctx={L}))), or leave hook_h.t out "
                f"(names_filter); the scan itself has no length limit"
            )

    def forward(
        self,
        input: Union[torch.Tensor, str, List[str]],
        return_type: Optional[str] = "logits",
        scan: Optional[str] = None,
        stop_at_layer: Optional[int] = None,
        prepend_bos: Optional[bool] = None,
        loss_per_token: bool = False,
        **ignored: Any,
    ):
        """Run the model.

        Args:
            input: LongTensor tokens [B, L] (or [L]), or a string / list of strings (tokenized with
                :meth:`to_tokens`, ``prepend_bos`` applies only then).
            return_type: "logits" -> [B,L,V]; "loss" -> mean next-token cross-entropy (per token [B,L-1]
                with ``loss_per_token=True``); "both" -> (logits, loss); None -> None.
            scan: "fast", "exact" or None (``self.scan_mode``, switched to exact automatically when an
                exact-only hook point has a hook).
            stop_at_layer: if given, run blocks ``0..stop_at_layer-1`` and return that residual [B,L,D]
                (negative values count from the end, as in TransformerLens).
            **ignored: extra TransformerLens/sae-lens keyword arguments (e.g. ``padding_side``) are accepted
                and ignored.
        """
        if isinstance(input, (str, list)):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos)  # [B,L]
        else:
            tokens = input
        if not torch.is_tensor(tokens) or tokens.dtype not in (torch.long, torch.int, torch.int32, torch.int16):
            raise UniversalityError("HookedMamba.forward expects a LongTensor of token ids [B, L], a str or a list[str]")
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)  # [1,L]
        tokens = tokens.to(self.embed.weight.device).long()  # [B,L]
        if return_type not in ("logits", "loss", "both", None):
            raise UniversalityError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        L = tokens.shape[1]
        exact = self._resolve_scan(scan, L)
        if exact:
            self._check_state_hooks(L)

        n_run = self.cfg.n_layers
        if stop_at_layer is not None:
            n_run = stop_at_layer if stop_at_layer >= 0 else self.cfg.n_layers + stop_at_layer

        resid = self.hook_embed(self.embed(tokens))  # [B,L,D]
        for blk in self.blocks[:n_run]:
            resid = blk(resid, exact=exact)  # [B,L,D]
        if stop_at_layer is not None:
            return resid  # [B,L,D]

        normed = self.hook_norm(self.norm_f(resid))  # [B,L,D]
        logits = self.hook_logits(self.lm_head(normed))  # [B,L,V]
        if return_type is None:
            return None
        if return_type == "logits":
            return logits
        loss = self.loss_fn(logits, tokens, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    @staticmethod
    def loss_fn(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
        """Next-token cross-entropy: logits[:, :-1] predict tokens[:, 1:]. Mean, or [B, L-1] per token."""
        Bsz, L, V = logits.shape
        # targets shifted left; the last position gets ignore_index, so logits are never sliced/copied
        tgt = torch.cat([tokens[:, 1:], tokens.new_full((Bsz, 1), -100)], dim=1)  # [B,L]
        loss = F.cross_entropy(logits.reshape(-1, V).float(), tgt.reshape(-1), ignore_index=-100, reduction="none")
        loss = loss.view(Bsz, L)[:, :-1]  # [B,L-1]
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

    # ------------------------------------------------------------------ saving / loading
    def save(self, folder: Union[str, os.PathLike]) -> None:
        """Write ``config.json`` + ``model.safetensors`` (+ the tokenizer, if any) to ``folder`` (atomic per file)."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if self.cfg.tie_embeddings:
            tensors.pop("lm_head.weight", None)
        meta = {"format": _OWN_FORMAT, "version": 1, "config": self.cfg.to_dict()}
        _atomic_write(os.path.join(folder, "model.safetensors"), lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        _atomic_write(
            os.path.join(folder, "config.json"),
            lambda p: open(p, "w").write(json.dumps(meta, indent=2, sort_keys=True)),
        )
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)

    @classmethod
    def load(cls, folder, tokenizer=None, device=None, dtype=None, n_ctx: Optional[int] = None) -> "HookedMamba":
        """Load a folder written by :meth:`save`; ``device``, ``dtype`` and ``n_ctx`` override the saved ones."""
        from safetensors.torch import load_file

        cfg_path = os.path.join(folder, "config.json")
        meta = _read_json(cfg_path)
        if meta.get("format") != _OWN_FORMAT:
            raise UniversalityError(f"{cfg_path} is not a {_OWN_FORMAT} config (use from_pretrained to detect formats)")
        given = {"device": str(device) if device is not None else None, "dtype": dtype, "n_ctx": n_ctx}
        cfg = MambaConfig.from_dict({**meta["config"], **{k: v for k, v in given.items() if v is not None}})
        sd = load_file(os.path.join(folder, "model.safetensors"), device=str(cfg.device))
        if tokenizer is None:
            tokenizer = _local_tokenizer(folder)
        return cls._from_state_dict(cfg, sd, tokenizer, _OWN_KEYS, cfg_path)

    @classmethod
    def _from_state_dict(cls, cfg: MambaConfig, sd: Dict[str, torch.Tensor], tokenizer=None,
                         keys: Optional[Dict[str, str]] = None, where: str = "the checkpoint") -> "HookedMamba":
        """A model with the weights ``sd`` (our names). Sizes that disagree with ``cfg`` are refused, naming the
        field as ``where`` (a config.json) spells it (``keys``: our field -> its key)."""
        keys = keys or _OWN_KEYS
        _check_weight_sizes(cfg, sd, keys, where)
        seed_cfg = dataclasses.replace(cfg, seed=0)  # weights are overwritten; avoid touching the global RNG
        model = cls(seed_cfg, tokenizer=tokenizer)
        model.cfg.seed = cfg.seed
        sd = {k: v.to(device=cfg.device, dtype=cfg.dtype) for k, v in sd.items()}
        if cfg.tie_embeddings:
            sd.pop("lm_head.weight", None)
            sd["lm_head.weight"] = sd["embed.weight"]
        own = model.state_dict()
        wrong = [f"{k} is {list(v.shape)}, the config gives {list(own[k].shape)}"
                 for k, v in sd.items() if k in own and v.shape != own[k].shape]
        if wrong:
            raise UniversalityError(f"{where} does not match the weights: {'; '.join(wrong)}")
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            flags = ", ".join(keys[f] for f in ("n_layers", "bias", "conv_bias", "tie_embeddings"))
            raise UniversalityError(f"{where} does not match the weights: missing {missing}, unexpected {unexpected} "
                                    f"(check {flags})")
        return model

    @classmethod
    def from_state_spaces(cls, path, tokenizer=None, device=None, dtype=None, n_ctx: Optional[int] = None
                          ) -> "HookedMamba":
        """Load a mamba_ssm ``MambaLMHeadModel`` folder (``config.json`` + ``pytorch_model.bin``).

        ``d_vocab`` is the embedding's number of rows (mamba_ssm pads ``vocab_size`` to a multiple of
        ``pad_vocab_size_multiple``; mamba-130m: 50277 -> 50280); the extra rows are never produced by the
        tokenizer. ``n_ctx``: the number of ``hook_h.{t}`` points (default 1024). A config field that would
        change the computation and that HookedMamba does not implement is refused, naming the field."""
        where = os.path.join(path, "config.json")
        conf = _read_json(where)
        sd = _rename_backbone(_load_weights(path))
        cfg = _config_from(conf, _SS_KEYS, where, d_vocab=_embedding_rows(sd, where),
                           **_load_kwargs(path, device, dtype, n_ctx))
        _refuse(where, _state_spaces_refusals(conf) + _shared_refusals(conf, cfg))
        if tokenizer is None:
            tokenizer = _local_tokenizer(path)
        return cls._from_state_dict(cfg, sd, tokenizer, _SS_KEYS, where)

    @classmethod
    def from_hf(cls, path, tokenizer=None, device=None, dtype=None, n_ctx: Optional[int] = None) -> "HookedMamba":
        """Load a transformers ``MambaForCausalLM`` folder (``save_pretrained`` format, safetensors or bin).

        ``n_ctx``: the number of ``hook_h.{t}`` points (default 1024). A config field that would change the
        computation and that HookedMamba does not implement is refused, naming the field."""
        where = os.path.join(path, "config.json")
        conf = _read_json(where)
        sd = _rename_backbone(_load_weights(path))
        cfg = _config_from(conf, _HF_KEYS, where, d_vocab=_embedding_rows(sd, where),
                           **_load_kwargs(path, device, dtype, n_ctx))
        _refuse(where, _hf_refusals(conf, cfg) + _shared_refusals(conf, cfg))
        if tokenizer is None:
            tokenizer = _local_tokenizer(path)
        return cls._from_state_dict(cfg, sd, tokenizer, _HF_KEYS, where)

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer=None, device=None, dtype=None,
                        n_ctx: Optional[int] = None) -> "HookedMamba":
        """Local folder (own / state-spaces / HF format, detected from ``config.json``) or a hub repo id.

        Hub ids (e.g. the paper's ``"state-spaces/mamba-130m"``) are fetched with
        ``huggingface_hub.snapshot_download``; any offline/connection failure raises :class:`OfflineError`, and
        a path that names no folder (or an empty one) says so (:func:`universality_lib.hub.snapshot`).
        A state-spaces snapshot without tokenizer files gets the GPT-NeoX-20B tokenizer (also from the hub).
        ``n_ctx`` sets the number of ``hook_h.{t}`` points (the longest sequence whose states can be hooked)."""
        from_hub = not os.path.isdir(os.path.expanduser(str(name_or_path)))
        path = str(hub.snapshot(str(name_or_path), ["config.json", "*.bin", "*.safetensors", "*.json", "*.txt",
                                                    "*.model"], what="Mamba model"))
        if from_hub and tokenizer is None and _local_tokenizer(path) is None:
            tokenizer = hub.tokenizer(MAMBA_TOKENIZER)
        conf = _read_json(os.path.join(path, "config.json"))
        kw = dict(tokenizer=tokenizer, device=device, dtype=dtype, n_ctx=n_ctx)
        if conf.get("format") == _OWN_FORMAT:
            return cls.load(path, **kw)
        if "d_model" in conf and "n_layer" in conf:
            return cls.from_state_spaces(path, **kw)
        if conf.get("model_type") == "mamba" or "hidden_size" in conf:
            return cls.from_hf(path, **kw)
        raise UniversalityError(f"{path}/config.json: not a HookedMamba, state-spaces or HF Mamba config")


# ==================================================================================================
# loading: config.json fields, refusals, weight sizes
# ==================================================================================================
# our MambaConfig field -> its key in each format's config.json (state-spaces: mamba_ssm's MambaConfig, whose
# ssm_cfg holds the Mamba mixer's arguments)
_HF_KEYS = {
    "d_model": "hidden_size", "n_layers": "num_hidden_layers", "d_state": "state_size", "d_conv": "conv_kernel",
    "expand": "expand", "dt_rank": "time_step_rank", "conv_bias": "use_conv_bias", "bias": "use_bias",
    "dt_min": "time_step_min", "dt_max": "time_step_max", "dt_init_floor": "time_step_floor",
    "dt_scale": "time_step_scale", "rms_norm_eps": "layer_norm_epsilon", "tie_embeddings": "tie_word_embeddings",
}
_SS_MIXER = ("d_state", "d_conv", "expand", "dt_rank", "conv_bias", "bias", "dt_min", "dt_max", "dt_init_floor",
             "dt_scale")
_SS_KEYS = {"d_model": "d_model", "n_layers": "n_layer", "rms_norm_eps": "norm_epsilon",
            "tie_embeddings": "tie_embeddings", **{f: f"ssm_cfg.{f}" for f in _SS_MIXER}}
_OWN_KEYS = {f.name: f"config.{f.name}" for f in dataclasses.fields(MambaConfig)}
# the other arguments mamba_ssm's Mamba-1 mixer takes (they change nothing computed here); any other ssm_cfg key
# is refused, as mamba_ssm refuses it
_SS_MIXER_OTHER = {"dt_init", "use_fast_path", "layer", "layer_idx", "device", "dtype"}
_SILU = ("silu", "swish")  # HF's names for the activation HookedMamba implements


def _lookup(conf: Dict[str, Any], key: str) -> Any:
    """``conf[key]``, where ``key`` may be dotted (``ssm_cfg.d_state``); ``_ABSENT`` when it is not there."""
    for part in key.split("."):
        if not isinstance(conf, dict) or part not in conf:
            return _ABSENT
        conf = conf[part]
    return conf


_ABSENT = object()


def _config_from(conf: Dict[str, Any], keys: Dict[str, str], where: str, **given: Any) -> MambaConfig:
    """A MambaConfig from a checkpoint's config.json (absent keys take our defaults, which are mamba_ssm's).
    A bad size field is named as the file spells it."""
    kw = {}
    for field, key in keys.items():
        value = _lookup(conf, key)
        if value is _ABSENT or value is None or (field == "dt_rank" and value == "auto"):
            continue
        problem = field_problem(field, value)
        if problem:
            raise UniversalityError(f"{where}: {key} {problem}: fix config.json")
        kw[field] = value
    return MambaConfig(**kw, **given)


def _load_kwargs(path, device, dtype, n_ctx) -> Dict[str, Any]:
    name = os.path.basename(os.path.normpath(str(path)))
    kw = dict(device=device or "cpu", dtype=dtype or torch.float32, model_name=name)
    return kw if n_ctx is None else {**kw, "n_ctx": n_ctx}


def _state_spaces_refusals(conf: Dict[str, Any]) -> List[str]:
    """The fields of a mamba_ssm config that ask for a computation HookedMamba does not implement."""
    ssm = conf.get("ssm_cfg") or {}
    out = []
    if ssm.get("layer", "Mamba1") != "Mamba1":
        out.append(f"ssm_cfg.layer={ssm['layer']!r} (only Mamba-1 is implemented)")
    unknown = sorted(set(ssm) - set(_SS_MIXER) - _SS_MIXER_OTHER)
    if unknown:
        out.append(f"ssm_cfg keys {unknown} (not arguments of mamba_ssm's Mamba-1 mixer)")
    if not conf.get("rms_norm", True):
        out.append("rms_norm=false (LayerNorm instead of RMSNorm)")
    if conf.get("d_intermediate", 0):
        out.append(f"d_intermediate={conf['d_intermediate']} (an MLP after each mixer)")
    if conf.get("attn_layer_idx"):
        out.append(f"attn_layer_idx={conf['attn_layer_idx']} (hybrid attention layers)")
    return out


def _hf_refusals(conf: Dict[str, Any], cfg: MambaConfig) -> List[str]:
    """The fields of an HF MambaConfig that ask for a computation HookedMamba does not implement."""
    out = []
    if conf.get("model_type", "mamba") != "mamba":
        out.append(f"model_type={conf.get('model_type')!r} (expected 'mamba')")
    if conf.get("hidden_act", "silu") not in _SILU:
        out.append(f"hidden_act={conf['hidden_act']!r} (HookedMamba's blocks use SiLU: {' / '.join(_SILU)})")
    if conf.get("intermediate_size", cfg.d_inner) != cfg.d_inner:
        out.append(f"intermediate_size={conf['intermediate_size']} (not int(expand * hidden_size) = {cfg.d_inner})")
    return out


def _shared_refusals(conf: Dict[str, Any], cfg: MambaConfig) -> List[str]:
    if conf.get("residual_in_fp32", True) and cfg.dtype in (torch.float16, torch.bfloat16):
        return [f"residual_in_fp32 with dtype {_dtype_name(cfg.dtype)} (HookedMamba keeps the residual stream in "
                f"the model dtype: load with dtype=torch.float32)"]
    return []


def _refuse(where: str, problems: List[str]) -> None:
    if problems:
        raise UniversalityError(f"{where}: HookedMamba does not implement {'; '.join(problems)}. It runs Mamba-1 "
                                "blocks only (SiLU, RMSNorm, no MLP or attention layers): use another checkpoint")


def _embedding_rows(sd: Dict[str, torch.Tensor], where: str) -> int:
    if "embed.weight" not in sd:
        raise UniversalityError(f"the weights next to {where} have no embedding (backbone.embedding(s).weight)")
    return sd["embed.weight"].shape[0]


# MambaConfig size field -> (a tensor whose shape shows it, the dimension)
_SIZE_IN = {"d_model": ("embed.weight", 1), "expand": ("blocks.0.A_log", 0), "d_state": ("blocks.0.A_log", 1),
            "d_conv": ("blocks.0.conv1d.weight", 2), "dt_rank": ("blocks.0.dt_proj.weight", 1)}


def _check_weight_sizes(cfg: MambaConfig, sd: Dict[str, torch.Tensor], keys: Dict[str, str], where: str) -> None:
    """Refuse weights (our names) whose sizes disagree with ``cfg``, naming the config field (``keys``)."""
    for field, (name, dim) in _SIZE_IN.items():
        want = cfg.d_inner if field == "expand" else getattr(cfg, field)
        t = sd.get(name)
        if t is not None and t.dim() > dim and t.shape[dim] != want:
            size = f"d_inner = int(expand * d_model) = {want}" if field == "expand" else f"{field} = {want}"
            raise UniversalityError(f"{where} does not match the weights: {keys[field]} gives {size}, but {name} is "
                                    f"{list(t.shape)}: fix config.json, or use the weights it was written with")
    blocks = {int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    if len(blocks) != cfg.n_layers:
        raise UniversalityError(f"{where} does not match the weights: {keys['n_layers']} = {cfg.n_layers}, but the "
                                f"weights have {len(blocks)} blocks: fix config.json")


# ==================================================================================================
# helpers
# ==================================================================================================
class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False



def _read_json(p: str) -> Dict[str, Any]:
    if not os.path.isfile(p):
        raise UniversalityError(f"missing {p}")
    with open(p) as f:
        return json.load(f)


def _atomic_write(final: str, write) -> None:
    d = os.path.dirname(os.path.abspath(final))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(final), dir=d)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load_weights(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    from safetensors.torch import load_file

    files = sorted(os.listdir(path))
    st = [f for f in files if f.endswith(".safetensors")]
    if st:
        sd = {}
        for f in st:
            sd.update(load_file(os.path.join(path, f)))
        return sd
    bins = [f for f in files if f.endswith(".bin") and f.startswith("pytorch_model")]
    if bins:
        sd = {}
        for f in bins:
            sd.update(torch.load(os.path.join(path, f), map_location="cpu", weights_only=True))
        return sd
    raise UniversalityError(f"{path}: no model.safetensors or pytorch_model.bin")



def _rename_backbone(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """mamba_ssm / HF parameter names -> ours (``backbone.layers.{i}.mixer.*`` -> ``blocks.{i}.*``).

    The two formats differ only in the embedding's name (``embedding`` in mamba_ssm, ``embeddings`` in HF).
    """
    new = {}
    for k, v in sd.items():
        k2 = k.replace("backbone.", "", 1)
        k2 = re.sub(r"^embeddings?\.weight$", "embed.weight", k2)
        k2 = re.sub(r"^layers\.(\d+)\.mixer\.", r"blocks.\1.", k2)
        k2 = re.sub(r"^layers\.(\d+)\.norm\.", r"blocks.\1.norm.", k2)
        new[k2] = v
    return new


def _local_tokenizer(path: str):
    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
