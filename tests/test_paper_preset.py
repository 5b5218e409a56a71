"""The `paper` preset's whole path, offline: tiny stand-ins saved in the hub formats, no hub access.

A tiny random GPT-NeoX (for Pythia-160M and its seed-1 twin), a tiny random Mamba in the state-spaces format (for
Mamba-130M, without tokenizer files, as on the hub), a tokenizer folder (for GPT-NeoX-20B's) and a folder of text
(for the Pile / OpenWebText samples) are written to a temporary folder; ``presets.with_hub`` points the paper
preset's names at them. The preset keeps its name, so the code paths are the paper's (hub snapshot of a local
folder, format detection, the shared tokenizer, SAE cache keys by hub name), with the SAE budgets shrunk to a
few hundred tokens.

On those stand-ins the later chapters run through the calls their notebooks make: MPPC of all six conditions
(chapter 3), depth alignment and the complexity measures (chapter 4), the induction task over the full vocabulary
with head, state and conv path patching (chapter 5) and the Off-by-One sweeps (chapter 6). Random weights give
random effects, so the tests check shapes, keys, bookkeeping and the effects that must vanish (a patch
of an activation that the corruption did not change).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from universality_lib import cache, corpus, depth, presets, saes, similarity, zoo
from universality_lib import complexity as cx
from universality_lib.circuits import make_prompts, task_config, task_vocab
from universality_lib.circuits import mamba as cm
from universality_lib.circuits import off_by_one as ob
from universality_lib.circuits import transformer as ct
from universality_lib.circuits.task import PRESET_TASKS
from universality_lib.errors import OfflineError, UniversalityError
from universality_lib.feature_sample import collect
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
    split_docs = {s: corpus.documents(p, s) for s in corpus.split_names(p)}
    # paper trains no language model: the corpus goes to the SAEs (90%) and the held-out eval split (10%)
    assert not split_docs["lm_train"] and split_docs["sae_train"] and split_docs["eval"]
    assert sum(len(d) for d in split_docs.values()) == 120
    assert not set(split_docs["eval"]) & set(split_docs["sae_train"])
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
    # every SAE of a model shares the passes (the T group holds both seeds); a row equals evaluate() alone
    full = saes.evaluate_all(p, ["T"], progress=False, train_if_missing=False)
    assert list(zip(full["layer"], full["seed"])) == [(l, s) for n, l, s in saes.jobs(p, ["T"])]
    t = zoo.load(p, "T")
    alone = saes.evaluate(saes.get(p, "T", 1, 1, model=t, train_if_missing=False), t, saes.eval_rows(p))
    row = full[(full["layer"] == 1) & (full["seed"] == 1)].iloc[0]
    assert all(row[k] == v for k, v in alone.items() if k != "density")
    assert (full.attrs["density"][("T", 1, 1)] == alone["density"]).all()


# ----------------------------------------------------------------------------- similarity (chapters 3 and 4)
MPPC_TOKENS = 1_500  # ordinary `eval` tokens of the MPPC sample (the paper's 1M, shrunk through the preset)


@pytest.fixture(scope="module")
def mppc(standins):
    """The six conditions of chapter 3, as book/03_feature_similarity.ipynb runs them (``similarity.run``)."""
    q = standins["preset"].replace(mppc_tokens=MPPC_TOKENS)
    return q, similarity.run(q, progress=False)


def _n_units(model, units: str, d_sae: int) -> int:
    """Units per layer: the SAE dictionary, T's MLP neurons, or a Mamba block's [SiLU(conv x); SiLU(gate)]."""
    if units == "sae":
        return d_sae
    return model.cfg.d_mlp if family(model) == "transformer" else 2 * model.cfg.expand * model.cfg.d_model


def test_mppc_runs_every_condition_of_the_paper_preset(standins, models, mppc):
    q, res = mppc
    conds = similarity.conditions(q)
    assert list(res) == list(similarity.CONDITION_ORDER) == list(conds)
    assert {n: (c.a, c.b, c.units) for n, c in conds.items()} == {
        "random": ("T", "M0", "sae"), "main": ("T", "M", "sae"), "model_seed": ("T", "T2", "sae"),
        "sae_seed": ("T", "T", "sae"), "neurons_random": ("T", "M0", "neurons"), "neurons_main": ("T", "M", "neurons")}
    assert (conds["sae_seed"].seed_a, conds["sae_seed"].seed_b) == (0, 1)
    # the token sample: `eval` rows of the SAE context starting with BOS; BOS / separators are left out
    rows = similarity.mppc_rows(q)
    special = saes.special_ids(models["T"])
    n_ordinary = int((~torch.isin(rows, torch.tensor(special))).sum())
    assert rows.shape[1] == q.sae.context and (rows[:, 0] == standins["tokenizer"].bos_token_id).all()
    assert MPPC_TOKENS <= n_ordinary < MPPC_TOKENS + q.sae.context
    d_sae = q.sae.expansion_factor * D_MODEL
    for name, r in res.items():
        c = conds[name]
        assert (r.name_a, r.name_b) == (c.a, c.b), name
        assert r.meta["preset"] == "paper" and r.meta["condition"] == name and r.meta["units"] == c.units
        assert (r.meta["seed_a"], r.meta["seed_b"]) == (c.seed_a, c.seed_b)
        # every condition read the same tokens, all of them, and the sparse back end is exact
        assert r.meta["stream_sha"] == similarity.rows_hash(rows) and r.meta["n_tokens"] == n_ordinary
        assert r.meta["error_bound"] <= 1e-6
        assert r.layers_a == list(range(models[c.a].cfg.n_layers))
        assert r.layers_b == list(range(models[c.b].cfg.n_layers))
        assert set(r.pair) == {(ka, kb) for ka in r.layers_a for kb in r.layers_b}  # all layer pairs
        assert r.layer_matrix("a").shape == (len(r.layers_a), len(r.layers_b))
        for side, m in (("a", c.a), ("b", c.b)):
            counts = r.counts(side)
            assert counts["n_units"] == models[m].cfg.n_layers * _n_units(models[m], c.units, d_sae), (name, side)
            v = r.values(side)
            assert len(v) == counts["live"] > 0, (name, side)
            assert np.isfinite(v).all() and (np.abs(v) <= 1 + 1e-6).all(), (name, side)
    table = similarity.summary_table(res, n_boot=100)
    assert len(table) == 2 * len(res)
    assert {"T→M", "M→T", "T→M0", "T→T2", "T s0→T s1", "T s1→T s0"} <= set(table.direction)
    main_a = table[(table.condition == "main") & (table.side == "a")].iloc[0]
    assert main_a["mean"] == pytest.approx(float(res["main"].values("a").mean()))
    assert main_a["ci_low"] <= main_a["ci_high"] and main_a["n_units"] == 2 * d_sae


def test_mppc_results_are_cached_and_keyed_by_the_hub_names(standins, mppc, tmp_path):
    q, res = mppc
    kind = cache.cache_dir() / "similarity" / "paper"

    def entries():
        return {d.name for d in kind.iterdir() if (d / cache.MANIFEST).exists()}

    before = entries()
    assert {n for n in similarity.CONDITION_ORDER if any(e.startswith(f"{n}-") for e in before)} == set(res)
    again = similarity.run(q, progress=False)  # loaded from the cache: the same numbers
    assert entries() == before
    for name, r in res.items():
        assert again[name].meta == r.meta
        for key, arrays in r.pair.items():
            for k, v in arrays.items():
                np.testing.assert_array_equal(again[name].pair[key][k], v)
    # the same Mamba weights under another folder (hub name): a new cache entry, and the same numbers
    shutil.copytree(standins["root"] / "mamba", tmp_path / "mamba-copy")
    q2 = presets.with_hub(q, models={"M": tmp_path / "mamba-copy"})
    moved = similarity.run(q2, ["neurons_main"], progress=False)["neurons_main"]
    new = entries() - before
    assert len(new) == 1 and next(iter(new)).startswith("neurons_main-")
    for side in ("a", "b"):
        np.testing.assert_allclose(moved.values(side), res["neurons_main"].values(side), rtol=0, atol=1e-9)


def test_depth_and_complexity_on_the_paper_mppc(models, mppc):
    """Chapter 4 on the MPPC results of chapter 3, as book/04_universality.ipynb calls it."""
    q, res = mppc
    main, rand = res["main"], res["random"]
    al = depth.depth_alignment(main, "a", n_boot=200)
    n_t, n_m = models["T"].cfg.n_layers, models["M"].cfg.n_layers
    assert (al.name, al.other, al.layers, al.other_layers) == ("T", "M", list(range(n_t)), list(range(n_m)))
    assert al.counts.shape == (n_t, n_m) and al.n == int(al.counts.sum()) == main.counts("a")["live"]
    assert al.ratio == n_m / n_t and al.expected == [(k + 1) * al.ratio - 1 for k in range(n_t)]
    assert -1 <= al.rho <= 1 and al.ci_low <= al.ci_high and len(al.mean_best) == n_t
    tab = depth.alignment_table(main, "a", n_boot=100)
    assert set(tab.direction) == {"T→M"} and tab.n.iloc[0] == al.n
    # complexity of T's features, on the MPPC tokens with the MPPC SAEs
    T = models["T"]
    saes_T = {l: saes.get(q, "T", l, model=T, progress=False) for l in range(n_t)}
    features = cx.select_features(main.table("a"), n_tokens=int(main.meta["n_tokens"]), max_features=40)
    assert 0 < len(features) <= 40 and features.live.all()
    units = {int(l): g.unit.to_numpy() for l, g in features.groupby("layer")}
    sample = collect(T, saes_T, similarity.mppc_rows(q), units, name="T", progress=False)
    assert sample.n_tokens == main.meta["n_tokens"]
    df = cx.measure(sample, features, encode=cx.model_encoder(T, saes_T, sample.units), progress=False)
    df = df.merge(rand.table("a")[["layer", "unit", "mppc"]].rename(columns={"mppc": "mppc_random"}),
                  on=["layer", "unit"])
    assert len(df) == len(features) and df.mppc_random.notna().all()
    # the notebook's check: the same tokens and SAEs give the firing fractions of the MPPC result
    assert float(np.max(np.abs(df.density - df.freq))) <= 1e-3
    np.testing.assert_allclose(df.non_token_variance, 1 - df.token_r2)
    corr = cx.correlations(df, by="mppc", n_boot=100)
    assert set(corr.measure) <= set(cx.MEASURES) and "non_token_variance" in set(corr.measure)
    assert ((corr.rho.abs() <= 1) | corr.rho.isna()).all() and (corr.n <= len(df)).all()


# ----------------------------------------------------------------------------- circuits (chapters 5 and 6)
@pytest.fixture(scope="module")
def induction(standins):
    """Chapter 5's prompts as book/05_induction_circuits.ipynb builds them, with fewer of them."""
    p = standins["preset"]
    tok = corpus.load_tokenizer(p)
    vocab = task_vocab(p, tok)
    cfg = task_config(p, n_prompts=16, batch_size=8)
    return tok, vocab, make_prompts(vocab, cfg, bos_id=tok.bos_token_id if cfg.prepend_bos else None)


