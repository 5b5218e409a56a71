"""Induction circuits: the task, the patching helpers and both families' path-patching experiments.

Tiny random models only; hand-constructed cases where the answer is known (patching nothing = the clean
run, patching everything = the corrupted run, a linear model's direct effect computed by hand).
"""
import numpy as np
import pytest
import torch
from standins import busy_mamba

from universality_lib.circuits import mamba as cm
from universality_lib.circuits import patching as pt
from universality_lib.circuits import transformer as ct
from universality_lib.circuits.effects import Effects
from universality_lib.circuits.task import (CORRUPTIONS, TaskConfig, estimate, make_prompts, target_scores)
from universality_lib.errors import UniversalityError

V = 40
BOS = 0
VOCAB = torch.arange(1, V)


def _prompts(n=8, seq_len=16, seed=0, batch_size=4, max_a_pos=8):
    return make_prompts(VOCAB, TaskConfig(seq_len=seq_len, max_a_pos=max_a_pos, n_prompts=n, batch_size=batch_size,
                                          seed=seed), bos_id=BOS)


def _transformer(n_layers=2, attn_only=False, normalization_type="LN", seed=0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=V, n_ctx=32,
                                  act_fn="gelu", attn_only=attn_only, normalization_type=normalization_type,
                                  positional_embedding_type="rotary", rotary_dim=4, seed=seed)
    return HookedTransformer(cfg).eval()


def _mamba(n_layers=2, seed=0):
    return busy_mamba(V, n_layers, seed)


# ------------------------------------------------------------------------------------------------ task
def test_prompts_layout_and_determinism():
    cfg = TaskConfig(seq_len=16, max_a_pos=8, n_prompts=64, seed=3)
    p = make_prompts(VOCAB, cfg, bos_id=BOS)
    n = 64
    rows = torch.arange(n)
    assert p.tokens.shape == (n, 17) and (p.tokens[:, 0] == BOS).all() and p.last == 16
    assert ((p.pos_a >= 1) & (p.pos_a < 1 + 8)).all() and (p.pos_b == p.pos_a + 1).all()
    assert torch.equal(p.tokens[rows, p.pos_a], p.a) and torch.equal(p.tokens[:, -1], p.a)
    assert torch.equal(p.tokens[rows, p.pos_b], p.b) and (p.a != p.b).all()
    assert ((p.tokens == p.a[:, None]).sum(1) == 2).all()  # A only at pos_a and at the end
    assert torch.isin(p.tokens[:, 1:], VOCAB).all()
    assert torch.equal(make_prompts(VOCAB, cfg, bos_id=BOS).tokens, p.tokens)
    assert not torch.equal(make_prompts(VOCAB, TaskConfig(seq_len=16, max_a_pos=8, n_prompts=64, seed=4),
                                        bos_id=BOS).tokens, p.tokens)
    nob = make_prompts(VOCAB, TaskConfig(seq_len=16, max_a_pos=8, n_prompts=5, prepend_bos=False))
    assert nob.tokens.shape == (5, 16) and (nob.pos_a < 8).all()
    assert [len(b) for b in p.batches(24)] == [24, 24, 16]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corruptions_change_what_they_say(kind):
    p = _prompts(n=32)
    c = p.corrupt(kind)
    rows = torch.arange(32)
    assert c.tokens.shape == p.tokens.shape and c.corruption == kind
    assert torch.equal(c.changed, c.tokens != p.tokens) and torch.equal(p.corrupt(kind).tokens, c.tokens)
    assert (c.tokens[:, 0] == BOS).all()
    expect = torch.zeros_like(c.changed)
    if kind == "b":
        expect[rows, p.pos_b] = True
        assert torch.equal(c.changed, expect) and (c.b_prime != p.b).all() and (c.b_prime != p.a).all()
        assert torch.equal(c.tokens[rows, p.pos_b], c.b_prime)
    elif kind == "ab":
        expect[rows, p.pos_a] = True
        expect[rows, p.pos_b] = True
        assert torch.equal(c.changed, expect) and (c.tokens[:, -1] == p.a).all()
    elif kind == "no_repeat":
        expect[:, -1] = True
        assert torch.equal(c.changed, expect) and (c.tokens[:, -1] != p.a).all()
    else:
        assert c.changed[:, 1:].float().mean() > 0.8 and c.b_prime is None


