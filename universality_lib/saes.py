"""Sparse autoencoders on the residual stream of every block, trained with sae-lens, cached, measured.

An SAE reads the residual stream ``x`` after block ``l`` (``blocks.{l}.hook_resid_post``, d_model = D) and
writes it as a sparse, non-negative combination of ``F = expansion_factor * D`` learned directions:

    f(x) = ReLU(W_enc (x - b_dec) + b_enc)        [F]   feature activations (TopK: keep the k largest)
    x̂    = W_dec f(x) + b_dec                      [D]   reconstruction
    loss = ||x - x̂||² + λ Σ_i f_i(x) ||W_dec[:, i]||    (standard SAE: ReLU + L1, as in the paper)

Training (:func:`train`) uses sae-lens' own pieces: its ``ActivationsStore`` runs our model (TransformerLens
``HookedTransformer`` or the library's ``HookedMamba``, the same call) on an in-memory ``datasets.Dataset``
of ``sae_train`` rows and shuffles the activations in its mixing buffer; its ``SAETrainer`` trains a
``StandardTrainingSAE`` (or ``TopKTrainingSAE``). Two choices of ours, both visible in the saved config:

* **token-wise normalisation**: every activation is rescaled to norm sqrt(D) (sae-lens'
  ``normalize_activations="constant_norm_rescale"``, which the saved SAE applies on its own at ``encode`` and
  undoes at ``decode``). The training stream is normalised before the trainer sees it, so the
  reconstruction loss is taken in the normalised space, as in the authors' library, whatever the raw
  residual norms of T and M.
* **one sparsity target** (``SAEConfig.l0_target``): the L1 weight λ is steered during training so that every
  SAE of a preset ends near the same L0, a fixed fraction of its dictionary (see ``SAEConfig``); the λ each
  SAE ended with is saved (``l1_coefficient_final``) and logged on its training curve.
* **special positions left out**: BOS (position 0 of every row) and the document separator are the same
  token here; sae-lens' ``exclude_special_tokens`` drops them from training, and the metrics skip them.
  Rows already start with BOS, so ``prepend_bos=False``.

Cache (:func:`get`): ``cache_dir()/saes/<preset>/<model>/L<layer>-s<seed>-<key>/`` where the key hashes the
model checkpoint (the MANIFEST digest of its folder; for the untrained ``M0`` its config and seed), the
layer, the SAE config, the SAE seed and the ``sae_train`` token stream. The folder is sae-lens' own format
(``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``, ``runner_cfg.json``;
``sae_lens.SAE.load_from_disk`` reads it) plus ``universality.json`` (what produced it) and ``log.jsonl``
(the training curve), all under a sha256 manifest. One SAE is one folder written atomically, so an
interrupted :func:`train_all` loses at most the SAE in progress; a folder that fails its manifest is
retrained; a folder whose ``universality.json`` disagrees with what was asked raises, naming the fields.

Metrics (:func:`evaluate`) on ``eval`` rows: L0, fraction of variance explained (in the normalised space the
SAE was trained in, and raw), next-token loss clean / with the SAE spliced in / with the residual
zero-ablated and the CE loss recovered, dead features (never fired on the eval tokens) and the feature
density (fraction of tokens on which each feature fires).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from . import activations as acts
from . import cache, corpus, zoo
from .errors import IntegrityError, UniversalityError
from .models import family as model_family
from .presets import Preset, SAEConfig, get as get_preset, hub_name

__all__ = ["ARCHITECTURES", "TrainResult", "train", "get", "load_folder", "folder_for", "is_cached", "jobs",
           "train_all", "total_train_minutes",
           "evaluate", "evaluate_all", "top_activations", "pick_features", "special_ids", "check_compatible",
           "model_fingerprint", "model_hash", "read_log", "info", "eval_rows", "feature_acts", "threads_set_to",
           "context_tokens", "context_text"]

KIND = "saes"
META = "universality.json"
LOG = "log.jsonl"
ARCHITECTURES = ("standard", "topk")
NORMALISATION = "constant_norm_rescale"  # sae-lens' per-token rescale to norm sqrt(d_in)
_FORMAT = 1
# fields of SAEConfig that do not change a trained SAE (they are not part of its cache key)
_NOT_IN_KEY = ("workers", "eval_tokens", "seeds", "seed_skyline")
# options added after SAEs were first cached: part of the key only when set, so that adding one did not
# invalidate the SAEs already trained with its default
_IN_KEY_ONLY_IF_SET = {"autocast": False}


# ----------------------------------------------------------------------------- small helpers
def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def special_ids(model) -> list[int]:
    """Token ids that are never an SAE input: BOS / EOS / PAD / UNK of the model's tokenizer."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise UniversalityError("the model has no tokenizer: attach one (model.set_tokenizer) so that BOS positions "
                                "can be left out of SAE training.")
    ids = {getattr(tok, f"{w}_token_id", None) for w in ("bos", "eos", "pad", "unk")}
    return sorted(int(i) for i in ids if i is not None)


def _key_config(cfg: SAEConfig) -> dict:
    d = dataclasses.asdict(cfg)
    for k in _NOT_IN_KEY:
        d.pop(k, None)
    for k, default in _IN_KEY_ONLY_IF_SET.items():
        if d.get(k) == default:
            d.pop(k)
    return d


