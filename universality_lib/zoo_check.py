"""The zoo's own check (issue 14): is the trained zoo good enough to carry the paper's claims?

Four criteria, each a row with its measured value, the threshold and ``passed``; chapter 1 shows and records
them, and ``python -m universality_lib check`` prints them (after ``train``: does the retrained zoo pass?).

==============================  ==================================================================================
``heldout_loss_ratio``          M's mean next-token loss on the ``heldout`` split over T's: within 3% (the paper's
                                pair has near-equal perplexity; |ratio - 1| <= 0.03)
``natural_induction_<kind>``    repeat / first-copy loss on 64-token snippets of held-out English (``text``) and
                                code, each followed by itself (induction.natural_text_check): <= 0.5 for T, T2, M
``random_induction``            the same ratio on 64 random frequent tokens repeated (the paper's task): <= 0.5
``clean_prob_B``                chapter 5's induction prompts (circuits.task): M's mean p(B) on clean prompts >= 0.3
==============================  ==================================================================================

:func:`prob_B_by_prefix` and :func:`natural_ratio_by_prefix` are diagnostics beside the criteria: p(B), and the
natural-text ratio, when what is copied does not open the row.

A preset without a ``heldout`` split (``smoke``: code only, no download) measures the loss and the code ratio on
its ``eval`` split instead and says so in the row's ``split``; it has no English text, so that row is skipped.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from . import corpus
from .circuits.induction import heldout_snippets, induction_check, per_position_loss, repeated_random_tokens
from .errors import UniversalityError
from .presets import Preset, get as get_preset

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


def clean_prob_B(model, preset: "str | Preset") -> tuple[float, int]:
    """Mean p(B) at the last position of chapter 5's clean induction prompts, and the number of prompts."""
    from .circuits.task import make_prompts, prob_B, task_config, task_vocab

    p = get_preset(preset)
    prompts = make_prompts(task_vocab(p, model.tokenizer), task_config(p), bos_id=model.tokenizer.bos_token_id)
    return float(prob_B(model, prompts).mean()), len(prompts)