def test_task_bad_inputs():
    with pytest.raises(UniversalityError):
        TaskConfig(seq_len=3)
    with pytest.raises(UniversalityError):
        TaskConfig(seq_len=16, max_a_pos=14)
    with pytest.raises(UniversalityError):
        TaskConfig(n_prompts=0)
    with pytest.raises(UniversalityError):
        make_prompts(torch.tensor([1, 2, 3]), TaskConfig(seq_len=8, max_a_pos=4, n_prompts=2), bos_id=BOS)
    with pytest.raises(UniversalityError):
        make_prompts(VOCAB, TaskConfig(seq_len=8, max_a_pos=4, n_prompts=2))  # BOS wanted, none given
    with pytest.raises(UniversalityError):
        make_prompts(torch.arange(0, 10), TaskConfig(seq_len=8, max_a_pos=4, n_prompts=2), bos_id=0)
    with pytest.raises(UniversalityError):
        _prompts().corrupt("everything")


def test_metric_and_estimate_by_hand():
    logits = torch.zeros(2, 3, 4)
    logits[0, -1] = torch.tensor([0.0, 0.0, 0.0, 0.0])
    logits[1, -1] = torch.tensor([0.0, 2.0, 0.0, 0.0])
    lg, pr = target_scores(logits, torch.tensor([1, 1]))
    assert torch.allclose(lg, torch.tensor([0.0, 2.0]))
    e2 = float(np.exp(2.0))
    assert torch.allclose(pr, torch.tensor([0.25, e2 / (e2 + 3)]))
    est = estimate([1.0, 3.0])
    assert est.mean == 2.0 and abs(est.se - 1.0) < 1e-12 and est.n == 2
    with pytest.raises(UniversalityError):
        target_scores(torch.zeros(2, 4), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------------ helpers
def test_positions_and_masks():
    rows, pos = pt.row_positions(torch.tensor([1, 5, -1]), 3, 4)  # 5 and -1 fall outside [0, 4)
    assert rows.tolist() == [0] and pos.tolist() == [1]
    rows, pos = pt.row_positions(-1, 2, 4)
    assert rows.tolist() == [0, 1] and pos.tolist() == [3, 3]
    m = pt.position_mask([0, 2], 2, 4)
    assert m.tolist() == [[True, False, True, False]] * 2
    assert not pt.position_mask(None, 2, 4).any()
    with pytest.raises(UniversalityError):
        pt.row_positions(torch.zeros(2, 2, 2, dtype=torch.long), 2, 4)


def test_effects_summaries():
    clean = {"logit_B": np.array([1.0, 2.0, 3.0])}
    patched = {"logit_B": np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 2.0], [0.5, 1.5, 2.5]])}
    e = Effects("x", ["a", "b", "c"], clean, patched, rows=["r"], cols=["a", "b", "c"])
    assert np.allclose(e.delta(), [0.0, -1.0, -0.5]) and np.allclose(e.delta_se(), 0.0)
    assert e.top() == "b" and abs(e.share() - 1 / 1.5) < 1e-12 and abs(e.ratio_to_second() - 2.0) < 1e-12
    assert e.top(direction="up") == "a" and e.grid().shape == (1, 3)
    assert e.summary()["top"] == "b" and e.table().shape[0] == 3
    noisy = {"logit_B": np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 2.0], [0.5, 1.5, 2.5]]) + np.array([0.0, 2.0, -2.0])}
    assert e.dominates() and not e.dominates(ratio=2.5)  # b: Δ=-1 exactly (se 0), runner-up |Δ|=0.5
    assert not Effects("x", ["a", "b", "c"], clean, noisy).dominates()  # b's Δ is within 3 SE of zero
    with pytest.raises(UniversalityError):
        Effects("bad", ["a"], clean, patched)
    with pytest.raises(UniversalityError):
        e.delta("prob_B")


