import numpy as np
import pytest
import torch

from universality_lib import corpus, presets, sources
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


# ----------------------------------------------------------------------------- pinned bytes (issue 16)
# Computed with the code of 94a2200 (before the corpus memo and the layering change), on Python 3.11.7: the
# refactor must leave the documents, splits, manifests, tokenizer and token streams bit-identical (a model was being
# trained from that code); the mix (`tiny`) was pinned in session 7 from the corpus its shipped zoo trained on. Another
# Python has another standard library, so the pins apply to 3.11.7 only.
PINNED_PYTHON = "3.11.7"
PINNED = {
    "smoke": {"manifest": "b672706597959055f8e0c8ac035c0ebfa271a50653240f500f47989ee0407b6f", "files": 120,
              "splits": {"lm_train": "72b8f24a320e764fb3ca9e5e709d213425336c6fb08c856d2daeb9025a3eea07",
                         "sae_train": "96cadca3ed03cf28aeacc0ffd1d1684d367b6a1402a206900d7ccf5420317478",
                         "eval": "85dd1c23b61e18266d28742fecbd14aac7e34a9ae2162bcaf516c4fb1d48e8ba"},
              "tokenizer": "7c08a0d4a5d4840f",
              "streams": {"lm_train": "d4211645d9ab13ed", "sae_train": "9e011fb61877a1f8", "eval": "d5f5e8185444af55"}},
    # the v1 `tiny` corpus (the standard library alone): the code path of every stdlib corpus
    "code": {"manifest": "06f5abf3731a10a3a4d6f040ee0c7348cae487c11ffc955fd04de61e39e22e74", "files": 1784,
             "splits": {"lm_train": "33f3810492467a0b9403775322e528c87bd2ae5323c407c5d01aa507212a3b67",
                        "sae_train": "6d96e7869b082c85a2ec3b4f80285d4c003f4e8215f55affa730c3ce8b8af0db",
                        "eval": "806c3963fc09290069c7be30a53aa487848874ade88afc53939bd767d7bc16cb"}},
    # the English-plus-code mix the shipped tiny zoo trained on (session 6), with its shipped tokenizer
    "tiny": {"manifest": "5f9991a10c999b2d863e1f881d4f26d2670073591adb328cab2200968e1b0804", "files": 3286,
             "splits": {"lm_train": "afd3b79008387ffcfe7bae2ac377ec6ed8589ecd1ac9fe9ef192bb763bc05cdf",
                        "sae_train": "600f2dea49556aede97a07762a7262a14b33dd206ffa7469b00fabc821322bdd",
                        "eval": "0ad0bf8b612be6408c18a4a8af29f06c492ff9a0a0299cbeecee7f98ba776344",
                        "heldout": "6811f3a770ad98b8950003ad8c4cf77168979712415b101e167c4690966ad9a4"},
             "tokenizer": "325e520f85f78b7c",
             "streams": {"eval": "18d7f14bb995c121", "heldout": "6f4efba792d794df"}},
    # lm_train f20d4e50a2333e39, sae_train 5052b6ee0e67a96d (not re-tokenized here: 21M tokens)
}


def _pinned_preset(name: str):
    if name == "code":
        return presets.get("tiny").replace(name="code", corpus=presets.CorpusConfig(), shipped=False)
    return presets.get(name)


@pytest.mark.skipif(__import__("platform").python_version() != PINNED_PYTHON,
                    reason=f"the pins are for the standard library of Python {PINNED_PYTHON}")
@pytest.mark.parametrize("name", sorted(PINNED))
def test_corpus_manifest_tokenizer_and_streams_are_the_pinned_bytes(name):
    p = _pinned_preset(name)
    missing = [n for n in p.corpus.text_sources if not sources.is_cached(n)]
    if missing:  # the tests never download the English sources (`make book` fetches them)
        pytest.skip(f"text sources not in the cache: {', '.join(missing)} (set UNIVERSALITY_CACHE to a cache that has "
                    "them, e.g. after `make book`)")
    want = PINNED[name]
    m = corpus.manifest(p)
    assert (m["sha256"], m["files"]) == (want["manifest"], want["files"])
    assert {s: v["sha256"] for s, v in m["splits"].items()} == want["splits"]
    if "tokenizer" in want:
        tok = corpus.load_tokenizer(p)
        assert corpus.tokenizer_hash(tok) == want["tokenizer"]
    for split, sha in want.get("streams", {}).items():
        assert corpus.token_stream(p, split, tok).sha256 == sha
        assert corpus.token_stream(p, split, tok).sha256 == sha  # again, from the memo
    assert corpus.manifest(p) == m  # the memo returns the same manifest (a copy)


def test_the_manifest_memo_notices_a_changed_file(tmp_path, monkeypatch):
    """The memo is keyed by the corpus config plus the (path, size, mtime) of every file: an edit is re-read."""
    import os

    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "a.py").write_text("x = 1\n")
    (root / "pkg" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(corpus, "stdlib_root", lambda: root)
    first = corpus.manifest("smoke")
    assert corpus.manifest("smoke") == first and first["files"] == 2
    (root / "a.py").write_text("x = 10\n")
    os.utime(root / "a.py", ns=(1, 1))
    changed = corpus.manifest("smoke")
    assert changed["sha256"] != first["sha256"] and changed["bytes"] == first["bytes"] + 1
    (root / "c.py").write_text("z = 3\n")
    assert corpus.manifest("smoke")["files"] == 3
    m = corpus.manifest("smoke")
    m["files"] = -1  # a caller editing its copy does not change the memo
    assert corpus.manifest("smoke")["files"] == 3