def test_induction_task_over_the_full_paper_vocabulary(standins, models, induction):
    p = standins["preset"]
    tok, vocab, prompts = induction
    full = task_config(p)  # the authors' design: length 64, no BOS, A in the first half
    assert (full.seq_len, full.max_a_pos, full.prepend_bos) == (64, 32, False)
    paper = PRESET_TASKS["paper"]
    assert (full.n_prompts, full.batch_size) == (paper["n_prompts"], paper["batch_size"])
    # the whole vocabulary of the paper's tokenizer, special tokens included, as the authors drew it
    assert torch.equal(vocab, torch.arange(len(tok.vocab))) and tok.bos_token_id in vocab.tolist()
    assert len(tok.vocab) <= min(models["T"].cfg.d_vocab, models["M"].cfg.d_vocab)
    n, L = prompts.tokens.shape
    assert (n, L) == (16, 64) and prompts.bos_id is None
    assert all(t is not None for t in tok.convert_ids_to_tokens(prompts.tokens.flatten().tolist()))
    rows = torch.arange(n)
    assert ((prompts.pos_a >= 0) & (prompts.pos_a < full.max_a_pos)).all()
    assert torch.equal(prompts.tokens[rows, prompts.pos_a], prompts.a) and torch.equal(prompts.tokens[:, -1], prompts.a)
    assert torch.equal(prompts.tokens[rows, prompts.pos_b], prompts.b)
    assert ((prompts.tokens == prompts.a[:, None]).sum(1) == 2).all()  # unambiguous: A only twice
    # deterministic in the seed, and each corruption changes only its own positions
    assert torch.equal(make_prompts(vocab, prompts.config).tokens, prompts.tokens)
    bb = prompts.corrupt("b")
    assert torch.equal(bb.tokens, prompts.corrupt("b").tokens)
    assert torch.equal(bb.changed.nonzero()[:, 1], prompts.pos_b) and (bb.b_prime != prompts.b).all()
    assert torch.equal(prompts.corrupt("no_repeat").changed.nonzero()[:, 1], torch.full((n,), L - 1))
    assert prompts.corrupt("random").changed[:, 0].any()  # no BOS column to keep


