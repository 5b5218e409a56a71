"""Chapter 3's experiments: MPPC of T's units against another model's, every layer pair, on the `eval` stream.

==================  =====================================================================================
``random``          T's SAE features vs the untrained Mamba M0's (random baseline)
``main``            T's SAE features vs M's (the cross-architecture measurement)
``model_seed``      T's SAE features vs T2's, the same architecture trained with another seed (skyline)
``sae_seed``        T's SAE features (SAE seed 0) vs T's second SAE seed on the same layers (skyline)
``neurons_random``  T's MLP neurons vs M0's [SiLU(conv x); SiLU(gate)] (neuron baseline, random)
``neurons_main``    T's MLP neurons vs M's (neuron baseline, main)
==================  =====================================================================================

Units: SAE features of ``blocks.{l}.hook_resid_post`` (``saes.get``); T's neurons are
``blocks.{l}.mlp.hook_post`` (post-GELU, d_mlp); a Mamba block's "neurons" are its two nonlinearity
outputs, ``hook_ssm_input`` (x = SiLU(conv(x_in)), E) and SiLU(``hook_skip``) (the activated gate, E),
concatenated to 2E per layer, as in the authors' code.

Token sample: ``Preset.mppc_tokens`` ordinary tokens of the `eval` split, in rows of ``SAEConfig.context``
that start with BOS; BOS and document separators are left out, so token k is the same token for both
models. Every source carries the hash of the token rows it was run on, and two sources with different
hashes are refused (``corpus.check_same_stream``).

One pass over the tokens runs each model once per chunk and updates every condition's statistics; when
all pairs would not fit in ``max_gb``, the pairs are split into several passes. Each condition's result is
cached (``cache.cached_folder``) under a key made of the models' checkpoint hashes, the SAEs' cache keys,
the token rows' hash and the engine version.
"""
from __future__ import annotations

import hashlib
import math
import shutil
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import activations as acts
from .. import cache, corpus, zoo
from .. import saes as saes_mod
from ..errors import StreamMismatchError, UniversalityError
from ..models import family as model_family
from ..presets import Preset, get as get_preset
from ..runtime import model_device
from . import codes
from .engine import PairStats, default_backend
from .result import MPPCResult

__all__ = ["Condition", "conditions", "Source", "mppc_rows", "rows_hash", "compute", "default_max_gb", "run", "summary_table",
           "neuron_hooks", "CONDITION_ORDER"]

KIND = "similarity"
_VERSION = 1
CONDITION_ORDER = ("random", "main", "model_seed", "sae_seed", "neurons_random", "neurons_main")


@dataclass(frozen=True)
class Condition:
    """Model a (with SAE seed) vs model b (with SAE seed), on SAE features or on neurons."""

    name: str
    a: str
    b: str
    units: str = "sae"  # "sae" or "neurons"
    seed_a: int = 0
    seed_b: int = 0
    label: str = ""


def conditions(preset: "str | Preset") -> dict[str, Condition]:
    """The six conditions of the paper's Figure 3 for a preset (the SAE-seed skyline uses
    ``SAEConfig.seed_skyline`` and its first two ``SAEConfig.seeds``)."""
    p = get_preset(preset)
    sky = p.sae.seed_skyline
    s0, s1 = (p.sae.seeds + (p.sae.seeds[0] + 1,))[:2]
    m0 = zoo.RANDOM_BASELINE
    return {c.name: c for c in (
        Condition("random", "T", m0, label="random baseline (T vs untrained M0)"),
        Condition("main", "T", "M", label="main (T vs M)"),
        Condition("model_seed", "T", "T2", label="model-seed skyline (T vs T2)"),
        Condition("sae_seed", sky, sky, seed_a=s0, seed_b=s1, label=f"SAE-seed skyline ({sky} s{s0} vs s{s1})"),
        Condition("neurons_random", "T", m0, units="neurons", label="neurons: random (T vs M0)"),
        Condition("neurons_main", "T", "M", units="neurons", label="neurons: main (T vs M)"),
    )}


