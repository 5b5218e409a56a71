"""The `paper` preset's whole path, offline: tiny stand-ins saved in the hub formats, no hub access.

A tiny random GPT-NeoX (for Pythia-160M and its seed-1 twin), a tiny random Mamba in the state-spaces format (for
Mamba-130M, without tokenizer files, as on the hub), a tokenizer folder (for GPT-NeoX-20B's) and a folder of text
(for the Pile / OpenWebText samples) are written to a temporary folder; ``presets.with_hub`` points the paper
preset's names at them. The preset keeps its name, so the code paths are the paper's (hub snapshot of a local
folder, format detection, the shared tokenizer, SAE cache keys by hub name), with the SAE budgets shrunk to a
few hundred tokens.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from universality_lib import cache, corpus, presets, saes, zoo
from universality_lib.errors import OfflineError, UniversalityError
from universality_lib.models import family

from standins import make_hf_mamba, save_gpt_neox, save_state_spaces_mamba, save_text_dataset

D_MODEL = 32


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper-standins")
    tok = corpus.load_tokenizer("smoke")  # stands in for EleutherAI/gpt-neox-20b: <|endoftext|> is BOS/EOS/PAD
    tok.save_pretrained(root / "tokenizer")
    vocab = len(tok)
    # Pythia pads its embedding past the tokenizer (50304 > 50277): so do the stand-ins
    hf_t = save_gpt_neox(root / "pythia", vocab + 8, hidden=D_MODEL, layers=2, n_ctx=128, seed=0, tokenizer=tok)
    hf_t2 = save_gpt_neox(root / "pythia-seed1", vocab + 8, hidden=D_MODEL, layers=2, n_ctx=128, seed=1,
                          tokenizer=tok)
    hf_m = make_hf_mamba(vocab, d_model=D_MODEL, n_layers=4, tied=True)
    save_state_spaces_mamba(root / "mamba", hf_m)  # no tokenizer files, like state-spaces/mamba-130m
    save_text_dataset(root / "texts", corpus.stdlib_documents(max_files=120).values())
    p = presets.with_hub("paper", models={"T": root / "pythia", "T2": root / "pythia-seed1", "M": root / "mamba"},
                         tokenizer=root / "tokenizer", dataset=root / "texts")
    small = dataclasses.replace(p.sae, training_tokens=512, batch_tokens=128, context=64, n_batches_in_buffer=4,
                                store_batch_rows=4, dead_feature_window=10, eval_tokens=600, lr=1e-3)
    # the preset describes its models (layer counts drive the SAE jobs): give it the stand-ins' sizes
    p = p.replace(sae=small, eval_tokens=2_000,
                  transformer=dataclasses.replace(p.transformer, n_layers=2, d_model=D_MODEL, n_heads=4, d_mlp=64,
                                                  n_ctx=128),
                  mamba=dataclasses.replace(p.mamba, n_layers=4, d_model=D_MODEL))
    return {"preset": p, "root": root, "hf": {"T": hf_t, "T2": hf_t2, "M": hf_m}, "tokenizer": tok}


@pytest.fixture(scope="module")
def models(standins):
    p = standins["preset"]
    return {name: zoo.load(p, name, device="cpu") for name in zoo.names(p, with_baseline=True)}


# ----------------------------------------------------------------------------- the override
def test_with_hub_points_names_at_folders_and_keeps_the_preset(standins):
    p, root = standins["preset"], standins["root"]
    paper = presets.get("paper")
    assert p.name == "paper" and p.needs_internet
    assert p.transformer.hub_name == str(root / "pythia") and p.mamba.hub_name == str(root / "mamba")
    assert p.sae.expansion_factor == paper.sae.expansion_factor and p.corpus.splits == paper.corpus.splits
    assert presets.hub_name(p, "T2") == str(root / "pythia-seed1")
    assert p.corpus.source == p.corpus.sae_source == p.corpus.mppc_source == str(root / "texts")
    # the registered paper preset is untouched
    assert dict(paper.hub_models) == presets.PAPER_HUB_NAMES
    assert presets.hub_name("paper", "M") == "state-spaces/mamba-130m"
    with pytest.raises(UniversalityError, match="unknown model 'Q'"):
        presets.with_hub("paper", models={"Q": root})
    with pytest.raises(UniversalityError, match="applies to 'paper'"):
        presets.with_hub("tiny", models={"T": root})
    with pytest.raises(UniversalityError, match="no published checkpoint for 'M0'"):
        presets.hub_name(p, "M0")


def test_without_the_override_the_hub_is_one_clear_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="needs internet"):
        zoo.load("paper", "T", device="cpu")


# ----------------------------------------------------------------------------- loaders
def test_tokenizer_and_corpus_from_local_folders(standins):
    p = standins["preset"]
    tok = corpus.load_tokenizer(p)
    assert corpus.tokenizer_hash(tok) == corpus.tokenizer_hash(standins["tokenizer"])
    split_docs = {s: corpus.documents(p, s) for s in corpus.SPLITS}
    assert all(split_docs.values()), {s: len(d) for s, d in split_docs.items()}
    assert sum(len(d) for d in split_docs.values()) == 120
    assert not set(split_docs["lm_train"]) & set(split_docs["sae_train"])
    stream = corpus.token_stream(p, "sae_train", tok)
    assert stream.tokens[0] == tok.bos_token_id and len(stream) > 1_000
    rows = stream.rows(p.sae.context, n_rows=3)
    assert rows.shape == (3, p.sae.context) and (rows[:, 0] == tok.bos_token_id).all()


def test_every_zoo_model_loads_from_its_hub_format(standins, models):
    hf = standins["hf"]
    assert zoo.names(standins["preset"], with_baseline=True) == ["T", "T2", "M", "M0"]
    assert {n: family(m) for n, m in models.items()} == {"T": "transformer", "T2": "transformer", "M": "mamba",
                                                         "M0": "mamba"}
    x = torch.randint(0, len(standins["tokenizer"]), (2, 24), generator=torch.Generator().manual_seed(0))
    centred = lambda t: t - t.mean(-1, keepdim=True)  # noqa: E731  (TransformerLens centres the unembedding)
    with torch.no_grad():
        for name in ("T", "T2"):
            ours, ref = models[name](x), hf[name](x).logits
            assert (centred(ours) - centred(ref)).abs().max().item() <= 1e-4, name
        assert not torch.allclose(models["T"](x), models["T2"](x))  # two pretraining seeds
        assert (models["M"](x) - hf["M"](x).logits).abs().max().item() <= 1e-4
        # M0: M's architecture, untrained weights
        assert models["M0"].cfg.to_dict() == models["M"].cfg.to_dict()
        assert not torch.allclose(models["M0"](x), models["M"](x))
    # one tokenizer for every model (the preset's), BOS prepended as the authors do
    # (TransformerLens wraps its tokenizer to prepend BOS, so compare vocabularies, not tokenizer hashes)
    want = standins["tokenizer"].get_vocab()
    assert all(m.tokenizer.get_vocab() == want for m in models.values())
    assert torch.equal(models["T"].to_tokens("def f(x):"), models["M"].to_tokens("def f(x):"))
    assert models["T"].to_tokens("x")[0, 0].item() == standins["tokenizer"].bos_token_id
    p = standins["preset"]
    assert (models["T"].cfg.n_layers, models["T"].cfg.d_model) == (p.transformer.n_layers, p.transformer.d_model)
    assert (models["M"].cfg.n_layers, models["M"].cfg.d_model) == (p.mamba.n_layers, p.mamba.d_model)


def test_paper_models_are_never_trained(standins):
    with pytest.raises(UniversalityError, match="nothing to train"):
        zoo.train_model(standins["preset"], "T")


# ----------------------------------------------------------------------------- SAEs
def test_sae_training_on_a_paper_model(standins, models):
    p = standins["preset"]
    rows = corpus.token_stream(p, "sae_train").rows(p.sae.context, n_rows=40)
    res = saes.train(models["M"], 3, p.sae, rows, seed=0, progress=False)
    assert res.sae.cfg.d_sae == p.sae.expansion_factor * D_MODEL  # the paper's 32x dictionary
    assert res.info["training_tokens"] == p.sae.training_tokens and res.info["family"] == "mamba"
    metrics = saes.evaluate(res.sae, models["M"], saes.eval_rows(p))
    assert metrics["n_tokens"] > 0 and metrics["d_sae"] == res.sae.cfg.d_sae
    assert torch.isfinite(torch.tensor([metrics["fve"], metrics["l0"], metrics["ce_sae"]])).all()


def test_sae_cache_keys_use_the_hub_names(standins, models):
    p = standins["preset"]
    assert saes.model_hash(p, "T") != saes.model_hash(p, "T2")
    assert saes.model_hash(p, "T") != saes.model_hash("paper", "T")  # stand-ins never reuse the real SAEs
    assert saes.model_hash(p, "M0") != saes.model_hash("paper", "M0")
    jobs = saes.jobs(p)
    # seed 0 on every layer of T, T2, M, M0, plus the second SAE seed on every layer of T
    assert len(jobs) == 2 + 2 + 4 + 4 + 2 and ("T", 1, 1) in jobs and ("M0", 3, 0) in jobs
    first = saes.get(p, "M0", 2, model=models["M0"], progress=False)
    folder = saes.folder_for(p, "M0", 2)
    assert (folder / cache.MANIFEST).exists() and saes.info(folder)["model_hash"] == saes.model_hash(p, "M0")
    again = saes.get(p, "M0", 2, model=models["M0"], train_if_missing=False)
    assert torch.equal(first.W_dec, again.W_dec)


def test_train_all_and_quality_table(standins):
    p = standins["preset"]
    done = saes.train_all(p, progress=False)
    assert [(r["model"], r["layer"], r["seed"]) for r in done] == saes.jobs(p)
    assert all((Path(r["folder"]) / cache.MANIFEST).exists() for r in done)
    table = saes.evaluate_all(p, seeds=[0], progress=False, train_if_missing=False)
    assert list(zip(table["model"], table["layer"])) == [(n, l) for n, l, s in saes.jobs(p) if s == 0]
    assert (table["d_sae"] == p.sae.expansion_factor * D_MODEL).all() and table["fve"].notna().all()
    assert set(table.attrs["density"]) == {(n, l, 0) for n, l, s in saes.jobs(p) if s == 0}


# ----------------------------------------------------------------------------- similarity and circuits
# PLACE FOR THE LEAD: the paper-preset runs of universality_lib.similarity (chapter 3: MPPC main / baselines /
# skylines / neurons on the stand-ins' SAEs) and universality_lib.circuits (chapter 5: the induction task over the
# full vocabulary, head and state path patching) go here once those modules land, using the `standins` and
# `models` fixtures above.