@pytest.mark.parametrize("family", ["transformer", "mamba"])
def test_patching_everything_gives_the_corrupted_run_and_nothing_the_clean_one(family):
    model = _transformer() if family == "transformer" else _mamba()
    p = _prompts(n=4)
    c = p.corrupt("random")
    name = "blocks.0.hook_resid_pre"
    clean_logits, cc = pt.run_cache(model, p.tokens, [name])
    corrupt_logits, kc = pt.run_cache(model, c.tokens, [name])
    everything = pt.run_patched(model, p.tokens, [pt.patch(name, kc[name])])
    nothing = pt.run_patched(model, p.tokens, [pt.patch(name, kc[name], positions=[])])
    assert torch.allclose(everything, corrupt_logits, atol=1e-5)
    assert torch.allclose(nothing, clean_logits, atol=1e-6)
    # patching only the positions whose token changed is the same as patching everything
    changed = [torch.nonzero(r).flatten() for r in c.changed]
    per_row = torch.stack([torch.nn.functional.pad(ix, (0, p.tokens.shape[1] - len(ix)), value=-1) for ix in changed])
    assert torch.allclose(pt.run_patched(model, p.tokens, [pt.patch(name, kc[name], per_row)]), corrupt_logits,
                          atol=1e-5)
    with pytest.raises(UniversalityError):
        pt.run_patched(model, p.tokens, [pt.patch("blocks.9.no_such_hook", kc[name])])


# ------------------------------------------------------------------------------------------------ transformer
def test_head_to_logits_matches_the_linear_direct_effect():
    model = _transformer(n_layers=1, attn_only=True, normalization_type=None)
    p = _prompts(n=8)
    e = ct.head_to_logits(model, p, progress=False)
    assert e.labels == ["L0H0", "L0H1"] and e.grid().shape == (1, 2)
    c = p.corrupt("random")
    _, cc = pt.run_cache(model, p.tokens, ["blocks.0.attn.hook_z"])
    _, kc = pt.run_cache(model, c.tokens, ["blocks.0.attn.hook_z"])
    W_O, W_U = model.blocks[0].attn.W_O, model.W_U  # [H,d,D], [D,V]
    for h in range(2):
        dz = (kc["blocks.0.attn.hook_z"] - cc["blocks.0.attn.hook_z"])[:, -1, h]  # [n,d]
        want = ((dz @ W_O[h]) @ W_U)[torch.arange(8), p.b].detach()  # [n]
        assert np.allclose(e.patched["logit_B"][h] - e.clean["logit_B"], want.numpy(), atol=1e-5)
    assert not np.allclose(e.delta(), 0.0)


def test_head_to_head_flows_only_through_the_receiver():
    model = _transformer(n_layers=2)
    p = _prompts(n=8)
    e = ct.head_to_head_to_logits(model, p, "L1H0", progress=False)
    assert e.labels == ["L0H0", "L0H1"] and e.meta["receiver"] == "L1H0"
    assert not np.allclose(e.delta(), 0.0)
    with torch.no_grad():
        model.blocks[1].attn.W_O[0].zero_()  # the receiver writes nothing: no path left
    e0 = ct.head_to_head_to_logits(model, p, (1, 0), progress=False)
    assert np.allclose(e0.delta(), 0.0, atol=1e-6)
    direct = ct.head_to_logits(model, p, progress=False)
    assert ct.parse_head(ct.best_head(direct))[0] == 1 and ct.parse_head("L1H0") == (1, 0)
    assert not np.allclose(direct.delta()[:2], 0.0)  # layer-0 heads do have other paths
    with pytest.raises(UniversalityError):
        ct.head_to_head_to_logits(model, p, "L0H0")  # nothing below layer 0
    with pytest.raises(UniversalityError):
        cm.state_patching(model, p)  # a Transformer has no SSM state


