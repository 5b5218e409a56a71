"""Training one SAE on the residual stream with sae-lens, and every SAE of a model from one forward pass.

An SAE reads the residual stream ``x`` after block ``l`` (``blocks.{l}.hook_resid_post``, d_model = D) and
writes it as a sparse, non-negative combination of ``F = expansion_factor * D`` learned directions:

    f(x) = ReLU(W_enc (x - b_dec) + b_enc)        [F]   feature activations (TopK: keep the k largest)
    x̂    = W_dec f(x) + b_dec                      [D]   reconstruction
    loss = ||x - x̂||² + λ Σ_i f_i(x) ||W_dec[:, i]||    (standard SAE: ReLU + L1, as in the paper)

:func:`train` uses sae-lens' own pieces: its ``ActivationsStore`` runs our model (TransformerLens
``HookedTransformer`` or the library's ``HookedMamba``, the same call) on an in-memory ``datasets.Dataset``
of ``sae_train`` rows and shuffles the activations in its mixing buffer; its ``SAETrainer`` trains a
``StandardTrainingSAE`` (or ``TopKTrainingSAE``). Choices of ours, all visible in the saved config:

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

**One forward pass for all SAEs of a model** (:func:`train_shared`, what ``saes.train_all`` uses). Training
the SAEs one by one runs the model once per SAE over the same tokens; the SAEs of one model read the same
rows in the same order, so one forward pass can feed them all. sae-lens' own runner trains one SAE per run
(its issue #540, "Is there any way to train multiple saes at the same time?", still open). The pinned
sae-lens (6.54) adds a ``MultiSAETrainer`` whose multi-hook ``ActivationsStore`` shuffles every hook with ONE
permutation; that fits the SAEs of one seed, but an SAE-seed twin (seed 1) is shuffled by its own seed when
trained alone, so one permutation cannot serve both, and its trainers would not carry our L0 steering. So
the shared pass is built here from sae-lens' parts, changing no SAE:

    store  = ActivationsStore (multi-hook)       one run_with_cache per batch of rows, every layer's hook
    groups = SAEs whose RNG state after init agrees (same seed and shape)     each with its own mixing buffer
    per step:  for each group, next batch under that group's RNG state   (the same torch.randperm as alone)
               for each SAE, its own _LoggingTrainer.step(batch[hook])   (optimizer, λ steering, curve)

Alone, an SAE of seed ``s`` seeds torch, builds its SAE (init draws from the RNG), and its mixing buffer then
draws every ``torch.randperm`` from that RNG; nothing else draws from it (the model runs in eval mode and a
training step draws nothing). Every SAE of one model and seed has the same shapes, so its init leaves the
same RNG state: replaying the buffer under that state gives each SAE the batches it would get alone, in the
same order. ``tests/test_saes_shared.py`` checks that an SAE of the shared pass equals the one trained alone
(same tokens, order and seed) to float tolerance. The saved folder is the same sae-lens folder, with the
same cache key; only ``universality.json`` adds how many SAEs shared the pass.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .. import activations as acts
from ..errors import UniversalityError
from ..models import family as model_family
from ..presets import SAEConfig
from ..runtime import device_name, model_device

__all__ = ["ARCHITECTURES", "NORMALISATION", "TrainResult", "train", "train_shared", "special_ids",
           "check_compatible", "model_fingerprint", "threads_set_to", "read_log", "info"]

META = "universality.json"
LOG = "log.jsonl"
ARCHITECTURES = ("standard", "topk")
NORMALISATION = "constant_norm_rescale"  # sae-lens' per-token rescale to norm sqrt(d_in)
_FORMAT = 1
# fields of SAEConfig that do not change a trained SAE (they are not part of its cache key)
_NOT_IN_KEY = ("workers", "eval_tokens", "seeds", "seed_skyline", "shared_max")
# options added after SAEs were first cached: part of the key only when set, so that adding one did not
# invalidate the SAEs already trained with its default
_IN_KEY_ONLY_IF_SET = {"autocast": False}


# ----------------------------------------------------------------------------- what an SAE reads
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
                    l0 = max((out.feature_acts > 0).sum(-1).float().mean().item(), 0.5)  # no [b, F] float copy
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
                    "l0": round((f > 0).sum(-1).float().mean().item(), 3),
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


@dataclass
class _Job:
    """One SAE being trained: what it reads, its sae-lens config, the SAE and (once made) its trainer."""
    layer: int
    seed: int
    hook: str
    d_in: int
    runner_cfg: object
    sae: object = None
    trainer: object = None
    rng_after_init: torch.Tensor | None = None


def _job(model, layer: int, seed: int, cfg: SAEConfig, ids: list[int], dev: torch.device, model_name: str) -> _Job:
    """The sae-lens run config of the SAE on ``blocks.{layer}.hook_resid_post`` (checked against the model)."""
    hook = acts.resid_post_hook(layer)
    acts.check_hook(model, hook)
    d_in = acts.hook_width(model, hook)
    return _Job(int(layer), int(seed), hook, d_in, _runner_config(cfg, d_in, hook, dev, model, ids, model_name))


def _init_sae(job: _Job, model, dev: torch.device) -> None:
    """Seed torch with the job's seed and build its sae-lens TrainingSAE (the init draws from that RNG), as
    ``LanguageModelSAETrainingRunner`` does; keep the CPU RNG state the init leaves (the buffer's shuffles draw
    from it next)."""
    from sae_lens import TrainingSAE

    torch.manual_seed(job.seed)
    sae = TrainingSAE.from_dict(job.runner_cfg.get_training_sae_cfg_dict())
    _set_metadata(sae, job.runner_cfg)
    sae.cfg.metadata.model_fingerprint = model_fingerprint(model)
    job.sae = sae.to(str(dev))
    job.rng_after_init = torch.get_rng_state()


def _prepare(model, cfg: SAEConfig, rows: torch.Tensor, device) -> tuple[object, list[int], torch.device]:
    """The rows checked, as the in-memory ``datasets.Dataset`` sae-lens reads; the special ids; the device."""
    import datasets

    rows = acts.check_rows(model, rows, min_len=cfg.context)[:, :cfg.context]  # [n, context]
    ids = special_ids(model)
    if not acts.token_mask(rows, ids).any():  # sae-lens would wait forever for its buffer to fill
        raise UniversalityError(
            f"rows hold no ordinary token (every position is one of the special ids {ids}: BOS / a separator), so "
            f"there is nothing to train on: pass rows of tokenized text (TokenStream.rows({cfg.context})).")
    dev = torch.device(device) if device is not None else model_device(model)
    return datasets.Dataset.from_dict({"tokens": rows.cpu().numpy()}), ids, dev


@contextlib.contextmanager
def _eval_mode(model):
    """Run the block with the model in eval mode, then put its mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def train(model, layer: int, cfg: SAEConfig, rows: torch.Tensor, *, seed: int = 0, folder: str | Path | None = None,
          device: str | torch.device | None = None, progress: bool = True, model_name: str = "custom",
          extra_info: dict | None = None, threads: int | None = None) -> TrainResult:
    """Train one SAE on ``blocks.{layer}.hook_resid_post`` of ``model`` with sae-lens; no cache.

    ``rows``: LongTensor [n, context] of token rows that start with BOS (``TokenStream.rows(cfg.context)``).
    ``seed`` seeds torch before sae-lens builds the SAE and its buffer (init and shuffling).
    With ``folder`` the SAE is written there in sae-lens' format (plus ``log.jsonl`` and ``universality.json``).
    ``threads``: torch intra-op threads while training (None: as set; see :func:`threads_set_to`).
    Mirrors sae-lens' ``LanguageModelSAETrainingRunner.run`` (store, SAE, ``SAETrainer.fit``).
    """
    from sae_lens.training.activations_store import ActivationsStore

    _check_config(cfg)
    ds, ids, dev = _prepare(model, cfg, rows, device)
    job = _job(model, layer, seed, cfg, ids, dev, model_name)
    n_steps = job.runner_cfg.total_training_steps
    t0 = time.perf_counter()
    with _eval_mode(model), _quiet_sae_lens(progress), threads_set_to(threads):
        torch.manual_seed(seed)
        store = ActivationsStore.from_config(model, job.runner_cfg, override_dataset=ds)
        _init_sae(job, model, dev)  # seeds again: the store drew nothing from the RNG
        job.trainer = _make_trainer(job.runner_cfg, job.sae, _normalised(iter(store)), n_steps, progress, cfg)
        job.sae = job.trainer.fit()
    return _save(job, model, cfg, dev, time.perf_counter() - t0, threads, extra_info, folder)


