"""The zoo's own check (issue 14): is the trained zoo good enough to carry the paper's claims?

Four criteria, each a row with its measured value, the threshold and ``passed``; chapter 1 shows and records
them, and ``python -m universality_lib train`` prints them when the zoo is done.

==============================  ==================================================================================
``heldout_loss_ratio``          M's mean next-token loss on the ``heldout`` split over T's: within 3% (the paper's
                                pair has near-equal perplexity; |ratio - 1| <= 0.03)
``natural_induction_<kind>``    repeat / first-copy loss on 64-token snippets of held-out English (``text``) and
                                code, each followed by itself (induction.natural_text_check): <= 0.5 for T, T2, M
``random_induction``            the same ratio on 64 random frequent tokens repeated (the paper's task): <= 0.5
``clean_prob_B``                chapter 5's induction prompts (circuits.task): M's mean p(B) on clean prompts >= 0.3
==============================  ==================================================================================

:func:`prob_B_by_gap` is a diagnostic beside the criteria: p(B) of the same prompts by the distance to copy.

A preset without a ``heldout`` split (``smoke``: code only, no download) measures the loss and the code ratio on
its ``eval`` split instead and says so in the row's ``split``; it has no English text, so that row is skipped.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from . import corpus
from .circuits.induction import heldout_snippets, induction_check, per_position_loss, repeated_random_tokens
from .presets import Preset, get as get_preset
from .runtime import model_device

LOSS_TOLERANCE = 0.03  # |L_M / L_T - 1|
INDUCTION_MAX = 0.5  # repeat / first copy
CLEAN_PROB_B_MIN = 0.3  # chapter 5, M


@dataclass
class Criterion:
    criterion: str  # one of the names in the module docstring
    model: str  # "M/T" for the loss ratio
    value: float
    threshold: str  # in words, e.g. "<= 0.5"
    passed: bool
    split: str  # where the text came from
    n: int  # rows, snippets or prompts measured

    def to_dict(self) -> dict:
        return asdict(self)


def _split(p: Preset) -> str:
    return "heldout" if "heldout" in corpus.split_names(p) else "eval"


def heldout_loss(model, preset: "str | Preset", n_rows: int = 256, context: int = 128) -> tuple[float, int]:
    """Mean next-token loss of ``model`` on ``n_rows`` rows of ``context`` tokens of the held-out split (all
    kinds), and the number of rows read."""
    p = get_preset(preset)
    stream = corpus.token_stream(p, _split(p), tokenizer=model.tokenizer)
    context = min(context, model.cfg.n_ctx)
    rows = stream.rows(context, n_rows=n_rows)
    return float(per_position_loss(model, rows).mean()), len(rows)


def _prompt_probs(model, preset: "str | Preset"):
    """(p(B) per prompt [n], the prompts): chapter 5's clean induction prompts, read at the last position."""
    from .circuits.task import make_prompts, target_scores, task_config, task_vocab

    p = get_preset(preset)
    prompts = make_prompts(task_vocab(p, model.tokenizer), task_config(p), bos_id=model.tokenizer.bos_token_id)
    probs = []
    dev = model_device(model)
    with torch.no_grad():
        for batch in prompts.batches():
            probs.append(target_scores(model(batch.tokens.to(dev), return_type="logits"), batch.b)[1].cpu())
    return torch.cat(probs), prompts


def clean_prob_B(model, preset: "str | Preset") -> tuple[float, int]:
    """Mean p(B) at the last position of chapter 5's clean induction prompts, and the number of prompts."""
    probs, prompts = _prompt_probs(model, preset)
    return float(probs.mean()), len(prompts)


def prob_B_by_gap(models: dict, preset: "str | Preset", width: int = 8):
    """A diagnostic, not a criterion: mean p(B) of chapter 5's clean prompts binned by the gap from the first A to
    the final A (tokens), one column per model. pandas DataFrame indexed by gap bin, with the prompts per bin.

    A model that does induction copies B whatever the gap; one that has learned to copy from the start of its
    row (tiled training rows always begin there) does so only for the largest gaps, where A is among the first
    tokens after BOS."""
    import pandas as pd

    cols, counts = {}, None
    for name, model in models.items():
        probs, prompts = _prompt_probs(model, preset)
        gap = prompts.last - prompts.pos_a  # [n]
        lo = (gap // width) * width
        df = pd.DataFrame({"gap": [f"{a}-{a + width - 1}" for a in lo.tolist()], "lo": lo.tolist(),
                           "p": probs.tolist()})
        grouped = df.groupby(["lo", "gap"])["p"]
        cols[name] = grouped.mean()
        counts = grouped.size()
    out = pd.DataFrame({"prompts": counts, **cols}).reset_index(level="lo", drop=True)
    out.index.name = "gap (tokens)"
    return out


def criteria(preset: "str | Preset", models: dict, n_snippets: int = 100, seq_len: int = 64,
             n_loss_rows: int = 256) -> list[Criterion]:
    """Every criterion for the trained ``models`` (name -> model: T, T2 and M), in the module docstring's order."""
    p = get_preset(preset)
    split = _split(p)
    out = []
    any_model = next(iter(models.values()))
    seq_len = min(seq_len, (any_model.cfg.n_ctx - 1) // 2)
    if "T" in models and "M" in models:
        (lt, n), (lm, _) = heldout_loss(models["T"], p, n_loss_rows), heldout_loss(models["M"], p, n_loss_rows)
        ratio = lm / lt
        out.append(Criterion("heldout_loss_ratio", "M/T", ratio, f"within {LOSS_TOLERANCE:.0%} of 1",
                             abs(ratio - 1) <= LOSS_TOLERANCE, split, n))
    kinds = ("text", "code") if p.corpus.text_sources else ("code",)
    for kind in kinds:
        stream = corpus.token_stream(p, split, tokenizer=any_model.tokenizer,
                                     kind=kind if p.corpus.text_sources else None)
        tokens = torch.from_numpy(stream.tokens.astype("int64"))
        n = min(n_snippets, max(1, (len(tokens) // seq_len) // 2))
        rows = heldout_snippets(tokens, n, seq_len, stream.bos_id)
        for name, model in models.items():
            c = induction_check(model, rows, INDUCTION_MAX)
            out.append(Criterion(f"natural_induction_{kind}", name, c.ratio, f"<= {INDUCTION_MAX}", c.passed,
                                 split, n))
    eval_stream = corpus.token_stream(p, "eval", tokenizer=any_model.tokenizer)
    vocab = corpus.frequent_tokens(eval_stream, 1000)
    random_rows = repeated_random_tokens(vocab, n_snippets, seq_len, any_model.tokenizer.bos_token_id, seed=0)
    for name, model in models.items():
        c = induction_check(model, random_rows, INDUCTION_MAX)
        out.append(Criterion("random_induction", name, c.ratio, f"<= {INDUCTION_MAX}", c.passed, "random tokens",
                             n_snippets))
    if "M" in models:
        prob, n = clean_prob_B(models["M"], p)
        out.append(Criterion("clean_prob_B", "M", prob, f">= {CLEAN_PROB_B_MIN}", prob >= CLEAN_PROB_B_MIN,
                             "chapter 5 prompts", n))
    return out


def table(rows: list[Criterion]):
    """pandas DataFrame of the criteria, one row each."""
    import pandas as pd

    return pd.DataFrame([r.to_dict() for r in rows])
