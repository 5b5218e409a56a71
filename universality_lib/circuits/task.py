"""The induction task of the paper's circuit experiments, its corrupted inputs and its metric.

A prompt is a sequence of random tokens with one repeated token (paper digest, section 2.6)::

    [BOS]  r_0 r_1 ... A B ... r_{S-2}  A          predict B at the last position
           ^ pos_a in [0, max_a_pos) of the random body; B = the token after A; the last token is A again

The metric is the **logit** and the **probability** of B at the last position (a raw logit, as the authors
report it, not a logit difference), averaged over prompts, with standard errors.

Each experiment has its own corrupted input (the authors' designs; keep them distinct):

==============  =====================================================================================
``"random"``    a fresh random sequence (Transformer head -> logits, head -> head -> logits)
``"b"``         B replaced by another token B' (Mamba state -> logits; the off-by-one sweep)
``"ab"``        the first A and B replaced by A', B' (Mamba conv input -> conv -> state -> logits)
``"no_repeat"`` the last token (the repeated A) replaced by a token that is not A (Mamba y -> logits)
==============  =====================================================================================

Glossary of symbols
    n   number of prompts          S   length of the random body (``seq_len``, 64 in the paper)
    L   tokens per prompt, S (+1 with BOS)          V   vocabulary size of the model
    pos_a, pos_b  absolute positions of the first A and of B = pos_a + 1; the last position is L - 1

Prompts are *unambiguous*: A occurs only at ``pos_a`` and at the end, so the only sensible induction
prediction is B (with the paper's 50k-token vocabulary this almost never needs fixing; with a 1,000-token
vocabulary about 6% of rows would otherwise have a second A). Replacement tokens (B', A', the new last
token) differ from the tokens they replace and from A and B. Everything is deterministic in ``seed``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import UniversalityError
from ..presets import Preset, get as get_preset
from .precision import Precision

CORRUPTIONS = ("random", "b", "ab", "no_repeat")


@dataclass(frozen=True)
class TaskConfig:
    """Shape of the induction prompts and how many to draw."""

    seq_len: int = 64  # S: random tokens per prompt, the repeated A at the end included
    max_a_pos: int = 32  # the first A is drawn uniformly in [0, max_a_pos) of the random body
    prepend_bos: bool = True  # the book's models saw BOS at the start of every row; the authors used none
    n_prompts: int = 512  # prompts drawn: every sweep's count, or its cap with ``stop_early``
    batch_size: int = 32
    seed: int = 0
    # the precision rule (circuits.precision.Precision): every sweep records the count at which the top component's
    # and the runner-up's SEs fell to ``se_frac`` of the gap between their |Δ|; ``stop_early`` stops it there
    se_frac: float = 0.1
    min_prompts: int = 256
    stop_early: bool = False

    def __post_init__(self):
        if self.seq_len < 4:
            raise UniversalityError(f"TaskConfig.seq_len={self.seq_len}: need at least 4 tokens (A, B, filler, A)")
        if not 1 <= self.max_a_pos <= self.seq_len - 3:
            raise UniversalityError(
                f"TaskConfig.max_a_pos={self.max_a_pos}: A must leave room for B and one token before the final A "
                f"(1 <= max_a_pos <= seq_len - 3 = {self.seq_len - 3})")
        if self.n_prompts <= 0 or self.batch_size <= 0:
            raise UniversalityError(f"TaskConfig: n_prompts ({self.n_prompts}) and batch_size ({self.batch_size}) "
                                    "must be positive")
        self.precision()  # one clear error for a bad se_frac / min_prompts

    def precision(self, metric: str = "logit_B", direction: str = "down") -> Precision:
        """The stopping rule of this task's sweeps (:class:`~.precision.Precision`)."""
        return Precision(self.se_frac, self.min_prompts, metric, direction)