def test_attention_helpers_shapes():
    model = _transformer()
    p = _prompts(n=4)
    s = ct.attention_scores(model, p)
    assert s["last->B"].shape == (2, 2) and ((s["B->A"] >= 0) & (s["B->A"] <= 1)).all()
    pats, names = ct.attention_patterns(model, p.tokens[0], ["L1H1", (0, 0)])
    assert pats.shape == (2, 17, 17) and names == ["L1H1", "L0H0"]
    assert torch.allclose(pats.sum(-1), torch.ones(2, 17), atol=1e-5)


# ------------------------------------------------------------------------------------------------ mamba
def test_state_rebuild_interpolates_between_clean_and_corrupted():
    model = _mamba()
    p = _prompts(n=4)
    c = p.corrupt("b")
    T = p.last
    names = cm.scan_names(1) + [cm.h_name(1, T), cm.h_name(1, 5)]
    _, cc = pt.run_cache(model, p.tokens, names, scan="exact")
    _, kc = pt.run_cache(model, c.tokens, names, scan="exact")
    clean, corrupt = cm.scan_inputs(model, cc, 1), cm.scan_inputs(model, kc, 1)
    L = T + 1
    none = torch.zeros(4, L, dtype=torch.bool)
    assert torch.allclose(cm.rebuild_state(clean, corrupt, none), cc[cm.h_name(1, T)], atol=1e-6)
    assert torch.allclose(cm.rebuild_state(clean, corrupt, ~none), kc[cm.h_name(1, T)], atol=1e-6)
    assert torch.allclose(cm.rebuild_state(clean, corrupt, none, t_end=5), cc[cm.h_name(1, 5)], atol=1e-6)
    # the state-history patch: corrupted h_{T-1}, clean update at T
    hist = none.clone()
    hist[:, :T] = True
    h = cm.rebuild_state(clean, corrupt, hist)
    assert not torch.allclose(h, cc[cm.h_name(1, T)]) and not torch.allclose(h, kc[cm.h_name(1, T)])
    # positions before B cannot differ between the runs: corrupting them changes nothing
    before = torch.zeros(4, L, dtype=torch.bool)
    before[:, 1] = True
    assert torch.allclose(cm.rebuild_state(clean, corrupt, before), cc[cm.h_name(1, T)], atol=1e-6)
    with pytest.raises(UniversalityError):
        cm.rebuild_state(clean, corrupt, torch.zeros(4, 3, dtype=torch.bool))


def test_state_patching_no_positions_is_the_clean_run():
    model = _mamba()
    p = _prompts(n=8)
    sets = {"nothing": lambda b: [], "history": cm.history, "B+1": cm.at("b", 1)}
    e = cm.state_patching(model, p, position_sets=sets, progress=False)
    assert e.grid().shape == (2, 3) and set(e.metrics) == {"logit_B", "prob_B", "logit_B'", "prob_B'"}
    g = e.grid()
    assert np.allclose(g[:, 0], 0.0, atol=1e-5)  # patching nothing = clean
    assert not np.allclose(g[:, 1], 0.0)
    hist = cm.state_patching(model, p, layers=[1], progress=False)
    assert hist.labels == ["layer 1"] and np.allclose(hist.delta(), e.grid()[1, 1], atol=1e-6)
    with pytest.raises(UniversalityError):
        cm.state_patching(model, p, layers=[5])