def test_head_path_patching_on_the_pythia_standin(models, induction):
    T = models["T"]
    _, _, prompts = induction
    nl, nh, n = T.cfg.n_layers, T.cfg.n_heads, len(prompts)
    with torch.no_grad():
        head = ct.head_to_logits(T, prompts, progress=False)
        clean = T(prompts.tokens)[torch.arange(n), -1, prompts.b]
    assert head.labels == [f"L{l}H{h}" for l in range(nl) for h in range(nh)] and head.grid().shape == (nl, nh)
    assert set(head.metrics) == {"logit_B", "prob_B"} and head.n_prompts == n
    assert head.meta["corruption"] == "random" and head.meta["seq_len"] == prompts.tokens.shape[1]
    torch.testing.assert_close(torch.from_numpy(head.clean["logit_B"]), clean, rtol=0, atol=1e-5)
    assert all(np.isfinite(v).all() for v in head.patched.values())
    assert ((head.clean["prob_B"] > 0) & (head.clean["prob_B"] < 1)).all()
    s = head.summary("logit_B")
    assert s["top"] in head.labels and s["delta"] == pytest.approx(float(head.delta().min()))
    np.testing.assert_array_equal(ct.head_to_logits(T, prompts, progress=False).patched["logit_B"],
                                  head.patched["logit_B"])  # deterministic
    receiver = ct.best_head(head)
    rl = ct.parse_head(receiver)[0]
    assert rl >= 1
    prev = ct.head_to_head_to_logits(T, prompts, receiver, progress=False)
    assert prev.meta["receiver"] == receiver and prev.grid().shape == (rl, nh)
    np.testing.assert_array_equal(prev.clean["logit_B"], head.clean["logit_B"])  # the same clean runs
    assert all(np.isfinite(v).all() for v in prev.patched.values())
    att = ct.attention_scores(T, prompts)
    assert all(a.shape == (nl, nh) and ((a >= 0) & (a <= 1)).all() for a in att.values())
    pats, names = ct.attention_patterns(T, prompts.tokens[0], [receiver])
    assert names == [receiver] and pats.shape == (1, 64, 64)
    torch.testing.assert_close(pats.sum(-1), torch.ones(1, 64))