# Per-preset sizes. The authors drew a fixed 65,536 prompts (2,048 for the Mamba layer sweep). At `paper` the count
# comes from the precision rule instead: each sweep stops once the dominance verdict is resolved (TaskConfig.se_frac),
# after 256 prompts at least and 2,048 at most (1,024 in the Colab T4 plan). On a CPU the tiny models give standard
# errors far below the effects with a few hundred; smoke and tiny run their fixed counts and record the count the
# rule needed.
PRESET_TASKS = {
    "smoke": dict(n_prompts=32, batch_size=16),
    "tiny": dict(n_prompts=512, batch_size=64),
    "paper": dict(n_prompts=2048, batch_size=32, prepend_bos=False, stop_early=True),
    "paper_t4": dict(n_prompts=1024, batch_size=32, prepend_bos=False, stop_early=True),  # the Colab T4 plan
}


def task_config(preset: "str | Preset", **overrides) -> TaskConfig:
    """The preset's task: the paper's length 64, shortened when the model context is smaller (smoke)."""
    p = get_preset(preset)
    kw = dict(PRESET_TASKS.get(p.name, {}))
    bos = kw.get("prepend_bos", True)
    seq_len = min(64, p.transformer.n_ctx - int(bos))
    kw.update(seq_len=seq_len, max_a_pos=min(32, seq_len - 3))
    kw.update(overrides)
    return TaskConfig(**kw)


def task_vocab(preset: "str | Preset", tokenizer=None, k: int = 1000) -> torch.Tensor:
    """The token ids prompts are drawn from: the ``k`` most frequent non-special tokens of the ``eval`` split
    (smoke, tiny), or the full vocabulary as the authors did (paper: ``len(tokenizer.vocab)``, special tokens
    included)."""
    from .. import corpus

    p = get_preset(preset)
    tok = tokenizer if tokenizer is not None else corpus.load_tokenizer(p)
    if p.needs_internet:
        return torch.arange(len(tok.vocab))
    return corpus.frequent_tokens(corpus.token_stream(p, "eval", tok), k)


