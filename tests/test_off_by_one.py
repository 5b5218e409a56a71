"""The Off-by-One experiments on tiny random models, with hand-made cases whose answers are known exactly:

* a conv kernel with a single tap at lag j: the token B reaches the layer-0 state write only at B+j, so the position
  sweep is zero at every other offset and the lag shares put everything on lag j;
* knocking lag k out of the corruption removes exactly the layer-0 effect at B+k and leaves the others unchanged;
* the conv terms add up to the conv output; the recurrence inputs recomputed from it are the model's own;
* corrupting the write at every position is patching the corrupted final state.
"""
import numpy as np
import pytest
import torch
from standins import busy_mamba

from universality_lib import presets
from universality_lib.circuits import mamba as cm
from universality_lib.circuits import off_by_one as ob
from universality_lib.circuits import patching as pt
from universality_lib.circuits import transformer as ct
from universality_lib.circuits.effects import Effects, stack
from universality_lib.circuits.task import TaskConfig, make_prompts
from universality_lib.errors import UniversalityError

V = 40
BOS = 0
VOCAB = torch.arange(1, V)
ATOL = 1e-6  # float32 round-off of the rebuilt states; the effects checked as non-zero are > 100x this


def _prompts(n=6, seq_len=14, max_a_pos=4, batch_size=3, seed=0):
    return make_prompts(VOCAB, TaskConfig(seq_len=seq_len, max_a_pos=max_a_pos, n_prompts=n, batch_size=batch_size,
                                          seed=seed), bos_id=BOS)


def _mamba(n_layers=2, seed=0):
    return busy_mamba(V, n_layers, seed)


def _single_tap(model, layer: int, lag: int):
    """Keep only lag ``lag`` of the layer's conv kernel (the weight index K-1-lag)."""
    with torch.no_grad():
        w = model.blocks[layer].conv1d.weight  # [E,1,K]
        keep = w[:, :, w.shape[-1] - 1 - lag].clone()
        w.zero_()
        w[:, :, w.shape[-1] - 1 - lag] = keep + 0.5 * torch.sign(keep)  # clearly non-zero
    return model


def _transformer(n_layers=2, seed=0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=V, n_ctx=32,
                                  act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary",
                                  rotary_dim=4, seed=seed)
    return HookedTransformer(cfg).eval()


# ------------------------------------------------------------------------------------------------ prompts
def test_task_puts_a_first_and_fits_the_context():
    tiny = ob.task("tiny")
    assert tiny.seq_len == 129 and tiny.max_a_pos == 1 and tiny.prepend_bos
    paper = ob.task("paper")
    assert paper.seq_len == 129 and not paper.prepend_bos and paper.n_prompts == 128
    smoke = ob.task("smoke")
    assert smoke.seq_len + 1 <= presets.get("smoke").transformer.n_ctx
    p = make_prompts(VOCAB, ob.task("smoke", n_prompts=5), bos_id=BOS)
    assert (p.pos_a == 1).all() and (p.pos_b == 2).all() and (p.tokens[:, -1] == p.a).all()
    lt = ob.layer_sweep_task("smoke")
    assert lt.n_prompts == smoke.n_prompts and lt.max_a_pos > 1  # chapter 5's design, this chapter's count
    assert [ob.offset_label(k) for k in ob.OFFSETS] == ["B", "B+1", "B+2", "B+3"]


# ------------------------------------------------------------------------------------------------ the conv by lag
def test_conv_terms_add_up_and_rebuild_the_scan_inputs():
    model = _mamba()
    p = _prompts()
    names = [f"blocks.1.hook_{h}" for h in ("in_proj", "conv", "ssm_input", "delta", "B")]
    _, c = pt.run_cache(model, p.tokens, names)
    blk = model.blocks[1]
    parts = ob.conv_contributions(blk, c[names[0]])  # [K,n,L,E]
    assert parts.shape == (4,) + tuple(c[names[0]].shape)
    assert torch.allclose(parts.sum(0) + blk.conv1d.bias, c[names[1]], atol=1e-5)
    assert torch.equal(parts[2][:, :2], torch.zeros_like(parts[2][:, :2]))  # lag 2 reaches before the start
    x, delta, B = ob.ssm_inputs_from_conv(blk, c[names[1]])
    assert torch.allclose(x, c[names[2]], atol=1e-6) and torch.allclose(delta, c[names[3]], atol=1e-5)
    assert torch.allclose(B, c[names[4]], atol=1e-5)


