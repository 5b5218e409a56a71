"""universality_lib: the helper library of the 'Towards Universality' reproduction book.

Layers (imports point down):

* presentation: ``book`` (papermill + Jupyter Book runner), ``results`` (recorded numbers), ``cli``
* analysis: SAEs, similarity (MPPC), circuits (added chapter by chapter)
* foundations: ``presets``, ``corpus``, ``models`` (Transformer, ``HookedMamba``), ``train``, ``zoo``,
  ``induction``, ``cache``
"""
import os as _os
import warnings as _warnings

_os.environ.setdefault("WANDB_MODE", "disabled")  # transformer-lens / sae-lens import wandb
# dependencies import tqdm.auto; without ipywidgets it warns once per kernel, and the text bar is what we want
_warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
