"""universality_lib: the helper library of the 'Towards Universality' reproduction book.

Floors (imports point down or sideways, never up, and never round in a cycle, not even through an import inside a
function; ``tests/test_layers.py`` reads every module's imports and checks it):

====================  ==========================================================================================
ground                ``presets`` (every size, budget, hub name; ``shipped_dir``), ``cache`` (content-addressed,
                      verified), ``hub``, ``errors``, ``runtime`` (device, threads, machine), ``stats`` (bootstrap,
                      Spearman, intervals), ``sources`` (the pinned English text packages)
data and models       ``corpus`` (documents, manifest, splits, tokenizer, the aligned token stream; memoised per
                      corpus), ``models/`` (Transformer, ``HookedMamba``, scan, I/O), ``activations`` (hook reads)
checks on a model     ``circuits/``: the induction check (``circuits.induction``, the old path
                      ``universality_lib.induction`` re-exports it), the induction task, patching, effects, the
                      Transformer and Mamba circuits, Off-by-One. Functions of a model and tokens: they load none
training and the zoo  ``train`` (one loop), ``zoo`` (build, train, install, verify, load; logs the induction probe
                      that ``circuits.induction.training_probe`` builds), ``zoo_check``
analysis              ``saes/`` (chapter 2), ``similarity/`` (chapter 3, MPPC), ``depth``, ``complexity``,
                      ``feature_sample``, ``llm_judge``, ``explorer`` (chapter 4)
book                  ``results``, ``claims``, ``report``, ``book/``, ``plots/``, ``views``, ``exercises``,
                      ``resources``, ``cli`` (the one command line)
====================  ==========================================================================================

Import what you use: ``from universality_lib import corpus, zoo, saes``; nothing is imported with the package
itself, so ``import universality_lib`` stays cheap.
"""
import os as _os
import warnings as _warnings

_os.environ.setdefault("WANDB_MODE", "disabled")  # transformer-lens / sae-lens import wandb
# dependencies import tqdm.auto; without ipywidgets it warns once per kernel, and the text bar is what we want
_warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
