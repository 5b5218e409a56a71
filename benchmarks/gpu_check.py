"""Device check for the `paper` preset: time, on one GPU and offline, each unit of work the appendix prices.

Random weights at the preset's shapes (speed does not depend on them), random tokens, synthetic SAE codes:
nothing needs the hub. Stages, each timed after one warm-up (CUDA synchronised), each recorded even when
another fails:

* ``forward_T`` / ``forward_M``: Pythia-160M shape through TransformerLens (``models.transformer``) and
  Mamba-130M shape through the library's ``HookedMamba``, blocks only (``stop_at_layer``, no unembedding), on
  ``store_batch_rows`` rows of the SAE context: model tokens/s;
* ``forward_M_mamba_ssm``: mamba_ssm's ``MambaLMHeadModel`` (its CUDA kernels) at the same shape, when importable;
* ``sae_step``: one sae-lens training step (forward, backward, Adam) of a standard SAE at F = expansion x d_model
  (24,576 at ``paper``) on one batch of ``batch_tokens`` (bf16 autocast when the preset asks for it on CUDA);
* ``shared_forward_batch``: one T forward caching every block's ``hook_resid_post`` plus one SAE step per layer
  from those activations (what a shared-forward SAE pass costs per batch; sae-lens SAEs used directly);
* ``mppc_sparse_chunk`` / ``mppc_dense_chunk``: one ``similarity.PairStats.update`` of one F x F layer pair on one
  chunk of ``chunk`` tokens (L0 = 50 synthetic codes, ``bench_similarity.make_chunk``): the sparse back end named by
  ``--mppc-backend`` (default: the engine's default for the device; "not available" when the engine lacks it) and
  the dense float32 one.

The JSON (``benchmarks/results/gpu_check.json``, rewritten after every stage so a timeout keeps what was measured)
is what ``universality_lib.resources`` reads: its rates replace the page's estimates for the measured device,
marked as measured. ``--small`` runs the same code at the ``smoke`` preset's shapes on any device (the CPU test);
``resources`` ignores such a file.

    python benchmarks/gpu_check.py [--small] [--device cuda] [--mppc-backend NAME] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from universality_lib import presets  # noqa: E402
from universality_lib.resources import pad_vocab  # noqa: E402

OUT = os.path.join(HERE, "results", "gpu_check.json")
L0 = 50  # active SAE features per token in the synthetic MPPC chunks (the appendix's assumption)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, repeats: int = 3) -> float:
    """Seconds of one call of ``fn`` (the fastest of ``repeats`` after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - t0)
    return best


# ----------------------------------------------------------------------------------------------- models
def build_models(p: presets.Preset, dev: torch.device) -> dict:
    from universality_lib.models.mamba import HookedMamba, MambaConfig
    from universality_lib.models.transformer import make_transformer

    m = p.mamba
    T = make_transformer(p.transformer, pad_vocab(p, "T"), seed=0, device=str(dev)).eval()
    M = HookedMamba(MambaConfig(d_model=m.d_model, n_layers=m.n_layers, d_vocab=pad_vocab(p, "M"), d_state=m.d_state,
                                d_conv=m.d_conv, expand=m.expand, tie_embeddings=m.tie_embeddings,
                                n_ctx=p.sae.context, seed=0, device=dev)).eval()
    return {"T": T, "M": M}


def rows_of(p: presets.Preset, dev: torch.device, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (p.sae.store_batch_rows, p.sae.context), device=dev)  # [rows, ctx]


@torch.no_grad()
def forward_stage(model, n_layers: int, tokens: torch.Tensor, dev: torch.device) -> dict:
    s = timed(lambda: model(tokens, stop_at_layer=n_layers), dev)
    return {"seconds": s, "tokens": tokens.numel(), "tokens_per_s": tokens.numel() / s, "layers": n_layers,
            "context": tokens.shape[1]}


@torch.no_grad()
def mamba_ssm_stage(p: presets.Preset, dev: torch.device) -> dict:
    if dev.type != "cuda":
        return {"status": "not available", "reason": "mamba_ssm's kernels need CUDA"}
    try:
        from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except Exception as e:  # ImportError, or a broken build
        return {"status": "not available", "reason": f"import mamba_ssm failed: {type(e).__name__}: {e}"}
    m = p.mamba
    model = MambaLMHeadModel(SsmConfig(d_model=m.d_model, n_layer=m.n_layers, vocab_size=p.corpus.vocab_size,
                                       ssm_cfg={"layer": "Mamba1"}), device=dev, dtype=torch.float32).eval()
    tokens = rows_of(p, dev, p.corpus.vocab_size)
    s = timed(lambda: model.backbone(tokens), dev)
    return {"seconds": s, "tokens": tokens.numel(), "tokens_per_s": tokens.numel() / s}


# ------------------------------------------------------------------------------------------------- SAEs
def make_sae(d_in: int, d_sae: int, dev: torch.device):
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=5.0, device=str(dev)))
    return sae, torch.optim.Adam(sae.parameters(), lr=4e-4)


def sae_step(sae, opt, x: torch.Tensor, autocast: bool) -> None:
    """One sae-lens training step on activations ``x`` [batch_tokens, d_in]: as its SAETrainer does it."""
    from sae_lens.saes.sae import TrainStepInput

    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": 5.0}, dead_neuron_mask=None,
                                                       n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def sae_stage(p: presets.Preset, dev: torch.device, autocast: bool) -> dict:
    D, F = p.transformer.d_model, p.sae.expansion_factor * p.transformer.d_model
    sae, opt = make_sae(D, F, dev)
    x = torch.randn(p.sae.batch_tokens, D, device=dev)
    s = timed(lambda: sae_step(sae, opt, x, autocast), dev)
    out = {"seconds": s, "d_sae": F, "batch_tokens": p.sae.batch_tokens, "autocast_bf16": autocast,
           "tokens_per_s": p.sae.batch_tokens / s}
    if dev.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    return out