def train_shared(model, layers_seeds: list[tuple[int, int]], cfg: SAEConfig, rows: torch.Tensor, *,
                 folders: list[str | Path] | None = None, device: str | torch.device | None = None,
                 progress: bool = True, model_name: str = "custom", extra_info: list[dict] | None = None,
                 threads: int | None = None) -> list[TrainResult]:
    """Train the SAEs ``(layer, seed)`` of one model from one forward pass per batch of rows (see the module
    docstring); each result equals ``train(model, layer, cfg, rows, seed=seed)`` to float tolerance.

    ``folders`` / ``extra_info``: one per SAE, as ``train``'s ``folder`` / ``extra_info``. Returns one
    :class:`TrainResult` per SAE, in the order asked; each records a share of the pass's wall time (the pass
    divided by the SAEs), so that the walls of a model's SAEs still add up to its training time."""
    from sae_lens.training.activations_store import ActivationsStore
    from sae_lens.training.mixing_buffer import multi_hook_concat_split_iter
    from tqdm.auto import tqdm

    _check_config(cfg)
    if not layers_seeds:
        return []
    if len(set(layers_seeds)) != len(layers_seeds):
        raise UniversalityError(f"each (layer, seed) once: got {layers_seeds}")
    from sae_lens.training.sae_trainer import SAETrainer

    for cls, seam in [(ActivationsStore, "from_config_multi_hook"),
                      (ActivationsStore, "_iterate_filtered_multi_hook_activations"), (SAETrainer, "step"),
                      (SAETrainer, "maybe_reset_sparsity"), (SAETrainer, "full_sparsity_window_log"),
                      (SAETrainer, "set_final_sae_metadata")]:  # the seams of SAETrainer.fit's loop we drive
        if not hasattr(cls, seam):
            raise UniversalityError(f"this sae-lens version has no {cls.__name__}.{seam}; pin sae-lens 6.54.")
    ds, ids, dev = _prepare(model, cfg, rows, device)
    jobs = [_job(model, layer, seed, cfg, ids, dev, model_name) for layer, seed in layers_seeds]
    rc = jobs[0].runner_cfg
    n_steps = rc.total_training_steps
    t0 = time.perf_counter()
    with _eval_mode(model), _quiet_sae_lens(False), threads_set_to(threads):
        hooks = list(dict.fromkeys(j.hook for j in jobs))
        store = ActivationsStore.from_config_multi_hook(
            model, dataset=ds, hook_names=hooks, hook_d_ins={j.hook: j.d_in for j in jobs}, streaming=False,
            context_size=rc.context_size, n_batches_in_buffer=rc.n_batches_in_buffer,
            total_training_tokens=rc.training_tokens, store_batch_size_prompts=rc.store_batch_size_prompts,
            train_batch_size_tokens=rc.train_batch_size_tokens, prepend_bos=rc.prepend_bos,
            normalize_activations=rc.sae.normalize_activations, device=torch.device(rc.act_store_device),
            dtype=rc.dtype, model_kwargs=rc.model_kwargs, autocast_lm=rc.autocast_lm,
            seqpos_slice=rc.seqpos_slice,
            exclude_special_tokens=torch.tensor(ids, dtype=torch.long, device=torch.device(rc.act_store_device)),
            disable_concat_sequences=rc.disable_concat_sequences,
            sequence_separator_token=rc.sequence_separator_token,
            activations_mixing_fraction=rc.activations_mixing_fraction)
        for j in jobs:
            _init_sae(j, model, dev)
            j.trainer = _make_trainer(j.runner_cfg, j.sae, iter(()), n_steps, False, cfg)
            j.sae.to(j.trainer.cfg.device)  # as SAETrainer.fit
        # SAEs whose init left the same RNG state get the same shuffles alone: one mixing buffer per state
        groups: dict[bytes, list[_Job]] = {}
        for j in jobs:
            groups.setdefault(j.rng_after_init.numpy().tobytes(), []).append(j)
        # one forward pass per batch of rows ([tokens, d_in] per hook), read by every group's buffer
        raw = itertools.tee(store._iterate_filtered_multi_hook_activations(), len(groups))
        buffer_size = store.n_batches_in_buffer * store.training_context_size
        streams = []
        for (_, members), src in zip(groups.items(), raw):
            it = multi_hook_concat_split_iter(buffer_size, store.train_batch_size_tokens, src,
                                              list(dict.fromkeys(j.hook for j in members)),
                                              store.activations_mixing_fraction)
            streams.append([members, it, members[0].rng_after_init])
        bar = tqdm(total=n_steps, desc=f"{len(jobs)} SAEs, one pass", disable=not progress)
        quiet_bar = tqdm(disable=True)
        total = jobs[0].trainer.cfg.total_training_samples
        while jobs[0].trainer.n_training_samples < total:  # SAETrainer.fit's loop, in lockstep
            for s in streams:  # each buffer draws its torch.randperm from its own RNG state
                members, it, state = s
                torch.set_rng_state(state)
                batch = next(it)  # {hook: [batch_tokens, d_in]}
                s[2] = torch.get_rng_state()
                for j in members:
                    tr = j.trainer
                    tr.maybe_reset_sparsity()
                    out = tr.step(acts.normalise_tokens(batch[j.hook]))
                    tr.n_training_steps += 1
                    tr._update_pbar(out, quiet_bar)
            bar.update(1)
        bar.close()
        for j in jobs:  # the end of SAETrainer.fit (constant_norm_rescale: no scaling factor to fold)
            j.trainer.full_sparsity_window_log()
            j.trainer.set_final_sae_metadata()
    wall = time.perf_counter() - t0
    folders = list(folders) if folders is not None else [None] * len(jobs)
    extra = list(extra_info) if extra_info is not None else [{}] * len(jobs)
    if len(folders) != len(jobs) or len(extra) != len(jobs):
        raise UniversalityError(f"{len(jobs)} SAEs but {len(folders)} folders and {len(extra)} extra_info")
    shared = {"shared_pass": {"saes": len(jobs), "wall_seconds": round(wall, 2)}}
    return [_save(j, model, cfg, dev, wall / len(jobs), threads, {**shared, **e}, f)
            for j, f, e in zip(jobs, folders, extra)]


