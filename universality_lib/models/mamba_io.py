"""Mamba checkpoints on disk, in three formats: ours, HF ``MambaForCausalLM`` and state-spaces ``MambaLMHeadModel``.

Reading a folder gives a :class:`Checkpoint` (a :class:`MambaConfig` and the weights under *our* parameter names);
:meth:`HookedMamba.from_checkpoint <universality_lib.models.mamba.HookedMamba.from_checkpoint>` builds the model.

* ours (:func:`save`, :func:`read_own`): ``config.json`` = ``{"format": "universality_lib.HookedMamba",
  "version": 1, "config": MambaConfig.to_dict()}`` (indent 2, sorted keys) + ``model.safetensors`` under our
  names (no ``lm_head.weight`` when tied) + the tokenizer's files, if any. This format is frozen: shipped and
  trained checkpoints use it.
* HF (:func:`read_hf`): ``save_pretrained`` of ``transformers.MambaForCausalLM`` (safetensors or bin).
* state-spaces (:func:`read_state_spaces`): mamba_ssm's ``MambaLMHeadModel`` (``config.json`` +
  ``pytorch_model.bin``), the format of ``state-spaces/mamba-130m``.

Two tables hold every name that differs between the formats: :data:`CONFIG_KEYS` (config.json fields) and
:data:`WEIGHT_KEYS` (parameter names). A config field that would change the computation and that HookedMamba
does not implement is refused, naming the field; so is a config that does not match its weights.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Dict, List, NamedTuple, Optional

import torch

from .. import hub, presets
from ..cache import atomic_write_bytes
from ..errors import UniversalityError
from .mamba_config import MambaConfig, dtype_name, field_problem

__all__ = ["Checkpoint", "CONFIG_KEYS", "WEIGHT_KEYS", "save", "read_own", "read_hf", "read_state_spaces",
           "read_pretrained", "load_weights", "to_our_names"]

OWN_FORMAT = "universality_lib.HookedMamba"

# our MambaConfig field: (its key in HF's config.json, in state-spaces' config.json). mamba_ssm's MambaConfig keeps
# the Mamba mixer's arguments in ssm_cfg; absent keys take our defaults, which are mamba_ssm's.
CONFIG_KEYS = {
    "d_model": ("hidden_size", "d_model"),
    "n_layers": ("num_hidden_layers", "n_layer"),
    "d_state": ("state_size", "ssm_cfg.d_state"),
    "d_conv": ("conv_kernel", "ssm_cfg.d_conv"),
    "expand": ("expand", "ssm_cfg.expand"),
    "dt_rank": ("time_step_rank", "ssm_cfg.dt_rank"),
    "conv_bias": ("use_conv_bias", "ssm_cfg.conv_bias"),
    "bias": ("use_bias", "ssm_cfg.bias"),
    "dt_min": ("time_step_min", "ssm_cfg.dt_min"),
    "dt_max": ("time_step_max", "ssm_cfg.dt_max"),
    "dt_init_floor": ("time_step_floor", "ssm_cfg.dt_init_floor"),
    "dt_scale": ("time_step_scale", "ssm_cfg.dt_scale"),
    "rms_norm_eps": ("layer_norm_epsilon", "norm_epsilon"),
    "tie_embeddings": ("tie_word_embeddings", "tie_embeddings"),
}
_HF_KEYS = {field: keys[0] for field, keys in CONFIG_KEYS.items()}
_SS_KEYS = {field: keys[1] for field, keys in CONFIG_KEYS.items()}
_OWN_KEYS = {f.name: f"config.{f.name}" for f in dataclasses.fields(MambaConfig)}

# our parameter name       HF MambaForCausalLM                 state-spaces MambaLMHeadModel     ({l} layer, {p} rest)
WEIGHT_KEYS = (
    ("embed.weight",         "backbone.embeddings.weight",       "backbone.embedding.weight"),
    ("blocks.{l}.norm.{p}",  "backbone.layers.{l}.norm.{p}",     "backbone.layers.{l}.norm.{p}"),
    ("blocks.{l}.{p}",       "backbone.layers.{l}.mixer.{p}",    "backbone.layers.{l}.mixer.{p}"),
    ("norm_f.{p}",           "backbone.norm_f.{p}",              "backbone.norm_f.{p}"),
    ("lm_head.weight",       "lm_head.weight",                   "lm_head.weight"),
)

# the other arguments mamba_ssm's Mamba-1 mixer takes (they change nothing computed here); any other ssm_cfg key
# is refused, as mamba_ssm refuses it
_SS_MIXER = {key.split(".", 1)[1] for key in _SS_KEYS.values() if key.startswith("ssm_cfg.")}
_SS_MIXER_OTHER = {"dt_init", "use_fast_path", "layer", "layer_idx", "device", "dtype"}
_SILU = ("silu", "swish")  # HF's names for the activation HookedMamba implements
_ABSENT = object()


class Checkpoint(NamedTuple):
    """A checkpoint read from disk, ready for ``HookedMamba.from_checkpoint``."""

    cfg: MambaConfig
    weights: Dict[str, torch.Tensor]  # our parameter names
    tokenizer: Any  # the given one, else the folder's (None when it has none)
    where: str  # its config.json, for messages
    keys: Dict[str, str]  # our config field -> its key in that config.json, for messages


# ----------------------------------------------------------------------------- our format
def save(folder, cfg: MambaConfig, state_dict: Dict[str, torch.Tensor], tokenizer=None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (+ the tokenizer, if any) to ``folder`` (atomic per file)."""
    from safetensors.torch import save as safetensors_bytes

    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    meta = {"format": OWN_FORMAT, "version": 1, "config": cfg.to_dict()}
    atomic_write_bytes(os.path.join(folder, "model.safetensors"), safetensors_bytes(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(os.path.join(folder, "config.json"), json.dumps(meta, indent=2, sort_keys=True).encode())
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def read_own(folder, tokenizer=None, device=None, dtype=None, n_ctx: Optional[int] = None) -> Checkpoint:
    """A folder written by :func:`save`; ``device``, ``dtype`` and ``n_ctx`` override the saved ones."""
    from safetensors.torch import load_file

    where = os.path.join(folder, "config.json")
    meta = _read_json(where)
    if meta.get("format") != OWN_FORMAT:
        raise UniversalityError(f"{where} is not a {OWN_FORMAT} config (use from_pretrained to detect formats)")
    given = {"device": str(device) if device is not None else None, "dtype": dtype, "n_ctx": n_ctx}
    cfg = MambaConfig.from_dict({**meta["config"], **{k: v for k, v in given.items() if v is not None}})
    sd = load_file(os.path.join(folder, "model.safetensors"), device=str(cfg.device))
    return _checkpoint(cfg, sd, tokenizer, folder, _OWN_KEYS)


# ----------------------------------------------------------------------------- the hub's formats
def read_state_spaces(path, tokenizer=None, device=None, dtype=None, n_ctx: Optional[int] = None) -> Checkpoint:
    """A mamba_ssm ``MambaLMHeadModel`` folder (``config.json`` + ``pytorch_model.bin``).

    ``d_vocab`` is the embedding's number of rows (mamba_ssm pads ``vocab_size`` to a multiple of
    ``pad_vocab_size_multiple``; mamba-130m: 50277 -> 50280); the extra rows are never produced by the
    tokenizer. ``n_ctx``: the number of ``hook_h.{t}`` points (default 1024)."""
    return _read_hub_format(path, _SS_KEYS, _state_spaces_refusals, tokenizer, device, dtype, n_ctx)


def read_hf(path, tokenizer=None, device=None, dtype=None, n_ctx: Optional[int] = None) -> Checkpoint:
    """A transformers ``MambaForCausalLM`` folder (``save_pretrained`` format, safetensors or bin)."""
    return _read_hub_format(path, _HF_KEYS, _hf_refusals, tokenizer, device, dtype, n_ctx)


def read_pretrained(name_or_path: str, tokenizer=None, device=None, dtype=None,
                    n_ctx: Optional[int] = None) -> Checkpoint:
    """A local folder in any of the three formats (detected from ``config.json``) or a hub repo id.

    Hub ids are fetched with :func:`universality_lib.hub.snapshot` (offline: :class:`OfflineError`). A hub
    snapshot without tokenizer files gets the ``paper`` preset's tokenizer (GPT-NeoX-20B, also from the hub)."""
    from_hub = not os.path.isdir(os.path.expanduser(str(name_or_path)))
    path = str(hub.snapshot(str(name_or_path), ["config.json", "*.bin", "*.safetensors", "*.json", "*.txt",
                                                "*.model"], what="Mamba model"))
    if from_hub and tokenizer is None and local_tokenizer(path) is None:
        tokenizer = hub.tokenizer(presets.get("paper").corpus.tokenizer)
    conf = _read_json(os.path.join(path, "config.json"))
    kw = dict(tokenizer=tokenizer, device=device, dtype=dtype, n_ctx=n_ctx)
    if conf.get("format") == OWN_FORMAT:
        return read_own(path, **kw)
    if "d_model" in conf and "n_layer" in conf:
        return read_state_spaces(path, **kw)
    if conf.get("model_type") == "mamba" or "hidden_size" in conf:
        return read_hf(path, **kw)
    raise UniversalityError(f"{path}/config.json: not a HookedMamba, state-spaces or HF Mamba config")


def _read_hub_format(path, keys, refusals, tokenizer, device, dtype, n_ctx) -> Checkpoint:
    where = os.path.join(path, "config.json")
    conf = _read_json(where)
    sd = to_our_names(_load_tensors(path))
    cfg = _config_from(conf, keys, where, d_vocab=_embedding_rows(sd, where),
                       **_load_kwargs(path, device, dtype, n_ctx))
    _refuse(where, refusals(conf, cfg) + _shared_refusals(conf, cfg))
    return _checkpoint(cfg, sd, tokenizer, path, keys)


def _checkpoint(cfg, sd, tokenizer, folder, keys) -> Checkpoint:
    where = os.path.join(folder, "config.json")
    tokenizer = tokenizer if tokenizer is not None else local_tokenizer(folder)
    _check_weight_sizes(cfg, sd, keys, where)
    return Checkpoint(cfg, sd, tokenizer, where, keys)


def _pattern(template: str) -> "re.Pattern":
    """A WEIGHT_KEYS template as a regex; the ``backbone.`` prefix is optional."""
    rx = re.escape(template.removeprefix("backbone.")).replace(r"\{l\}", r"(?P<l>\d+)").replace(r"\{p\}", "(?P<p>.+)")
    return re.compile(r"(?:backbone\.)?" + rx + "$")


_WEIGHT_PATTERNS = [(ours, _pattern(t)) for ours, *theirs in WEIGHT_KEYS for t in theirs]


def to_our_names(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """HF / state-spaces parameter names -> ours (:data:`WEIGHT_KEYS`). Either format's names are taken (they
    differ only in the embedding's name); a name in neither keeps its name (without ``backbone.``)."""
    new = {}
    for k, v in sd.items():
        match = next(((ours, m) for ours, rx in _WEIGHT_PATTERNS for m in [rx.match(k)] if m), None)
        new[match[0].format(**match[1].groupdict()) if match else k.removeprefix("backbone.")] = v
    return new


# ----------------------------------------------------------------------------- the weights into a model
def load_weights(model, ck: Checkpoint) -> None:
    """Copy ``ck.weights`` into ``model`` (built from ``ck.cfg``), refusing any name or shape that disagrees."""
    cfg = ck.cfg
    sd = {k: v.to(device=cfg.device, dtype=cfg.dtype) for k, v in ck.weights.items()}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
        sd["lm_head.weight"] = sd["embed.weight"]
    own = model.state_dict()
    wrong = [f"{k} is {list(v.shape)}, the config gives {list(own[k].shape)}"
             for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise UniversalityError(f"{ck.where} does not match the weights: {'; '.join(wrong)}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        flags = ", ".join(ck.keys[f] for f in ("n_layers", "bias", "conv_bias", "tie_embeddings"))
        raise UniversalityError(f"{ck.where} does not match the weights: missing {missing}, unexpected {unexpected} "
                                f"(check {flags})")


# ----------------------------------------------------------------------------- config.json: fields, refusals
def _lookup(conf: Dict[str, Any], key: str) -> Any:
    """``conf[key]``, where ``key`` may be dotted (``ssm_cfg.d_state``); ``_ABSENT`` when it is not there."""
    for part in key.split("."):
        if not isinstance(conf, dict) or part not in conf:
            return _ABSENT
        conf = conf[part]
    return conf


def _config_from(conf: Dict[str, Any], keys: Dict[str, str], where: str, **given: Any) -> MambaConfig:
    """A MambaConfig from a checkpoint's config.json. A bad size field is named as the file spells it."""
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


def _state_spaces_refusals(conf: Dict[str, Any], cfg: MambaConfig) -> List[str]:
    """The fields of a mamba_ssm config that ask for a computation HookedMamba does not implement."""
    ssm = conf.get("ssm_cfg") or {}
    out = []
    if ssm.get("layer", "Mamba1") != "Mamba1":
        out.append(f"ssm_cfg.layer={ssm['layer']!r} (only Mamba-1 is implemented)")
    unknown = sorted(set(ssm) - _SS_MIXER - _SS_MIXER_OTHER)
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
        return [f"residual_in_fp32 with dtype {dtype_name(cfg.dtype)} (HookedMamba keeps the residual stream in "
                f"the model dtype: load with dtype=torch.float32)"]
    return []


def _refuse(where: str, problems: List[str]) -> None:
    if problems:
        raise UniversalityError(f"{where}: HookedMamba does not implement {'; '.join(problems)}. It runs Mamba-1 "
                                "blocks only (SiLU, RMSNorm, no MLP or attention layers): use another checkpoint")


# ----------------------------------------------------------------------------- weights: files and sizes
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


def _load_tensors(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    from safetensors.torch import load_file

    files = sorted(os.listdir(path))
    st = [f for f in files if f.endswith(".safetensors")]
    if st:
        return {k: v for f in st for k, v in load_file(os.path.join(path, f)).items()}
    bins = [f for f in files if f.endswith(".bin") and f.startswith("pytorch_model")]
    if bins:
        return {k: v for f in bins
                for k, v in torch.load(os.path.join(path, f), map_location="cpu", weights_only=True).items()}
    raise UniversalityError(f"{path}: no model.safetensors or pytorch_model.bin")


def _read_json(p: str) -> Dict[str, Any]:
    if not os.path.isfile(p):
        raise UniversalityError(f"missing {p}")
    with open(p) as f:
        return json.load(f)


def local_tokenizer(path):
    """The tokenizer saved in a checkpoint folder, or None when it holds none."""
    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