def test_conv_patching_sees_only_changed_inputs():
    model = _mamba()
    p = _prompts(n=8)
    e = cm.conv_to_state_to_logits(model, p, layer=0, out_offsets=(0, 1, 3), progress=False)
    assert e.grid().shape == (3, 4) and e.rows[1] == "conv @B+1" and e.cols[2] == "lag 2"
    g = e.grid()
    # layer 0's conv input at a position depends on that token only and "ab" changes A and B only, so
    # only lags that land on A (B-1) or B can matter
    for i, o in enumerate((0, 1, 3)):
        for k in range(4):
            if o - k not in (0, -1):
                assert abs(g[i, k]) < 1e-5, (o, k)
    assert np.abs(g[1, 1:3]).max() > 1e-4
    with pytest.raises(UniversalityError):
        cm.conv_to_state_to_logits(model, p, layer=0, lags=[4])


def test_y_to_logits_and_context_errors():
    model = _mamba()
    p = _prompts(n=4)
    e = cm.y_to_logits(model, p, progress=False)
    assert e.labels == ["layer 0", "layer 1"] and e.meta["corruption"] == "no_repeat"
    assert not np.allclose(e.delta(), 0.0)
    long = _prompts(n=2, seq_len=40, max_a_pos=8)
    with pytest.raises(UniversalityError):
        cm.y_to_logits(model, long)  # 41 tokens > n_ctx 32