def _check_config(cfg: SAEConfig) -> None:
    if not isinstance(cfg, SAEConfig):
        raise UniversalityError(f"expected a presets.SAEConfig, got {type(cfg).__name__}")
    if cfg.architecture not in ARCHITECTURES:
        raise UniversalityError(f"unknown SAE architecture {cfg.architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
    if cfg.expansion_factor < 1:
        raise UniversalityError(f"expansion_factor must be >= 1, got {cfg.expansion_factor}")
    if cfg.l0_target is not None:
        if cfg.architecture != "standard":
            raise UniversalityError("l0_target steers the L1 weight of a standard SAE; a topk SAE sets its L0 with k.")
        if not 0 < cfg.l0_target < 1:
            raise UniversalityError(f"l0_target is a fraction of the dictionary size, in (0, 1); got {cfg.l0_target}")
    if cfg.n_batches_in_buffer * cfg.context < cfg.batch_tokens:
        raise UniversalityError(
            f"the sae-lens mixing buffer (n_batches_in_buffer * context = {cfg.n_batches_in_buffer} * {cfg.context}) "
            f"must hold at least one training batch ({cfg.batch_tokens} tokens): raise n_batches_in_buffer.")


def _model_class(model) -> str:
    """The model class name sae-lens records for the model an SAE reads."""
    return "HookedTransformer" if model_family(model) == "transformer" else "HookedMamba"


def model_fingerprint(model, per_tensor: int = 4) -> list[float]:
    """The first ``per_tensor`` weights of every parameter tensor, in order: what an SAE records of the model it
    was trained on (``cfg.metadata.model_fingerprint``), so that another model of the same shape (T2 for T, M0
    for M) is refused. Two trainings (or two seeds) differ there; a copy or a move to another device does not."""
    return [round(float(v), 6) for p in model.parameters() for v in p.detach().flatten()[:per_tensor].float().cpu()]


def _check_model_identity(sae, model) -> None:
    """Raise if the SAE's recorded model (class, weight fingerprint) is not ``model``; SAEs that record neither
    (hand-made ones, or cached before the fingerprint was recorded: class only) pass what they lack."""
    meta = sae.cfg.metadata
    trained_on = f"{meta.model_name!r}" if meta.model_name else "another model"
    cls = meta.model_class_name
    if cls is not None and cls != _model_class(model):
        raise UniversalityError(
            f"the SAE was trained on a {cls} ({trained_on}), not on a {_model_class(model)} like this model: "
            f"use the SAE of this model (saes.get(preset, name, layer) with this model's name).")
    want = meta.get("model_fingerprint")
    if want is None:
        return
    have = model_fingerprint(model)
    if len(have) != len(want) or not np.allclose(have, want, rtol=1e-3, atol=1e-6):
        raise UniversalityError(
            f"the SAE was trained on {trained_on}, whose weights are not this model's (same shape, other "
            f"weights: another seed or another checkpoint): use the SAE of this model "
            f"(saes.get(preset, name, layer) with this model's name).")


def check_compatible(sae, model, hook_name: str | None = None) -> str:
    """Raise if ``sae`` cannot read ``model`` at ``hook_name`` (hook missing, d_in mismatch, trained on another
    model); return the hook."""
    meta_hook = getattr(sae.cfg.metadata, "hook_name", None)
    hook = hook_name or meta_hook
    if hook is None:
        raise UniversalityError("the SAE does not say which hook it reads (cfg.metadata.hook_name): pass hook_name=.")
    if hook_name is not None and meta_hook is not None and hook_name != meta_hook:
        raise UniversalityError(f"the SAE was trained on {meta_hook!r}, not on {hook_name!r}: use the SAE of that hook.")
    acts.check_hook(model, hook)
    width = acts.hook_width(model, hook)
    if int(sae.cfg.d_in) != width:
        raise UniversalityError(
            f"d_in mismatch: the SAE expects d_in={sae.cfg.d_in} but {hook!r} of this {model_family(model)} model has "
            f"width {width} (d_model={model.cfg.d_model}). The SAE belongs to another model or preset.")
    _check_model_identity(sae, model)
    return hook


# ----------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    sae: object  # sae_lens.SAE (inference class: StandardSAE / TopKSAE)
    log: list[dict]  # training curve (every few steps): tokens, mse, l0, fve, lr
    info: dict  # what produced it, wall time, tokens/s


def _runner_config(cfg: SAEConfig, d_in: int, hook_name: str, device: torch.device, model, ids: list[int],
                   model_name: str):
    from sae_lens import (LanguageModelSAERunnerConfig, LoggingConfig, StandardTrainingSAEConfig,
                          TopKTrainingSAEConfig)

    steps = max(1, cfg.training_tokens // cfg.batch_tokens)
    common = dict(d_in=d_in, d_sae=cfg.expansion_factor * d_in, normalize_activations=NORMALISATION,
                  device=str(device), dtype="float32")
    if cfg.architecture == "standard":
        sae_cfg = StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient,
                                            l1_warm_up_steps=int(cfg.l1_warm_up_frac * steps), **common)
    else:
        sae_cfg = TopKTrainingSAEConfig(k=cfg.k, **common)
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg, model_name=model_name,
        model_class_name=_model_class(model),
        hook_name=hook_name, dataset_path="", is_dataset_tokenized=True, streaming=False,
        context_size=cfg.context, prepend_bos=False, sequence_separator_token=None,
        exclude_special_tokens=list(ids), training_tokens=steps * cfg.batch_tokens,
        train_batch_size_tokens=cfg.batch_tokens, store_batch_size_prompts=cfg.store_batch_rows,
        n_batches_in_buffer=cfg.n_batches_in_buffer, lr=cfg.lr, lr_warm_up_steps=int(cfg.lr_warm_up_frac * steps),
        lr_decay_steps=int(cfg.lr_decay_frac * steps), dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=max(cfg.dead_feature_window, 1), device=str(device),
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None, verbose=False,
        n_batches_for_norm_estimate=1, seed=0, model_from_pretrained_kwargs={},
        autocast=cfg.autocast and device.type == "cuda",  # bf16 mixed precision for the SAE steps (GPU only)
    )


