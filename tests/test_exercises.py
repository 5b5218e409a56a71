"""The exercise checks: each accepts the right answer (written here independently of the library), rejects at
least one plausible wrong answer with a message that points at the mistake, reports a stub that returns None as
"not answered yet" without raising, and refuses bad arguments with a UniversalityError."""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from standins import busy_mamba
from test_depth import _result

from universality_lib import exercises as ex
from universality_lib.circuits import off_by_one as ob
from universality_lib.circuits import transformer as ct
from universality_lib.circuits.task import TaskConfig, make_prompts
from universality_lib.errors import UniversalityError

V, BOS = 40, 0
VOCAB = torch.arange(1, V)


def _prompts(n=6, seq_len=14, max_a_pos=4, batch_size=3):
    return make_prompts(VOCAB, TaskConfig(seq_len=seq_len, max_a_pos=max_a_pos, n_prompts=n, batch_size=batch_size,
                                          seed=0), bos_id=BOS)


def _stub(*args):
    return None


def _not_answered(v: ex.Verdict) -> None:
    assert not v.passed and not v.answered and "None" in v.message
    assert "not answered yet" in repr(v)
    with pytest.raises(UniversalityError, match="exercise check failed"):
        v.require()


def test_verdict_require_and_truth():
    ok = ex.Verdict(True, "fine")
    assert ok and ok.require() is ok and repr(ok).startswith("✅")
    bad = ex.Verdict(False, "off by 2")
    assert not bad and repr(bad) == "❌ off by 2"
    with pytest.raises(UniversalityError, match="off by 2"):
        bad.require()


# ----------------------------------------------------------------------------- chapter 1: one scan step
def scan_step(cache, layer, t):
    p = f"blocks.{layer}."
    A_bar, B_bar = cache[p + "hook_A_bar"][:, t], cache[p + "hook_B_bar"][:, t]  # [B,E,N] each
    x = cache[p + "hook_ssm_input"][:, t]  # [B,E]
    return A_bar * cache[p + f"hook_h.{t - 1}"] + B_bar * x[..., None]


def scan_step_by_hand(cache, layer, t):
    """The same step from Δ, A and B, discretised by hand (Ā = exp(ΔA), B̄ = Δ B)."""
    p = f"blocks.{layer}."
    d = cache[p + "hook_delta"][:, t, :, None]  # [B,E,1]
    A_bar = torch.exp(d * cache[p + "hook_A"])  # [B,E,N]
    B_bar = d * cache[p + "hook_B"][:, t, None, :]  # [B,E,N]
    return A_bar * cache[p + f"hook_h.{t - 1}"] + B_bar * cache[p + "hook_ssm_input"][:, t, :, None]


def test_scan_step_check():
    model = busy_mamba(V, n_layers=2)
    tokens = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(0))
    assert ex.check_scan_step(scan_step, model, tokens, layer=1, t=4).require()
    assert ex.check_scan_step(scan_step_by_hand, model, tokens, layer=0)
    no_input = ex.check_scan_step(lambda c, l, t: c[f"blocks.{l}.hook_A_bar"][:, t] * c[f"blocks.{l}.hook_h.{t - 1}"],
                                  model, tokens, layer=1, t=4)
    assert not no_input and no_input.answered and "h_4 differs" in no_input.message and "B̄_t x_t" in no_input.message
    stale = ex.check_scan_step(lambda c, l, t: c[f"blocks.{l}.hook_h.{t - 1}"], model, tokens, layer=1, t=4)
    assert not stale and "the state *before* the step" in stale.message
    wrong_shape = ex.check_scan_step(lambda c, l, t: scan_step(c, l, t)[0], model, tokens, layer=1, t=4)
    assert not wrong_shape and "shape" in wrong_shape.message
    _not_answered(ex.check_scan_step(_stub, model, tokens))
    with pytest.raises(UniversalityError, match="1..9"):
        ex.check_scan_step(scan_step, model, tokens, t=0)
    with pytest.raises(UniversalityError, match="out of range"):
        ex.check_scan_step(scan_step, model, tokens, layer=2)