def test_effect_figures():
    import matplotlib

    matplotlib.use("Agg")
    from universality_lib.plots import circuit_diagrams, effect_bars, effect_heatmap

    clean = {"logit_B": np.zeros(3)}
    patched = {"logit_B": np.array([[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [0.5, 0.5, 0.5], [0.1, 0.1, 0.1]])}
    e = Effects("x", ["L0H0", "L0H1", "L1H0", "L1H1"], clean, patched, rows=["L0", "L1"], cols=["H0", "H1"])
    fig = effect_bars(e)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == e.labels
    hm = effect_heatmap(e)
    assert np.allclose(hm.axes[0].images[0].get_array(), [[0.0, -1.0], [0.5, 0.1]])
    d = circuit_diagrams({"T": [("step", "text"), ("read-out", "text")],
                          "M": {"steps": [("conv", "t")], "tokens": ["A", "B"], "sources": [0, 1]}})
    assert len(d.axes) == 2 and [a.get_title() for a in d.axes] == ["T", "M"]


# ------------------------------------------------------------------------------------ the precision rule
from universality_lib.circuits.effects import stack  # noqa: E402
from universality_lib.circuits.precision import Precision, RunningDelta  # noqa: E402
from universality_lib.circuits.task import task_config  # noqa: E402


def test_precision_rule_by_hand():
    rule = Precision(se_frac=0.1, min_prompts=10)
    d, se = np.array([-0.2, -2.0, -1.0]), np.array([0.5, 0.1, 0.1])
    assert rule.gap(d) == (1, 2, pytest.approx(1.0))  # top: the largest decrease; runner-up: the next largest |Δ|
    assert rule.resolved(d, se, 10) and not rule.resolved(d, se, 9)  # too few prompts
    assert not rule.resolved(d, np.array([0.5, 0.1, 0.11]), 10)  # runner-up's SE 0.11 > 0.1 x gap
    assert not rule.resolved(np.array([-1.0, -1.0]), np.zeros(2), 10)  # a tie is never resolved
    assert not rule.resolved(np.array([0.0, 3.0]), np.zeros(2), 10)  # the largest |Δ| goes the wrong way
    assert Precision(direction="up", min_prompts=10).gap(np.array([0.0, 3.0]))[0] == 1
    assert rule.resolved(np.array([-1.0]), np.array([0.1]), 10)  # one component: compared with no effect
    assert not rule.resolved(d, np.full(3, np.nan), 10)
    assert "0.1 x the gap" in rule.describe()


@pytest.mark.parametrize("kw", [dict(se_frac=0), dict(se_frac=1.5), dict(se_frac="0.1"), dict(min_prompts=1),
                                dict(min_prompts=2.5), dict(direction="sideways")])
def test_precision_rule_bad_inputs(kw):
    with pytest.raises(UniversalityError, match="Precision"):
        Precision(**kw)
    if "direction" not in kw:
        with pytest.raises(UniversalityError, match="Precision"):
            TaskConfig(**kw)  # the task's rule is checked when the task is made


def test_running_delta_matches_effects():
    rng = np.random.default_rng(0)
    clean = rng.normal(5.0, 1.0, 50)
    patched = clean[None] + rng.normal([[-1.0], [0.3], [1e4]], 0.5, (3, 50))  # a large offset: shifted sums stay exact
    e = Effects("x", ["a", "b", "c"], {"logit_B": clean}, {"logit_B": patched})
    r = RunningDelta(3)
    for s in range(0, 50, 16):
        r.add(patched[:, s:s + 16] - clean[None, s:s + 16])
    assert r.n == 50
    assert np.allclose(r.delta(), e.delta(), rtol=0, atol=1e-10) and np.allclose(r.se(), e.delta_se(), rtol=1e-9)


def _planted_sweep(model, prompts, deltas, noise):
    """A sweep whose component c lowers logit B by deltas[c] + noise[c] x u_row (u_row a fixed number in [-0.5, 0.5)
    per prompt): the residual at the last position moves along W_U[:, B] (no final LayerNorm)."""
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    W_U = model.W_U.detach()  # [D, V]

    def make(c, b):
        u = ((b.clean.b * 7919 + b.clean.pos_a * 31) % 101).double() / 101 - 0.5  # [n]
        w = W_U[:, b.clean.b].T  # [n, D]
        shift = ((deltas[c] + noise[c] * u)[:, None] * w / (w * w).sum(1, keepdim=True)).float()  # [n, D]

        def fn(act, hook):
            out = act.clone()
            out[:, -1] += shift
            return out

        return [(name, fn)]

    return pt.sweep(model, prompts, "random", [name], list(range(len(deltas))), make,
                    [f"c{i}" for i in range(len(deltas))], "planted", progress=False)


def test_sweep_stops_where_the_precision_rule_is_met():
    model = _transformer(normalization_type=None)
    cfg = dict(seq_len=16, max_a_pos=8, n_prompts=96, batch_size=8, se_frac=0.1, min_prompts=16)
    full = _planted_sweep(model, make_prompts(VOCAB, TaskConfig(**cfg), bos_id=BOS), [-2.0, -1.0, -0.2],
                          [3.0, 3.0, 0.5])
    # reference: the first batch boundary at which the rule holds on the full sweep's first k prompts
    rule = Precision(0.1, 16)
    want = next(k for k in range(8, 97, 8)
                if Effects("k", full.labels, {m: v[:k] for m, v in full.clean.items()},
                           {m: v[:, :k] for m, v in full.patched.items()}).resolved(rule))
    assert 16 < want < 96 and full.meta["n_needed"] == want and full.n_prompts == 96  # recorded, not stopped
    assert np.allclose(full.delta(), [-2.0, -1.0, -0.2], atol=0.3)  # the planted effects came through
    early = _planted_sweep(model, make_prompts(VOCAB, TaskConfig(**cfg, stop_early=True), bos_id=BOS),
                           [-2.0, -1.0, -0.2], [3.0, 3.0, 0.5])
    assert early.n_prompts == want and early.meta["n_drawn"] == 96 and early.summary()["n_needed"] == want
    assert np.allclose(early.patched["logit_B"], full.patched["logit_B"][:, :want], atol=1e-5)
    tie = _planted_sweep(model, make_prompts(VOCAB, TaskConfig(**cfg, stop_early=True), bos_id=BOS),
                         [-1.0, -1.0], [0.5, 0.5])
    assert tie.meta["n_needed"] is None and tie.n_prompts == 96  # never resolved: the cap is used
    with pytest.raises(UniversalityError, match="same prompts"):
        stack([early, full], ["a", "b"], "s")


def test_preset_tasks_stop_early_only_at_paper():
    assert not task_config("smoke").stop_early and not task_config("tiny").stop_early  # tiny numbers unchanged
    assert task_config("paper").stop_early and task_config("paper").n_prompts == 2048
