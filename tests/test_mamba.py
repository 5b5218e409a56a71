"""Tests for universality_lib.models.mamba (HookedMamba) and universality_lib.models.scan (selective scans).

All CPU, small configs. References: HF transformers ``MambaForCausalLM`` (slow path), mamba-lens ``HookedMamba``,
and autograd through the exact per-position reference scan.
"""

import os
import time

import pytest
import torch

from universality_lib.errors import OfflineError, UniversalityError
from universality_lib.models import scan as S
from universality_lib.models.mamba import HookedMamba, MambaConfig

from standins import make_hf_mamba, save_state_spaces_mamba, state_spaces_state_dict

D_MODEL, N_LAYERS, VOCAB, SEQ = 32, 2, 100, 20

SHARED_BLOCK_HOOKS = [
    "hook_resid_pre", "hook_normalized_input", "hook_in_proj", "hook_skip", "hook_conv", "hook_ssm_input",
    "hook_delta_1", "hook_delta_2", "hook_delta", "hook_A", "hook_A_bar", "hook_B", "hook_B_bar", "hook_C",
    "hook_h_start", "hook_y", "hook_ssm_output", "hook_after_skip", "hook_out_proj", "hook_resid_post",
]
EXACT_ONLY = {"hook_A_bar", "hook_B_bar", "hook_h_start"}


def _tokens(b=2, L=SEQ, seed=1, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, L), generator=g)