def _normalised(it: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """sae-lens' activation stream, each token rescaled to norm sqrt(d_in) (the SAE's training space)."""
    for x in it:
        yield acts.normalise_tokens(x)


def _make_trainer(runner_cfg, sae, provider, n_steps: int, progress: bool, cfg: SAEConfig):
    from sae_lens.training.sae_trainer import SAETrainer

    for seam in ("_update_pbar", "_train_step", "coefficient_schedulers"):  # the per-step seams we use
        if not hasattr(SAETrainer, seam) and seam not in getattr(SAETrainer, "__annotations__", {}):
            raise UniversalityError(f"this sae-lens version has no SAETrainer.{seam}; pin sae-lens 6.x.")
    every = max(1, n_steps // 100)  # curve points
    bar_every = max(1, n_steps // 20)  # progress-bar refreshes
    target = None if cfg.l0_target is None else cfg.l0_target * int(runner_cfg.sae.d_sae)  # features per token
    control_end = n_steps - int(runner_cfg.lr_decay_steps)  # λ is held during the learning-rate decay

    class _LoggingTrainer(SAETrainer):
        """sae-lens' trainer, plus a small training curve (no wandb) and, with ``l0_target``, the L1 weight
        steered towards the target L0 (sae-lens' own coefficient scheduler carries the value)."""

        curve: list = []

        def _train_step(self, sae, sae_in):
            out = super()._train_step(sae, sae_in)
            l1 = self.coefficient_schedulers.get("l1")
            if target is not None and l1 is not None and l1.warm_up_steps <= self.n_training_steps < control_end:
                with torch.no_grad():
                    l0 = max((out.feature_acts > 0).float().sum(-1).mean().item(), 0.5)
                err = min(max(math.log(l0 / target), -1.0), 1.0)  # clipped: early on L0 is far above any target
                l1.final_value = float(l1.final_value * math.exp(cfg.l0_gain * err))
                l1.current_value = l1.final_value  # the next step reads current_value
            return out

        @torch.no_grad()
        def _update_pbar(self, step_output, pbar, update_interval: int = 100):
            n = self.n_training_steps
            if n % every == 0 or n == n_steps:
                x, xh, f = step_output.sae_in, step_output.sae_out, step_output.feature_acts
                var = (x - x.mean(0)).pow(2).sum().item()
                self.curve.append({
                    "step": n, "tokens": n * runner_cfg.train_batch_size_tokens,
                    **{k: round(float(v), 6) for k, v in step_output.losses.items()},
                    "l0": round((f > 0).float().sum(-1).mean().item(), 3),
                    "fve": round(1.0 - (x - xh).pow(2).sum().item() / max(var, 1e-12), 5),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    **({"l1_coefficient": round(self.coefficient_schedulers["l1"].value, 6)}
                       if "l1" in self.coefficient_schedulers else {}),
                })
            if progress and (n % bar_every == 0 or n == n_steps):
                loss = " | ".join(f"{k} {float(v):.4g}" for k, v in step_output.losses.items())
                pbar.set_description(f"SAE step {n}/{n_steps} | {loss}")
                pbar.update(n * runner_cfg.train_batch_size_tokens - pbar.n)

    trainer = _LoggingTrainer(cfg=runner_cfg.to_sae_trainer_config(), sae=sae, data_provider=provider)
    trainer.curve = []
    return trainer


@contextlib.contextmanager
def _quiet_sae_lens(progress: bool):
    """Silence sae-lens' expected warnings (small in-memory dataset, epochs) and, if asked, its bar."""
    import sae_lens.training.sae_trainer as st
    from tqdm.auto import tqdm

    old = st.tqdm
    if not progress:
        st.tqdm = lambda *a, **k: tqdm(*a, **{**k, "disable": True})
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(fewer samples|exhausted|context_size).*")
            warnings.filterwarnings("ignore", category=UserWarning, module="sae_lens")
            yield
    finally:
        st.tqdm = old


@contextlib.contextmanager
def threads_set_to(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (None: leave the setting alone), then restore it.

    On a 2-core CPU that other jobs keep busy, one thread trains a small SAE far faster than two (the
    threads wait on each other at every small matmul): measured 30-85x on the smoke SAEs."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train(model, layer: int, cfg: SAEConfig, rows: torch.Tensor, *, seed: int = 0, folder: str | Path | None = None,
          device: str | torch.device | None = None, progress: bool = True, model_name: str = "custom",
          extra_info: dict | None = None, threads: int | None = None) -> TrainResult:
    """Train one SAE on ``blocks.{layer}.hook_resid_post`` of ``model`` with sae-lens; no cache.

    ``rows``: LongTensor [n, context] of token rows that start with BOS (``TokenStream.rows(cfg.context)``).
    ``seed`` seeds torch before sae-lens builds the SAE and its buffer (init and shuffling).
    With ``folder`` the SAE is written there in sae-lens' format (plus ``log.jsonl`` and ``universality.json``).
    ``threads``: torch intra-op threads while training (None: as set; see :func:`threads_set_to`).
    """
    import datasets
    from sae_lens import SAE, TrainingSAE
    from sae_lens.constants import RUNNER_CFG_FILENAME, SPARSITY_FILENAME
    from sae_lens.training.activations_store import ActivationsStore
    from safetensors.torch import save_file

    _check_config(cfg)
    hook = acts.resid_post_hook(layer)
    acts.check_hook(model, hook)
    d_in = acts.hook_width(model, hook)
    rows = acts.check_rows(model, rows, min_len=cfg.context)[:, :cfg.context]  # [n, context]
    ids = special_ids(model)
    if not acts.token_mask(rows, ids).any():  # sae-lens would wait forever for its buffer to fill
        raise UniversalityError(
            f"rows hold no ordinary token (every position is one of the special ids {ids}: BOS / a separator), so "
            f"there is nothing to train on: pass rows of tokenized text (TokenStream.rows({cfg.context})).")
    dev = torch.device(device) if device is not None else _device_of(model)
    runner_cfg = _runner_config(cfg, d_in, hook, dev, model, ids, model_name)
    n_steps = runner_cfg.total_training_steps
    ds = datasets.Dataset.from_dict({"tokens": rows.cpu().numpy()})
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    try:
        with _quiet_sae_lens(progress), threads_set_to(threads):
            store = ActivationsStore.from_config(model, runner_cfg, override_dataset=ds)
            sae = TrainingSAE.from_dict(runner_cfg.get_training_sae_cfg_dict())
            _set_metadata(sae, runner_cfg)
            sae.cfg.metadata.model_fingerprint = model_fingerprint(model)
            sae.to(str(dev))
            trainer = _make_trainer(runner_cfg, sae, _normalised(iter(store)), n_steps, progress, cfg)
            sae = trainer.fit()
    finally:
        model.train(was_training)
    wall = time.perf_counter() - t0
    tokens = n_steps * cfg.batch_tokens
    info_ = {
        "format": _FORMAT, "layer": int(layer), "hook_name": hook, "family": model_family(model), "seed": int(seed),
        "d_in": d_in, "d_sae": int(sae.cfg.d_sae), "sae_config": _key_config(cfg), "steps": n_steps,
        "training_tokens": tokens, "wall_seconds": round(wall, 2), "tokens_per_second": round(tokens / wall, 1),
        "device": dev.type, "torch_threads": threads or torch.get_num_threads(), "machine": _machine(dev),
        "sae_lens_version": _sae_lens_version(), "final": trainer.curve[-1] if trainer.curve else {},
        "dead_features_train": int(trainer.dead_neurons.sum().item()),
        "l1_coefficient_final": (round(trainer.coefficient_schedulers["l1"].final_value, 6)
                                 if "l1" in trainer.coefficient_schedulers else None),
        **(extra_info or {}),
    }
    ctx = tempfile.TemporaryDirectory() if folder is None else contextlib.nullcontext(str(folder))
    with ctx as out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        sae.save_inference_model(out)
        save_file({"sparsity": trainer.log_feature_sparsity.cpu()}, out / SPARSITY_FILENAME)
        (out / RUNNER_CFG_FILENAME).write_text(json.dumps(runner_cfg.to_dict(), default=str))
        (out / LOG).write_text("".join(json.dumps(r) + "\n" for r in trainer.curve))
        (out / META).write_text(json.dumps(info_, indent=2, sort_keys=True, default=str) + "\n")
        loaded = SAE.load_from_disk(out, device=str(dev))
    loaded.eval()
    return TrainResult(sae=loaded, log=list(trainer.curve), info=info_)


def _set_metadata(sae, runner_cfg) -> None:
    """What sae-lens' LanguageModelSAETrainingRunner records in the SAE's metadata (saved in cfg.json)."""
    m = sae.cfg.metadata
    m.dataset_path = runner_cfg.dataset_path
    m.hook_name = runner_cfg.hook_name
    m.model_name = runner_cfg.model_name
    m.model_class_name = runner_cfg.model_class_name
    m.hook_head_index = runner_cfg.hook_head_index
    m.context_size = runner_cfg.context_size
    m.seqpos_slice = runner_cfg.seqpos_slice
    m.model_from_pretrained_kwargs = runner_cfg.model_from_pretrained_kwargs
    m.prepend_bos = runner_cfg.prepend_bos
    m.exclude_special_tokens = runner_cfg.exclude_special_tokens
    m.sequence_separator_token = runner_cfg.sequence_separator_token
    m.disable_concat_sequences = runner_cfg.disable_concat_sequences


def _sae_lens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # pragma: no cover
        return "unknown"


def _machine(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import os

    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()} ({platform.system()})"


def read_log(folder: str | Path) -> list[dict]:
    path = Path(folder) / LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def info(folder: str | Path) -> dict:
    return json.loads((Path(folder) / META).read_text())


# ----------------------------------------------------------------------------- cache
def model_hash(preset: "str | Preset", name: str) -> str:
    """What identifies the model an SAE reads: its checkpoint folder's manifest digest (verified), the hub
    name (paper), or for the untrained baseline its config, tokenizer and seed."""
    p = get_preset(preset)
    family, seed = zoo.spec(p, name)
    if name == zoo.RANDOM_BASELINE:
        if p.needs_internet:
            return cache.stable_hash({"untrained": hub_name(p, "M"), "seed": seed})
        tok = corpus.load_tokenizer(p)
        return cache.stable_hash({"untrained": p.to_dict()["mamba"], "n_ctx": p.transformer.n_ctx, "seed": seed,
                                  "tokenizer": corpus.tokenizer_hash(tok), "v": 1})
    if p.needs_internet:
        return cache.stable_hash({"hub": hub_name(p, name)})
    folder = zoo.model_dir(p, name)
    if not (folder / cache.MANIFEST).exists():
        raise UniversalityError(f"model {name!r} of preset {p.name!r} has no checkpoint at {folder} yet: "
                                f"load it once with zoo.load({p.name!r}, {name!r}) (smoke trains it).")
    return cache.verify_manifest(folder)[:16]


def _expected(p: Preset, name: str, layer: int, seed: int, stream_sha: str) -> dict:
    return {"preset": p.name, "model": name, "layer": int(layer), "seed": int(seed),
            "model_hash": model_hash(p, name), "data_sha256": stream_sha, "sae_config": _key_config(p.sae)}


def folder_for(preset: "str | Preset", name: str, layer: int, seed: int = 0) -> Path:
    """Where the SAE of (model, layer, seed) lives in the cache (it may not exist yet)."""
    p = get_preset(preset)
    stream = corpus.token_stream(p, "sae_train")
    return cache.cache_dir() / _kind(p, name) / _key(_expected(p, name, layer, seed, stream.sha256))


def _kind(p: Preset, name: str) -> str:
    return f"{KIND}/{p.name}/{name}"


def _key(expected: dict) -> str:
    return f"L{expected['layer']}-s{expected['seed']}-{cache.stable_hash({**expected, 'v': _FORMAT})}"


def load_folder(folder: str | Path, expect: dict | None = None, model=None, device: str | torch.device = "cpu"):
    """Load a cached SAE (sae-lens format) after checking its manifest and, with ``expect``, that it was
    written for exactly that model / layer / seed / config / data; with ``model``, that it fits the model."""
    from sae_lens import SAE

    folder = Path(folder)
    cache.verify_manifest(folder)
    meta_path = folder / META
    if not meta_path.exists():
        raise UniversalityError(f"{folder} has no {META}: it was not written by universality_lib.saes.")
    have = json.loads(meta_path.read_text())
    if expect is not None:
        diffs = _diff(expect, have)
        if diffs:
            raise UniversalityError(
                f"the cached SAE at {folder} was written for another configuration: " + "; ".join(diffs)
                + f". Delete {folder} to retrain it with the current one.")
    sae = SAE.load_from_disk(folder, device=str(device))
    sae.eval()
    if model is not None:
        check_compatible(sae, model, have.get("hook_name"))
    return sae


def _diff(expect: dict, have: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in expect.items():
        if isinstance(v, dict) and isinstance(have.get(k), dict):
            out += _diff(v, have[k], f"{prefix}{k}.")
        elif have.get(k, "<missing>") != (list(v) if isinstance(v, tuple) else v):
            out.append(f"{prefix}{k} = {have.get(k, '<missing>')!r} in the cache entry, {v!r} asked for")
    return out


def get(preset: "str | Preset", name: str, layer: int, seed: int = 0, *, model=None, device: str | None = None,
        progress: bool = True, train_if_missing: bool = True, threads: int | None = None):
    """The SAE of zoo model ``name`` at ``blocks.{layer}.hook_resid_post`` with SAE seed ``seed``: loaded from
    the cache if there, else trained with the preset's ``SAEConfig`` and cached. Returns a ``sae_lens.SAE``."""
    p = get_preset(preset)
    zoo.spec(p, name)
    if model is None:
        model = zoo.load(p, name, device=device)
    hook = acts.resid_post_hook(layer)
    acts.check_hook(model, hook)
    stream = corpus.token_stream(p, "sae_train")
    expected = _expected(p, name, layer, seed, stream.sha256)
    dev = device or str(_device_of(model))
    kind, key = _kind(p, name), _key(expected)
    folder = cache.cache_dir() / kind / key
    if not train_if_missing:
        return _load_cached(folder, expected, model, dev, f"{name} layer {layer} seed {seed} ({p.name})", p.name)

    def build(tmp: Path) -> None:
        rows = stream.rows(p.sae.context)
        train(model, layer, p.sae, rows, seed=seed, folder=tmp, device=dev, progress=progress,
              model_name=f"universality_lib/{p.name}/{name}", extra_info=expected, threads=threads)

    folder = cache.cached_folder(kind, key, build)
    return load_folder(folder, expect=expected, model=model, device=dev)


def _load_cached(folder: Path, expected: dict, model, device, what: str, preset_name: str):
    """The cached SAE at ``folder``, never trained here: a missing or corrupt entry is refused (and kept)."""
    retrain = f"saes.train_all({preset_name!r}) (or saes.get with train_if_missing=True) retrains it"
    if not (folder / cache.MANIFEST).exists():
        raise UniversalityError(f"no cached SAE for {what} at {folder}; train it with saes.train_all({preset_name!r}).")
    try:
        return load_folder(folder, expect=expected, model=model, device=device)
    except IntegrityError as e:
        raise IntegrityError(f"the cached SAE for {what} is corrupt and train_if_missing=False does not retrain it: "
                             f"{e} {retrain}.") from e


def is_cached(preset: "str | Preset", name: str, layer: int, seed: int = 0) -> bool:
    """Whether the SAE of (model, layer, seed) is already in the cache (its manifest is checked at load)."""
    return (folder_for(preset, name, layer, seed) / cache.MANIFEST).exists()


def total_train_minutes(walls_s: Iterable[float], trained_here: Iterable[bool], elapsed_here_s: float,
                        workers: int) -> tuple[float, str]:
    """Wall-clock minutes it takes to train a set of SAEs, and how the number was obtained.

    ``walls_s``: each SAE's training wall time as recorded when it was trained; ``trained_here``: whether it was
    trained in the run being timed, which took ``elapsed_here_s`` seconds. If every SAE was trained there, the
    answer is that elapsed time ("measured"). Otherwise (some came from the cache) it is the sum of the recorded
    walls divided by the ``workers`` that trained side by side ("estimated")."""
    walls, here = list(walls_s), list(trained_here)
    if len(walls) != len(here):
        raise UniversalityError(f"{len(walls)} wall times for {len(here)} SAEs")
    if here and all(here):
        return elapsed_here_s / 60, "measured"
    return sum(walls) / max(1, workers) / 60, "estimated"


def jobs(preset: "str | Preset", names: Iterable[str] | None = None) -> list[tuple[str, int, int]]:
    """Every (model, layer, seed) the preset trains: seed 0 on every layer of T, T2, M and M0, and the
    extra SAE seeds (``SAEConfig.seeds``) on every layer of ``SAEConfig.seed_skyline``."""
    p = get_preset(preset)
    names = list(names) if names is not None else zoo.names(p, with_baseline=True)
    out = []
    for n in names:
        family, _ = zoo.spec(p, n)
        n_layers = p.transformer.n_layers if family == "transformer" else p.mamba.n_layers
        seeds = p.sae.seeds if n == p.sae.seed_skyline else p.sae.seeds[:1]
        out += [(n, layer, s) for s in seeds for layer in range(n_layers)]
    return out


def _train_job(preset: Preset, name: str, layer: int, seed: int, device: str | None, threads: int | None) -> tuple:
    """One SAE of :func:`train_all` (runs in a worker process when ``workers > 1``)."""
    cached = is_cached(preset, name, layer, seed)
    t0 = time.perf_counter()
    get(preset, name, layer, seed, device=device, progress=False, threads=threads)
    return cached, round(time.perf_counter() - t0, 2)


def train_all(preset: "str | Preset", names: Iterable[str] | None = None, *, device: str | None = None,
              progress: bool = True, threads: int | None = None, workers: int | None = None) -> list[dict]:
    """Train (or find in the cache) every SAE of :func:`jobs`, with a progress bar.

    ``workers`` (default ``SAEConfig.workers``): processes training SAEs side by side, each with ``threads``
    torch threads (default 1 when ``workers > 1``). On a CPU, one single-threaded worker per core trains
    small SAEs faster than one process using every core. Each SAE goes through the verified cache, so an
    interrupted run loses at most the SAEs in progress.
    Returns one row per SAE: model, layer, seed, folder, whether it was cached, wall seconds."""
    from tqdm.auto import tqdm

    p = get_preset(preset)
    todo = jobs(p, names)
    workers = p.sae.workers if workers is None else int(workers)
    if workers < 1:
        raise UniversalityError(f"workers must be >= 1, got {workers}")
    if device is not None and torch.device(device).type == "cuda":
        workers = 1  # one GPU: one process
    rows = []
    bar = tqdm(total=len(todo), desc=f"SAEs ({p.name})", disable=not progress)

    def done(job, cached, wall):
        name, layer, seed = job
        rows.append({"model": name, "layer": layer, "seed": seed, "cached": cached,
                     "folder": str(folder_for(p, name, layer, seed)), "wall_seconds": wall})
        bar.set_postfix_str(f"{name} L{layer} s{seed}")
        bar.update(1)

    if workers == 1:
        models = {}
        for name, layer, seed in todo:
            if name not in models:
                models.clear()  # one model in memory at a time
                models[name] = zoo.load(p, name, device=device)
            cached = is_cached(p, name, layer, seed)
            t0 = time.perf_counter()
            get(p, name, layer, seed, model=models[name], device=device, progress=False, threads=threads)
            done((name, layer, seed), cached, round(time.perf_counter() - t0, 2))
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        for name in dict.fromkeys(j[0] for j in todo):  # train (smoke) or verify the shared models once, here
            zoo.load(p, name)
        corpus.token_stream(p, "sae_train")
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(_train_job, p, n, l, s, device, threads or 1): (n, l, s) for n, l, s in todo}
            for f in cf.as_completed(futs):
                done(futs[f], *f.result())
        order = {j: i for i, j in enumerate(todo)}
        rows.sort(key=lambda r: order[(r["model"], r["layer"], r["seed"])])
    bar.close()
    return rows


# ----------------------------------------------------------------------------- metrics
@torch.no_grad()
def evaluate(sae, model, rows: torch.Tensor, hook_name: str | None = None, batch_size: int = 16,
             ignore_ids: Iterable[int] | None = None) -> dict:
    """Quality of one SAE on token ``rows`` [n, L] (BOS-first rows of the ``eval`` split).

    Returns ``n_tokens``, ``d_sae``, ``l0`` (mean active features per token), ``l0_frac`` (l0 / d_sae),
    ``fve`` (fraction of variance explained, in the per-token normalised space the SAE is trained in),
    ``fve_raw`` (on the raw residual stream), ``ce_clean``, ``ce_sae`` (SAE output spliced in at every
    non-special position), ``ce_zero`` (residual zero-ablated at every position), ``ce_recovered`` =
    (ce_zero - ce_sae) / (ce_zero - ce_clean), ``dead_frac`` / ``n_dead`` (features that never fired on
    these tokens) and ``density`` (np.ndarray [d_sae], fraction of tokens on which each feature fires).
    """
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    hook = check_compatible(sae, model, hook_name)
    rows = acts.check_rows(model, rows)
    ids = sorted(set(ignore_ids) if ignore_ids is not None else special_ids(model))
    dev = _device_of(model)
    sae_dev = sae.W_dec.device
    d_sae = int(sae.cfg.d_sae)
    fires = torch.zeros(d_sae, dtype=torch.float64)
    n_tok, l0_sum = 0, 0.0
    # running sums for the variance: sum of x, sum of |x|^2, sum of |x - x_hat|^2 (normalised and raw)
    s = {k: 0.0 for k in ("sq_n", "err_n", "sq_r", "err_r")}
    sum_n = sum_r = None
    ce = {"ce_clean": [], "ce_sae": [], "ce_zero": []}
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size].to(dev)
        _, cache_ = model.run_with_cache(batch, names_filter=[hook])
        x = cache_[hook].float().to(sae_dev)[acts.token_mask(batch, ids).to(sae_dev)]  # [t, D]
        f = sae.encode(x)  # [t, F]
        x_hat = sae.decode(f)  # [t, D] raw space
        coeff = math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # [t, 1]
        xn, xhn = x * coeff, x_hat * coeff
        active = f > 0
        fires += active.sum(0).double().cpu()
        l0_sum += active.sum().item()
        n_tok += x.shape[0]
        s["sq_n"] += xn.pow(2).sum().item()
        s["err_n"] += (xn - xhn).pow(2).sum().item()
        s["sq_r"] += x.pow(2).sum().item()
        s["err_r"] += (x - x_hat).pow(2).sum().item()
        sum_n = xn.sum(0).double() if sum_n is None else sum_n + xn.sum(0).double()
        sum_r = x.sum(0).double() if sum_r is None else sum_r + x.sum(0).double()
        m = get_recons_loss(sae, model, ActivationScaler(), batch, compute_kl=False, compute_ce_loss=True,
                            ignore_tokens=ids, hook_name=hook)
        ce["ce_clean"].append(m["ce_loss_without_sae"].float().cpu().reshape(-1))
        ce["ce_sae"].append(m["ce_loss_with_sae"].float().cpu().reshape(-1))
        ce["ce_zero"].append(m["ce_loss_with_ablation"].float().cpu().reshape(-1))
    if n_tok == 0:
        raise UniversalityError("no ordinary tokens to evaluate on (every position is BOS / a separator).")
    var_n = s["sq_n"] - (sum_n.pow(2).sum().item() / n_tok)
    var_r = s["sq_r"] - (sum_r.pow(2).sum().item() / n_tok)
    out = {"n_tokens": n_tok, "d_sae": d_sae, "l0": l0_sum / n_tok, "l0_frac": l0_sum / n_tok / d_sae,
           "fve": 1.0 - s["err_n"] / var_n, "fve_raw": 1.0 - s["err_r"] / var_r}
    out.update({k: torch.cat(v).mean().item() for k, v in ce.items()})
    gap = out["ce_zero"] - out["ce_clean"]
    out["ce_recovered"] = (out["ce_zero"] - out["ce_sae"]) / gap if gap != 0 else float("nan")
    density = (fires / n_tok).numpy()
    out["n_dead"] = int((fires == 0).sum().item())
    out["dead_frac"] = out["n_dead"] / d_sae
    out["density"] = density
    return out


def eval_rows(preset: "str | Preset") -> torch.Tensor:
    """The ``eval`` rows the metrics use: ``SAEConfig.eval_tokens`` tokens in rows of ``SAEConfig.context``."""
    p = get_preset(preset)
    stream = corpus.token_stream(p, "eval")
    available = (len(stream) - 1) // (p.sae.context - 1)
    n = max(1, min(available, math.ceil(p.sae.eval_tokens / p.sae.context)))
    return stream.rows(p.sae.context, n_rows=n)


def evaluate_all(preset: "str | Preset", names: Iterable[str] | None = None, *, seeds: Iterable[int] | None = None,
                 device: str | None = None, progress: bool = True, train_if_missing: bool = True,
                 threads: int | None = None):
    """The quality table: one row per SAE of :func:`jobs` (restricted to ``seeds`` if given).

    Returns a pandas DataFrame (model, family, layer, depth = layer / (n_layers - 1), seed, and the metrics
    of :func:`evaluate`); ``df.attrs["density"]`` maps ``(model, layer, seed)`` to the density array."""
    import pandas as pd
    from tqdm.auto import tqdm

    p = get_preset(preset)
    todo = [j for j in jobs(p, names) if seeds is None or j[2] in set(seeds)]
    rows_ = eval_rows(p)
    records, density = [], {}
    model, loaded = None, None
    for name, layer, seed in tqdm(todo, desc=f"SAE metrics ({p.name})", disable=not progress):
        if loaded != name:
            model, loaded = zoo.load(p, name, device=device), name
        sae = get(p, name, layer, seed, model=model, device=device, progress=progress,
                  train_if_missing=train_if_missing, threads=threads)
        with threads_set_to(threads):
            m = evaluate(sae, model, rows_)
        density[(name, layer, seed)] = m.pop("density")
        n_layers = model.cfg.n_layers
        records.append({"model": name, "family": model_family(model), "layer": layer,
                        "depth": layer / max(1, n_layers - 1), "seed": seed, **m})
    df = pd.DataFrame(records)
    df.attrs["density"] = density
    return df


# ----------------------------------------------------------------------------- looking at features
@torch.no_grad()
def feature_acts(sae, model, rows: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """FloatTensor [n, L, F] of feature activations on ``rows`` (0 at special positions)."""
    hook = check_compatible(sae, model)
    rows = acts.check_rows(model, rows)
    ids = special_ids(model)
    out = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size].to(_device_of(model))
        _, cache_ = model.run_with_cache(batch, names_filter=[hook])
        f = sae.encode(cache_[hook].float().to(sae.W_dec.device))  # [b, L, F]
        f = f * acts.token_mask(batch, ids).to(f.device)[..., None]
        out.append(f.cpu())
    return torch.cat(out)


def pick_features(density: np.ndarray, max_act: np.ndarray, n: int = 3, lo: float = 1e-3, hi: float = 0.05) -> list[int]:
    """``n`` features worth looking at: firing on between ``lo`` and ``hi`` of the tokens, largest peak
    activation first (falls back to any live feature when too few are in that band)."""
    density, max_act = np.asarray(density), np.asarray(max_act)
    band = np.flatnonzero((density >= lo) & (density <= hi))
    if len(band) < n:
        band = np.flatnonzero(density > 0)
    return [int(i) for i in band[np.argsort(-max_act[band], kind="stable")][:n]]


def top_activations(fa: torch.Tensor, rows: torch.Tensor, feature: int, k: int = 4, before: int = 10,
                    after: int = 3) -> list[dict]:
    """The ``k`` strongest activations of ``feature`` in ``fa`` [n, L, F] (one per row at most): for each the
    row, position, activation and the token window ``[pos - before, pos + after]`` with its activations."""
    a = fa[..., feature]  # [n, L]
    best, pos = a.max(dim=1)  # strongest position of each row
    order = torch.argsort(best, descending=True)[:k]
    out = []
    for r in order.tolist():
        if best[r] <= 0:
            break
        p_ = int(pos[r])
        lo, hi = max(0, p_ - before), min(rows.shape[1], p_ + after + 1)
        out.append({"row": r, "pos": p_, "act": float(best[r]), "tokens": rows[r, lo:hi].tolist(),
                    "values": a[r, lo:hi].tolist()})
    return out


def context_tokens(tokenizer, examples: list[dict], sep: str = "  ‖  ") -> tuple[list[str], list[float]]:
    """The windows of :func:`top_activations` as one token list and one value list (for circuitsvis'
    ``colored_tokens``), newlines shown as ⏎ and windows joined by ``sep`` (value 0)."""
    tokens, values = [], []
    for i, ex in enumerate(examples):
        if i:
            tokens.append(sep)
            values.append(0.0)
        tokens += [tokenizer.decode([t]).replace("\n", "⏎") for t in ex["tokens"]]
        values += [float(v) for v in ex["values"]]
    return tokens, values


def context_text(tokenizer, ex: dict) -> str:
    """One window as text, the token where the feature peaks in [[double brackets]]."""
    parts = []
    peak = ex["values"].index(max(ex["values"]))
    for j, t in enumerate(ex["tokens"]):
        s = tokenizer.decode([t]).replace("\n", "⏎")
        parts.append(f"[[{s}]]" if j == peak else s)
    return "".join(parts)
