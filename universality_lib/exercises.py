"""Checks for the book's exercises: each runs the reader's answer on a small instance, computes the library's
answer on the same instance, and says whether they agree and, if not, what to look at.

Every ``check_*`` takes the reader's function first and returns a :class:`Verdict` (a notebook shows it as one
line). A wrong or missing answer never raises: a stub that still returns ``None`` gets "not answered yet" and
the shape it should return, so the stub cell runs in Colab. Bad arguments *to the check* (a model of the wrong
family, a layer out of range) raise :class:`~universality_lib.errors.UniversalityError` before anything runs.
A solution cell ends in ``.require()``, which raises when the solution stops matching the library, so the
book's CI (every chapter at ``smoke``) keeps the exercises from rotting.

=========================  =========  ==========================================================================
check                      chapter    the reader writes
=========================  =========  ==========================================================================
:func:`check_scan_step`    1          one step ``h_t = Ā_t ⊙ h_{t-1} + B̄_t x_t`` of the selective scan, from a
                                      HookedMamba cache, against ``blocks.{l}.hook_h.{t}``
:func:`check_sae_forward`  2          the SAE's features, reconstruction and training loss for one batch,
                                      against sae-lens (``encode`` / ``decode`` / ``training_forward_pass``)
:func:`check_mppc`         3          MPPC from sufficient statistics, against the streaming engine
:func:`check_depth_rho`    4          Spearman's ρ of (layer, best-match layer), against ``depth``
:func:`check_head_patch`   5          the hooks of "head -> logits" for one head, against the sweep's row
:func:`check_knockout_conv` 6         the conv output with one lag knocked out of the corruption, against
                                      ``off_by_one.knockout_scan_inputs``
:func:`check_knockout_offset` 6       a prediction: where the effect vanishes in layer 0, against the sweep
=========================  =========  ==========================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import UniversalityError

__all__ = ["Verdict", "check_scan_step", "check_sae_forward", "check_mppc", "check_depth_rho", "check_head_patch",
           "check_knockout_conv", "check_knockout_offset"]


# ----------------------------------------------------------------------------- the verdict
@dataclass(frozen=True)
class Verdict:
    """The outcome of one check: ``passed`` and a message saying what was compared (or what is missing)."""

    passed: bool
    message: str
    answered: bool = True

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        mark = "✅" if self.passed else ("✍️ not answered yet" if not self.answered else "❌")
        return f"{mark} {self.message}"

    __str__ = __repr__

    def require(self) -> "Verdict":
        """Return self if passed, else raise (solution cells call this, so CI notices a broken exercise)."""
        if not self.passed:
            raise UniversalityError(f"exercise check failed: {self.message}")
        return self


def _missing(expected: str, what: str = "your function returned None: fill in the stub so that it returns") -> Verdict:
    return Verdict(False, f"{what} {expected}.", answered=False)


def _tensor(value, name: str) -> torch.Tensor | str:
    """``value`` as a float64 CPU tensor, or a message saying why it is not one."""
    try:
        t = torch.as_tensor(np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float64))
    except (TypeError, ValueError) as e:
        return f"{name} should be a tensor or array of numbers, got {type(value).__name__} ({e})"
    return t


def _mismatch(name: str, got, want: torch.Tensor, atol: float, rtol: float) -> str | None:
    """None when ``got`` equals ``want`` (same shape, allclose); else what differs."""
    got = _tensor(got, name)
    if isinstance(got, str):
        return got
    want = want.detach().double().cpu()
    if tuple(got.shape) != tuple(want.shape):
        return f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    both_nan = torch.isnan(got) & torch.isnan(want)
    if torch.isnan(got).ne(torch.isnan(want)).any():
        return f"{name} is NaN at {int(torch.isnan(got).ne(torch.isnan(want)).sum())} entries where the library's is not (or the reverse)"
    g, w = got[~both_nan], want[~both_nan]
    if torch.allclose(g, w, atol=atol, rtol=rtol):
        return None
    err = (g - w).abs()
    return (f"{name} differs from the library's: largest |difference| {err.max().item():.3g} "
            f"(the library's values have scale {w.abs().max().item():.3g}; tolerance {atol:g} + {rtol:g}·|value|)")


def _verdict(problems: list, ok: str) -> Verdict:
    problems = [p for p in problems if p]
    return Verdict(not problems, "; ".join(problems) if problems else ok)


def _require_mamba(model, what: str) -> None:
    if "blocks.0.hook_h.0" not in getattr(model, "hook_dict", {}):
        raise UniversalityError(f"{what} needs the library's HookedMamba (blocks.{{l}}.hook_h.{{t}}); got "
                                f"{type(model).__name__}. Pass the Mamba, e.g. zoo.load(P, 'M').")


def _check_layer(model, layer: int) -> int:
    n = model.cfg.n_layers
    if not 0 <= int(layer) < n:
        raise UniversalityError(f"layer {layer} out of range: the model has {n} layers (0..{n - 1}).")
    return int(layer)


# ----------------------------------------------------------------------------- chapter 1: one scan step
@torch.no_grad()
def check_scan_step(fn: Callable, model, tokens: torch.Tensor, layer: int = 0, t: int | None = None) -> Verdict:
    """``fn(cache, layer, t)`` -> h_t [b, E, N], one step of the selective scan of ``blocks.{layer}`` computed
    from ``cache`` (the block's exact-scan hooks: ``hook_A_bar``, ``hook_B_bar``, ``hook_ssm_input``,
    ``hook_h.{t-1}`` ..., plus ``hook_delta``, ``hook_A``, ``hook_B`` for a reader who discretises by hand),
    checked against ``blocks.{layer}.hook_h.{t}``. ``tokens`` [b, L] (or [L]); ``t`` in 1..L-1 (default L // 2).
    """
    _require_mamba(model, "check_scan_step")
    layer = _check_layer(model, layer)
    tokens = tokens.reshape(1, -1) if tokens.dim() == 1 else tokens
    L = tokens.shape[1]
    t = L // 2 if t is None else int(t)
    if not 1 <= t < L:
        raise UniversalityError(f"t={t}: pick a position in 1..{L - 1} (position 0 starts from hook_h_start).")
    prefix = f"blocks.{layer}."
    _, cache = model.run_with_cache(tokens.to(next(model.parameters()).device), scan="exact",
                                    names_filter=lambda n: n.startswith(prefix))
    got = fn(cache, layer, t)
    if got is None:
        return _missing(f"h_{t} of layer {layer}, a tensor [b, E, N] = {tuple(cache[f'{prefix}hook_h.{t}'].shape)}")
    want = cache[f"{prefix}hook_h.{t}"]
    problem = _mismatch(f"h_{t}", got, want, atol=1e-5, rtol=1e-4)
    if problem and _mismatch("", got, cache[f"{prefix}hook_h.{t - 1}"], 1e-6, 1e-6) is None:
        problem += f": it equals h_{t - 1}, the state *before* the step"
    if problem:
        problem += (". Recall h_t = Ā_t ⊙ h_{t-1} + B̄_t x_t, with Ā_t = hook_A_bar[:, t], B̄_t = hook_B_bar[:, t] "
                    "([b, E, N]) and x_t = hook_ssm_input[:, t] ([b, E], broadcast over N)")
    return _verdict([problem], f"h_{t} of layer {layer} matches blocks.{layer}.hook_h.{t} "
                               f"(shape {tuple(want.shape)}).")


# ----------------------------------------------------------------------------- chapter 2: the SAE
def _training_sae(sae, l1_coefficient: float):
    """sae-lens' StandardTrainingSAE with the weights of the (inference) ``sae``: what the trainer's loss runs."""
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    cfg = sae.cfg
    if cfg.architecture() != "standard":
        raise UniversalityError(f"check_sae_forward is for a standard (ReLU + L1) SAE; this one is "
                                f"{cfg.architecture()!r}.")
    tcfg = StandardTrainingSAEConfig(d_in=cfg.d_in, d_sae=cfg.d_sae, dtype="float32", device="cpu",
                                     normalize_activations=cfg.normalize_activations,
                                     apply_b_dec_to_input=cfg.apply_b_dec_to_input, l1_coefficient=l1_coefficient)
    tsae = StandardTrainingSAE(tcfg)
    tsae.load_state_dict({k: v.detach().float().cpu() for k, v in sae.state_dict().items()})
    return tsae.eval()


@torch.no_grad()
def sae_reference(sae, x: torch.Tensor, l1_coefficient: float) -> dict[str, torch.Tensor]:
    """sae-lens' answer for one batch ``x`` [t, D] (raw residual stream): ``feature_acts`` [t, F] (``encode``),
    ``reconstruction`` [t, D] (``decode``, raw space), and the training loss of the batch in the normalised
    space the SAE is trained in (``training_forward_pass`` on x rescaled to norm sqrt(D), λ = ``l1_coefficient``):
    ``mse_loss``, ``l1_loss`` and their sum ``loss``."""
    from sae_lens.saes.sae import TrainStepInput

    from .activations import normalise_tokens

    x = x.detach().float().cpu()
    sae_cpu = _training_sae(sae, l1_coefficient)  # the same weights, on the CPU in float32
    f = sae_cpu.encode(x)  # [t, F]
    x_hat = sae_cpu.decode(f)  # [t, D]
    step = TrainStepInput(sae_in=normalise_tokens(x), coefficients={"l1": float(l1_coefficient)},
                          dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
    out = sae_cpu.training_forward_pass(step)
    return {"feature_acts": f, "reconstruction": x_hat, "mse_loss": out.losses["mse_loss"],
            "l1_loss": out.losses["l1_loss"], "loss": out.loss}


def check_sae_forward(fn: Callable, sae, x: torch.Tensor, l1_coefficient: float) -> Verdict:
    """``fn(sae, x, l1_coefficient)`` -> ``(feature_acts [t, F], reconstruction [t, D], loss)`` for one batch
    ``x`` [t, D] of the raw residual stream: the features and reconstruction as ``sae.encode`` / ``sae.decode``
    give them, and the training loss ``mean_t ||x̂_n - x_n||² + λ mean_t Σ_i f_i ||W_dec[i]||`` in the normalised
    space (x_n = x · sqrt(D) / ||x||). Checked against sae-lens (:func:`sae_reference`)."""
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != int(sae.cfg.d_in):
        raise UniversalityError(f"x must be a [tokens, d_in={sae.cfg.d_in}] tensor of residual-stream activations, "
                                f"got {tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}.")
    ref = sae_reference(sae, x, l1_coefficient)
    got = fn(sae, x, l1_coefficient)
    shapes = (f"(feature_acts {tuple(ref['feature_acts'].shape)}, reconstruction {tuple(ref['reconstruction'].shape)}, "
              f"loss: one number)")
    if got is None:
        return _missing(f"a tuple {shapes}")
    if not isinstance(got, (tuple, list)) or len(got) != 3 or any(v is None for v in got):
        return Verdict(False, f"expected a tuple of three {shapes}, got {type(got).__name__}"
                              + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""))
    f, x_hat, loss = got
    problems = [_mismatch("feature_acts", f, ref["feature_acts"], 1e-4, 1e-4),
                _mismatch("reconstruction", x_hat, ref["reconstruction"], 1e-4, 1e-4),
                _mismatch("loss", loss, ref["loss"], 1e-4, 1e-4)]
    if problems[0]:
        problems[0] += (" (sae-lens rescales each token to norm sqrt(D) and subtracts b_dec before W_enc: "
                        "f = ReLU((x_n - b_dec) @ W_enc + b_enc))")
    if problems[2] and not problems[0]:
        problems[2] += (f" (sae-lens: MSE {ref['mse_loss'].item():.4g} summed over D and averaged over tokens, "
                        f"in the normalised space, + L1 {ref['l1_loss'].item():.4g} = λ · mean_t Σ_i f_i ||W_dec[i]||)")
    return _verdict(problems, f"features, reconstruction and loss ({ref['loss'].item():.4g} = MSE "
                              f"{ref['mse_loss'].item():.4g} + L1 {ref['l1_loss'].item():.4g}) match sae-lens on "
                              f"{x.shape[0]} tokens.")


# ----------------------------------------------------------------------------- chapter 3: MPPC
def mppc_reference(x, y) -> np.ndarray:
    """The engine's MPPC of every column of ``x`` [n, F_a] against the columns of ``y`` [n, F_b]: [F_a], NaN for
    a column that never varies (excluded). Sparse back end, float64 sums, one chunk."""
    from .similarity.engine import PairStats

    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    stats = PairStats({0: x.shape[1]}, {0: y.shape[1]}, backend="sparse")
    stats.update({0: x}, {0: y})
    return stats.pair_max(0, 0)["a_val"]


def check_mppc(fn: Callable, x, y) -> Verdict:
    """``fn(x, y)`` -> [F_a]: the MPPC of each column of ``x`` [n, F_a], its largest Pearson correlation with any
    column of ``y`` [n, F_b] (activations of the same n tokens), NaN for a column of ``x`` that never varies.
    Checked against the streaming engine (:func:`mppc_reference`) to 1e-6."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise UniversalityError(f"x and y must be [n tokens, units] arrays of the same tokens; got shapes "
                                f"{x.shape} and {y.shape}.")
    want = mppc_reference(x, y)
    got = fn(x, y)
    if got is None:
        return _missing(f"an array [F_a] = [{x.shape[1]}], the best correlation of each column of x")
    problem = _mismatch("the MPPC", got, torch.from_numpy(want), atol=1e-6, rtol=0.0)
    if problem:
        problem += (". Pearson needs centred sums: C_ij = Σxy - Σx Σy / n and V_i = Σx² - (Σx)² / n, formed in "
                    "float64 (in float32 the one-pass formula cancels away the digits of units with a large mean)")
    return _verdict([problem], f"MPPC of {x.shape[1]} units against {y.shape[1]} on {x.shape[0]:,} tokens matches the "
                               f"engine (mean {np.nanmean(want):.4f}).")