def test_state_and_conv_path_patching_on_the_mamba_standin(models, induction):
    M = models["M"]
    _, _, prompts = induction
    nl, K, n = M.cfg.n_layers, M.cfg.d_conv, len(prompts)
    state = cm.state_patching(M, prompts, progress=False)
    assert state.labels == [f"layer {l}" for l in range(nl)] and state.meta["corruption"] == "b"
    assert set(state.metrics) == {"logit_B", "prob_B", "logit_B'", "prob_B'"}
    with torch.no_grad():  # the exact scan's clean run is the model's (fast-scan) forward pass
        clean = M(prompts.tokens)[torch.arange(n), -1, prompts.b]
    torch.testing.assert_close(torch.from_numpy(state.clean["logit_B"]), clean, rtol=0, atol=1e-4)
    assert all(np.isfinite(v).all() for v in state.patched.values())
    y = cm.y_to_logits(M, prompts, progress=False)
    assert y.grid().shape == (nl, 1) and y.meta["corruption"] == "no_repeat"
    np.testing.assert_allclose(y.clean["logit_B"], state.clean["logit_B"], atol=1e-4)
    key_layer = int(state.top("logit_B").split()[-1])
    conv = cm.conv_to_state_to_logits(M, prompts, layer=key_layer, out_offsets=(0, 1, 2, 3), progress=False)
    assert conv.rows == ["conv @B", "conv @B+1", "conv @B+2", "conv @B+3"]
    assert conv.cols == [f"lag {k}" for k in range(K)] and conv.meta["layer"] == key_layer
    # the corruption replaces A and B only: the conv output at B+o reads an untouched input at lag k > o+1
    # (before A), so patching it changes nothing; the inputs at A and B do reach the logits
    g = conv.grid("logit_B")
    untouched = np.array([[k > o + 1 for k in range(K)] for o in range(4)])
    assert np.abs(g[untouched]).max() <= 1e-7
    assert np.abs(g[~untouched]).max() > 1e-6


