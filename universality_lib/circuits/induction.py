"""The induction check: loss on a repeated sequence of random tokens (the paper's own task).

A model that does induction predicts the second copy of a random sequence from the first, so its
loss on the repeat falls far below its loss on the first copy (which is at chance level: random tokens
cannot be predicted). The zoo criterion: mean repeat loss <= half the first-copy loss.

Shapes: ``n`` sequences, ``S`` tokens per copy, rows ``[BOS] x_1..x_S x_1..x_S`` of length ``2S + 1``.

Chapter 1 runs this check on every trained model, and training logs it as it forms (:func:`training_probe`,
which ``zoo.train_model`` hands to the training loop). It is a function of a model and token rows only: it loads
no model, so the zoo below the analysis layers can use it (``universality_lib.induction`` is the old path).
Mirrors TransformerLens' induction demo (``generate_repeated_tokens`` / ``get_log_probs`` in "Exploratory
Analysis Demo") and its induction-head score.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .. import corpus
from ..activations import check_rows
from ..errors import UniversalityError
from ..runtime import model_device


def repeated_random_tokens(vocab: torch.Tensor, n: int, seq_len: int, bos_id: int,
                           seed: int = 0) -> torch.Tensor:
    """LongTensor [n, 2*seq_len + 1]: BOS, then ``seq_len`` tokens drawn from ``vocab``, repeated."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(vocab), (n, seq_len), generator=g)
    first = vocab[idx]  # [n, S]
    bos = torch.full((n, 1), bos_id, dtype=torch.long)
    return torch.cat([bos, first, first], dim=1)


def repeated_text_tokens(stream_tokens: torch.Tensor, n: int, seq_len: int, bos_id: int,
                         seed: int = 0) -> torch.Tensor:
    """Like ``repeated_random_tokens`` but each copy is a real snippet of natural text."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream_tokens) - seq_len, (n,), generator=g)
    first = torch.stack([stream_tokens[s:s + seq_len] for s in starts.tolist()]).long()
    bos = torch.full((n, 1), bos_id, dtype=torch.long)
    return torch.cat([bos, first, first], dim=1)


def per_position_loss(model, tokens: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Next-token loss at every position: FloatTensor [n, L-1] (position i predicts token i+1)."""
    tokens = check_rows(model, tokens, "tokens", min_len=2)  # one token (an empty text's BOS) has no next token
    out = []
    with torch.no_grad():
        for i in range(0, len(tokens), batch_size):
            batch = tokens[i:i + batch_size].to(model_device(model))
            logits = model(batch, return_type="logits").float()  # [b, L, V]
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            out.append(-logp.gather(-1, batch[:, 1:, None])[..., 0].cpu())
    return torch.cat(out)


@dataclass
class InductionCheck:
    first_copy_loss: float  # mean loss predicting tokens 2..S of the first copy
    repeat_loss: float  # mean loss predicting tokens 2..S of the second copy
    ratio: float  # repeat / first: <= 0.5 passes
    passed: bool
    per_position: list[float]  # mean loss per position, for plotting

    def to_dict(self) -> dict:
        return asdict(self)


def induction_check(model, tokens: torch.Tensor, threshold: float = 0.5, prefix: int = 0) -> InductionCheck:
    """Compare the loss on the first copy with the loss on the repeat (rows from the helpers above). ``prefix``: the
    rows are [BOS] p_1..p_prefix x_1..x_S x_1..x_S, the first copy after ``prefix`` other tokens
    (``zoo_check.natural_ratio_by_prefix``)."""
    tokens = check_rows(model, tokens, "tokens")
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise UniversalityError(f"prefix {prefix!r}: need a whole number >= 0 (tokens between BOS and the first copy)")
    S = (tokens.shape[1] - 1 - prefix) // 2
    if tokens.shape[1] != 2 * S + 1 + prefix or S < 2:
        raise UniversalityError(f"tokens must be rows [BOS] x_1..x_S x_1..x_S of length 2S + 1 with S >= 2"
                                + (f", after {prefix} prefix tokens" if prefix else "") + f", got "
                                f"length {tokens.shape[1]}: make them with repeated_random_tokens(vocab, n, seq_len >= 2, "
                                f"bos_id).")
    loss = per_position_loss(model, tokens)  # [n, prefix + 2S]; column j predicts token j+1
    # skip the first token of each copy: the first is unpredictable, the repeat's first is ambiguous
    first = loss[:, prefix + 1:prefix + S].mean().item()
    repeat = loss[:, prefix + S + 1:prefix + 2 * S].mean().item()
    ratio = repeat / first
    return InductionCheck(first, repeat, ratio, ratio <= threshold, loss.mean(0).tolist())


