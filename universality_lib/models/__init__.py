"""The two model families behind one face (TransformerLens' HookedRootModule API).

* ``transformer``: Pythia-style ``HookedTransformer`` factory and the GPT-NeoX (Pythia) loader.
* ``mamba``: the library's own ``HookedMamba`` (pure PyTorch, MambaLens hook names, readable like mamba-minimal);
  ``mamba_config``: its ``MambaConfig`` (``MambaConfig.from_size`` for a preset's ``MambaSize``); ``mamba_io``: its
  checkpoints (ours, HF, state-spaces; one key table); ``scan``: its selective scans (exact and fast).
"""
from __future__ import annotations

import re


def family(model) -> str:
    """"transformer" or "mamba"."""
    from transformer_lens import HookedTransformer

    return "transformer" if isinstance(model, HookedTransformer) else "mamba"


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def block_hook_names(model, layer: int = 0) -> list[str]:
    """Hook points of one block, in forward order; per-position state hooks collapsed to ``hook_h.{t}``."""
    prefix = f"blocks.{layer}."
    out: list[str] = []
    for name in model.hook_dict:
        if not name.startswith(prefix):
            continue
        short = re.sub(r"hook_h\.\d+$", "hook_h.{t}", name[len(prefix):])
        if short not in out:
            out.append(short)
    return out
