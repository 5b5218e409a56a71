"""universality_lib: the helper library of the 'Towards Universality' reproduction book.

Layers (imports point down):

* presentation: ``book`` (papermill + Jupyter Book runner), ``results`` (recorded numbers), ``cli``
* analysis: SAEs, similarity (MPPC), circuits (added chapter by chapter)
* foundations: ``presets``, ``corpus``, ``models`` (Transformer, ``HookedMamba``), ``train``, ``zoo``,
  ``induction``, ``cache``
"""
import os as _os

_os.environ.setdefault("WANDB_MODE", "disabled")  # transformer-lens / sae-lens import wandb

__version__ = "0.1.0"