def test_off_by_one_on_the_paper_preset(standins, models, induction):
    """book/06_off_by_one.ipynb's calls, with fewer prompts."""
    p = standins["preset"]
    T, M = models["T"], models["M"]
    _, vocab, _ = induction
    cfg = ob.task(p)  # the authors' prompts: no BOS, A at 0, B at 1, 129 tokens (here: the stand-in's context)
    assert (cfg.prepend_bos, cfg.max_a_pos, cfg.seq_len) == (False, 1, min(129, p.transformer.n_ctx))
    assert (cfg.n_prompts, cfg.batch_size) == (ob.PRESET_TASKS["paper"]["n_prompts"],
                                               ob.PRESET_TASKS["paper"]["batch_size"])
    assert ob.layer_sweep_task(p) == task_config(p)  # chapter 5's own prompts at paper
    prompts = make_prompts(vocab, ob.task(p, n_prompts=8), bos_id=None)
    assert (prompts.pos_a == 0).all() and (prompts.pos_b == 1).all() and prompts.last == cfg.seq_len - 1
    layer_prompts = make_prompts(vocab, ob.layer_sweep_task(p, n_prompts=8, batch_size=8), bos_id=None)
    L_ind, history = ob.induction_layer(M, layer_prompts, progress=False)
    assert history.top("logit_B") == f"layer {L_ind}" and 0 <= L_ind < M.cfg.n_layers
    offsets = ["B", "B+1", "B+2", "B+3"]
    sweep = ob.position_sweep(M, prompts, progress=False)
    assert sweep.rows == [f"layer {l}" for l in range(M.cfg.n_layers)] and sweep.cols == offsets
    pk = ob.peak(sweep, row=f"layer {L_ind}")
    assert pk["labels"] == offsets and pk["label"] == offsets[pk["index"]]
    assert abs(pk["delta"]) == max(abs(d) for d in pk["deltas"]) and np.isfinite(pk["ses"]).all()
    variants = ob.state_write_variants(M, prompts, L_ind, progress=False)
    assert variants.rows == ["authors' Ā at p+1"] + [f"lag {k} knocked out" for k in range(M.cfg.d_conv)]
    assert variants.cols == offsets and variants.meta["layer"] == L_ind
    # the write at B reads the corrupted B through lag 0 only (everything before B is untouched)
    scale = np.abs(sweep.grid()).max()
    assert scale > 1e-6 and abs(variants.grid()[1, 0]) <= 1e-2 * scale
    # in layer 0 only B's own input differs, so knocking out lag k removes exactly the effect at B+k
    knock = ob.state_write_variants(M, prompts, 0, progress=False).grid()[1:]  # [lag, offset]
    row0 = sweep.grid()[0]
    eye = np.eye(4, dtype=bool)
    assert np.abs(knock[eye]).max() <= 1e-2 * np.abs(row0).max()
    np.testing.assert_allclose(knock[~eye], np.broadcast_to(row0, (4, 4))[~eye], rtol=1e-3, atol=1e-9)
    dec = ob.write_decomposition(M, prompts, progress=False)
    assert dec.write.shape == dec.conv.shape == dec.weight.shape == (M.cfg.n_layers, M.cfg.d_conv)
    for a in (dec.weight, dec.conv, dec.write):
        np.testing.assert_allclose(a.sum(1), 1.0)
    assert dec.n_positions == len(prompts) * (cfg.seq_len - M.cfg.d_conv + 1)
    dec_b1 = ob.write_decomposition(M, prompts, layers=[L_ind], positions=lambda b: b.pos_b + 1, progress=False)
    assert dec_b1.n_positions == len(prompts) and dec_b1.layers == [L_ind]
    # the Transformer control
    receiver = ct.best_head(ct.head_to_logits(T, layer_prompts, progress=False))
    heads = ob.head_offset_sweep(T, prompts, receiver, progress=False)
    rl = ct.parse_head(receiver)[0]
    assert heads.rows == offsets and heads.grid().shape == (4, rl * T.cfg.n_heads)
    prev = heads.cols[int(np.argmin(heads.grid()[0]))]
    tp = ob.peak(heads, col=prev)
    assert tp["labels"] == offsets and np.isfinite(tp["deltas"]).all()
    # entering layer 0 the stream at B+k (k >= 1) is the embedding of a token B -> B' leaves alone
    for model in (T, M):
        resid = ob.residual_offset_sweep(model, prompts, progress=False)
        assert resid.rows == [f"resid_pre {l}" for l in range(model.cfg.n_layers)] and resid.cols == offsets
        g = resid.grid()
        assert (g[0, 1:] == 0).all() and g[0, 0] != 0 and np.isfinite(g).all()


