"""The old path of the induction check: everything lives in :mod:`universality_lib.circuits.induction`."""
from .circuits.induction import (  # noqa: F401
    InductionCheck, head_scores, heldout_snippets, induction_check, natural_text_check, natural_text_rows,
    per_position_loss, repeated_random_tokens, repeated_text_tokens, training_probe,
)

__all__ = ["InductionCheck", "head_scores", "heldout_snippets", "induction_check", "natural_text_check",
           "natural_text_rows", "per_position_loss", "repeated_random_tokens", "repeated_text_tokens",
           "training_probe"]
