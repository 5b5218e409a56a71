"""Loading HookedMamba from checkpoint folders: what it refuses, the context length, float64 (issue 18).

A config.json field that changes the computation and that HookedMamba does not implement is refused; a
config that does not match its weights is refused naming the field; ``n_ctx`` is taken at load time and
limits only the ``hook_h.{t}`` points; a float64 model computes in float64 (the numba float64 scan).
"""

import json
import shutil

import pytest
import torch

from universality_lib.errors import OfflineError, UniversalityError
from universality_lib.models import scan as S
from universality_lib.models.mamba import HookedMamba, MambaConfig, RMSNorm

from standins import make_hf_mamba, save_state_spaces_mamba

D_MODEL, N_LAYERS, VOCAB, SEQ = 16, 2, 48, 12


def _tokens(b=2, L=SEQ, vocab=VOCAB, seed=0):
    return torch.randint(0, vocab, (b, L), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """An HF MambaForCausalLM and the same weights in both hub formats: {"model", "hf": folder, "ss": folder}."""
    model = make_hf_mamba(VOCAB, d_model=D_MODEL, n_layers=N_LAYERS)
    root = tmp_path_factory.mktemp("mamba-formats")
    model.save_pretrained(root / "hf")
    save_state_spaces_mamba(root / "ss", model, pad_vocab_size_multiple=1)
    return {"model": model, "hf": root / "hf", "ss": root / "ss"}


def _edited(src, dst, edit):
    """A copy of the checkpoint folder ``src`` whose config.json went through ``edit(conf)`` (in place)."""
    shutil.copytree(src, dst)
    conf = json.loads((dst / "config.json").read_text())
    edit(conf)
    (dst / "config.json").write_text(json.dumps(conf))
    return dst


def _set(**kv):
    return lambda conf: conf.update(kv)


def _set_ssm(**kv):
    return lambda conf: conf.setdefault("ssm_cfg", {}).update(kv)


def _drop_then_set(drop, **kv):
    return lambda conf: (conf.pop(drop, None), conf.update(kv))


# ----------------------------------------------------------------------------- refused configs
HF_CASES = {
    # a field HookedMamba does not implement
    "gelu": (_set(hidden_act="gelu"), r"hidden_act='gelu'"),
    "intermediate_size": (_set(intermediate_size=40), r"intermediate_size=40"),
    # a config that does not match its weights
    "state_size": (_set(state_size=8), r"state_size gives d_state = 8, but blocks.0.A_log is \[32, 16\]"),
    "conv_kernel": (_set(conv_kernel=3), r"conv_kernel gives d_conv = 3"),
    "time_step_rank": (_set(time_step_rank=3), r"time_step_rank gives dt_rank = 3"),
    "num_hidden_layers": (_set(num_hidden_layers=3), r"num_hidden_layers = 3, but the weights have 2 blocks"),
    "expand": (_drop_then_set("intermediate_size", expand=3), r"expand gives d_inner = int\(expand \* d_model\) = 48"),
    "use_conv_bias": (_set(use_conv_bias=False), r"unexpected \['blocks.0.conv1d.bias'.*use_conv_bias"),
    # a malformed value
    "hidden_size str": (_set(hidden_size="16"), r"hidden_size must be a positive integer, got '16' \(str\)"),
    "state_size 0": (_set(state_size=0), r"state_size must be a positive integer, got 0"),
}

SS_CASES = {
    "attn_layer_idx": (_set(attn_layer_idx=[1], attn_cfg={"num_heads": 2}), r"attn_layer_idx=\[1\]"),
    "d_intermediate": (_set(d_intermediate=64), r"d_intermediate=64"),
    "rms_norm": (_set(rms_norm=False), r"rms_norm=false"),
    "Mamba2": (_set_ssm(layer="Mamba2"), r"ssm_cfg.layer='Mamba2'"),
    "unknown mixer key": (_set_ssm(headdim=8), r"ssm_cfg keys \['headdim'\]"),
    "d_state": (_set_ssm(d_state=8), r"ssm_cfg.d_state gives d_state = 8"),
    "d_conv": (_set_ssm(d_conv=2), r"ssm_cfg.d_conv gives d_conv = 2"),
    "expand str": (_set_ssm(expand="2"), r"ssm_cfg.expand must be a positive number, got '2' \(str\)"),
    "expand 2.5": (_set_ssm(expand=2.5), r"ssm_cfg.expand gives d_inner = int\(expand \* d_model\) = 40"),
    "n_layer": (_set(n_layer=1), r"n_layer = 1, but the weights have 2 blocks"),
}


@pytest.mark.parametrize("fmt,case", [("hf", c) for c in HF_CASES] + [("ss", c) for c in SS_CASES])
def test_a_config_it_cannot_run_is_refused_naming_the_field(hf, tmp_path, fmt, case):
    edit, message = (HF_CASES if fmt == "hf" else SS_CASES)[case]
    folder = _edited(hf[fmt], tmp_path / "ckpt", edit)
    with pytest.raises(UniversalityError, match=message) as info:
        HookedMamba.from_pretrained(str(folder))
    assert str(folder / "config.json") in str(info.value)


@pytest.mark.parametrize("act", ["silu", "swish"])
def test_silu_under_either_hf_name_loads_and_matches_hf(hf, tmp_path, act):
    folder = _edited(hf["hf"], tmp_path / "ckpt", _set(hidden_act=act))
    x = _tokens()
    with torch.no_grad():
        assert (HookedMamba.from_hf(folder)(x) - hf["model"](x).logits).abs().max().item() <= 1e-4


def test_half_precision_with_a_float32_residual_is_refused(hf, tmp_path):
    """mamba_ssm and HF keep the residual in float32 (residual_in_fp32, their default); HookedMamba keeps it in
    the model dtype, so a bfloat16 load of such a checkpoint would compute something else."""
    for fmt in ("hf", "ss"):
        with pytest.raises(UniversalityError, match="residual_in_fp32 with dtype bfloat16"):
            HookedMamba.from_pretrained(str(hf[fmt]), dtype=torch.bfloat16)
    folder = _edited(hf["ss"], tmp_path / "ckpt", _set(residual_in_fp32=False))
    m = HookedMamba.from_state_spaces(folder, dtype=torch.bfloat16)
    assert m.embed.weight.dtype == torch.bfloat16


def _state_spaces_folder(model: HookedMamba, folder, conf):
    """Write a HookedMamba's weights under mamba_ssm's names, with ``conf`` as config.json."""
    sd = {"backbone.embedding.weight": model.embed.weight.detach(),
          "backbone.norm_f.weight": model.norm_f.weight.detach()}
    for l, blk in enumerate(model.blocks):
        for k, v in blk.state_dict().items():
            sd[f"backbone.layers.{l}.{k}" if k.startswith("norm.") else f"backbone.layers.{l}.mixer.{k}"] = v
    folder.mkdir()
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(conf))
    return folder