# ----------------------------------------------------------------------------- chapter 4: depth
def best_layers(result, side: str = "a") -> tuple[np.ndarray, np.ndarray]:
    """(layer, best-match layer) of every live unit of ``side`` of an MPPC result: two int arrays [n]."""
    ls, bs = [], []
    for layer, (v, bl, _) in result.best(side).items():
        ok = np.isfinite(v) & (bl >= 0)
        ls.append(np.full(int(ok.sum()), layer))
        bs.append(bl[ok])
    return np.concatenate(ls).astype(np.int64), np.concatenate(bs).astype(np.int64)


def check_depth_rho(fn: Callable, result, side: str = "a") -> Verdict:
    """``fn(layer, best_layer, n_layers, n_layers_other)`` -> Spearman's ρ between the relative depths
    (l + 1) / L of each live unit and of its best match (arrays from :func:`best_layers`), checked against
    ``depth.depth_alignment(result, side).rho``."""
    from . import depth

    want = depth.depth_alignment(result, side, n_boot=1).rho
    layer, best = best_layers(result, side)
    other = "b" if side == "a" else "a"
    got = fn(layer, best, len(result.layers(side)), len(result.layers(other)))
    if got is None:
        return _missing("one number, Spearman's ρ of the two relative depths")
    problem = _mismatch("ρ", got, torch.tensor(want, dtype=torch.float64), atol=1e-9, rtol=1e-9)
    if problem:
        problem += (". Spearman's ρ is the Pearson correlation of the ranks, and tied values (every unit of one "
                    "layer) share their mean rank")
    return _verdict([problem], f"ρ = {want:.4f} over {len(layer):,} units matches depth.depth_alignment.")


