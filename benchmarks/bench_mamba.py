"""Benchmark HookedMamba (universality_lib) on CPU.

1. Forward throughput (tokens/s, no grad) on one config and batch: HookedMamba fast scan vs HF
   ``MambaForCausalLM`` (slow/reference path, what transformers runs on CPU) vs mamba-lens ``HookedMamba``
   (its PyTorch path); also HookedMamba's exact scan. Target: ours >= 5x the HF slow path.
2. Training throughput (tokens/s of AdamW steps on ``return_type="loss"``): HookedMamba with 2L layers vs a
   TransformerLens ``HookedTransformer`` with L layers of the same d_model (the reference tiny Transformer:
   Pythia/GPT-NeoX-style, rotary, parallel attn+MLP). Target: Mamba >= 0.5x the Transformer.

Writes JSON (default ``benchmarks/results/mamba.json``; ``--out``) and prints a table.

    .venv/bin/python benchmarks/bench_mamba.py [--out PATH] [--steps 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from universality_lib.models import scan as scan_mod  # noqa: E402
from universality_lib.models.mamba import HookedMamba, MambaConfig  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _time(fn, warmup: int, steps: int) -> float:
    """Median seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def mamba_cfg(args, n_layers):
    return MambaConfig(
        d_model=args.d_model, n_layers=n_layers, d_vocab=args.vocab, d_state=16, d_conv=4, expand=2,
        tie_embeddings=False, n_ctx=args.ctx, seed=0,
    )


def build_hf(ours: HookedMamba):
    from transformers import MambaConfig as HFMambaConfig
    from transformers import MambaForCausalLM

    c = ours.cfg
    hf = MambaForCausalLM(HFMambaConfig(
        vocab_size=c.d_vocab, hidden_size=c.d_model, state_size=c.d_state, num_hidden_layers=c.n_layers,
        expand=c.expand, conv_kernel=c.d_conv, time_step_rank=c.dt_rank, tie_word_embeddings=c.tie_embeddings,
        use_mambapy=False,
    )).eval()
    sd = {}
    for k, v in ours.state_dict().items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            k2 = f"backbone.layers.{i}.norm.{rest[5:]}" if rest.startswith("norm.") else f"backbone.layers.{i}.mixer.{rest}"
        elif k == "embed.weight":
            k2 = "backbone.embeddings.weight"
        elif k.startswith("norm_f."):
            k2 = "backbone." + k
        else:
            k2 = k
        sd[k2] = v
    hf.load_state_dict(sd)
    return hf


def build_mamba_lens(ours: HookedMamba):
    from mamba_lens import HookedMamba as MLHookedMamba
    from mamba_lens import MambaCfg
    from mamba_lens.HookedMamba import convert_original_state_dict_to_hooked_state_dict

    c = ours.cfg
    cfg = MambaCfg(d_model=c.d_model, n_layers=c.n_layers, vocab_size=c.d_vocab, pad_vocab_size_multiple=1,
                   n_ctx=c.n_ctx, device=torch.device("cpu"))
    ml = MLHookedMamba(cfg=cfg, tokenizer=None, initialize_params=False).eval()
    sd = {}
    for k, v in build_hf(ours).state_dict().items():
        sd[k.replace("backbone.embeddings.", "backbone.embedding.")] = v
    ml.load_state_dict(convert_original_state_dict_to_hooked_state_dict(cfg, sd))
    return ml