def test_fractional_expand_loads_as_mamba_ssm_sizes_it(tmp_path):
    """mamba_ssm allows expand=2.5: d_inner = int(expand * d_model) (it was a raw TypeError)."""
    src = HookedMamba(MambaConfig(d_model=D_MODEL, n_layers=1, d_vocab=VOCAB, expand=2.5, seed=0))
    assert src.cfg.d_inner == 40 and src.blocks[0].A_log.shape == (40, 16)
    conf = {"d_model": D_MODEL, "n_layer": 1, "vocab_size": VOCAB, "ssm_cfg": {"expand": 2.5},
            "pad_vocab_size_multiple": 8}
    m = HookedMamba.from_pretrained(str(_state_spaces_folder(src, tmp_path / "ss", conf)))
    assert m.cfg.expand == 2.5 and m.cfg.d_inner == 40
    with torch.no_grad():
        assert torch.equal(m(_tokens()), src(_tokens()))


def test_state_spaces_vocab_padding(tmp_path):
    """vocab_size 98 with pad multiple 4 -> d_vocab 100 (like mamba-130m: 50277 -> 50280)."""
    src = HookedMamba(MambaConfig(d_model=16, n_layers=1, d_vocab=100, seed=0))
    conf = {"d_model": 16, "n_layer": 1, "vocab_size": 98, "ssm_cfg": {}, "pad_vocab_size_multiple": 4}
    m = HookedMamba.from_state_spaces(str(_state_spaces_folder(src, tmp_path / "ss", conf)))
    assert m.cfg.d_vocab == 100
    toks = _tokens(vocab=98)
    with torch.no_grad():
        assert torch.allclose(m(toks), src(toks), atol=1e-5)