# ----------------------------------------------------------------------------- chapter 2: the SAE
def _sae(d=8, f=32, seed=0):
    from sae_lens import StandardSAE, StandardSAEConfig

    g = torch.Generator().manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=f, normalize_activations="constant_norm_rescale"))
    with torch.no_grad():  # every part non-trivial: decoder norms far from 1, a decoder bias, a negative b_enc
        sae.W_enc.copy_(torch.randn(d, f, generator=g))
        sae.b_enc.copy_(-torch.rand(f, generator=g))
        sae.W_dec.copy_(torch.randn(f, d, generator=g) * torch.rand(f, 1, generator=g) * 2)
        sae.b_dec.copy_(torch.randn(d, generator=g))
    return sae.eval()


def sae_forward(sae, x, l1, decoder_norm=True, normalise=True):
    D = x.shape[-1]
    coeff = D ** 0.5 / x.norm(dim=-1, keepdim=True) if normalise else torch.ones_like(x[:, :1])  # [t,1]
    xn = x * coeff  # [t,D] normalised
    f = torch.relu((xn - sae.b_dec) @ sae.W_enc + sae.b_enc)  # [t,F]
    xn_hat = f @ sae.W_dec + sae.b_dec  # [t,D]
    norms = sae.W_dec.norm(dim=1) if decoder_norm else torch.ones(sae.W_dec.shape[0])  # [F]
    loss = (xn_hat - xn).pow(2).sum(-1).mean() + l1 * (f * norms).sum(-1).mean()
    return f, xn_hat / coeff, loss


def test_sae_forward_check():
    sae = _sae()
    x = 3 * torch.randn(20, 8, generator=torch.Generator().manual_seed(1)) + 1
    with torch.no_grad():
        assert ex.check_sae_forward(sae_forward, sae, x, 0.7).require()
        no_norm = ex.check_sae_forward(lambda s, x, l1: sae_forward(s, x, l1, normalise=False), sae, x, 0.7)
        assert not no_norm and "feature_acts differs" in no_norm.message and "norm sqrt(D)" in no_norm.message
        plain_l1 = ex.check_sae_forward(lambda s, x, l1: sae_forward(s, x, l1, decoder_norm=False), sae, x, 0.7)
        assert not plain_l1 and plain_l1.message.startswith("loss differs") and "||W_dec[i]||" in plain_l1.message
        two = ex.check_sae_forward(lambda s, x, l1: sae_forward(s, x, l1)[:2], sae, x, 0.7)
        assert not two and "tuple of three" in two.message
    _not_answered(ex.check_sae_forward(_stub, sae, x, 0.7))
    with pytest.raises(UniversalityError, match="d_in=8"):
        ex.check_sae_forward(sae_forward, sae, torch.zeros(4, 5), 0.7)