@dataclass
class InductionPrompts:
    """A batch of induction prompts (clean) or of their corruption; all tensors on the CPU."""

    tokens: torch.Tensor  # [n, L] long
    pos_a: torch.Tensor  # [n] long, absolute position of the first A
    a: torch.Tensor  # [n] the token A (the one repeated at the end of the clean prompt)
    b: torch.Tensor  # [n] the token B (the induction target)
    vocab: torch.Tensor  # [V_task] the ids tokens were drawn from
    config: TaskConfig
    bos_id: int | None = None
    corruption: str | None = None  # None for the clean prompts
    b_prime: torch.Tensor | None = None  # [n] B' where the corruption replaced B ("b", "ab")
    changed: torch.Tensor | None = None  # [n, L] bool, positions whose token differs from the clean prompt
    meta: dict = field(default_factory=dict)

    @property
    def pos_b(self) -> torch.Tensor:
        return self.pos_a + 1  # [n]

    @property
    def last(self) -> int:
        return self.tokens.shape[1] - 1

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def subset(self, idx) -> "InductionPrompts":
        """The prompts at ``idx`` (a slice or an index tensor)."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return replace(self, tokens=self.tokens[idx], pos_a=self.pos_a[idx], a=self.a[idx], b=self.b[idx],
                       b_prime=pick(self.b_prime), changed=pick(self.changed))

    def batches(self, batch_size: int | None = None):
        """Consecutive sub-batches (the last may be smaller)."""
        bs = batch_size or self.config.batch_size
        for s in range(0, len(self), bs):
            yield self.subset(slice(s, s + bs))

    def corrupt(self, kind: str, seed: int | None = None) -> "InductionPrompts":
        """The corrupted prompts of experiment ``kind`` (one of :data:`CORRUPTIONS`), row for row."""
        if kind not in CORRUPTIONS:
            raise UniversalityError(f"unknown corruption {kind!r}: choose one of {', '.join(CORRUPTIONS)}")
        seed = self.config.seed + 1 + CORRUPTIONS.index(kind) if seed is None else seed
        g = torch.Generator().manual_seed(seed)
        n, L = self.tokens.shape
        rows = torch.arange(n)
        tokens = self.tokens.clone()
        b_prime = None
        if kind == "random":
            off = int(self.bos_id is not None and self.config.prepend_bos)
            tokens[:, off:] = self.vocab[torch.randint(0, len(self.vocab), (n, L - off), generator=g)]
        elif kind == "b":
            b_prime = _draw_excluding(self.vocab, [self.a, self.b], g)
            tokens[rows, self.pos_b] = b_prime
        elif kind == "ab":
            a_prime = _draw_excluding(self.vocab, [self.a, self.b], g)
            b_prime = _draw_excluding(self.vocab, [self.a, self.b, a_prime], g)
            tokens[rows, self.pos_a] = a_prime
            tokens[rows, self.pos_b] = b_prime
        else:  # "no_repeat"
            tokens[:, -1] = _draw_excluding(self.vocab, [self.a, self.b], g)
        return replace(self, tokens=tokens, corruption=kind, b_prime=b_prime, changed=tokens != self.tokens)


def _draw_excluding(vocab: torch.Tensor, avoid: list[torch.Tensor], g: torch.Generator) -> torch.Tensor:
    """One token per row from ``vocab``, different from every ``avoid[i][row]``: LongTensor [n]."""
    n = avoid[0].shape[0]
    if len(vocab) <= len(avoid):
        raise UniversalityError(f"the task vocabulary has {len(vocab)} tokens: too few to draw a replacement")
    out = vocab[torch.randint(0, len(vocab), (n,), generator=g)]
    for _ in range(1000):
        bad = torch.zeros(n, dtype=torch.bool)
        for a in avoid:
            bad |= out == a
        if not bad.any():
            return out
        out[bad] = vocab[torch.randint(0, len(vocab), (int(bad.sum()),), generator=g)]
    raise UniversalityError("could not draw replacement tokens (vocabulary too small?)")  # pragma: no cover


def make_prompts(vocab: torch.Tensor, config: TaskConfig = TaskConfig(), bos_id: int | None = None) -> InductionPrompts:
    """Draw ``config.n_prompts`` clean induction prompts from ``vocab`` (a 1-D tensor of token ids).

    With ``config.prepend_bos`` the rows start with ``bos_id`` (which must then be given) and every position
    is shifted by one. Deterministic in ``config.seed``."""
    vocab = torch.as_tensor(vocab, dtype=torch.long).flatten().cpu()
    if len(vocab) < 4:
        raise UniversalityError(f"the task vocabulary has {len(vocab)} tokens; need at least 4 distinct tokens")
    if len(torch.unique(vocab)) != len(vocab):
        raise UniversalityError("the task vocabulary has repeated ids")
    if config.prepend_bos and bos_id is None:
        raise UniversalityError("TaskConfig.prepend_bos=True needs bos_id (e.g. tokenizer.bos_token_id)")
    if bos_id is not None and config.prepend_bos and bool((vocab == bos_id).any()):
        raise UniversalityError(f"the task vocabulary contains the BOS id {bos_id}; leave special tokens out")
    g = torch.Generator().manual_seed(config.seed)
    n, S = config.n_prompts, config.seq_len
    body = vocab[torch.randint(0, len(vocab), (n, S), generator=g)]  # [n, S]
    pos = torch.randint(0, config.max_a_pos, (n,), generator=g)  # [n] in the body
    rows = torch.arange(n)
    a = body[rows, pos]
    body[:, -1] = a
    # unambiguous prompts: A only at pos and at the end (B != A follows)
    keep = torch.zeros(n, S, dtype=torch.bool)
    keep[rows, pos] = True
    keep[:, -1] = True
    for _ in range(1000):
        clash = (body == a[:, None]) & ~keep
        if not clash.any():
            break
        body[clash] = vocab[torch.randint(0, len(vocab), (int(clash.sum()),), generator=g)]
    else:  # pragma: no cover
        raise UniversalityError("could not draw unambiguous prompts (vocabulary too small?)")
    b = body[rows, pos + 1]
    off = int(config.prepend_bos)
    if off:
        body = torch.cat([torch.full((n, 1), int(bos_id), dtype=torch.long), body], dim=1)  # [n, L]
    return InductionPrompts(tokens=body, pos_a=pos + off, a=a, b=b, vocab=vocab, config=config,
                            bos_id=bos_id if off else None)


def insert_prefix(prompts: InductionPrompts, k: int, seed: int = 0) -> InductionPrompts:
    """The same clean prompts with ``k`` random task tokens (never A) inserted after BOS (at the start without BOS):
    every position moves ``k`` later, the gap from the first A to the final A stays. A model that copies B only
    when A opens the row fails these for k >= 1; an induction mechanism does not care (``zoo_check.prob_B_by_prefix``)."""
    if prompts.corruption is not None:
        raise UniversalityError("insert_prefix takes clean prompts (corrupt them afterwards)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise UniversalityError(f"k is a number of tokens >= 0, got {k!r}")
    g = torch.Generator().manual_seed(seed)
    off = int(prompts.bos_id is not None)
    cols = [_draw_excluding(prompts.vocab, [prompts.a], g) for _ in range(k)]  # k x [n]
    prefix = torch.stack(cols, 1) if k else prompts.tokens[:, :0]  # [n, k]
    tokens = torch.cat([prompts.tokens[:, :off], prefix, prompts.tokens[:, off:]], dim=1)
    return replace(prompts, tokens=tokens, pos_a=prompts.pos_a + k, meta={**prompts.meta, "prefix": k})


# ----------------------------------------------------------------------------------------------- metric
def target_scores(logits: torch.Tensor, targets: torch.Tensor, position: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt logit and probability of ``targets`` [n] at ``position``: two FloatTensors [n] (CPU)."""
    if logits.dim() != 3:
        raise UniversalityError(f"expected logits [n, L, V], got shape {tuple(logits.shape)}")
    last = logits[:, position].float()  # [n, V]
    t = targets.to(last.device).long()[:, None]
    logit = last.gather(-1, t)[:, 0]  # [n]
    prob = torch.softmax(last, dim=-1).gather(-1, t)[:, 0]  # [n]
    return logit.cpu(), prob.cpu()