def test_the_splits_of_a_hub_corpus_are_different_token_streams(standins):
    p = standins["preset"]
    tok = corpus.load_tokenizer(p)
    sizes = {s: len(corpus.documents(p, s)) for s in corpus.split_names(p)}
    assert sizes["lm_train"] == 0 and sizes["sae_train"] > 0 and sizes["eval"] > 0  # paper trains no LM
    streams = {s: corpus.token_stream(p, s, tok) for s in ("sae_train", "eval")}
    assert streams["sae_train"].sha256 != streams["eval"].sha256


def test_a_split_with_its_own_dataset_reads_all_of_it(standins, tmp_path):
    """The paper's MPPC sample comes from another dataset (OpenWebText) than its SAE data (the Pile)."""
    from standins import save_text_dataset

    other = [f"x = {i}\nprint(x * {i})\n" for i in range(7)]
    save_text_dataset(tmp_path / "owt", other)
    p = presets.with_hub(standins["preset"], mppc_dataset=tmp_path / "owt")
    assert corpus.split_source(p, "eval") == str(tmp_path / "owt") and corpus.split_source(p, "sae_train") is None
    assert sorted(corpus.documents(p, "eval").values()) == sorted(other)
    assert corpus.documents(p, "sae_train") == corpus.documents(standins["preset"], "sae_train")
    tok = corpus.load_tokenizer(p)
    assert corpus.token_stream(p, "eval", tok).sha256 != corpus.token_stream(standins["preset"], "eval", tok).sha256


def test_the_colab_t4_plan_is_the_paper_path_with_smaller_budgets(tmp_path):
    """``paper_t4`` loads the same published models (and takes the same offline overrides) as ``paper``; only the SAE,
    MPPC and induction budgets differ (book/appendix_resources.md)."""
    t4, paper = presets.get("paper_t4"), presets.get("paper")
    local = presets.with_hub("paper_t4", models={"T": tmp_path / "neox"}, dataset=tmp_path / "texts")
    assert local.name == "paper_t4" and local.sae == t4.sae and local.mppc_tokens == t4.mppc_tokens
    assert presets.hub_name(local, "T") == str(tmp_path / "neox") and presets.hub_name(local, "M") == presets.hub_name(
        paper, "M")
    assert t4.sae.expansion_factor < paper.sae.expansion_factor and t4.sae.training_tokens < paper.sae.training_tokens
    assert t4.mppc_tokens < paper.mppc_tokens