# ----------------------------------------------------------------------------- chapter 5: path patching
@torch.no_grad()
def check_head_patch(fn: Callable, model, prompts, effects, heads=None) -> Verdict:
    """``fn(layer, head, clean_cache, corrupt_cache, last)`` -> the hooks ``[(hook_name, hook_fn), ...]`` of one
    patched run of "head -> logits" (``circuits.transformer.head_to_logits``): head (layer, head)'s ``attn.hook_z``
    at position ``last`` from the corrupted run, every other head's at ``last`` frozen to clean. The caches map
    ``blocks.{l}.attn.hook_z`` to [n, L, H, d]. Each head of ``heads`` (labels like "L0H1"; default: every head)
    is run on every prompt and its per-prompt B logit compared with ``effects`` (that sweep's result)."""
    from .circuits import transformer as ct
    from .circuits.patching import model_device, run_cache, run_patched
    from .circuits.task import target_scores

    if effects.experiment != "head -> logits":
        raise UniversalityError(f"effects must be the result of circuits.transformer.head_to_logits, got the sweep "
                                f"{effects.experiment!r}.")
    if effects.n_prompts != len(prompts):
        raise UniversalityError(f"effects has {effects.n_prompts} prompts, prompts has {len(prompts)}: pass the prompts "
                                "the sweep ran on.")
    heads = list(effects.labels) if heads is None else list(heads)
    unknown = [h for h in heads if h not in effects.labels]
    if unknown:
        raise UniversalityError(f"heads {unknown} are not in the sweep (it has {effects.labels}).")
    names = [ct.z_name(l) for l in range(model.cfg.n_layers)]
    corrupt_all = prompts.corrupt(effects.meta.get("corruption", "random"))
    bs = prompts.config.batch_size
    got = {h: [] for h in heads}
    for s in range(0, len(prompts), bs):
        clean, corrupt = prompts.subset(slice(s, s + bs)), corrupt_all.subset(slice(s, s + bs))
        _, cc = run_cache(model, clean.tokens, names)
        _, kc = run_cache(model, corrupt.tokens, names)
        for h in heads:
            hooks = fn(*ct.parse_head(h), cc, kc, clean.last)
            if hooks is None:
                return _missing(f"a list of (hook_name, hook_fn) pairs, e.g. [('{names[0]}', fn), ...], for one "
                                "patched run")
            logit, _ = target_scores(run_patched(model, clean.tokens, list(hooks)), clean.b.to(model_device(model)))
            got[h].append(logit.numpy())
    problems = []
    for h in heads:
        mine = np.concatenate(got[h])
        want = effects.patched["logit_B"][effects.labels.index(h)]
        if not np.allclose(mine, want, atol=1e-4, rtol=1e-4):
            d_mine = float((mine - effects.clean["logit_B"]).mean())
            problems.append(f"{h}: your Δ logit B is {d_mine:+.4g}, the sweep's {float(effects.delta()[effects.labels.index(h)]):+.4g}")
    if problems:
        problems.append("patch only head h's z at the last position from the corrupted cache, and hold every head's "
                        "z at the last position (in every layer) to the clean cache")
    return _verdict(problems, f"your hooks give the sweep's B logit on all {len(prompts)} prompts for "
                              f"{', '.join(heads)}.")