def prob_B_by_prefix(models: dict, preset: "str | Preset", prefixes=None, gap: int | None = None,
                     n_prompts: int = 256, bos: bool = True):
    """A diagnostic, not a criterion: mean clean p(B) of induction prompts whose first A sits after ``k`` random
    tokens (``k`` in ``prefixes``), the final A ``gap`` tokens after it. pandas DataFrame, one row per ``k``, one
    column per model.

    Induction predicts B whatever ``k``. A model that only copies spans opening its row (every tiled training row's
    first copy starts right after BOS, and so do the copies of the induction checks above) predicts B at ``k = 0``
    only. Chapter 5's prompts put A at ``k`` = 0 to 31. Defaults: ``gap`` 32 and ``prefixes`` 0, 1, 2, 4, ..., 32, both
    cut to what fits the smallest context of ``models`` (BOS + k + gap + 1 tokens). ``bos=False``: the same random
    tokens without the BOS that opens every training row (the authors' prompts had none): a model that anchors its copy
    on BOS does better or worse without it, an induction mechanism the same."""
    import pandas as pd

    from .circuits.task import insert_prefix, make_prompts, prob_B, task_config, task_vocab

    p = get_preset(preset)
    n_ctx = min(m.cfg.n_ctx for m in models.values())
    gap = min(32, (n_ctx - 2) // 2) if gap is None else gap
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 3:  # before gap is used to choose the prefixes
        raise UniversalityError(f"gap {gap!r}: need a whole number >= 3 (A, B, one filler token, A)")
    if prefixes is None:
        prefixes = [k for k in (0, 1, 2, 4, 8, 16, 32) if k + gap + 2 <= n_ctx]
    if not prefixes or max(prefixes) + gap + 2 > n_ctx:
        raise UniversalityError(f"gap {gap} with prefixes {list(prefixes)}: need BOS + prefix + gap + 1 <= n_ctx = "
                                f"{n_ctx} tokens")
    cols = {}
    for name, model in models.items():
        cfg = task_config(p, seq_len=gap + 1, max_a_pos=1, n_prompts=n_prompts, prepend_bos=bos)  # A opens the body
        base = make_prompts(task_vocab(p, model.tokenizer), cfg, bos_id=model.tokenizer.bos_token_id if bos else None)
        cols[name] = {k: float(prob_B(model, insert_prefix(base, k, seed=k)).mean()) for k in prefixes}
    out = pd.DataFrame(cols)
    out.index.name = "tokens before the first A"
    return out


def natural_ratio_by_prefix(models: dict, preset: "str | Preset", kind: str | None = None, prefixes=None,
                            seq_len: int | None = None, n_snippets: int = 100, seed: int = 0):
    """A diagnostic, not a criterion: the natural-text induction ratio (repeat / first-copy loss, as
    :func:`~.circuits.induction.induction_check` computes it) when the snippet's first copy starts after the ``k``
    tokens that precede it in its document (``k`` in ``prefixes``). pandas DataFrame, one row per ``k``, one column
    per model.

    The ``natural_induction_<kind>`` criterion repeats a snippet that opens its row, right after BOS. A model that
    copies only from the row's start passes it at ``k = 0`` and has a ratio near 1 for ``k > 0``; induction copies
    wherever the first copy is. Snippets come from the criterion's split (``heldout``, or ``eval`` without one), of
    ``kind`` (``"text"`` or ``"code"``; None: the whole split, as a preset without English text has it). Defaults:
    ``seq_len`` 32 (a quarter of the smallest context of ``models`` where that is less), ``prefixes`` 0, 2, 4, 8, 16,
    32, 48, cut to what fits that context (BOS + k + 2 x ``seq_len``; at most 113 tokens with a ``seq_len`` of 32,
    inside the tiny zoo's 128-token training rows); the same snippets for every ``k``."""
    import pandas as pd

    p = get_preset(preset)
    n_ctx = min(m.cfg.n_ctx for m in models.values())
    seq_len = min(32, (n_ctx - 1) // 4) if seq_len is None else seq_len
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 3:
        raise UniversalityError(f"seq_len {seq_len!r}: need a whole number >= 3 (the ratio skips each copy's first token)")
    if prefixes is None:
        prefixes = [k for k in (0, 2, 4, 8, 16, 32, 48) if 1 + k + 2 * seq_len <= n_ctx]
    prefixes = list(prefixes)
    if not prefixes or min(prefixes) < 0 or 1 + max(prefixes) + 2 * seq_len > n_ctx:
        raise UniversalityError(f"seq_len {seq_len} with prefixes {prefixes}: need BOS + prefix + 2 x seq_len <= n_ctx "
                                f"= {n_ctx} tokens, and no negative prefix")
    tokenizer = next(iter(models.values())).tokenizer
    stream = corpus.token_stream(p, _split(p), tokenizer=tokenizer, kind=kind if p.corpus.text_sources else None)
    tokens = torch.from_numpy(stream.tokens.astype("int64"))
    K = max(prefixes)
    bos, window = heldout_snippets(tokens, n_snippets, K + seq_len, stream.bos_id, seed=seed)[:, :K + seq_len + 1].split(
        [1, K + seq_len], dim=1)  # [n, 1] BOS, [n, K + S]: K tokens of a document, then the snippet
    snippet = window[:, K:]
    rows = {k: torch.cat([bos, window[:, K - k:K], snippet, snippet], dim=1) for k in prefixes}  # BOS, k tokens, s, s
    out = pd.DataFrame({name: {k: induction_check(model, r, prefix=k).ratio for k, r in rows.items()}
                        for name, model in models.items()})
    out.index.name = "tokens before the first copy"
    return out


def natural_ratio_tables(models: dict, preset: "str | Preset", n_snippets: int = 100) -> dict:
    """:func:`natural_ratio_by_prefix` for each kind of held-out text the preset has: ``{"text": ..., "code": ...}``
    with English sources, else one table of the whole split, labelled by what the corpus is (``"code"`` for the
    standard library, ``"text"`` for a hub corpus such as the Pile)."""
    p = get_preset(preset)
    kinds = {"text": "text", "code": "code"} if p.corpus.text_sources else {
        "code" if p.corpus.source == "stdlib" else "text": None}
    return {label: natural_ratio_by_prefix(models, p, kind=kind, n_snippets=n_snippets) for label, kind in kinds.items()}


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
