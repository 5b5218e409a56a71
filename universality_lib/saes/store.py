"""The SAE cache: which SAEs a preset trains, where each lives, what identifies it, and training them all.

Cache (:func:`get`): ``cache_dir()/saes/<preset>/<model>/L<layer>-s<seed>-<key>/`` where the key hashes the
model checkpoint (the MANIFEST digest of its folder; for the untrained ``M0`` its config and seed), the
layer, the SAE config, the SAE seed and the ``sae_train`` token stream. The folder is sae-lens' own format
(``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``, ``runner_cfg.json``;
``sae_lens.SAE.load_from_disk`` reads it) plus ``universality.json`` (what produced it) and ``log.jsonl``
(the training curve), all under a sha256 manifest. One SAE is one folder written atomically, so an
interrupted :func:`train_all` loses at most the SAEs in progress; a folder that fails its manifest is
retrained; a folder whose ``universality.json`` disagrees with what was asked raises, naming the fields.

:func:`train_all` trains every missing SAE of a model in one shared forward pass (``train.train_shared``),
one model per worker process when ``workers > 1``; the cache key does not depend on the pass.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable

import torch

from .. import activations as acts
from .. import cache, corpus, zoo
from ..errors import IntegrityError, UniversalityError
from ..presets import Preset, get as get_preset, hub_name
from ..runtime import model_device
from .train import _FORMAT, META, _key_config, check_compatible, train, train_shared

__all__ = ["KIND", "model_hash", "folder_for", "load_folder", "get", "is_cached", "jobs", "train_all",
           "total_train_minutes"]

KIND = "saes"


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


def _expected(p: Preset, name: str, layer: int, seed: int, stream_sha: str, mhash: str | None = None) -> dict:
    """What a cached SAE must have been written for (its ``universality.json`` fields; the cache key hashes it)."""
    return {"preset": p.name, "model": name, "layer": int(layer), "seed": int(seed),
            "model_hash": model_hash(p, name) if mhash is None else mhash, "data_sha256": stream_sha,
            "sae_config": _key_config(p.sae)}


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
    dev = device or str(model_device(model))
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
    """One SAE of :func:`train_all` with ``shared=False`` (runs in a worker process when ``workers > 1``)."""
    cached = is_cached(preset, name, layer, seed)
    t0 = time.perf_counter()
    get(preset, name, layer, seed, device=device, progress=False, threads=threads)
    return cached, round(time.perf_counter() - t0, 2)


def _train_model(preset: Preset, name: str, todo: list[tuple[str, int, int]], device: str | None,
                 threads: int | None, progress: bool = False, model=None) -> list[tuple]:
    """Every SAE of one model in ``todo``: the cached ones loaded (verified), the missing ones trained together
    in one shared forward pass (``train_shared``) under their cache locks, each then written to its own entry.
    Returns ``(job, cached, wall_seconds)`` per SAE, in ``todo``'s order (runs in a worker process too)."""
    p = preset
    model = zoo.load(p, name, device=device) if model is None else model
    dev = device or str(model_device(model))
    stream = corpus.token_stream(p, "sae_train")  # once per model, not once per SAE
    mhash = model_hash(p, name)
    entry = {}
    for job in todo:
        expected = _expected(p, name, job[1], job[2], stream.sha256, mhash)
        entry[job] = (expected, cache.cache_dir() / _kind(p, name) / _key(expected))
    out = {}
    missing = [j for j in todo if cache.verified_folder(_kind(p, name), entry[j][1].name) is None]
    with contextlib.ExitStack() as locks:
        for j in sorted(missing, key=lambda j: str(entry[j][1])):  # one order: two runs cannot deadlock
            locks.enter_context(cache.locked(entry[j][1]))
        missing = [j for j in missing if cache.verified_folder(_kind(p, name), entry[j][1].name) is None]
        size = p.sae.shared_max or max(1, len(missing))
        for g in range(0, len(missing), size):  # SAEConfig.shared_max SAEs per forward pass (memory)
            group = missing[g:g + size]
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                folders = [Path(tmp) / f"L{l}-s{s}" for _, l, s in group]
                results = train_shared(model, [(l, s) for _, l, s in group], p.sae, stream.rows(p.sae.context),
                                       folders=folders, device=dev, progress=progress,
                                       model_name=f"universality_lib/{p.name}/{name}",
                                       extra_info=[entry[j][0] for j in group], threads=threads)
                share = round((time.perf_counter() - t0) / len(group), 2)
                for j, src in zip(group, folders):
                    cache.cached_folder(_kind(p, name), entry[j][1].name,
                                        lambda tmp_, src=src: shutil.copytree(src, tmp_, dirs_exist_ok=True))
                    out[j] = (False, share)
                del results
    for j in todo:
        t0 = time.perf_counter()
        load_folder(entry[j][1], expect=entry[j][0], model=model, device=dev)  # verified, as get() returns it
        if j not in out:
            out[j] = (True, round(time.perf_counter() - t0, 2))
    return [(j, *out[j]) for j in todo]