@pytest.mark.parametrize("lag", [0, 1, 2])
def test_a_single_tap_writes_b_only_at_b_plus_its_lag(lag):
    model = _single_tap(_mamba(), layer=0, lag=lag)
    p = _prompts()
    e = ob.position_sweep(model, p, layers=[0], progress=False)
    assert e.rows == ["layer 0"] and e.cols == ["B", "B+1", "B+2", "B+3"]
    d = e.grid()[0]
    for k in range(4):
        if k != lag:  # the conv output at B+k does not read B: the corrupted update is the clean one
            assert abs(d[k]) < ATOL, (k, d)
    assert abs(d[lag]) > 100 * ATOL
    pk = ob.peak(e)
    assert pk["index"] == lag and pk["label"] == ob.offset_label(lag) and len(pk["deltas"]) == 4
    dec = ob.write_decomposition(model, p, layers=[0], progress=False)
    want = np.eye(4)[lag]
    for share in (dec.weight[0], dec.conv[0], dec.write[0]):
        assert np.allclose(share, want, atol=1e-12)
    assert dec.n_positions == len(p) * (p.tokens.shape[1] - 3)


def test_knocking_out_a_lag_removes_exactly_its_offset_in_layer_0():
    model = _mamba()
    p = _prompts()
    written = ob.position_sweep(model, p, layers=[0], progress=False).grid()[0]  # [4]
    var = ob.state_write_variants(model, p, layer=0, progress=False)
    assert var.rows == ["authors' Ā at p+1"] + [f"lag {k} knocked out" for k in range(4)]
    g = var.grid()
    for k in range(4):
        row = g[1 + k]
        assert abs(row[k]) < ATOL, (k, row)  # B reaches B+k only through tap k
        others = [j for j in range(4) if j != k]
        assert np.allclose(row[others], written[others], atol=ATOL)
    assert np.abs(written).min() > 100 * ATOL
    # the authors' index is the same rebuild as state_patching(abar_shift=1)
    shifted = ob.position_sweep(model, p, layers=[0], abar_shift=1, progress=False).grid()[0]
    assert np.allclose(g[0], shifted, atol=1e-6) and not np.allclose(shifted, written, atol=ATOL)
    with pytest.raises(UniversalityError):
        ob.state_write_variants(model, p, layer=0, variants={"bad": ob.Variant(knockout=4)})


def test_corrupting_every_write_is_the_corrupted_final_state():
    model = _mamba()
    p = _prompts()
    sets = dict(ob.offset_sets((0, 1)), every=lambda b: list(range(b.last + 1)))
    e = cm.state_patching(model, p, layers=[1], position_sets=sets, progress=False)
    c = p.corrupt("b")
    T = p.last
    names = [cm.h_name(l, T) for l in range(2)]
    _, cc = pt.run_cache(model, p.tokens, names, scan="exact")
    _, kc = pt.run_cache(model, c.tokens, names, scan="exact")
    out = pt.run_patched(model, p.tokens, [pt.patch(names[0], cc[names[0]]), pt.patch(names[1], kc[names[1]])],
                         scan="exact")
    want = out[torch.arange(len(p)), -1, p.b].numpy()
    assert np.allclose(e.patched["logit_B"][2], want, atol=1e-4)