# ----------------------------------------------------------------------------- chapter 6: a conv lag knocked out
@torch.no_grad()
def check_knockout_conv(fn: Callable, model, prompts, layer: int, lag: int, corruption: str = "b") -> Verdict:
    """``fn(conv_corrupt, x_in_clean, x_in_corrupt, w, lag)`` -> the corrupted conv output [n, L, E] with lag
    ``lag`` knocked out of the corruption: ``c~_t = c^corr_t - w_lag ⊙ (x_in^corr_{t-lag} - x_in^clean_{t-lag})``
    (0 where t - lag < 0). ``w`` is the block's conv weights by lag, [E, K] (``off_by_one.conv_taps``). Checked
    through what the state update reads, x, Δ and B, against ``off_by_one.knockout_scan_inputs`` on the first
    batch of ``prompts``."""
    from .circuits import mamba as cm
    from .circuits import off_by_one as ob
    from .circuits.patching import Batch, run_cache

    _require_mamba(model, "check_knockout_conv")
    layer = _check_layer(model, layer)
    K = model.cfg.d_conv
    if not 0 <= int(lag) < K:
        raise UniversalityError(f"lag {lag}: the conv has {K} taps, lags 0..{K - 1}.")
    clean = prompts.subset(slice(0, prompts.config.batch_size))
    corrupt = prompts.corrupt(corruption).subset(slice(0, prompts.config.batch_size))
    names = [f"blocks.{layer}.hook_in_proj", f"blocks.{layer}.hook_conv"]
    _, cc = run_cache(model, clean.tokens, names)
    _, kc = run_cache(model, corrupt.tokens, names)
    want = ob.knockout_scan_inputs(model, Batch(model, clean, corrupt, cc, kc, {}), layer, int(lag))
    blk = model.blocks[layer]
    got = fn(kc[names[1]].clone(), cc[names[0]].clone(), kc[names[0]].clone(), ob.conv_taps(blk).clone(), int(lag))
    if got is None:
        return _missing(f"the knocked-out conv output, a tensor [n, L, E] = {tuple(kc[names[1]].shape)}")
    got = _tensor(got, "the conv output")
    problem = got if isinstance(got, str) else None
    if problem is None and tuple(got.shape) != tuple(kc[names[1]].shape):
        problem = f"the conv output has shape {tuple(got.shape)}, expected {tuple(kc[names[1]].shape)}"
    if problem is None:
        x, delta, B = ob.ssm_inputs_from_conv(blk, got.to(kc[names[1]].dtype))
        problem = "; ".join(p for p in (_mismatch(n, g, w, 1e-5, 1e-4) for n, g, w in
                                        (("x", x, want.x), ("Δ", delta, want.delta), ("B", B, want.B))) if p)
        if problem:
            problem += (f". Lag k multiplies x_in at t - k (conv_taps(block)[:, k]); take the corrupted conv and "
                        f"replace lag {lag}'s corrupted term by its clean one, shifting x_in {lag} positions later")
    return _verdict([problem], f"the conv with lag {lag} knocked out gives the library's x, Δ and B in layer "
                               f"{layer} (a {tuple(want.x.shape)} batch).")