def _make_hf(tmp_path_factory, tied):
    hf = make_hf_mamba(VOCAB, d_model=D_MODEL, n_layers=N_LAYERS, tied=tied, perturb_seed=1 if tied else 2)
    folder = tmp_path_factory.mktemp(f"hf_mamba_{'tied' if tied else 'untied'}")
    hf.save_pretrained(folder)
    return hf, str(folder)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def hf_pair(request, tmp_path_factory):
    return _make_hf(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def hf_tied(tmp_path_factory):
    return _make_hf(tmp_path_factory, True)


@pytest.fixture(scope="module")
def model(hf_tied):
    m = HookedMamba.from_hf(hf_tied[1])
    m.cfg.n_ctx  # noqa: B018
    return m


# ------------------------------------------------------------------------------------------ equivalence
def test_from_hf_matches_hf_logits(hf_pair):
    hf, folder = hf_pair
    m = HookedMamba.from_hf(folder)
    assert m.cfg.tie_embeddings == hf.config.tie_word_embeddings
    toks = _tokens()
    with torch.no_grad():
        ref = hf(toks).logits
        for scan in ("fast", "exact"):
            ours = m(toks, scan=scan)
            assert ours.shape == (2, SEQ, VOCAB)
            assert (ours - ref).abs().max().item() <= 1e-4, scan


def test_from_state_spaces_matches(hf_pair, tmp_path):
    hf, _ = hf_pair
    folder = save_state_spaces_mamba(tmp_path / "ss", hf, pad_vocab_size_multiple=4)
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert "backbone.layers.0.mixer.in_proj.weight" in sd and "backbone.norm_f.weight" in sd
    m = HookedMamba.from_state_spaces(str(folder))
    m2 = HookedMamba.from_pretrained(str(folder))  # format detection
    toks = _tokens()
    with torch.no_grad():
        ref = hf(toks).logits
        assert (m(toks) - ref).abs().max().item() <= 1e-4
        assert (m2(toks) - ref).abs().max().item() <= 1e-4


def _mamba_lens_model(hf):
    from mamba_lens import HookedMamba as MLHookedMamba
    from mamba_lens import MambaCfg
    from mamba_lens.HookedMamba import convert_original_state_dict_to_hooked_state_dict

    cfg = MambaCfg(d_model=D_MODEL, n_layers=N_LAYERS, vocab_size=VOCAB, pad_vocab_size_multiple=1,
                   n_ctx=SEQ, device=torch.device("cpu"))
    ml = HookedMamba_ml = MLHookedMamba(cfg=cfg, tokenizer=None, initialize_params=False)
    sd = state_spaces_state_dict(hf)
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    HookedMamba_ml.load_state_dict(convert_original_state_dict_to_hooked_state_dict(cfg, sd))
    return ml


def test_hooks_match_mamba_lens(hf_tied, model):
    ml = _mamba_lens_model(hf_tied[0])
    toks = _tokens()
    with torch.no_grad():
        ml_logits, ml_cache = ml.run_with_cache(toks)
        logits, cache = model.run_with_cache(toks)  # no filter: hooks everything -> exact scan
    assert (logits - ml_logits).abs().max().item() <= 1e-4
    names = [f"blocks.{l}.{h}" for l in range(N_LAYERS) for h in SHARED_BLOCK_HOOKS]
    names += [f"blocks.{l}.hook_h.{t}" for l in range(N_LAYERS) for t in range(SEQ)]
    names += ["hook_embed", "hook_norm", "hook_logits"]
    for name in names:
        assert name in ml_cache.cache_dict, name
        a, b = cache[name], ml_cache[name]
        assert a.shape == b.shape, name
        tol = 1e-4 * max(1.0, b.abs().max().item())
        assert (a - b).abs().max().item() <= tol, name


# ------------------------------------------------------------------------------------------ scans
def _scan_inputs(b, L, E, N, dtype, seed=0):
    """x [b, L, E], delta [b, L, E], A [E, N], B [b, L, N], C [b, L, N] (b: batch), each requiring grad."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, E, generator=g, dtype=dtype)
    delta = torch.nn.functional.softplus(torch.randn(b, L, E, generator=g, dtype=dtype) - 1)
    A = -torch.exp(0.5 * torch.randn(E, N, generator=g, dtype=dtype))
    B = torch.randn(b, L, N, generator=g, dtype=dtype)
    C = torch.randn(b, L, N, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, delta, A, B, C)]


@pytest.mark.skipif(not S.HAVE_NUMBA, reason="numba not importable")
def test_numba_scan_gradcheck_float64():
    ins = _scan_inputs(2, 19, 6, 3, torch.float64)  # 19 > chunk size: crosses checkpoint chunks
    assert torch.autograd.gradcheck(S._NumbaSelectiveScan.apply, ins, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["fast", "torch_chunked"])
def test_fast_scan_matches_reference_float32(impl):
    ins = _scan_inputs(3, 45, 70, 16, torch.float32)  # E=70 spans two channel blocks
    fn = S.selective_scan_fast if impl == "fast" else S._torch_chunked_scan
    y = fn(*ins)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, ins, g)
    y_ref = S.selective_scan_reference(*ins)
    grads_ref = torch.autograd.grad(y_ref, ins, g)
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=1e-5)
    for name, a, b in zip(["x", "delta", "A", "B", "C"], grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-4 * max(1.0, b.abs().max().item()), rtol=1e-4), name


def test_stepwise_reference_scan_is_the_materialised_one():
    """reference_scan_stepwise makes each position's A_bar, B_bar on the way: the same numbers as reference_scan on
    the materialised [b, l, e, n] tensors, with and without a state hook, and the same gradients."""
    x, delta, A, B, C = _scan_inputs(3, 21, 70, 16, torch.float32)
    h0 = torch.randn(3, 70, 16)
    hook = lambda t, h: h * 0.5 if t == 7 else h  # noqa: E731  a replaced state changes every later position
    for kw in (dict(), dict(h0=h0, state_hook=hook)):
        y_ref = S.reference_scan(*S.discretize(delta, A, B), x, C, **kw)
        y = S.reference_scan_stepwise(delta, A, B, x, C, **kw)
        assert torch.equal(y, y_ref)
        g = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, (x, delta, A, B, C), g),
                        torch.autograd.grad(y_ref, (x, delta, A, B, C), g)):
            assert torch.allclose(a, b, atol=1e-5 * max(1.0, b.abs().max().item()), rtol=1e-5)


def test_exact_model_materialises_a_bar_only_when_hooked(model, monkeypatch):
    """The exact scan takes the stepwise loop unless hook_A_bar / hook_B_bar are hooked; the logits agree."""
    toks = _tokens()
    calls = []
    real = S.reference_scan
    monkeypatch.setattr("universality_lib.models.mamba.reference_scan",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        stepwise = model(toks, scan="exact")
        assert calls == []
        cached, cache = model.run_with_cache(toks, names_filter=["blocks.0.hook_A_bar"], scan="exact")
    assert len(calls) == 1 and cache["blocks.0.hook_A_bar"].shape == (2, SEQ, model.cfg.d_inner, model.cfg.d_state)
    assert torch.equal(stepwise, cached)


def test_start_at_layer_continues_from_the_residual(model):
    """``start_at_layer`` (HookedTransformer.forward's): the run from the residual entering block l gives the full
    run's logits and loss, fires only the hooks of blocks >= l, and refuses tokens or a loss without tokens."""
    toks = _tokens()
    for scan in ("fast", "exact"):
        with torch.no_grad():
            full, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_pre"), scan=scan)
            for l in (0, 1, -1):
                seen = []
                hooks = [(f"blocks.{k}.hook_out_proj", lambda a, hook: seen.append(hook.name) or a)
                         for k in range(N_LAYERS)]
                resid = cache[f"blocks.{l % N_LAYERS}.hook_resid_pre"]
                out = model.run_with_hooks(resid, fwd_hooks=hooks, start_at_layer=l, scan=scan)
                assert torch.equal(out, full), (scan, l)
                assert seen == [f"blocks.{k}.hook_out_proj" for k in range(l % N_LAYERS, N_LAYERS)]
            loss = model(cache["blocks.1.hook_resid_pre"], start_at_layer=1, return_type="loss", tokens=toks)
            assert torch.equal(loss, model(toks, return_type="loss", scan=scan))
    resid = cache["blocks.1.hook_resid_pre"]
    for bad in (dict(input=toks, start_at_layer=1), dict(input=resid, start_at_layer=N_LAYERS),
                dict(input=resid[..., :-1], start_at_layer=1), dict(input=resid, start_at_layer=1, return_type="loss"),
                dict(input=resid, start_at_layer=1, return_type="loss", tokens=toks[:, :-1])):
        with pytest.raises(UniversalityError, match="start_at_layer"):
            model(**bad)


def test_fast_vs_exact_model(model):
    toks = _tokens()
    with torch.no_grad():
        lf, cf = model.run_with_cache(toks, scan="fast")
        le, ce = model.run_with_cache(toks, scan="exact")
    assert (lf - le).abs().max().item() <= 1e-5
    assert not any(k.endswith(("hook_A_bar", "hook_B_bar", "hook_h_start")) or ".hook_h." in k for k in cf.keys())
    assert set(cf.keys()) < set(ce.keys())
    for k in cf.keys():
        assert torch.allclose(cf[k], ce[k], atol=1e-5 * max(1.0, ce[k].abs().max().item())), k


def test_fast_vs_exact_param_grads(model):
    toks = _tokens()
    grads = {}
    for scan in ("fast", "exact"):
        model.zero_grad()
        model(toks, return_type="loss", scan=scan).backward()
        grads[scan] = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for n in grads["fast"]:
        a, b = grads["fast"][n], grads["exact"][n]
        assert torch.allclose(a, b, atol=1e-5 + 1e-4 * b.abs().max().item(), rtol=1e-4), n


def test_auto_exact_and_error(model):
    toks = _tokens()
    seen = []
    hook = ("blocks.1.hook_h.3", lambda h, hook: seen.append(hook.name) or h)
    model.run_with_hooks(toks, fwd_hooks=[hook])  # scan=None -> exact automatically
    assert seen == ["blocks.1.hook_h.3"]
    with pytest.raises(UniversalityError, match="exact-only"):
        model.run_with_hooks(toks, fwd_hooks=[hook], scan="fast")
    with pytest.raises(UniversalityError):
        model(toks, scan="bogus")


# ------------------------------------------------------------------------------------------ patching
def test_patch_state(model):
    toks = _tokens(b=1)
    t_patch = 7
    with torch.no_grad():
        clean_logits, clean = model.run_with_cache(toks, scan="exact")
        new_h = torch.randn_like(clean[f"blocks.0.hook_h.{t_patch}"])
        store = {}

        def patch(h, hook):
            return new_h

        def grab(h, hook):
            store[hook.name] = h.clone()
            return h

        fwd = [(f"blocks.0.hook_h.{t_patch}", patch), (f"blocks.0.hook_h.{t_patch + 1}", grab)]
        patched_logits = model.run_with_hooks(toks, fwd_hooks=fwd)
    A_bar = clean["blocks.0.hook_A_bar"][:, t_patch + 1]  # [B,E,N]
    B_bar = clean["blocks.0.hook_B_bar"][:, t_patch + 1]  # [B,E,N]
    x = clean["blocks.0.hook_ssm_input"][:, t_patch + 1]  # [B,E]
    expected = A_bar * new_h + B_bar * x.unsqueeze(-1)
    assert torch.allclose(store[f"blocks.0.hook_h.{t_patch + 1}"], expected, atol=1e-6)
    assert torch.equal(patched_logits[:, :t_patch], clean_logits[:, :t_patch])
    for t in range(t_patch, SEQ):
        assert (patched_logits[:, t] - clean_logits[:, t]).abs().max() > 1e-4, t


# ------------------------------------------------------------------------------------------ API
def test_hook_names_and_stop_at_layer(model):
    toks = _tokens()
    names = set(model.hook_dict)
    for l in range(N_LAYERS):
        for h in SHARED_BLOCK_HOOKS:
            assert f"blocks.{l}.{h}" in names
        assert f"blocks.{l}.hook_h.0" in names and f"blocks.{l}.hook_h.{model.cfg.n_ctx - 1}" in names
    assert {"hook_embed", "hook_norm", "hook_logits"} <= names
    _, cache = model.run_with_cache(toks, names_filter=["blocks.0.hook_resid_post"], stop_at_layer=1, prepend_bos=False)
    out = model(toks, stop_at_layer=1)
    assert list(cache.keys()) == ["blocks.0.hook_resid_post"]
    assert torch.allclose(out, cache["blocks.0.hook_resid_post"])
    assert out.shape == (2, SEQ, D_MODEL)
    assert torch.allclose(model(toks, stop_at_layer=-1), out)
    loss = model(toks, return_type="loss")
    per_tok = model(toks, return_type="loss", loss_per_token=True)
    assert per_tok.shape == (2, SEQ - 1) and torch.allclose(per_tok.mean(), loss)
    logits, loss2 = model(toks, return_type="both")
    assert torch.allclose(loss, loss2) and model(toks, return_type=None) is None
    assert isinstance(model.cfg.device, torch.device) and model.cfg.default_prepend_bos is True


def test_reset_hooks_visits_busy_points_with_transformer_lens_effect(model):
    """HookedMamba's reset walks only the hook points holding something: temporary hooks and contexts go, permanent
    hooks stay unless asked, as HookedRootModule.reset_hooks does."""
    toks = _tokens(b=1)
    seen = []
    model.add_hook("blocks.0.hook_h.3", lambda h, hook: seen.append("temp") or h)
    model.add_hook("blocks.1.hook_y", lambda a, hook: seen.append("perm") or a, is_permanent=True)
    model.hook_dict["blocks.1.hook_conv"].ctx["x"] = 1
    model.reset_hooks()
    assert all(not hp.ctx for hp in model.hook_dict.values())
    model(toks, scan="exact")
    assert seen == ["perm"]
    model.reset_hooks(including_permanent=True)
    assert all(not (hp.fwd_hooks or hp.bwd_hooks) for hp in model.hook_dict.values())
    model(toks)
    assert seen == ["perm"]


def test_init_deterministic_and_mamba_ssm_like():
    cfg = dict(d_model=32, n_layers=3, d_vocab=50, seed=123)
    a, b = HookedMamba(MambaConfig(**cfg)), HookedMamba(MambaConfig(**cfg))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    c = HookedMamba(MambaConfig(**{**cfg, "seed": 124}))
    assert not torch.equal(a.embed.weight, c.embed.weight)
    blk = a.blocks[0]
    assert torch.allclose(blk.A_log[5], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert torch.all(blk.D == 1)
    dt = torch.nn.functional.softplus(blk.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert a.lm_head.weight is a.embed.weight
    assert abs(a.embed.weight.std().item() - 0.02) < 0.003
    assert a.cfg.dt_rank == 2 and a.cfg.d_inner == 64
    assert MambaConfig.from_dict(a.cfg.to_dict()) == a.cfg


def test_tokenizer(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["the cat sat on the mat", "a dog and a cat", "hello world"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    m = HookedMamba(MambaConfig(d_model=16, n_layers=1, d_vocab=len(tok), seed=0), tokenizer=tok)
    bos = tok.bos_token_id
    t = m.to_tokens("the cat sat")
    assert t.dtype == torch.long and t[0, 0].item() == bos
    assert m.to_tokens("the cat sat", prepend_bos=False).shape[1] == t.shape[1] - 1
    assert m.to_string(t[0, 1:]) == "the cat sat"
    assert "".join(m.to_str_tokens("the cat sat", prepend_bos=False)) == "the cat sat"
    batch = m.to_tokens(["the cat", "hello world and a dog"])
    assert batch.shape[0] == 2
    assert torch.allclose(m("the cat sat"), m(t))
    assert m("").shape == (1, 1, len(tok))  # an empty string is BOS alone: logits, but no next-token loss
    with pytest.raises(UniversalityError, match="at least 2 tokens"):
        m("", return_type="loss")
    with pytest.raises(UniversalityError, match="0 tokens"):
        m(torch.zeros(1, 0, dtype=torch.long))
    bare = HookedMamba(MambaConfig(d_model=16, n_layers=1, d_vocab=10, seed=0))
    with pytest.raises(UniversalityError, match="no tokenizer"):
        bare.to_tokens("x")
    # save/load keeps the tokenizer
    m.save(tmp_path / "saved")
    m2 = HookedMamba.load(tmp_path / "saved")
    assert torch.equal(m2.to_tokens("the cat"), m.to_tokens("the cat"))


def test_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(OfflineError, match="needs internet"):
        HookedMamba.from_pretrained("state-spaces/mamba-130m")
    assert time.time() - t0 < 10


@pytest.mark.parametrize("tied", [True, False])
def test_save_load_roundtrip(tmp_path, tied):
    m = HookedMamba(MambaConfig(d_model=32, n_layers=2, d_vocab=64, seed=3, tie_embeddings=tied, n_ctx=32))
    m.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    m2 = HookedMamba.load(tmp_path)
    m3 = HookedMamba.from_pretrained(str(tmp_path))
    assert m2.cfg == m.cfg
    for (n, p), (_, q) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p, q), n
    toks = _tokens(vocab=64)
    with torch.no_grad():
        assert torch.equal(m(toks), m2(toks)) and torch.equal(m(toks), m3(toks))
    assert (m2.lm_head.weight is m2.embed.weight) == tied


def test_causal_conv1d_matches_torch():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        x = torch.randn(3, 11, 40, generator=g, dtype=dtype, requires_grad=True)
        w = torch.randn(40, 1, 4, generator=g, dtype=dtype, requires_grad=True)
        b = torch.randn(40, generator=g, dtype=dtype, requires_grad=True)
        out = S.causal_conv1d(x, w, b)
        ref = torch.nn.functional.conv1d(x.transpose(1, 2), w, b, padding=3, groups=40)[..., :11].transpose(1, 2)
        go = torch.randn_like(out)
        grads = torch.autograd.grad(out, (x, w, b), go)
        grads_ref = torch.autograd.grad(ref, (x, w, b), go)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert (out - ref).abs().max().item() <= tol * 10
        for a, r in zip(grads, grads_ref):
            assert (a - r).abs().max().item() <= tol * 10 * max(1.0, r.abs().max().item())
    x64 = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(5, 1, 4, dtype=torch.float64, requires_grad=True)
    b64 = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(S.causal_conv1d, (x64, w64, b64))


def test_a_mamba_forward_keeps_torchs_thread_count():
    """numba's OpenMP pool, started by the first fast scan, used to reset the OpenMP thread count torch shares
    (OMP_NUM_THREADS=1 -> 2 threads after one forward pass), so side-by-side training runs oversubscribed."""
    import os
    import subprocess
    import sys

    code = ("import torch\nfrom universality_lib import zoo\nm = zoo.build('smoke', 'M')\n"
            "x = torch.randint(0, 100, (2, 16))\nm(x).sum().backward()\nprint(torch.get_num_threads())")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1"
