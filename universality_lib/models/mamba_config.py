"""MambaConfig: the hyper-parameters of a Mamba-1 LM (mamba_ssm's ``MambaConfig`` + the ``Mamba`` mixer's arguments).

One config type for the model: a preset's :class:`~universality_lib.presets.MambaSize` becomes one with
:meth:`MambaConfig.from_size`; a checkpoint's ``config.json`` becomes one in :mod:`.mamba_io`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import torch

from ..errors import UniversalityError

__all__ = ["MambaConfig", "field_problem", "dtype_name"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CHECKED_FIELDS = ("d_model", "n_layers", "d_vocab", "d_state", "d_conv", "dt_rank", "n_ctx", "expand")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the spelling of our config.json)."""
    return str(dtype).replace("torch.", "")


def field_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with a value of a size field of :class:`MambaConfig` (None when nothing is)."""
    if name not in _CHECKED_FIELDS:
        return None
    number = numbers.Real if name == "expand" else numbers.Integral
    if isinstance(value, bool) or not isinstance(value, number) or not value > 0:
        kind = "a positive number" if name == "expand" else "a positive integer"
        return f"must be {kind}, got {value!r} ({type(value).__name__})"
    return None


@dataclass
class MambaConfig:
    """Hyper-parameters of a Mamba-1 LM. ``d_inner`` is derived, ``dt_rank`` defaults to ceil(d_model / 16).

    Mirrors mamba_ssm's ``MambaConfig`` (``d_model``, ``n_layer`` -> ``n_layers``, ``vocab_size`` ->
    ``d_vocab``) and the arguments of its ``Mamba`` mixer (``d_state``, ``d_conv``, ``expand``, ``dt_rank``,
    ``dt_min``, ``dt_max``, ``dt_init_floor``, ``dt_scale``, ``conv_bias``, ``bias``).

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
            if dtype_name(self.dtype) not in DTYPES:
                raise UniversalityError(f"MambaConfig.dtype={self.dtype!r}: use one of {sorted(DTYPES)}")
            self.dtype = DTYPES[dtype_name(self.dtype)]
        for name in _CHECKED_FIELDS:
            problem = field_problem(name, getattr(self, name))
            if problem:
                raise UniversalityError(f"MambaConfig.{name} {problem}")
        if self.d_inner < 1:
            raise UniversalityError(f"MambaConfig: int(expand * d_model) = {self.d_inner}: use a larger expand")

    @property
    def d_inner(self) -> int:
        """E, the number of SSM channels (mamba_ssm: ``d_inner = int(expand * d_model)``)."""
        return int(self.expand * self.d_model)

    @classmethod
    def from_size(cls, size, d_vocab: int, n_ctx: int, seed: Optional[int] = None,
                  device: Union[str, torch.device] = "cpu") -> "MambaConfig":
        """The config of a preset's :class:`~universality_lib.presets.MambaSize` (the zoo's and benchmarks' models)."""
        return cls(d_model=size.d_model, n_layers=size.n_layers, d_vocab=d_vocab, d_state=size.d_state,
                   d_conv=size.d_conv, expand=size.expand, tie_embeddings=size.tie_embeddings, n_ctx=n_ctx,
                   seed=seed, device=device)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["device"] = str(self.device)
        d["dtype"] = dtype_name(self.dtype)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "MambaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"d_inner"}
        if unknown:
            raise UniversalityError(f"MambaConfig.from_dict: unknown keys {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})