# ----------------------------------------------------------------------------- chapter 3: MPPC
def mppc(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    C = x.T @ y - np.outer(x.sum(0), y.sum(0)) / n  # [F_a, F_b] centred co-moments
    vx, vy = (x**2).sum(0) - x.sum(0) ** 2 / n, (y**2).sum(0) - y.sum(0) ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = C / np.sqrt(np.outer(vx, vy))
    r[:, vy <= 0] = -np.inf
    best = r.max(1)
    return np.where(vx > 0, best, np.nan)


def mppc_one_pass_float32(x, y):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    n = np.float32(len(x))
    C = n * (x.T @ y) - np.outer(x.sum(0), y.sum(0))
    vx, vy = n * (x**2).sum(0) - x.sum(0) ** 2, n * (y**2).sum(0) - y.sum(0) ** 2
    return (C / np.sqrt(np.outer(vx, vy))).max(1)


def _acts(n=4000, seed=0):
    """Sparse features (x, y share some) plus dense neuron-like units with a large mean."""
    rng = np.random.default_rng(seed)
    base = np.maximum(rng.normal(size=(n, 6)) - 1.0, 0)  # [n,6] sparse, non-negative
    x = np.concatenate([base, 50 + rng.normal(size=(n, 2))], axis=1)  # [n,8]
    y = np.concatenate([base[:, :3] + 0.3 * np.maximum(rng.normal(size=(n, 3)) - 1, 0),
                        np.maximum(rng.normal(size=(n, 4)) - 1, 0), 50 + x[:, 6:] + rng.normal(size=(n, 2))], axis=1)
    return x.astype(np.float32), y.astype(np.float32)


def test_mppc_check():
    x, y = _acts()
    assert ex.check_mppc(mppc, x, y).require()
    x_dead = x.copy()
    x_dead[:, 0] = 0.0  # a feature that never fires is excluded: NaN, as in the engine
    assert ex.check_mppc(mppc, x_dead, y)
    scored_0 = ex.check_mppc(lambda a, b: np.nan_to_num(mppc(a, b)), x_dead, y)
    assert not scored_0 and "NaN" in scored_0.message
    naive = ex.check_mppc(mppc_one_pass_float32, x, y)
    assert not naive and "the MPPC differs" in naive.message and "float32" in naive.message
    cosine = ex.check_mppc(lambda a, b: (a.T @ b / np.outer(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)))
                           .max(1), x, y)
    assert not cosine and "centred" in cosine.message
    _not_answered(ex.check_mppc(_stub, x, y))
    with pytest.raises(UniversalityError, match="same tokens"):
        ex.check_mppc(mppc, x, y[:-1])


# ----------------------------------------------------------------------------- chapter 4: depth
def depth_rho(layer, best, n_a, n_b):
    return spearmanr((layer + 1) / n_a, (best + 1) / n_b).statistic


def test_depth_rho_check():
    res, _ = _result(lambda ka, i, rng: min(5, 2 * ka + int(rng.integers(0, 3))))
    assert ex.check_depth_rho(depth_rho, res).require()
    ordinal = ex.check_depth_rho(lambda l, b, na, nb: np.corrcoef(np.argsort(np.argsort(l, kind="stable")),
                                                                  np.argsort(np.argsort(b, kind="stable")))[0, 1], res)
    assert not ordinal and "ρ differs" in ordinal.message and "mean rank" in ordinal.message
    _not_answered(ex.check_depth_rho(_stub, res))
    layer, best = ex.best_layers(res)
    assert len(layer) == 3 * (40 - 3)  # live units only
    with pytest.raises(UniversalityError, match="side"):
        ex.check_depth_rho(depth_rho, res, side="c")


# ----------------------------------------------------------------------------- chapter 5: path patching
def _transformer(n_layers=2, seed=0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=V, n_ctx=32,
                                  act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary",
                                  rotary_dim=4, seed=seed)
    return HookedTransformer(cfg).eval()


def head_patch_hooks(layer, head, clean_cache, corrupt_cache, last, freeze=True, one_head=True):
    def fn(z, hook):  # z: [n, L, H, d]
        z = z.clone()
        if freeze:
            z[:, last] = clean_cache[hook.name][:, last]
        if hook.layer() == layer:
            h = head if one_head else slice(None)
            z[:, last, h] = corrupt_cache[hook.name][:, last, h]
        return z

    return [(name, fn) for name in clean_cache]


def test_head_patch_check():
    model, p = _transformer(), _prompts()
    eff = ct.head_to_logits(model, p, progress=False)
    assert ex.check_head_patch(head_patch_hooks, model, p, eff).require()
    unfrozen = ex.check_head_patch(lambda *a: head_patch_hooks(*a, freeze=False), model, p, eff, heads=["L0H1"])
    assert not unfrozen and "L0H1: your Δ logit B" in unfrozen.message and "hold every head" in unfrozen.message
    whole_layer = ex.check_head_patch(lambda *a: head_patch_hooks(*a, one_head=False), model, p, eff)
    assert not whole_layer
    _not_answered(ex.check_head_patch(_stub, model, p, eff))
    with pytest.raises(UniversalityError, match="not in the sweep"):
        ex.check_head_patch(head_patch_hooks, model, p, eff, heads=["L5H0"])
    with pytest.raises(UniversalityError, match="head_to_logits"):
        ex.check_head_patch(head_patch_hooks, model, p, ct.head_to_head_to_logits(model, p, "L1H0", progress=False))