def check_knockout_offset(predicted, model, prompts, lag: int, n_prompts: int | None = None) -> Verdict:
    """A prediction: with lag ``lag`` knocked out of the B -> B' corruption in **layer 0**, at which offset k
    (the write at B+k) does the effect of the corrupted write vanish? Checked against
    ``off_by_one.state_write_variants`` in layer 0 (first ``n_prompts`` prompts, default one batch) next to the
    sweep as written: the offset whose |Δ logit B| shrinks the most, relative to the sweep."""
    from .circuits import off_by_one as ob

    _require_mamba(model, "check_knockout_offset")
    if predicted is None:
        return _missing("an offset k (0 = B, 1 = B+1, ...): where the knocked-out lag's route was the only one",
                        what="the prediction is still None: set it to")
    offsets = list(ob.OFFSETS)
    if not isinstance(predicted, (int, np.integer)) or int(predicted) not in offsets:
        return Verdict(False, f"the prediction should be one offset in {offsets} (0 = B, 1 = B+1 ...), got {predicted!r}")
    sub = prompts.subset(slice(0, n_prompts or prompts.config.batch_size))
    variants = {"as written": ob.Variant(), f"lag {lag} knocked out": ob.Variant(knockout=int(lag))}
    eff = ob.state_write_variants(model, sub, 0, variants=variants, progress=False)
    g = np.abs(eff.grid())  # [2, offsets]
    kept = g[1] / np.where(g[0] > 0, g[0], np.inf)  # fraction of each offset's effect that survives
    where = int(np.argmin(kept))
    table = ", ".join(f"{ob.offset_label(k)}: {a:+.3g} → {b:+.3g}" for k, a, b in
                      zip(offsets, eff.grid()[0], eff.grid()[1]))
    if int(predicted) != where:
        return Verdict(False, f"you predicted {ob.offset_label(int(predicted))}, but knocking out lag {lag} removes "
                              f"the effect at {ob.offset_label(where)} (Δ logit B as written → knocked out: {table}). "
                              f"In layer 0, which positions' conv windows read B through tap {lag}?")
    return Verdict(True, f"knocking out lag {lag} in layer 0 removes the effect at {ob.offset_label(where)} "
                         f"(Δ logit B as written → knocked out: {table}).")
