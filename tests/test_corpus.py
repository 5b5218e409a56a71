import numpy as np
import pytest
import torch

from universality_lib import corpus
from universality_lib.errors import OfflineError, StreamMismatchError, UniversalityError


def test_splits_are_disjoint_cover_everything_and_are_stable():
    docs = corpus.documents("smoke")
    parts = {s: corpus.documents("smoke", s) for s in corpus.split_names("smoke")}
    assert all(parts.values()), "every split must hold documents"
    keys = [set(p) for p in parts.values()]
    assert sum(len(k) for k in keys) == len(docs) and set().union(*keys) == set(docs)
    m1, m2 = corpus.manifest("smoke"), corpus.manifest("smoke")
    assert m1 == m2 and m1["files"] == len(docs) == 120
    assert sum(s["files"] for s in m1["splits"].values()) == m1["files"]
    assert corpus.compare_manifest(m1, m2) == []
    other = dict(m1, sha256="0" * 64)
    assert corpus.compare_manifest(m1, other)


def test_stdlib_documents_are_sorted_utf8_python():
    docs = corpus.stdlib_documents(max_files=None)
    assert list(docs) == sorted(docs)
    assert all(p.endswith(".py") and not p.startswith("site-packages") for p in docs)
    assert any(p.startswith("test/") for p in docs)  # test folders are included (stated in corpus.py)
    assert not any("_sysconfigdata" in p for p in docs)


def test_tokenizer_roundtrips_and_loads_in_transformer_lens():
    tok = corpus.load_tokenizer("smoke")
    assert len(tok) == 512 and tok.bos_token == corpus.EOT == tok.eos_token
    text = "def f(x):\n    return x  # ünïcode ok\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    m = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=16, d_head=4, n_heads=2,
                                                  d_vocab=len(tok), act_fn="relu", attn_only=True),
                          tokenizer=tok)
    toks = m.to_tokens("import os")
    assert toks[0, 0].item() == tok.bos_token_id
    assert m.to_string(toks[0, 1:]) == "import os"


def test_token_stream_rows_are_aligned_and_hashed():
    s = corpus.token_stream("smoke", "eval")
    assert s.tokens.dtype == np.int32 and s.tokens[0] == s.bos_id
    again = corpus.token_stream("smoke", "eval")
    assert again.sha256 == s.sha256
    rows = s.rows(16, 4)
    assert rows.shape == (4, 16) and (rows[:, 0] == s.bos_id).all()
    assert torch.equal(rows[1, 1:], torch.from_numpy(s.tokens[15:30]).long())
    assert s.row_hash(16, 4) == s.row_hash(16, 4) != s.row_hash(16, 4, start=1)
    with pytest.raises(UniversalityError, match="not enough"):
        s.rows(16, 10**9)
    with pytest.raises(UniversalityError, match="unknown split"):
        corpus.token_stream("smoke", "validation")


def test_different_streams_are_refused():
    corpus.check_same_stream("abc", "abc")
    with pytest.raises(StreamMismatchError, match="different token streams"):
        corpus.check_same_stream("abc", "abd")


def test_batches_are_deterministic_and_resume_exactly():
    s = corpus.token_stream("smoke", "eval")
    it = corpus.iter_batches(s, 4, 32, seed=3)
    first = [next(it) for _ in range(7)]
    resumed = corpus.iter_batches(s, 4, 32, seed=3, start_step=5)
    assert torch.equal(next(resumed), first[5]) and torch.equal(next(resumed), first[6])
    other = corpus.iter_batches(s, 4, 32, seed=4)
    assert not torch.equal(next(other), first[0])


def test_frequent_tokens_exclude_specials():
    s = corpus.token_stream("smoke", "eval")
    v = corpus.frequent_tokens(s, 100)
    assert len(v) == 100 and s.bos_id not in v.tolist()
    counts = np.bincount(s.tokens)
    assert counts[v[0]] >= counts[v[-1]]


def test_hub_corpus_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="offline"):
        corpus.hub_documents("NeelNanda/pile-10k", max_docs=1)
    with pytest.raises(OfflineError, match="offline"):
        corpus.load_tokenizer("paper")


@pytest.mark.parametrize("context", [1, 0, -3, 2.5, True])
def test_rows_and_batches_refuse_a_context_without_a_text_token(context):
    """rows(context=1) divided by zero (body = context - 1 = 0): one clear error instead."""
    stream = corpus.TokenStream(tokens=np.arange(1, 100, dtype=np.int32), split="eval", sha256="x", bos_id=0)
    with pytest.raises(UniversalityError, match="context must be a whole number >= 2"):
        stream.rows(context, n_rows=1)
    with pytest.raises(UniversalityError, match="context must be a whole number >= 2"):
        next(corpus.iter_batches(stream, 2, context, seed=0))
    assert stream.rows(2, n_rows=3).shape == (3, 2)
