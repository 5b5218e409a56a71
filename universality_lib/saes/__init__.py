"""Sparse autoencoders on the residual stream of every block (chapter 2): trained with sae-lens, cached, measured.

One concept per file:

    train.py     one SAE with sae-lens (ActivationsStore + SAETrainer, L0 steering), and every SAE of a model
                 from one forward pass (train_shared); what an SAE reads and records (special ids, fingerprint)
    store.py     the verified cache: jobs, keys, folders, get / load, train_all
    metrics.py   L0, FVE, CE loss recovered, dead features, density (evaluate, evaluate_many, evaluate_all)
    features.py  feature activations, features in a frequency band, top activations and their contexts

``from universality_lib import saes`` gives every public name of the four (``saes.train_all``, ``saes.get``,
``saes.evaluate``, ``saes.pick_features``, ...).
"""
from .features import (context_text, context_tokens, feature_acts, in_band, pick_features, pick_in_band,
                       top_activations)
from .metrics import eval_rows, evaluate, evaluate_all, evaluate_many
from .store import (KIND, folder_for, get, is_cached, jobs, load_folder, model_hash, total_train_minutes,
                    train_all)
from .train import (ARCHITECTURES, LOG, META, NORMALISATION, TrainResult, _key_config, _runner_config,
                    check_compatible, info, model_fingerprint, read_log, special_ids, threads_set_to, train,
                    train_shared)

__all__ = ["ARCHITECTURES", "TrainResult", "train", "train_shared", "get", "load_folder", "folder_for", "is_cached",
           "jobs", "train_all", "total_train_minutes", "evaluate", "evaluate_many", "evaluate_all", "top_activations",
           "pick_features", "pick_in_band", "in_band", "special_ids", "check_compatible", "model_fingerprint",
           "model_hash", "read_log", "info", "eval_rows", "feature_acts", "threads_set_to", "context_tokens",
           "context_text"]