def build_transformer(args, n_layers):
    """The library's own Pythia-style Transformer (what the zoo trains), at the benchmark's sizes."""
    from universality_lib.models.transformer import make_transformer
    from universality_lib.presets import TransformerConfig

    size = TransformerConfig(n_layers=n_layers, d_model=args.d_model, n_heads=4, d_mlp=4 * args.d_model,
                             n_ctx=args.ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return make_transformer(size, args.vocab, seed=0)


def train_step_fn(model, tokens, **kw):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = model(tokens, return_type="loss", **kw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "results", "mamba.json"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--preset", default=None, help="take batch, context, d_model, vocab and layers from a preset")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--tf-layers", type=int, default=4, help="Transformer layers L (Mamba gets 2L)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--slow-steps", type=int, default=2, help="timed forward calls for the slow references")
    p.add_argument("--skip-references", action="store_true", help="skip HF / mamba-lens forward timings")
    args = p.parse_args(argv)
    if args.preset:
        from universality_lib import presets

        pr = presets.get(args.preset)
        args.batch, args.ctx = pr.train.batch_size, pr.train.context
        args.d_model, args.vocab, args.tf_layers = pr.transformer.d_model, pr.corpus.vocab_size, pr.transformer.n_layers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_tok = args.batch * args.ctx
    tokens = torch.randint(0, args.vocab, (args.batch, args.ctx))
    rows = []
    res = {
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "numba": scan_mod.HAVE_NUMBA,
            "loadavg_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "config": {"batch": args.batch, "ctx": args.ctx, "d_model": args.d_model, "vocab": args.vocab,
                   "mamba_layers": 2 * args.tf_layers, "transformer_layers": args.tf_layers,
                   "warmup": args.warmup, "steps": args.steps},
    }

    # ---------------------------------------------------------------- forward
    ours = HookedMamba(mamba_cfg(args, 2 * args.tf_layers)).eval()
    fwd = {}
    with torch.no_grad():
        fwd["hooked_mamba_fast"] = n_tok / _time(lambda: ours(tokens, scan="fast"), args.warmup, args.steps)
        fwd["hooked_mamba_exact"] = n_tok / _time(lambda: ours(tokens, scan="exact"), 1, args.slow_steps)
        if not args.skip_references:
            hf = build_hf(ours)
            fwd["hf_slow_path"] = n_tok / _time(lambda: hf(tokens), 1, args.slow_steps)
            ref = hf(tokens).logits
            res["hf_max_abs_logit_diff"] = (ours(tokens) - ref).abs().max().item()
            del hf
            ml = build_mamba_lens(ours)
            fwd["mamba_lens"] = n_tok / _time(lambda: ml(tokens), 1, args.slow_steps)
            del ml
    res["forward_tokens_per_s"] = fwd
    if "hf_slow_path" in fwd:
        res["forward_ratio_vs_hf"] = fwd["hooked_mamba_fast"] / fwd["hf_slow_path"]
        res["forward_ratio_vs_mamba_lens"] = fwd["hooked_mamba_fast"] / fwd["mamba_lens"]
    for k, v in fwd.items():
        rows.append(("forward", k, v))

    # ---------------------------------------------------------------- training
    train = {}
    mtrain = HookedMamba(mamba_cfg(args, 2 * args.tf_layers)).train()
    train["hooked_mamba_fast"] = n_tok / _time(train_step_fn(mtrain, tokens, scan="fast"), args.warmup, args.steps)
    del mtrain
    tf = build_transformer(args, args.tf_layers).train()
    train["transformer"] = n_tok / _time(train_step_fn(tf, tokens), args.warmup, args.steps)
    del tf
    res["train_tokens_per_s"] = train
    res["train_ratio_mamba_vs_transformer"] = train["hooked_mamba_fast"] / train["transformer"]
    for k, v in train.items():
        rows.append(("train", k, v))
    res["machine"]["loadavg_1min_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    print(f"{'what':8s} {'model':22s} {'tokens/s':>12s}")
    for what, k, v in rows:
        print(f"{what:8s} {k:22s} {v:12.0f}")
    if "forward_ratio_vs_hf" in res:
        print(f"forward: ours / HF slow path = {res['forward_ratio_vs_hf']:.2f}x (target >= 5), "
              f"ours / mamba-lens = {res['forward_ratio_vs_mamba_lens']:.2f}x")
    print(f"train:   Mamba({2 * args.tf_layers}L) / Transformer({args.tf_layers}L) = "
          f"{res['train_ratio_mamba_vs_transformer']:.2f}x (target >= 0.5)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2)
    os.replace(tmp, args.out)
    print("wrote", args.out)
    return res


if __name__ == "__main__":
    main()
