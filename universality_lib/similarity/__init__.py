"""Cross-model feature similarity: the MPPC engine (engine.py), its tidy result (result.py) and the
experiments of chapter 3 (experiments.py)."""
from .engine import BACKENDS, PairStats, default_backend, pearson_reference
from .result import THRESHOLDS, MPPCResult, bootstrap_mean, paired, side_of
from .experiments import (CONDITION_ORDER, Condition, Source, compute, conditions, mppc_rows, neuron_hooks,
                          rows_hash, run, summary_table)