# ----------------------------------------------------------------------------- tokens
def rows_hash(rows: torch.Tensor) -> str:
    """sha256 (16 hex) of the exact token rows a source is run on."""
    return hashlib.sha256(rows.detach().cpu().to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def mppc_rows(preset: "str | Preset", n_tokens: int | None = None) -> torch.Tensor:
    """LongTensor [n_rows, context]: enough `eval` rows for ``n_tokens`` (default ``Preset.mppc_tokens``)
    ordinary tokens, capped by the split's size."""
    p = get_preset(preset)
    stream = corpus.token_stream(p, "eval")
    ctx = p.sae.context
    available = (len(stream) - 1) // (ctx - 1)
    want = math.ceil((n_tokens or p.mppc_tokens) / (ctx - 1))
    return stream.rows(ctx, n_rows=max(1, min(available, want)))


# ----------------------------------------------------------------------------- sources of units
def neuron_hooks(model, layer: int) -> list[str]:
    """The hook(s) whose activations are a layer's neurons (see the module docstring)."""
    if model_family(model) == "transformer":
        return [f"blocks.{layer}.mlp.hook_post"]
    return [f"blocks.{layer}.hook_ssm_input", f"blocks.{layer}.hook_skip"]


class Source:
    """One side of a comparison: a model, its layers and what its units are (an SAE per layer, or neurons),
    and the token rows it is run on (whose hash must match the other side's)."""

    def __init__(self, name: str, model, rows: torch.Tensor, units: str = "sae", saes: dict | None = None,
                 key: str | None = None, layer_keys: dict | None = None):
        """``key``: what identifies the model across processes (its checkpoint hash), and ``layer_keys`` ``{layer:
        str}`` its SAEs (their cache keys); with them, kept units may be reused from the cache (``codes.py``)."""
        if units not in ("sae", "neurons"):
            raise UniversalityError(f"units must be 'sae' or 'neurons', got {units!r}")
        if units == "sae" and not saes:
            raise UniversalityError("a source of SAE features needs saes={layer: sae_lens.SAE}")
        self.name, self.model, self.rows, self.units = name, model, rows, units
        self.saes = dict(saes or {})
        self.key, self.layer_keys = key, dict(layer_keys or {})
        self.layers = sorted(self.saes) if units == "sae" else list(range(model.cfg.n_layers))
        self.stream_sha = rows_hash(rows)
        self.hooks = {layer: ([saes_mod.check_compatible(self.saes[layer], model)] if units == "sae"
                              else neuron_hooks(model, layer)) for layer in self.layers}
        for hs in self.hooks.values():
            for h in hs:
                acts.check_hook(model, h)

    def sizes(self) -> dict[int, int]:
        if self.units == "sae":
            return {k: int(s.cfg.d_sae) for k, s in self.saes.items()}
        return {k: sum(acts.hook_width(self.model, h) for h in hs) for k, hs in self.hooks.items()}

    @torch.no_grad()
    def units_of(self, cache_: dict, mask: torch.Tensor, layers=None) -> dict[int, torch.Tensor]:
        """{layer: FloatTensor [t, F]} for the ordinary tokens (``mask`` [b, L]) of one forward pass (all layers,
        or only ``layers``)."""
        out = {}
        for k in (self.layers if layers is None else layers):
            hs = self.hooks[k]
            if self.units == "sae":
                sae = self.saes[k]
                out[k] = sae.encode(cache_[hs[0]][mask].float().to(sae.W_dec.device))  # [t, F]
            elif len(hs) == 1:
                out[k] = cache_[hs[0]][mask].float()  # [t, d_mlp]
            else:
                out[k] = torch.cat([cache_[hs[0]][mask], F.silu(cache_[hs[1]][mask])], dim=-1).float()  # [t, 2E]
        return out


def _hash_of_model(p: Preset, name: str) -> str:
    try:
        return saes_mod.model_hash(p, name)
    except UniversalityError:  # no checkpoint yet: smoke trains it on load, tiny says how to make it
        zoo.load(p, name)
        return saes_mod.model_hash(p, name)


# ----------------------------------------------------------------------------- the pass over the tokens
def default_max_gb(device: "torch.device | str") -> float:
    """Memory for the float64 cross sums of one pass: half of a GPU's memory (at the paper's size one SAE layer
    pair needs 8 x 24,576² bytes = 4.8 GB, so a 4 GB budget would make a pass of every pair), 4 GB on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return 0.5 * torch.cuda.get_device_properties(device).total_memory / 2**30
    return 4.0


def _plan_passes(items: list, budget: float) -> list:
    """``[[(condition, [(layer_a, layer_b), ...]), ...], ...]``: the conditions' layer pairs packed greedily into
    passes whose float64 cross sums fit ``budget`` bytes; a pair that alone exceeds it gets a pass of its own."""
    passes, cur, used = [], [], 0
    for name, (sa, sb) in items:
        za, zb = sa.sizes(), sb.sizes()
        for pr in [(ka, kb) for ka in sa.layers for kb in sb.layers]:
            need = 8 * za[pr[0]] * zb[pr[1]]
            if cur and used + need > budget:
                passes.append(cur)
                cur, used = [], 0
            if cur and cur[-1][0] == name:
                cur[-1][1].append(pr)
            else:
                cur.append((name, [pr]))
            used += need
    passes.append(cur)
    return passes


def _unit_key(s: Source, layer: int) -> tuple:
    """One layer's units of one source, within this process: (id(model), units, layer, id(sae))."""
    return (id(s.model), s.units, layer, id(s.saes.get(layer)))


def _units(keys, unit_of: dict, batch: torch.Tensor, mask: torch.Tensor, calls: dict) -> dict:
    """``{unit key: FloatTensor [t, F]}`` for one chunk of rows: each model that a key needs runs once, hooked at
    the keys' hooks and stopped after their last layer; then every key's SAE encodes (or neurons) are taken."""
    models = {}  # id(model) -> [model, hooks, stop]
    for k in keys:
        s, layer = unit_of[k]
        m = models.setdefault(id(s.model), [s.model, set(), 0])
        m[1].update(s.hooks[layer])
        m[2] = max(m[2], layer + 1)
    caches = {}
    for key, (model, hooks, stop) in models.items():
        _, caches[key] = model.run_with_cache(batch, names_filter=sorted(hooks), stop_at_layer=stop)
        calls["model_calls"] += 1
    out = {}
    for k in keys:
        s, layer = unit_of[k]
        out[k] = s.units_of(caches[id(s.model)], mask, layers=[layer])[layer]
        calls["unit_calls"] += 1
    return out


def _keep_plan(kept: list, first: dict, n_chunks: int, mode: str, memory_gb: float | None) -> dict:
    """``{unit key: "memory" | "disk"}`` for the unit sets several passes read (``kept``), from the bytes of their
    first chunk (``first``) x ``n_chunks``: all in memory or all on disk when ``mode`` says so; for ``"auto"`` the
    smallest in memory up to ``memory_gb`` (:func:`codes.default_memory_gb`), the rest on disk while the cache's
    disk keeps 10% free, the rest not kept (computed again by each pass that reads them)."""
    if mode in ("memory", "disk"):
        return {k: mode for k in kept}
    if mode == "none":
        return {}
    need = {k: codes.nbytes(first[k]) * n_chunks * 1.1 for k in kept}  # 10% for chunks denser than the first
    room = (memory_gb if memory_gb is not None else codes.default_memory_gb()) * 2**30
    root = cache.cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(root)
    disk_room = usage.free - 0.1 * usage.total
    plan = {}
    for k in sorted(kept, key=lambda k: need[k]):
        if need[k] <= room:
            plan[k], room = "memory", room - need[k]
        elif need[k] <= disk_room:
            plan[k], disk_room = "disk", disk_room - need[k]
    return plan


@torch.no_grad()
def compute(pairs_of_sources: dict, *, backend: str = "auto", chunk_tokens: int = 4096, max_gb: float | None = None,
            progress: bool = True, meta: dict | None = None, keep: str = "auto",
            keep_gb: float | None = None) -> dict[str, MPPCResult]:
    """MPPC of every ``{name: (source_a, source_b)}``, all layer pairs, in as few passes over the tokens as
    ``max_gb`` (float64 cross sums; default :func:`default_max_gb`) allows. Sources must share their token rows'
    hash.

    Each layer's units are computed once: the first pass runs the models and SAE encodes for its own pairs and for
    every unit set a later pass also reads, and keeps those (``codes.CodeStore``); later passes read them back and
    compute only what no other pass reads. ``keep``: ``"auto"`` (memory up to ``keep_gb``, default a quarter of
    RAM, then disk, then not kept), ``"memory"``, ``"disk"``, or ``"none"`` (every pass computes its units, as
    before; the tests' reference). The result's meta counts ``model_calls`` (model forward passes, each over one
    chunk of rows) and ``unit_calls`` (one layer's SAE encode or neuron read over one chunk)."""
    from tqdm.auto import tqdm

    if keep not in codes.MODES:
        raise UniversalityError(f"keep must be one of {', '.join(codes.MODES)}, got {keep!r}")
    items = list(pairs_of_sources.items())
    if not items:
        return {}
    for name, (sa, sb) in items:
        corpus.check_same_stream(sa.stream_sha, sb.stream_sha, what=f"activations of {sa.name} and {sb.name}")
    rows = items[0][1][0].rows
    for name, (sa, sb) in items:
        corpus.check_same_stream(items[0][1][0].stream_sha, sa.stream_sha, what="conditions of one pass")
    _check_same_vocabulary([s for _, pair in items for s in pair])
    dev = model_device(items[0][1][0].model)
    if backend == "auto":
        backend = default_backend(dev)
    budget = (max_gb if max_gb is not None else default_max_gb(dev)) * 2**30
    passes = _plan_passes(items, budget)

    t_start = time.perf_counter()
    stats: dict[str, list[PairStats]] = {name: [] for name, _ in items}
    batch_rows = max(1, chunk_tokens // rows.shape[1])
    starts = list(range(0, len(rows), batch_rows))
    special = saes_mod.special_ids(items[0][1][0].model)
    unit_of, reads = {}, []  # unit key -> (source, layer); per pass, the unit keys it reads (in order)
    accs_of = []
    for jobs_ in passes:
        accs, keys = [], {}
        for name, prs in jobs_:
            sa, sb = pairs_of_sources[name]
            za, zb = sa.sizes(), sb.sizes()
            la, lb = sorted({ka for ka, _ in prs}), sorted({kb for _, kb in prs})
            st = PairStats({k: za[k] for k in la}, {k: zb[k] for k in lb}, pairs=prs, backend=backend,
                           device="cpu" if backend == "sparse" else dev)
            accs.append((name, (la, lb), st))
            stats[name].append(st)
            for s, ls in ((sa, la), (sb, lb)):
                for k in ls:
                    unit_of.setdefault(_unit_key(s, k), (s, k))
                    keys[_unit_key(s, k)] = None
        accs_of.append(accs)
        reads.append(list(keys))
    n_readers = {k: sum(k in r for r in reads) for k in unit_of}
    kept = [k for k in unit_of if n_readers[k] > 1]
    content = {k: (None if s.key is None else f"{s.key}/{s.units}/{layer}/{s.layer_keys.get(layer, '')}/{dev.type}")
               for k, (s, layer) in unit_of.items()}
    calls = {"model_calls": 0, "unit_calls": 0}
    store = None
    try:
        for i_pass, accs in enumerate(accs_of):
            desc = f"MPPC pass {i_pass + 1}/{len(passes)}" if len(passes) > 1 else "MPPC"
            for i, r0 in enumerate(tqdm(starts, desc=desc, disable=not progress)):
                batch = rows[r0:r0 + batch_rows].to(dev)
                mask = acts.token_mask(batch, special).to(dev)  # [b, L]
                if i_pass == 0:  # its own units and every kept unit set (the store's plan follows the first chunk)
                    todo = reads[0] + [k for k in kept if k not in reads[0] and (store is None or k in store.needs())]
                    units = _units(todo, unit_of, batch, mask, calls)
                    if store is None:
                        first = {k: codes.host_form(units[k], unit_of[k][0].units) for k in kept}
                        plan = _keep_plan(kept, first, len(starts), keep, keep_gb)
                        store = codes.CodeStore(plan, content, rows_hash(rows), batch_rows, len(starts))
                        store.put(0, {k: v for k, v in first.items() if k in plan})
                    else:
                        store.put(i, {k: codes.host_form(units[k], unit_of[k][0].units) for k in store.needs()})
                else:
                    t = int(mask.sum())
                    mine = [k for k in reads[i_pass] if k in store.plan]
                    units = store.chunk(i, t, mine)
                    units.update(_units([k for k in reads[i_pass] if k not in store.plan], unit_of, batch, mask,
                                        calls))
                for name, (la, lb), st in accs:
                    sa, sb = pairs_of_sources[name]
                    st.update({k: units[_unit_key(sa, k)] for k in la}, {k: units[_unit_key(sb, k)] for k in lb})
            if i_pass == 0:
                store.finish()
        where = {w: sum(1 for k in kept if store.plan.get(k) == w) for w in ("memory", "disk")}
    finally:
        if store is not None:
            store.close()
    out = {}
    for name, (sa, sb) in items:
        m = {**(meta or {}), "stream_sha": sa.stream_sha, "units": sa.units, "label": name, "passes": len(passes),
             "wall_seconds_all_conditions": round(time.perf_counter() - t_start, 2), **calls,
             "kept_unit_sets": {**where, "not_kept": len(kept) - sum(where.values())}}
        out[name] = MPPCResult.from_stats(stats[name], sa.name, sb.name, m)
    return out


def _check_same_vocabulary(sources: list[Source]) -> None:
    """Refuse sources whose models map token ids to different tokens: the same rows would be other text for one
    of them. Compared by vocabulary (id -> token), which is what the rows depend on, not by tokenizer hash
    (TransformerLens wraps its tokenizer to prepend BOS, which changes the hash, not the ids)."""
    seen: dict[int, tuple[str, str]] = {}  # id(model) -> (vocabulary hash, source name)
    for s in sources:
        if id(s.model) not in seen:
            tok = getattr(s.model, "tokenizer", None)
            vocab = None if tok is None else cache.stable_hash(sorted(tok.get_vocab().items()))
            seen[id(s.model)] = (vocab, s.name)
    by_vocab = {v: name for v, name in seen.values()}
    if len(by_vocab) > 1:
        raise StreamMismatchError(
            f"the models tokenize differently ({', '.join(f'{n}: vocabulary {v}' for v, n in by_vocab.items())}), "
            f"so token id k is not the same token for both: compare models that share one tokenizer (the preset's, "
            f"corpus.load_tokenizer(preset)).")


# ----------------------------------------------------------------------------- the chapter's entry point
def run(preset: "str | Preset", names=None, *, n_tokens: int | None = None, backend: str = "auto",
        device: str | None = None, max_gb: float | None = None, progress: bool = True, threads: int | None = None,
        train_if_missing: bool = True) -> dict[str, MPPCResult]:
    """All-layer-pairs MPPC of the preset's conditions (default: all six), loaded from the cache or computed in
    one pass over the `eval` tokens. Returns ``{condition: MPPCResult}``."""
    p = get_preset(preset)
    conds = conditions(p)
    names = list(names) if names is not None else list(CONDITION_ORDER)
    for n in names:
        if n not in conds:
            raise UniversalityError(f"unknown condition {n!r}: choose among {', '.join(conds)}")
    rows = mppc_rows(p, n_tokens)
    sha = rows_hash(rows)
    keys = {}
    for n in names:
        c = conds[n]
        spec = {"condition": c.__dict__, "rows": sha, "n_rows": len(rows), "v": _VERSION,
                "model_a": _hash_of_model(p, c.a), "model_b": _hash_of_model(p, c.b)}
        if c.units == "sae":
            spec["saes"] = _sae_keys(p, c)
        keys[n] = f"{n}-{cache.stable_hash(spec)}"
    kind = f"{KIND}/{p.name}"
    folders = {n: cache.verified_folder(kind, keys[n]) for n in names}  # None: absent, or corrupt and removed
    todo = [n for n in names if folders[n] is None]
    if todo:
        with saes_mod.threads_set_to(threads):
            results = _compute_conditions(p, [conds[n] for n in todo], rows, backend=backend, device=device,
                                          max_gb=max_gb, progress=progress, train_if_missing=train_if_missing,
                                          threads=threads)
        for n, res in results.items():
            c = conds[n]
            res.meta.update({"preset": p.name, "condition": n, "label": c.label, "seed_a": c.seed_a,
                             "seed_b": c.seed_b})
            folders[n] = cache.cached_folder(kind, keys[n], lambda tmp, r=res: r.save(tmp))
    return {n: MPPCResult.load(folders[n]) for n in names}


def _n_layers(p: Preset, name: str) -> int:
    family, _ = zoo.spec(p, name)
    return p.transformer.n_layers if family == "transformer" else p.mamba.n_layers


def _sae_keys(p: Preset, c: Condition) -> list[str]:
    return [saes_mod.folder_for(p, m, layer, s).name for m, s in ((c.a, c.seed_a), (c.b, c.seed_b))
            for layer in range(_n_layers(p, m))]


def _compute_conditions(p: Preset, conds: list, rows, *, backend, device, max_gb, progress, train_if_missing,
                        threads) -> dict[str, MPPCResult]:
    models = {}

    def model(name):
        if name not in models:
            models[name] = zoo.load(p, name, device=device)
        return models[name]

    sae_cache = {}

    def sae_dict(name, seed):
        if (name, seed) not in sae_cache:
            m = model(name)
            sae_cache[(name, seed)] = {
                layer: saes_mod.get(p, name, layer, seed, model=m, device=device, progress=progress,
                                    train_if_missing=train_if_missing, threads=threads)
                for layer in range(m.cfg.n_layers)}
        return sae_cache[(name, seed)]

    def source(name, seed, units):
        """One side, with the content keys that let its kept units be reused from the cache."""
        m = model(name)
        if units == "neurons":
            return Source(name, m, rows, "neurons", key=_hash_of_model(p, name))
        layer_keys = {k: saes_mod.folder_for(p, name, k, seed).name for k in range(m.cfg.n_layers)}
        return Source(name, m, rows, "sae", sae_dict(name, seed), key=_hash_of_model(p, name), layer_keys=layer_keys)

    sources = {c.name: (source(c.a, c.seed_a, c.units), source(c.b, c.seed_b, c.units)) for c in conds}
    return compute(sources, backend=backend, max_gb=max_gb, progress=progress)


def summary_table(results: dict[str, MPPCResult], sides=("a", "b"), n_boot: int = 1000):
    """pandas DataFrame, one row per (condition, direction): mean MPPC and bootstrap 95% interval, median,
    fraction above 0.5 / 0.7 / 0.9, live and excluded unit counts."""
    import pandas as pd

    recs = []
    for name, r in results.items():
        for s in sides:
            na, nb = r.name_a, r.name_b
            if na == nb:  # the SAE-seed skyline: one model, two SAE seeds
                na, nb = f"{na} s{r.meta.get('seed_a', 0)}", f"{nb} s{r.meta.get('seed_b', 1)}"
            src, dst = (na, nb) if s == "a" else (nb, na)
            recs.append({"condition": name, "direction": f"{src}→{dst}", "side": s, "units": r.meta.get("units"),
                         **r.summary(s, n_boot=n_boot)})
    return pd.DataFrame(recs)