def shared_stage(p: presets.Preset, T, dev: torch.device, autocast: bool) -> dict:
    """One forward of T over ``batch_tokens`` tokens caching every block's residual, then every layer's SAE step."""
    L, D, F = p.transformer.n_layers, p.transformer.d_model, p.sae.expansion_factor * p.transformer.d_model
    ctx = p.sae.context
    tokens = torch.randint(0, pad_vocab(p, "T"), (max(1, p.sae.batch_tokens // ctx), ctx), device=dev)
    names = [f"blocks.{l}.hook_resid_post" for l in range(L)]
    saes = [make_sae(D, F, dev) for _ in range(L)]

    def batch():
        with torch.no_grad():
            _, cache = T.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=L)
        for name, (sae, opt) in zip(names, saes):
            sae_step(sae, opt, cache[name].reshape(-1, D), autocast)

    s = timed(batch, dev, repeats=2)
    return {"seconds": s, "layers": L, "tokens": tokens.numel(), "d_sae": F, "autocast_bf16": autocast}


# ------------------------------------------------------------------------------------------------- MPPC
def mppc_stage(p: presets.Preset, dev: torch.device, backend: str | None, chunk: int, dense: bool) -> dict:
    try:
        from universality_lib.similarity import engine
    except Exception as e:
        return {"status": "not available", "reason": f"the MPPC engine does not import: {type(e).__name__}: {e}"}
    from bench_similarity import make_chunk

    F = p.sae.expansion_factor * p.transformer.d_model
    name = "dense" if dense else (backend or engine.default_backend(dev))
    if name not in engine.BACKENDS:
        return {"status": "not available", "reason": f"no back end {name!r} in this engine (has {engine.BACKENDS})"}
    x, y = make_chunk(0, chunk, F, min(L0, F / 4), 1.0)
    kw = dict(backend=name, device="cpu" if name == "sparse" else dev)
    if dense:
        kw["dtype"] = torch.float32
        x, y = (torch.from_numpy(m.toarray()).to(dev) for m in (x, y))
    st = engine.PairStats({0: F}, {0: F}, **kw)
    s = timed(lambda: st.update({0: x}, {0: y}), dev)
    return {"seconds": s, "backend": name, "tokens": chunk, "d_sae": F, "l0": min(L0, F / 4),
            "tokens_per_s": chunk / s}


# ------------------------------------------------------------------------------------------------ runner
def device_info(dev: torch.device) -> dict:
    info = {"device": dev.type, "torch": torch.__version__, "python": platform.python_version()}
    if dev.type == "cuda":
        prop = torch.cuda.get_device_properties(dev)
        info.update(name=prop.name, memory_gb=round(prop.total_memory / 1e9, 1), cuda=torch.version.cuda)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def run(small: bool, device: str | None, backend: str | None, out: str) -> dict:
    p = presets.get("smoke" if small else "paper")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = bool(p.sae.autocast and dev.type == "cuda")
    chunk = 256 if small else 4096
    t_start = time.perf_counter()
    res = {"kind": "gpu_check", "measured": True, "small": small, "preset": p.name, "date": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **device_info(dev), "stages": {}}
    models: dict = {}

    def stage(key, fn):
        t0 = time.perf_counter()
        try:
            r = fn()
            r.setdefault("status", "ok")
        except Exception as e:  # record and go on: one failure must not lose the other stages
            r = {"status": "failed", "reason": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        r["wall_s"] = round(time.perf_counter() - t0, 2)
        res["stages"][key] = r
        res["wall_s"] = round(time.perf_counter() - t_start, 2)
        write(res, out)
        print(f"{key:22s} {r['status']:14s} {r.get('seconds', float('nan')):10.4f} s  ({r['wall_s']} s wall)",
              flush=True)

    def build():
        models.update(build_models(p, dev))
        return {"params": {k: sum(q.numel() for q in m.parameters()) for k, m in models.items()}}

    stage("build", build)
    if "T" in models:
        stage("forward_T", lambda: forward_stage(models["T"], p.transformer.n_layers,
                                                 rows_of(p, dev, pad_vocab(p, "T")), dev))
        stage("forward_M", lambda: forward_stage(models["M"], p.mamba.n_layers, rows_of(p, dev, pad_vocab(p, "M")),
                                                 dev))
        models.pop("M")
    stage("forward_M_mamba_ssm", lambda: mamba_ssm_stage(p, dev))
    stage("sae_step", lambda: sae_stage(p, dev, autocast))
    if "T" in models:
        stage("shared_forward_batch", lambda: shared_stage(p, models["T"], dev, autocast))
    models.clear()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    stage("mppc_sparse_chunk", lambda: mppc_stage(p, dev, backend, chunk, dense=False))
    stage("mppc_dense_chunk", lambda: mppc_stage(p, dev, backend, chunk, dense=True))
    return res


def write(res: dict, out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(res, fh, indent=1)
    os.replace(tmp, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="the smoke preset's shapes (a CPU check of the script)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when there is one)")
    ap.add_argument("--mppc-backend", default=None, help="sparse MPPC back end (default: the engine's for the device)")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    res = run(args.small, args.device, args.mppc_backend, args.out)
    failed = [k for k, r in res["stages"].items() if r["status"] == "failed"]
    print(f"wrote {args.out} ({res['wall_s']} s)" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