def train_all(preset: "str | Preset", names: Iterable[str] | None = None, *, device: str | None = None,
              progress: bool = True, threads: int | None = None, workers: int | None = None,
              shared: bool = True) -> list[dict]:
    """Train (or find in the cache) every SAE of :func:`jobs`, with a progress bar.

    ``shared`` (default): the missing SAEs of a model are trained together from one forward pass of the model
    per batch (``train_shared``; each equals the SAE trained alone, and has the same cache key); ``False``:
    one by one (``get``), the model run once per SAE.
    ``workers`` (default ``SAEConfig.workers``): processes side by side (one model each when ``shared``, else
    one SAE each), each with ``threads`` torch threads (default 1 when ``workers > 1``). On a CPU, one
    single-threaded worker per core trains small SAEs faster than one process using every core. Each SAE goes
    through the verified cache, so an interrupted run loses at most the SAEs in progress.
    Returns one row per SAE: model, layer, seed, folder, whether it was cached, wall seconds (a trained SAE of
    the shared pass gets its share of the pass)."""
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
    sha = corpus.token_stream(p, "sae_train").sha256
    hashes = {}

    def done(job, cached, wall):
        name, layer, seed = job
        if name not in hashes:
            hashes[name] = model_hash(p, name)
        key = _key(_expected(p, name, layer, seed, sha, hashes[name]))
        rows.append({"model": name, "layer": layer, "seed": seed, "cached": cached,
                     "folder": str(cache.cache_dir() / _kind(p, name) / key), "wall_seconds": wall})
        bar.set_postfix_str(f"{name} L{layer} s{seed}")
        bar.update(1)

    by_model = {n: [j for j in todo if j[0] == n] for n in dict.fromkeys(j[0] for j in todo)}
    if workers == 1:
        for name, model_jobs in by_model.items():  # one model in memory at a time
            if shared:
                for job, cached, wall in _train_model(p, name, model_jobs, device, threads):
                    done(job, cached, wall)
                continue
            model = zoo.load(p, name, device=device)
            for job in model_jobs:
                cached = is_cached(p, *job)
                t0 = time.perf_counter()
                get(p, *job, model=model, device=device, progress=False, threads=threads)
                done(job, cached, round(time.perf_counter() - t0, 2))
            del model
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        for name in by_model:  # train (smoke) or verify the shared models once, here
            zoo.load(p, name)
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            if shared:
                futs = [pool.submit(_train_model, p, n, js, device, threads or 1) for n, js in by_model.items()]
                for f in cf.as_completed(futs):
                    for job, cached, wall in f.result():
                        done(job, cached, wall)
            else:
                futs = {pool.submit(_train_job, p, n, l, s, device, threads or 1): (n, l, s) for n, l, s in todo}
                for f in cf.as_completed(futs):
                    done(futs[f], *f.result())
        order = {j: i for i, j in enumerate(todo)}
        rows.sort(key=lambda r: order[(r["model"], r["layer"], r["seed"])])
    bar.close()
    return rows