def prob_B(model, prompts: InductionPrompts) -> torch.Tensor:
    """p(B) at the last position of each of ``prompts``, batch by batch without gradients: FloatTensor [n] (CPU)."""
    from ..runtime import model_device

    dev = model_device(model)
    with torch.no_grad():
        return torch.cat([target_scores(model(b.tokens.to(dev), return_type="logits"), b.b)[1]
                          for b in prompts.batches()])


def prob_B_by_start(p_b, prompts: InductionPrompts) -> dict:
    """Mean p(B) split by where the first A sits: ``"A_first"`` over the prompts whose first A opens the random body
    (right after BOS, or at position 0 without one), ``"A_later"`` over the rest, with their counts ``"n_first"`` /
    ``"n_later"`` (None for an empty group). ``p_b``: p(B) of the first ``len(p_b)`` of ``prompts`` (:func:`prob_B`,
    or a sweep's clean values, ``Effects.clean["prob_B"]``, which may stop early). Induction predicts B in both groups; a
    model that copies only from its row's start (``zoo_check.prob_B_by_prefix``) in the first only."""
    p = torch.as_tensor(np.asarray(p_b, dtype=np.float64))  # [n]
    if p.ndim != 1 or not 0 < len(p) <= len(prompts):
        raise UniversalityError(f"prob_B_by_start: p_b must hold one p(B) for each of the first n of the "
                                f"{len(prompts)} prompts, got shape {tuple(p.shape)}")
    first = prompts.pos_a[:len(p)] == int(prompts.bos_id is not None and prompts.config.prepend_bos)  # [n] bool
    mean = lambda m: float(p[m].mean()) if bool(m.any()) else None  # noqa: E731
    return {"A_first": mean(first), "A_later": mean(~first), "n_first": int(first.sum()), "n_later": int((~first).sum())}


@dataclass(frozen=True)
class Estimate:
    """A mean over prompts with its standard error (sample std / sqrt(n))."""

    mean: float
    se: float
    n: int

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        return f"{format(self.mean, spec)} ± {format(self.se, spec)}"


def estimate(values) -> Estimate:
    """Mean and standard error of per-prompt values (a 1-D array or tensor)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise UniversalityError("estimate() of no values")
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return Estimate(float(v.mean()), se, int(v.size))