def _save(job: _Job, model, cfg: SAEConfig, dev: torch.device, wall: float, threads: int | None,
          extra_info: dict | None, folder) -> TrainResult:
    """Write the trained SAE in sae-lens' format (plus ``log.jsonl``, ``universality.json``) and load it back."""
    from sae_lens import SAE
    from sae_lens.constants import RUNNER_CFG_FILENAME, SPARSITY_FILENAME
    from safetensors.torch import save_file

    trainer, sae, runner_cfg = job.trainer, job.sae, job.runner_cfg
    n_steps = runner_cfg.total_training_steps
    tokens = n_steps * cfg.batch_tokens
    info_ = {
        "format": _FORMAT, "layer": job.layer, "hook_name": job.hook, "family": model_family(model),
        "seed": job.seed, "d_in": job.d_in, "d_sae": int(sae.cfg.d_sae), "sae_config": _key_config(cfg),
        "steps": n_steps, "training_tokens": tokens, "wall_seconds": round(wall, 2),
        "tokens_per_second": round(tokens / wall, 1), "device": dev.type,
        "torch_threads": threads or torch.get_num_threads(), "machine": device_name(dev),
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


_RUNNER_METADATA = ("dataset_path", "hook_name", "model_name", "model_class_name", "hook_head_index", "context_size",
                    "seqpos_slice", "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
                    "sequence_separator_token", "disable_concat_sequences")


def _set_metadata(sae, runner_cfg) -> None:
    """What sae-lens' LanguageModelSAETrainingRunner records in the SAE's metadata (saved in cfg.json)."""
    for k in _RUNNER_METADATA:
        setattr(sae.cfg.metadata, k, getattr(runner_cfg, k))


def _sae_lens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # pragma: no cover
        return "unknown"


def read_log(folder: str | Path) -> list[dict]:
    path = Path(folder) / LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def info(folder: str | Path) -> dict:
    return json.loads((Path(folder) / META).read_text())
