"""The model zoo of a preset: build, train, save, verify and load T, T2, M (and the random M0).

==========  ===============================================================================
``T``       Transformer, seed 0
``T2``      the same config, seed 1 (model-seed skyline)
``M``       Mamba, seed 0, twice as many layers as ``T``, parameter count close to ``T``'s
``M0``      ``M``'s config, untrained (random baseline); built, never trained
==========  ===============================================================================

Where checkpoints live:

* ``tiny``: shipped in the repository under ``universality_lib/zoo/tiny/<name>/`` (with the shared
  tokenizer in ``zoo/tiny/tokenizer/``), each folder with a sha256 manifest that is checked at load.
* ``smoke``: trained on demand (about a minute) into the cache, keyed by everything that produced them.
* ``paper``: Pythia-160M / Pythia-160M-seed1 / Mamba-130M from the Hugging Face hub.

A checkpoint folder holds ``config.json`` + ``model.safetensors`` (the family's own format),
``train_meta.json`` (preset, seed, tokenizer hash, corpus manifest hash, wall time, machine),
``corpus_manifest.json``, ``log.jsonl`` (the loss curve) and ``MANIFEST.sha256``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from . import cache, corpus
from .circuits.induction import training_probe
from .errors import UniversalityError
from .models import family as model_family, n_params
from .presets import Preset, get as get_preset, hub_name, shipped_dir
from .runtime import device_name, resolve_device
from .train import CHECKPOINT, check_max_steps, read_log, train

RANDOM_BASELINE = "M0"


def names(preset: "str | Preset", with_baseline: bool = False) -> list[str]:
    out = [n for n, _, _ in get_preset(preset).zoo]
    return out + [RANDOM_BASELINE] if with_baseline else out


def spec(preset: "str | Preset", name: str) -> tuple[str, int]:
    """(family, seed) of a zoo member."""
    p = get_preset(preset)
    if name == RANDOM_BASELINE:
        return "mamba", 0
    for n, family, seed in p.zoo:
        if n == name:
            return family, seed
    raise UniversalityError(f"unknown model {name!r} in preset {p.name!r}: choose one of "
                            f"{', '.join(names(p, True))}")


def recipe_trials(preset: "str | Preset") -> list[dict]:
    """The training recipes tried before the shipped one (scratch runs, measured, not re-run by the book)."""
    f = shipped_dir(preset) / "recipe_trials.json"
    return json.loads(f.read_text())["trials"] if f.exists() else []


# ----------------------------------------------------------------------------- build / save / load
def build(preset: "str | Preset", name: str, tokenizer=None, device: str = "cpu"):
    """A freshly initialised (untrained) model of the zoo, deterministic in its seed."""
    p = get_preset(preset)
    family, seed = spec(p, name)
    tok = tokenizer if tokenizer is not None else corpus.load_tokenizer(p)
    d_vocab = len(tok)
    if family == "transformer":
        from .models.transformer import make_transformer

        return make_transformer(p.transformer, d_vocab, seed=seed, tokenizer=tok, device=device)
    from .models.mamba import HookedMamba, MambaConfig

    cfg = MambaConfig.from_size(p.mamba, d_vocab, n_ctx=p.transformer.n_ctx, seed=seed, device=torch.device(device))
    return HookedMamba(cfg, tokenizer=tok)


def save_model(model, folder: str | Path) -> None:
    if model_family(model) == "transformer":
        from .models.transformer import save_transformer

        save_transformer(model, folder)
    else:
        model.save(folder)


def load_weights(model, folder: str | Path) -> None:
    """The weights ``save_model`` wrote to ``folder`` into ``model`` (built with the same config), every name and
    shape checked. A Mamba goes through ``mamba_io``: its file has no ``lm_head.weight`` when the embedding is tied,
    and the head is tied to the loaded embedding again (a plain strict load refused such a file: a tied M's training
    run could not resume from its checkpoint)."""
    from safetensors.torch import load_file

    if model_family(model) == "mamba":
        from .models import mamba_io

        mamba_io.load_weights(model, mamba_io.read_own(folder, tokenizer=model.tokenizer))
        return
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=True)


def load_folder(folder: str | Path, tokenizer, device: str = "cpu"):
    """Load a verified checkpoint folder written by ``save_model``."""
    folder = Path(folder)
    cache.verify_manifest(folder, required=("config.json", "model.safetensors"))
    meta = json.loads((folder / "config.json").read_text())
    trained = folder / "train_meta.json"
    if trained.exists():
        want = json.loads(trained.read_text()).get("tokenizer_sha")
        have = corpus.tokenizer_hash(tokenizer)
        if want and want != have:
            raise UniversalityError(
                f"the tokenizer does not match checkpoint {folder} (tokenizer hash {have} vs {want} recorded "
                f"at training): load the tokenizer saved with the models (corpus.load_tokenizer(preset)).")
    if meta.get("family") == "transformer":
        from .models.transformer import load_transformer

        return load_transformer(folder, tokenizer=tokenizer, device=device)
    from .models.mamba import HookedMamba

    model = HookedMamba.load(folder, tokenizer=tokenizer)
    return model.to(device)


def model_dir(preset: "str | Preset", name: str) -> Path:
    """Where the trained checkpoint of ``name`` lives (it may not exist yet)."""
    p = get_preset(preset)
    if p.shipped:
        return shipped_dir(p) / name
    return cache.cache_dir() / "models" / p.name / _key(p) / name


def _key(p: Preset) -> str:
    d = p.to_dict()
    # a Mamba-only field left unset trains every model as the shared fields say: it stays out of the key, so adding
    # such a field to TrainConfig leaves the keys of the recipes that do not set it (and their records) as they were
    train = {k: v for k, v in d["train"].items() if not (k.startswith("mamba_") and v is None)}
    return cache.stable_hash({"transformer": d["transformer"], "mamba": d["mamba"], "train": train,
                              "corpus": d["corpus"], "v": 2})


def load(preset: "str | Preset", name: str, device: str | None = None, train_if_missing: bool | None = None):
    """A trained zoo model, ready for analysis (eval mode).

    ``tiny`` loads the shipped checkpoint (verified by hash); ``smoke`` trains it into the cache the first
    time; ``paper`` loads from the hub. ``M0`` is always the untrained baseline.
    """
    p = get_preset(preset)
    device = str(resolve_device(device))
    if p.needs_internet:
        return _load_paper(p, name, device)
    tok = corpus.load_tokenizer(p)
    if name == RANDOM_BASELINE:
        return build(p, name, tokenizer=tok, device=device).eval()
    spec(p, name)  # validates the name
    folder = model_dir(p, name)
    cache.recover(folder)  # an install killed half-way left the previous checkpoint aside
    if not (folder / cache.MANIFEST).exists():
        if train_if_missing is None:
            train_if_missing = not p.shipped
        if p.shipped and folder.exists() and not train_if_missing:
            cache.read_manifest(folder)  # a shipped folder without its manifest: the error says to restore it
        if not train_if_missing:
            fix = f"restore it with `git checkout -- {folder}`, or retrain it with " if p.shipped else "train it with "
            raise UniversalityError(
                f"no trained checkpoint for {name!r} at {folder}: {fix}"
                f"`python -m universality_lib train --preset {p.name}` (resumable; uses a GPU when there is one), "
                f"or run the book at preset 'smoke'.")
        train_model(p, name, device=device)
    return load_folder(folder, tok, device=device).eval()


def _load_paper(p: Preset, name: str, device: str):
    if name == RANDOM_BASELINE:
        from .models.mamba import HookedMamba

        tok = corpus.load_tokenizer(p)
        ref = HookedMamba.from_pretrained(hub_name(p, "M"), tokenizer=tok)
        with torch.random.fork_rng(devices=[]):  # seeded: the same M0 at every load (its SAEs fit it)
            torch.manual_seed(spec(p, name)[1])
            fresh = HookedMamba(ref.cfg, tokenizer=tok)
        return fresh.to(device).eval()
    family, _ = spec(p, name)
    hub = hub_name(p, name)
    tok = corpus.load_tokenizer(p)  # the one tokenizer of the preset, for both families
    if family == "transformer":
        from .models.transformer import load_gpt_neox

        return load_gpt_neox(hub, tokenizer=tok, device=device).eval()
    from .models.mamba import HookedMamba

    return HookedMamba.from_pretrained(hub, tokenizer=tok).to(device).eval()


# ----------------------------------------------------------------------------- training
def train_model(preset: "str | Preset", name: str, device: str | None = None, work_dir: str | Path | None = None,
                max_steps: int | None = None, progress: bool = True, dest: str | Path | None = None) -> Path | None:
    """Train zoo member ``name`` from scratch (resuming a run in ``work_dir``) and install the result: in the
    preset's zoo (:func:`model_dir`; at ``tiny`` that replaces the shipped checkpoint), or in ``dest / name``.

    Returns the installed checkpoint folder, or None when ``max_steps`` stopped a longer run early
    (run again to continue).
    """
    p = get_preset(preset)
    family, seed = spec(p, name)
    if name == RANDOM_BASELINE:
        raise UniversalityError(f"{RANDOM_BASELINE} is the untrained baseline: there is nothing to train.")
    if p.needs_internet:
        raise UniversalityError("the 'paper' preset uses the published checkpoints; there is nothing to train.")
    dev = resolve_device(device)
    check_max_steps(max_steps)
    work = run_dir(p, name, work_dir)
    cache.writable_dir(work, "the training folder", "choose another --work-dir (work_dir=)")
    folder = Path(dest) / name if dest else model_dir(p, name)
    if dest:  # refused before hours of training, not at the install
        cache.writable_dir(Path(dest), "the folder for the trained models", "choose another --dest (dest=)")
    tok = corpus.load_tokenizer(p)
    stream = corpus.token_stream(p, "lm_train", tok)
    vocab = corpus.frequent_tokens(corpus.token_stream(p, "eval", tok), 1000)
    model = build(p, name, tokenizer=tok, device=str(dev))
    eval_fn = training_probe(p, tok, vocab)  # induction as it forms: repeat losses (+ natural-text ratios, zoo v2)

    torch.manual_seed(seed)
    state = train(model, stream, p.train, work, seed=seed, save_model=save_model, load_weights=load_weights,
                  repeat_vocab=vocab, eval_fn=eval_fn, device=dev, progress=progress, max_steps=max_steps)
    total = p.train.for_family(family).steps  # a Mamba's own token budget (mamba_tokens), as train() resolves it
    if state.step < total:
        print(f"[zoo] {name}: stopped at step {state.step}/{total}; run again to continue.")
        return None
    manifest = corpus.manifest(p)
    with cache.building(folder) as tmp:
        save_model(model.cpu(), tmp)
        (tmp / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in read_log(work)))  # one row per step
        cache.atomic_write_json(tmp / "corpus_manifest.json", manifest)
        cache.atomic_write_json(tmp / "train_meta.json", {
            "preset": p.name, "name": name, "family": family, "seed": seed,
            "tokenizer_sha": corpus.tokenizer_hash(tok), "corpus_sha256": manifest["sha256"],
            "train": p.to_dict()["train"], "steps": state.step, "tokens": state.tokens,
            "wall_seconds": round(state.wall_seconds, 1), "final_loss": state.last_loss,
            "device": dev.type, "machine": device_name(dev), "threads": torch.get_num_threads(),
            "n_params": n_params(model),
        })
    return folder


def run_dir(preset: "str | Preset", name: str, work_dir: str | Path | None = None) -> Path:
    """The resumable training folder of ``name`` (``work_dir`` given: that folder itself; else in the cache)."""
    p = get_preset(preset)
    return Path(work_dir) if work_dir else cache.cache_dir() / "runs" / p.name / _key(p) / name


RUN_RECORD = "train_run.json"  # beside the installed models: the last whole `train` command that finished them
# issue 14: the shipped zoo (T, T2, M) trains from scratch with one `train --preset tiny` in this many hours on the
# project's 2-core CPU
TRAIN_BUDGET_HOURS = 3.0


def train_models(preset: "str | Preset", models: list[str] | None = None, device: str | None = None,
                 work_dir: str | Path | None = None, max_steps: int | None = None,
                 jobs: int | None = None, dest: str | Path | None = None) -> dict[str, Path | None]:
    """Train several zoo members (``train_model`` each), ``jobs`` of them side by side in their own processes.

    ``jobs`` defaults to one per core on a CPU, at most one per model (each with ``cores // jobs`` threads: small
    models use a core better one thread each; the tiny M measured 3.3 s a step on one thread and 1.7-2.0 s on two, so
    two models side by side make more steps than one on both cores), and to 1 on a GPU. More processes than cores
    only take turns on them, and leave a core idle once the short runs end, so the longest runs start first (the
    Mamba: at tiny its steps take twice a Transformer's) and the others follow as workers free up: at tiny on 2
    cores M on one and T then T2 on the other. Thread counts and machines change only float rounding, but that is
    enough for a retrained model to differ from the shipped one: at tiny, 50 steps on one thread equal the shipped
    logs bit for bit (T and M, M shipped from two threads); later T's losses differ in the 7th digit and M's run
    drifts off (a loss spike at another step by step 300). So a retrained zoo is compared by its measures
    (``check``, ``check --zoo DEST`` for one trained with ``dest``), not by its bits. ``dest``: install the models
    and the run's record there instead of in the preset's zoo (at ``tiny``: the shipped files stay as they are).
    Returns name -> the installed folder (None: not finished, run again to resume)."""
    p = get_preset(preset)
    models = list(models or names(p))
    for name in models:
        spec(p, name)
    dev = resolve_device(device)
    check_max_steps(max_steps)
    if jobs is None:
        jobs = 1 if dev.type == "cuda" else max(1, min(len(models), os.cpu_count() or 1))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UniversalityError(f"jobs must be a whole number >= 1 (models trained side by side), got {jobs!r}.")
    work = lambda name: Path(work_dir) / name if work_dir else None  # noqa: E731
    resumed = sorted(n for n in models if (run_dir(p, n, work(n)) / CHECKPOINT).exists())
    order, workers = longest_first(p, models), min(jobs, len(models))
    t0, started = time.time(), _utc_now()
    if workers == 1:
        threads = torch.get_num_threads()
        done = {n: train_model(p, n, device=device, work_dir=work(n), max_steps=max_steps, dest=dest) for n in order}
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            futures = {n: pool.submit(train_model, p, n, device, work(n), max_steps, True, dest) for n in order}
            done = {n: f.result() for n, f in futures.items()}
    done = {n: done[n] for n in models}  # in the order asked for
    if all(done.values()):  # every model installed: record what the whole command took
        cache.atomic_write_json((Path(dest) if dest else _zoo_folder(p)) / RUN_RECORD, {
            "preset": p.name, "recipe": _key(p), "models": models, "order": order,
            "jobs": workers, "threads": threads, "device": dev.type, "machine": device_name(dev),
            "cpu_count": os.cpu_count(), "started": started, "finished": _utc_now(),
            "wall_seconds": round(time.time() - t0, 1),
            # models that continued from a checkpoint: their earlier sittings are not in wall_seconds
            "resumed": resumed,
        })
    return done


def run_record(preset: "str | Preset", folder: str | Path | None = None) -> dict:
    """What the last whole ``train`` command of ``preset`` took (:data:`RUN_RECORD` in its zoo, or in ``folder``,
    a ``train --dest``); {} when none finished. Its ``recipe`` is the preset's recipe key then (models, training and
    corpus configs): :func:`recipe_key` now tells whether the record is of the recipe the preset trains today."""
    path = (Path(folder) if folder else _zoo_folder(get_preset(preset))) / RUN_RECORD
    if not path.exists():
        return {}
    try:
        run = json.loads(path.read_text())
    except ValueError as e:
        run = e
    if not isinstance(run, dict) or not {"models", "wall_seconds", "resumed"} <= set(run):
        raise UniversalityError(f"{path} is not a record of a `train` command ({run if isinstance(run, ValueError) else 'fields missing'}): "
                                f"restore it with `git checkout -- {path}` or delete it (the next whole `train` writes "
                                "it again).")
    return run


def recipe_key(preset: "str | Preset") -> str:
    """The key of what a preset's zoo is trained from (model sizes, training config, corpus config): a record or a
    model folder made under another key was made by another recipe."""
    return _key(get_preset(preset))


def _zoo_folder(p: Preset) -> Path:
    """The folder that holds a preset's trained models (:func:`model_dir` of each) and its :data:`RUN_RECORD`."""
    return model_dir(p, names(p)[0]).parent


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def longest_first(preset: "str | Preset", models: list[str]) -> list[str]:
    """``models`` in the order :func:`train_models` starts them, side by side or one after another: Mamba runs
    first (a step of the tiny M takes twice one of T, at equal tokens and parameters within 15%), otherwise as
    given."""
    p = get_preset(preset)
    return sorted(models, key=lambda n: spec(p, n)[0] != "mamba")


def ship_tokenizer(preset: "str | Preset") -> Path:
    """Copy the preset's (cached) tokenizer into the shipped zoo folder, with its manifest."""
    p = get_preset(preset)
    src = corpus.tokenizer_folder(p)
    dest = shipped_dir(p) / "tokenizer"
    if src.resolve() == dest.resolve():
        return dest
    with cache.building(dest) as tmp:
        for f in src.iterdir():
            if f.is_file() and f.name != cache.MANIFEST:
                shutil.copy(f, tmp / f.name)
    return dest


def train_meta(preset: "str | Preset", name: str) -> dict:
    path = model_dir(preset, name) / "train_meta.json"
    return json.loads(path.read_text()) if path.exists() else {}
