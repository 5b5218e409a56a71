"""MPPC inputs that must not give a number: two models whose tokenizers map ids to different tokens; and a corrupt
cache entry of ``similarity.run``, rebuilt in the same run.

The models are built here (one block, d_model 16, the shipped tiny tokenizer, no training)."""
import copy

import numpy as np
import pytest
import torch

from universality_lib import cache, corpus, presets
from universality_lib import similarity as sim
from universality_lib.errors import StreamMismatchError
from universality_lib.similarity import MPPCResult, PairStats
from universality_lib.similarity import experiments


@pytest.fixture(scope="module")
def tok():
    return corpus.load_tokenizer("tiny")


def _transformer(tok, seed=0):
    from universality_lib.models.transformer import make_transformer
    from universality_lib.presets import TransformerConfig

    cfg = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=64)
    return make_transformer(cfg, len(tok), seed=seed, tokenizer=tok, device="cpu").eval()


def test_models_with_different_vocabularies_are_refused(tok, tmp_path):
    """Before: the same rows were fed to both models and a mean MPPC came out, though token k was another token
    for one of them."""
    from transformers import AutoTokenizer

    other_tok = copy.deepcopy(tok)
    other_tok.add_tokens(["<only-in-the-other-vocabulary>"])
    other_tok.save_pretrained(tmp_path)  # a tokenizer of its own folder (TransformerLens reloads it from there)
    other_tok = AutoTokenizer.from_pretrained(tmp_path)
    a, b, same = _transformer(tok, 0), _transformer(other_tok, 1), _transformer(tok, 2)
    assert len(b.tokenizer) == len(a.tokenizer) + 1
    rows = torch.randint(1, 200, (4, 16), generator=torch.Generator().manual_seed(0))
    rows[:, 0] = tok.bos_token_id
    ok = sim.compute({"x": (sim.Source("A", a, rows, "neurons"), sim.Source("C", same, rows, "neurons"))},
                     progress=False)
    assert np.isfinite(ok["x"].values("a")).any()
    with pytest.raises(StreamMismatchError, match="the models tokenize differently .*A: vocabulary"):
        sim.compute({"x": (sim.Source("A", a, rows, "neurons"), sim.Source("B", b, rows, "neurons"))},
                    progress=False)


def _result(name_a: str, name_b: str) -> MPPCResult:
    rng = np.random.default_rng(0)
    x = rng.random((200, 3)).astype(np.float32)
    y = (x[:, :2] + 0.1 * rng.random((200, 2))).astype(np.float32)
    st = PairStats({0: 3}, {0: 2})
    st.update({0: x}, {0: torch.from_numpy(y)})
    return MPPCResult.from_stats([st], name_a, name_b)


def test_a_corrupt_cache_entry_is_rebuilt_in_the_same_run(monkeypatch, capsys, tmp_path):
    """Before: run() saw the manifest, skipped the computation, then found the entry corrupt while loading it:
    "rebuilding it", then "vanished from the cache while in use; run again" (chapter 3 failed once)."""
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path / "cache"))  # its own cache: one neurons_main entry
    p = presets.get("smoke")
    computed = []

    def fake_compute(p_, conds, rows, **kw):  # the pass over the tokens, replaced by a fixed result
        computed.append([c.name for c in conds])
        return {c.name: _result(c.a, c.b) for c in conds}

    monkeypatch.setattr(experiments, "mppc_rows", lambda p_, n=None: torch.zeros(2, 8, dtype=torch.long))
    monkeypatch.setattr(experiments, "_hash_of_model", lambda p_, name: f"hash-of-{name}")
    monkeypatch.setattr(experiments, "_compute_conditions", fake_compute)
    first = sim.run(p, ["neurons_main"], progress=False)["neurons_main"]
    assert computed == [["neurons_main"]]
    assert sim.run(p, ["neurons_main"], progress=False)["neurons_main"].meta == first.meta  # from the cache
    assert computed == [["neurons_main"]]
    folder = next((cache.cache_dir() / "similarity" / p.name).glob("neurons_main-*"))
    with open(folder / "result.npz", "r+b") as f:  # flip the last bytes
        f.seek(-4, 2)
        f.write(b"\xff\xff\xff\xff")
    capsys.readouterr()
    healed = sim.run(p, ["neurons_main"], progress=False)["neurons_main"]
    assert "failed verification" in capsys.readouterr().out
    assert computed == [["neurons_main"], ["neurons_main"]]  # computed again, in this run
    cache.verify_manifest(folder)
    np.testing.assert_array_equal(healed.values("a"), first.values("a"))
