"""Induction circuits by path patching, in the Transformer and in Mamba (chapters 5 and 6).

* ``task``: the induction prompts (random tokens, A ... B ... A), their corruptions and the B metric.
* ``patching``: hook builders and the batched sweep shared by both families.
* ``effects``: :class:`Effects`, the tidy result of a sweep (per component Δ, its standard error, shares).
* ``transformer``: head -> logits and head @B -> induction head -> logits on ``attn.hook_z``.
* ``mamba``: SSM state rebuild and state -> logits, y -> logits, conv input -> conv -> state -> logits.
* ``off_by_one``: where a token enters the state (the write at B+k), conv lags, the Transformer control.
"""
from .effects import Effects
from .task import (CORRUPTIONS, InductionPrompts, TaskConfig, estimate, make_prompts, prob_B_by_start, task_config,
                   task_vocab)

__all__ = ["Effects", "CORRUPTIONS", "InductionPrompts", "TaskConfig", "estimate", "make_prompts", "prob_B_by_start",
           "task_config", "task_vocab"]
