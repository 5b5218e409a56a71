"""Tiny stand-ins for the paper's published checkpoints, written in the formats the hub serves (tests only).

* :func:`make_gpt_neox` / :func:`save_gpt_neox`: a random ``GPTNeoXForCausalLM`` in ``save_pretrained`` format,
  as ``EleutherAI/pythia-160m`` is on the hub.
* :func:`make_hf_mamba`: a random HF ``MambaForCausalLM`` with non-trivial SSM parameters;
  :func:`state_spaces_state_dict` / :func:`save_state_spaces_mamba` write it in the mamba_ssm ("state-spaces")
  format of ``state-spaces/mamba-130m`` (``config.json`` + ``pytorch_model.bin``).
* :func:`save_text_dataset`: a local folder of JSON lines with a ``text`` column, which ``datasets.load_dataset``
  reads like a hub dataset.

Shared by tests/test_transformer.py, tests/test_mamba.py and tests/test_paper_preset.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

EOT = "<|endoftext|>"


# ----------------------------------------------------------------------------- GPT-NeoX (Pythia)
def make_gpt_neox(vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 4, intermediate: int = 64,
                  n_ctx: int = 64, seed: int = 0):
    """A random GPT-NeoX with Pythia's block (parallel residual, rotary on a quarter of each head)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=n_ctx,
                        rotary_pct=0.25, use_parallel_residual=True)
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(cfg).eval()


def save_gpt_neox(folder: str | Path, vocab_size: int, *, tokenizer=None, **kwargs):
    """:func:`make_gpt_neox`, saved with ``save_pretrained`` (plus ``tokenizer`` if given). Returns the HF model."""
    hf = make_gpt_neox(vocab_size, **kwargs)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return hf


# ----------------------------------------------------------------------------- Mamba
def perturb_mamba(model, seed: int = 0) -> None:
    """Make the random HF Mamba weights non-trivial (A_log, D, dt bias, conv bias, norms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.backbone.layers:
            mx = layer.mixer
            mx.A_log.add_(0.3 * torch.randn(mx.A_log.shape, generator=g))
            mx.D.copy_(torch.randn(mx.D.shape, generator=g))
            mx.dt_proj.bias.add_(0.5 * torch.randn(mx.dt_proj.bias.shape, generator=g))
            mx.conv1d.bias.copy_(0.2 * torch.randn(mx.conv1d.bias.shape, generator=g))
            mx.x_proj.weight.mul_(3.0)
            layer.norm.weight.copy_(1 + 0.2 * torch.randn(layer.norm.weight.shape, generator=g))
        model.backbone.norm_f.weight.copy_(1 + 0.2 * torch.randn(model.backbone.norm_f.weight.shape, generator=g))


def make_hf_mamba(vocab_size: int, *, d_model: int = 32, n_layers: int = 2, tied: bool = True, seed: int = 0,
                  perturb_seed: int | None = 1):
    """A random HF ``MambaForCausalLM`` (d_state 16, expand 2, d_conv 4), perturbed unless ``perturb_seed`` is None."""
    from transformers import MambaConfig as HFMambaConfig
    from transformers import MambaForCausalLM

    torch.manual_seed(seed)
    cfg = HFMambaConfig(vocab_size=vocab_size, hidden_size=d_model, state_size=16, num_hidden_layers=n_layers,
                        tie_word_embeddings=tied, use_mambapy=False)
    hf = MambaForCausalLM(cfg).eval()
    if perturb_seed is not None:
        perturb_mamba(hf, seed=perturb_seed)
    return hf


def state_spaces_state_dict(hf) -> dict[str, torch.Tensor]:
    """The HF Mamba's weights under mamba_ssm's names (``backbone.embedding`` instead of ``backbone.embeddings``)."""
    return {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone() for k, v in hf.state_dict().items()}


def save_state_spaces_mamba(folder: str | Path, hf, *, pad_vocab_size_multiple: int = 8, tokenizer=None) -> Path:
    """Write ``hf`` as a mamba_ssm ``MambaLMHeadModel`` folder, the format of ``state-spaces/mamba-130m``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = hf.config
    conf = {"d_model": c.hidden_size, "n_layer": c.num_hidden_layers, "vocab_size": c.vocab_size, "ssm_cfg": {},
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
            "pad_vocab_size_multiple": pad_vocab_size_multiple, "tie_embeddings": c.tie_word_embeddings}
    (folder / "config.json").write_text(json.dumps(conf))
    torch.save(state_spaces_state_dict(hf), folder / "pytorch_model.bin")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- text
def save_text_dataset(folder: str | Path, texts, name: str = "train.jsonl") -> Path:
    """A local dataset folder (JSON lines, column ``text``) that ``datasets.load_dataset(folder)`` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return folder


def busy_mamba(d_vocab: int, n_layers: int = 2, seed: int = 0):
    """A tiny random HookedMamba whose recurrence matters (larger steps and inputs than the default init):
    the circuit tests need patched states to move the logits."""
    import torch

    from universality_lib.models.mamba import HookedMamba, MambaConfig

    m = HookedMamba(MambaConfig(d_model=8, n_layers=n_layers, d_vocab=d_vocab, d_state=4, n_ctx=32, seed=seed)).eval()
    with torch.no_grad():
        for blk in m.blocks:
            blk.dt_proj.bias.add_(2.0)
            blk.in_proj.weight.mul_(10.0)
    return m