def head_scores(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Standard attention-head scores on repeated random tokens (Transformer only).

    * induction score: mean attention from a token of the repeat to the token *after* its earlier copy
      (query position ``i`` in the second copy, key position ``i - S + 1``);
    * previous-token score: mean attention from each position to the one before it.

    Returns ``{"induction": [n_layers, n_heads], "previous": [n_layers, n_heads]}``.
    """
    S = (tokens.shape[1] - 1) // 2
    names = lambda n: n.endswith("attn.hook_pattern")  # noqa: E731
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=names)
    ind, prev = [], []
    for layer in range(model.cfg.n_layers):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"].float().cpu()  # [n, H, L, L] (query, key)
        q = torch.arange(S + 1, 2 * S + 1)  # queries in the second copy (tokens at positions S+1..2S)
        ind.append(pat[:, :, q, q - S + 1].mean(dim=(0, 2)))  # [H]
        q2 = torch.arange(1, tokens.shape[1])
        prev.append(pat[:, :, q2, q2 - 1].mean(dim=(0, 2)))
    return {"induction": torch.stack(ind), "previous": torch.stack(prev)}


# ----------------------------------------------------------------------------- natural text (zoo v2 criterion)
def heldout_snippets(stream_tokens: torch.Tensor, n: int, seq_len: int, bos_id: int,
                     seed: int = 0) -> torch.Tensor:
    """LongTensor [n, 2*seq_len + 1]: ``n`` distinct snippets of ``seq_len`` tokens that lie inside one
    document (no end-of-text token in them), each followed by itself, after a BOS."""
    body = len(stream_tokens) // seq_len
    windows = stream_tokens[:body * seq_len].reshape(body, seq_len).long()  # [body, S], disjoint windows
    inside = (windows != bos_id).all(dim=1).nonzero()[:, 0]
    if len(inside) < n:
        raise UniversalityError(f"the stream has {len(inside)} snippets of {seq_len} tokens inside a document, "
                                f"fewer than the {n} asked for: ask for fewer or shorter snippets.")
    g = torch.Generator().manual_seed(seed)
    first = windows[inside[torch.randperm(len(inside), generator=g)[:n]]]  # [n, S]
    return torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), first, first], dim=1)


def natural_text_check(model, preset, kind: str, n: int = 100, seq_len: int = 64, seed: int = 0,
                       threshold: float = 0.5) -> InductionCheck:
    """Induction on natural text no model or SAE ever read: ``n`` snippets of ``seq_len`` tokens of the
    preset's ``heldout`` split (``kind``: ``"text"`` for English, ``"code"``), each followed by itself. The
    ratio repeat / first copy tells whether the model copies real text, not only random tokens."""
    return induction_check(model, natural_text_rows(preset, model.tokenizer, kind, n, seq_len, seed), threshold)


def natural_text_rows(preset, tokenizer, kind: str, n: int = 100, seq_len: int = 64, seed: int = 0) -> torch.Tensor:
    """The rows :func:`natural_text_check` reads: LongTensor [n, 2*seq_len + 1] from the ``heldout`` split."""
    stream = corpus.token_stream(preset, "heldout", tokenizer=tokenizer, kind=kind)
    return heldout_snippets(torch.from_numpy(stream.tokens.astype("int64")), n, seq_len, stream.bos_id, seed)


# ----------------------------------------------------------------------------- the probe logged during training
def training_probe(p, tokenizer, vocab: torch.Tensor):
    """``eval_fn(model) -> log row`` for the training loop: the first-copy and repeat losses on 16 repeated random
    sequences of ``vocab`` (seed 99); chapter 5's clean p(B) on 64 of its prompts (``clean_pB``: the pair anywhere
    in the row, so a copy of the row's start does not pass it); and, for a corpus with English text and a
    ``heldout`` split (zoo v2), the natural-text ratio on 16 held-out snippets of prose and of code. ``p``: a
    resolved :class:`Preset`."""
    from .task import make_prompts, prob_B, task_config, task_vocab

    seq_len = min(64, (p.train.context - 1) // 2)
    probe = repeated_random_tokens(vocab, 16, seq_len, tokenizer.bos_token_id, seed=99)
    prompts = make_prompts(task_vocab(p, tokenizer), task_config(p, n_prompts=64, seed=99),
                           bos_id=tokenizer.bos_token_id)
    natural = {kind: natural_text_rows(p, tokenizer, kind, n=16, seq_len=seq_len)
               for kind in ("text", "code")} if "heldout" in corpus.split_names(p) and p.corpus.text_sources else {}

    def eval_fn(m) -> dict:
        c = induction_check(m, probe)
        row = {"repeat_first": round(c.first_copy_loss, 4), "repeat_second": round(c.repeat_loss, 4),
               "clean_pB": round(float(prob_B(m, prompts).mean()), 4)}
        for kind, rows in natural.items():
            row[f"natural_{kind}_ratio"] = round(induction_check(m, rows).ratio, 4)
        return row

    return eval_fn
