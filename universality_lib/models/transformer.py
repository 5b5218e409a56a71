"""The Transformer family: a Pythia-style ``HookedTransformer`` (TransformerLens).

Pythia's block is GPT-NeoX: LayerNorm, then attention and MLP **in parallel** on the same normalised
input, rotary positions on a quarter of each head's dimensions, and an untied unembedding::

    r <- r + Attn(LN1(r)) + MLP(LN2(r))          # blocks.{l}.hook_resid_pre -> hook_resid_post

Two ways in:

* ``make_transformer(size, d_vocab, seed)`` builds a fresh model from a preset's ``TransformerConfig``
  (``smoke`` and ``tiny`` train these; ``tiny``'s are shipped).
* ``load_gpt_neox(name_or_folder)`` loads a GPT-NeoX checkpoint (Pythia) from the hub **or** from a
  local ``save_pretrained`` folder through one code path (the ``paper`` preset; the tests run it offline
  on a tiny random GPT-NeoX saved locally). Weights are processed as TransformerLens'
  ``from_pretrained`` does by default (LayerNorm folded, writing weights and unembedding centred), which
  is what the authors' activations were taken from.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import hub
from ..errors import UniversalityError
from ..presets import TransformerConfig


def hooked_config(size: TransformerConfig, d_vocab: int, seed: int | None = None, device: str = "cpu"):
    from transformer_lens import HookedTransformerConfig

    if size.d_model % size.n_heads:
        raise UniversalityError(f"d_model {size.d_model} is not divisible by n_heads {size.n_heads}")
    d_head = size.d_model // size.n_heads
    return HookedTransformerConfig(
        n_layers=size.n_layers,
        d_model=size.d_model,
        n_heads=size.n_heads,
        d_head=d_head,
        d_mlp=size.d_mlp,
        d_vocab=d_vocab,
        n_ctx=size.n_ctx,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=max(2, int(size.rotary_pct * d_head) // 2 * 2),
        rotary_adjacent_pairs=False,  # GPT-NeoX rotates the two halves, not adjacent pairs
        parallel_attn_mlp=True,
        original_architecture="GPTNeoXForCausalLM",
        default_prepend_bos=True,
        init_weights=True,
        seed=seed,
        device=device,
    )


def make_transformer(size: TransformerConfig, d_vocab: int, seed: int | None = 0, tokenizer=None,
                     device: str = "cpu"):
    """A freshly initialised Pythia-style HookedTransformer (deterministic given ``seed``)."""
    from transformer_lens import HookedTransformer

    if seed is not None:
        torch.manual_seed(seed)
    model = HookedTransformer(hooked_config(size, d_vocab, seed, device), tokenizer=tokenizer)
    return model


def load_gpt_neox(name_or_folder: str | os.PathLike, tokenizer=None, device: str = "cpu",
                  dtype: torch.dtype = torch.float32, fold_ln: bool = True,
                  center_writing_weights: bool = True, center_unembed: bool = True):
    """Load Pythia (or any GPT-NeoX) as a HookedTransformer, from the hub or a local folder."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    folder = hub.snapshot(str(name_or_folder), ["*.json", "*.safetensors", "*.txt", "*.model"],
                          what="GPT-NeoX model")
    import json

    archs = json.loads((folder / "config.json").read_text()).get("architectures") or ["?"]
    if archs[0] != "GPTNeoXForCausalLM":
        raise UniversalityError(f"{name_or_folder} is a {archs[0]}, not a GPT-NeoX (Pythia) model.")
    cfg_dict = convert_hf_model_config(str(folder))
    # the authors prepend BOS (<|endoftext|>) to every prompt, as the tiny models do
    cfg_dict.update(device=device, dtype=dtype, default_prepend_bos=True)
    if fold_ln:
        cfg_dict["normalization_type"] = "LNPre"
    cfg = HookedTransformerConfig(**cfg_dict)
    hf = GPTNeoXForCausalLM.from_pretrained(str(folder), torch_dtype=dtype)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state = convert_neox_weights(hf, cfg)
    del hf
    model.load_and_process_state_dict(state, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                      center_unembed=center_unembed, fold_value_biases=True)
    return model.to(device)


def save_transformer(model, folder: str | os.PathLike) -> None:
    """Config (JSON) + weights (safetensors) in ``folder`` (written by the caller's atomic builder)."""
    from safetensors.torch import save_file

    from ..cache import atomic_write_json

    folder = Path(folder)
    cfg = {k: v for k, v in model.cfg.to_dict().items() if _jsonable(v)}
    atomic_write_json(folder / "config.json", {"family": "transformer", "cfg": cfg})
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))


def load_transformer(folder: str | os.PathLike, tokenizer=None, device: str = "cpu"):
    """Inverse of ``save_transformer``."""
    import json

    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder = Path(folder)
    meta = json.loads((folder / "config.json").read_text())
    if meta.get("family") != "transformer":
        raise UniversalityError(f"{folder} holds a {meta.get('family')!r} checkpoint, not a transformer.")
    cfg = dict(meta["cfg"])
    for k in ("device", "dtype", "n_devices"):
        cfg.pop(k, None)
    cfg = HookedTransformerConfig(**{k: v for k, v in cfg.items() if k in _cfg_fields()}, device=device)
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.to(device)


def _cfg_fields() -> set[str]:
    import dataclasses

    from transformer_lens import HookedTransformerConfig

    return {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}


def _jsonable(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(_jsonable(x) for x in v)) or (
        isinstance(v, dict) and all(isinstance(k, str) and _jsonable(x) for k, x in v.items()))