# ----------------------------------------------------------------------------- chapter 6: a lag knocked out
def knockout_conv(conv_corrupt, x_in_clean, x_in_corrupt, w, lag):
    L = conv_corrupt.shape[1]
    diff = x_in_corrupt - x_in_clean  # [n,L,E]
    shifted = torch.zeros_like(diff)
    shifted[:, lag:] = diff[:, :L - lag]  # position t holds the difference at t - lag
    return conv_corrupt - w[:, lag] * shifted


def test_knockout_conv_check():
    model, p = busy_mamba(V, n_layers=2), _prompts()
    assert ex.check_knockout_conv(knockout_conv, model, p, layer=1, lag=2).require()
    unflipped = ex.check_knockout_conv(lambda c, xc, xk, w, k: knockout_conv(c, xc, xk, w.flip(-1), k),
                                       model, p, layer=1, lag=2)
    assert not unflipped and "x differs" in unflipped.message and "conv_taps" in unflipped.message
    unshifted = ex.check_knockout_conv(lambda c, xc, xk, w, k: c - w[:, k] * (xk - xc), model, p, layer=0, lag=1)
    assert not unshifted
    _not_answered(ex.check_knockout_conv(_stub, model, p, layer=0, lag=1))
    with pytest.raises(UniversalityError, match="lags 0..3"):
        ex.check_knockout_conv(knockout_conv, model, p, layer=0, lag=4)
    with pytest.raises(UniversalityError, match="HookedMamba"):
        ex.check_knockout_conv(knockout_conv, _transformer(), p, layer=0, lag=1)


@pytest.mark.parametrize("lag", [1, 2])
def test_knockout_offset_check(lag):
    model, p = busy_mamba(V, n_layers=2), _prompts()
    right = ex.check_knockout_offset(lag, model, p, lag=lag)
    assert right.require() and f"removes the effect at {ob.offset_label(lag)}" in right.message
    wrong = ex.check_knockout_offset(0, model, p, lag=lag)
    assert not wrong and wrong.answered and f"removes the effect at {ob.offset_label(lag)}" in wrong.message
    assert not ex.check_knockout_offset("B+1", model, p, lag=lag)
    _not_answered(ex.check_knockout_offset(None, model, p, lag=lag))


# ----------------------------------------------------------------------------- the chapters
@pytest.mark.parametrize("name", ["02_sparse_autoencoders", "03_feature_similarity", "04_universality",
                                  "05_induction_circuits", "06_off_by_one"])
def test_every_analysis_chapter_has_a_checked_exercise_and_a_by_hand_cell(name):
    """The issue's shape of an exercise: a labelled task, a stub that returns None and calls a check, then a
    collapsed solution that calls the same check with .require() (so executing the chapter at smoke tests it)."""
    import nbformat

    from universality_lib import book

    cells = nbformat.read(book.ROOT / "book" / f"{name}.ipynb", as_version=4).cells
    label = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and "**Difficulty** 🔴" in c.source
             and "**time** about" in c.source]
    stub = [i for i, c in enumerate(cells) if c.cell_type == "code" and "return None" in c.source
            and "exercises.check_" in c.source]
    solution = [i for i, c in enumerate(cells) if "hide-cell" in c.metadata.get("tags", [])
                and "exercises.check_" in c.source and ".require()" in c.source]
    by_hand = [c for c in cells if c.cell_type == "markdown" and "**By hand" in c.source]
    assert label and stub and solution and by_hand, (label, stub, solution, len(by_hand))
    assert label[0] < stub[0] < solution[0]