def test_write_decomposition_shares_and_positions():
    model = _mamba(n_layers=3)
    p = _prompts()
    dec = ob.write_decomposition(model, p, progress=False)
    assert dec.layers == [0, 1, 2] and dec.lags == [0, 1, 2, 3]
    for a in (dec.weight, dec.conv, dec.write):
        assert a.shape == (3, 4) and np.allclose(a.sum(1), 1.0) and (a >= 0).all()
    w = model.blocks[2].conv1d.weight[:, 0].detach().double().pow(2).sum(0).numpy()[::-1]  # lag k = index K-1-k
    assert np.allclose(dec.weight[2], w / w.sum())
    # the write share by brute force: the [E, N] write matrices with and without each lag's conv term
    _, c = pt.run_cache(model, p.tokens, ["blocks.1.hook_in_proj"])
    blk = model.blocks[1]
    parts = ob.conv_contributions(blk, c["blocks.1.hook_in_proj"])[:, :, 3:]  # [K,n,L-3,E]
    conv = parts.sum(0) + blk.conv1d.bias

    def write(cv):
        x, delta, B = ob.ssm_inputs_from_conv(blk, cv)
        return (delta * x).unsqueeze(-1) * B.unsqueeze(-2)  # [n,L-3,E,N]

    with torch.no_grad():
        e = np.array([float((write(conv) - write(conv - parts[k])).double().pow(2).sum()) for k in range(4)])
    assert np.allclose(dec.write[1], e / e.sum(), atol=1e-6)
    at = ob.write_decomposition(model, p, layers=[1], positions=lambda b: b.pos_b + 1, progress=False)
    assert at.n_positions == len(p) and at.layers == [1] and at.table().shape == (4, 3)
    assert set(at.row(1)) == {"weights", "conv term", "state write"}
    with pytest.raises(UniversalityError):
        ob.write_decomposition(_transformer(), p)


# ------------------------------------------------------------------------------------------------ the control
def test_head_offset_sweep_stacks_chapter_5s_experiment():
    model = _transformer()
    p = _prompts()
    e = ob.head_offset_sweep(model, p, "L1H0", offsets=(0, 1, 2), progress=False)
    assert e.rows == ["B", "B+1", "B+2"] and e.cols == ["L0H0", "L0H1"] and e.grid().shape == (3, 2)
    at_b = ct.head_to_head_to_logits(model, p, "L1H0", progress=False)
    at_b1 = ct.head_to_head_to_logits(model, p, "L1H0", sender_offset=1, progress=False)
    assert np.allclose(e.grid()[0], at_b.delta()) and np.allclose(e.grid()[1], at_b1.delta())
    col = ob.peak(e, col="L0H1")
    assert col["labels"] == ["B", "B+1", "B+2"] and np.allclose(col["deltas"], e.grid()[:, 1])
    with pytest.raises(UniversalityError):
        ob.head_offset_sweep(model, p, "L1H0", offsets=(0, 20))  # past the last position


@pytest.mark.parametrize("family", ["transformer", "mamba"])
def test_residual_sweep_sees_only_b_in_the_embedding(family):
    model = _transformer() if family == "transformer" else _mamba()
    p = _prompts()
    e = ob.residual_offset_sweep(model, p, progress=False)
    g = e.grid()
    assert e.rows == ["resid_pre 0", "resid_pre 1"] and g.shape == (2, 4)
    assert np.allclose(g[0, 1:], 0.0, atol=1e-6)  # only B's token differs: nothing to patch at B+1..B+3
    assert abs(g[0, 0]) > 1e-4
    assert np.abs(g[1, 1:]).max() > 1e-6  # from layer 1 on, B's information has been moved forward


# ------------------------------------------------------------------------------------------------ start layers
START_LAYER_SWEEPS = {
    "state history": lambda m, p: cm.state_patching(m, p, progress=False),
    "y -> logits": lambda m, p: cm.y_to_logits(m, p, progress=False),
    "conv -> state, layer 1": lambda m, p: cm.conv_to_state_to_logits(m, p, layer=1, out_offsets=(0, 2),
                                                                       progress=False),
    "position sweep": lambda m, p: ob.position_sweep(m, p, progress=False),
    "write variants, layer 2": lambda m, p: ob.state_write_variants(m, p, 2, progress=False),
    "residual, Mamba": lambda m, p: ob.residual_offset_sweep(m, p, progress=False),
    "residual, Transformer": lambda m, p: ob.residual_offset_sweep(_transformer(n_layers=3), p, progress=False),
}