# ----------------------------------------------------------------------------- context length
def test_n_ctx_is_taken_at_load_time_and_limits_only_the_state_hooks(hf, tmp_path):
    short = HookedMamba.from_pretrained(str(hf["ss"]), n_ctx=8)
    assert short.cfg.n_ctx == 8 and "blocks.0.hook_h.7" in short.hook_dict
    assert "blocks.0.hook_h.8" not in short.hook_dict
    x = _tokens()  # 12 positions > n_ctx
    with torch.no_grad():
        ref = hf["model"](x).logits
        assert (short(x, scan="exact") - ref).abs().max().item() <= 1e-4  # no state hooked: no limit
        _, a_bar = short.run_with_cache(x, names_filter="blocks.1.hook_A_bar")
        assert a_bar["blocks.1.hook_A_bar"].shape[1] == SEQ
        ran = []
        with pytest.raises(UniversalityError, match=r"only the first n_ctx=8 have a hook_h.t: .*n_ctx=12"):
            short.run_with_hooks(x, fwd_hooks=[("hook_embed", lambda t, hook: ran.append(1)),
                                               ("blocks.0.hook_h.3", lambda h, hook: h)])
        assert ran == []  # refused before the first block ran
        with pytest.raises(UniversalityError, match="n_ctx=12"):
            short.run_with_cache(x)  # no filter: hooks every state
        long = HookedMamba.from_pretrained(str(hf["hf"]), n_ctx=SEQ)
        logits, cache = long.run_with_cache(x)
    assert (logits - ref).abs().max().item() <= 1e-4 and cache[f"blocks.1.hook_h.{SEQ - 1}"].shape == (2, 32, 16)
    long.save(tmp_path / "own")
    assert HookedMamba.load(tmp_path / "own").cfg.n_ctx == SEQ
    assert HookedMamba.from_pretrained(str(tmp_path / "own"), n_ctx=4).cfg.n_ctx == 4
    with pytest.raises(UniversalityError, match="MambaConfig.n_ctx must be a positive integer, got 0"):
        HookedMamba.from_hf(hf["hf"], n_ctx=0)


# ----------------------------------------------------------------------------- float64
def test_rmsnorm_keeps_float64():
    x = torch.randn(3, 5, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e3
    norm = RMSNorm(D_MODEL, dtype=torch.float64)
    ref = x / torch.sqrt((x * x).mean(-1, keepdim=True) + norm.eps)
    assert (norm(x) - ref).abs().max().item() <= 1e-13


def test_a_float64_model_runs_the_float64_numba_scan(hf, monkeypatch):
    m = HookedMamba.from_pretrained(str(hf["hf"]), dtype=torch.float64)
    x = _tokens()
    with torch.no_grad():
        exact, cache = m.run_with_cache(x, names_filter="blocks.0.hook_A", scan="exact")
        assert cache["blocks.0.hook_A"].dtype == torch.float64
        ref = hf["model"](x).logits  # HF computes A and its norms in float32
        assert (exact - ref).abs().max().item() <= 1e-4
        if not S.HAVE_NUMBA:
            pytest.skip("numba not importable")
        dtypes = []
        real = S._NumbaSelectiveScan

        class Spy:
            @staticmethod
            def apply(*args):
                dtypes.append({a.dtype for a in args})
                return real.apply(*args)

        monkeypatch.setattr(S, "_NumbaSelectiveScan", Spy)
        fast = m(x, scan="fast")
    assert dtypes == [{torch.float64}] * N_LAYERS
    assert (fast - exact).abs().max().item() <= 1e-10


# ----------------------------------------------------------------------------- our format is frozen
def test_the_shipped_mamba_saves_back_to_the_same_bytes(tmp_path):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "universality_lib" / "zoo" / "tiny" / "M"
    m = HookedMamba.load(shipped)
    m.save(tmp_path)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name


def test_config_from_a_preset_size():
    from universality_lib import presets

    size = presets.get("tiny").mamba
    cfg = MambaConfig.from_size(size, d_vocab=VOCAB, n_ctx=SEQ, seed=3)
    assert (cfg.d_model, cfg.n_layers, cfg.d_state, cfg.expand) == (size.d_model, size.n_layers, size.d_state,
                                                                    size.expand)
    assert cfg.d_vocab == VOCAB and cfg.n_ctx == SEQ and cfg.seed == 3 and cfg.tie_embeddings == size.tie_embeddings