@pytest.mark.parametrize("experiment", list(START_LAYER_SWEEPS))
def test_sweeps_from_their_first_changed_layer_match_runs_from_the_tokens(experiment, monkeypatch):
    """Every sweep that starts its patched runs at the first layer they change (``sweep(start_layer=...)``) gives
    exactly the numbers of the same sweep run from the tokens through every layer."""
    model, p = _mamba(n_layers=3), _prompts()
    fast = START_LAYER_SWEEPS[experiment](model, p)
    from_tokens = lambda *a, start_layer=None, **k: pt.sweep(*a, **k)  # noqa: E731
    monkeypatch.setattr(cm, "sweep", from_tokens)
    monkeypatch.setattr(ob, "sweep", from_tokens)
    full = START_LAYER_SWEEPS[experiment](model, p)
    assert fast.labels == full.labels and set(fast.patched) == set(full.patched)
    for m in full.patched:
        assert np.array_equal(fast.clean[m], full.clean[m]) and np.array_equal(fast.patched[m], full.patched[m]), m
    assert np.abs(full.delta()).max() > 1e-4  # the sweep measured something


def test_sweep_refuses_a_start_layer_outside_the_model():
    model, p = _mamba(), _prompts()
    with pytest.raises(UniversalityError, match="start layers"):
        pt.sweep(model, p, "b", [], [0], lambda c, b: [], ["c"], "x", start_layer=lambda c: 2)


# ------------------------------------------------------------------------------------------------ Effects helpers
def test_select_rows_and_stack():
    clean = {"logit_B": np.array([1.0, 2.0])}
    patched = {"logit_B": np.array([[1.0, 2.0], [0.0, 1.0], [2.0, 2.0], [1.0, 0.0]])}
    e = Effects("x", ["a0", "a1", "b0", "b1"], clean, patched, rows=["a", "b"], cols=["0", "1"])
    s = e.select_rows("b")
    assert s.labels == ["b0", "b1"] and s.rows == ["b"] and np.allclose(s.delta(), [0.5, -1.0])
    again = Effects("y", ["b0", "b1"], clean, {"logit_B": patched["logit_B"][:2]})  # same prompts, other patches
    st = stack([s, again], ["first", "second"], "stacked")
    assert st.rows == ["first", "second"] and st.cols == ["b0", "b1"] and st.labels[2] == "second b0"
    assert np.allclose(st.grid(), [[0.5, -1.0], [0.0, -1.0]])
    by_cols = stack([e.select_rows("b"), e.select_rows("a")], ["b again", "a again"], "rows", columns="cols")
    assert np.allclose(by_cols.grid(), e.grid()[::-1]) and by_cols.cols == ["0", "1"]
    other_prompts = Effects("y", ["b0", "b1"], {"logit_B": np.array([0.0, 0.0])}, {"logit_B": patched["logit_B"][:2]})
    with pytest.raises(UniversalityError):
        stack([s, other_prompts], ["1", "2"], "z")  # measured on other prompts
    with pytest.raises(UniversalityError):
        stack([s, e.select_rows("a")], ["1", "2"], "z")  # other component labels
    with pytest.raises(UniversalityError):
        stack([e, e], ["1", "2"], "z", columns="cols")  # not one-row grids
    with pytest.raises(UniversalityError):
        e.select_rows("c")


def test_off_by_one_figures():
    import matplotlib

    matplotlib.use("Agg")
    from universality_lib.plots.off_by_one import lag_shares, off_by_one_diagram, offset_profiles

    assert len(off_by_one_diagram().axes) == 2
    prof = {"M": {"labels": ["B", "B+1"], "deltas": [0.0, -1.0], "ses": [0.1, 0.1], "index": 1},
            "T": {"labels": ["B", "B+1"], "deltas": [-1.0, 0.0], "ses": [0.1, 0.1], "index": 0}}
    fig = offset_profiles(prof)
    assert [a.get_title() for a in fig.axes] == ["M", "T"]
    assert [p.get_height() for p in fig.axes[0].patches] == [0.0, -1.0]
    dec = ob.WriteDecomposition([0, 1], [0, 1, 2, 3], np.full((2, 4), 0.25), np.full((2, 4), 0.25),
                                np.eye(4)[[1, 2]], 10, "test")
    lf = lag_shares(dec, 1)
    assert np.allclose(lf.axes[1].images[0].get_array(), np.eye(4)[[1, 2]])
