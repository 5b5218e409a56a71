"""Matplotlib figures shared by the chapters (each returns the Figure; the notebook shows it)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def loss_by_position(curves: dict[str, "np.ndarray"], title: str = "", ylabel: str = "loss (nats)",
                     marks: dict[str, float] | None = None):
    """One line per model: mean next-token loss at each position (``curves[name]`` is [positions])."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, y in curves.items():
        y = np.asarray(y, dtype=float)
        ax.plot(np.arange(1, len(y) + 1), y, label=name, lw=1.5)
    for label, x in (marks or {}).items():
        ax.axvline(x, color="grey", ls=":", lw=1)
        ax.text(x, ax.get_ylim()[1], f" {label}", va="top", fontsize=8, color="grey")
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def training_curves(logs: dict[str, list[dict]], key: str = "loss", title: str = "training loss"):
    """Loss against tokens seen, one line per model (rows from ``train.read_log``)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, rows in logs.items():
        if rows:
            ax.plot([r["tokens"] for r in rows], [r[key] for r in rows], label=name, lw=1.2)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- sparse autoencoders (chapter 2)
_SAE_METRICS = {
    "fve": "variance explained",
    "l0_frac": "L0 / dictionary size",
    "ce_recovered": "CE loss recovered",
    "dead_frac": "dead features (fraction)",
}


def sae_quality(df, metrics: dict[str, str] | None = None, targets: dict[str, tuple[float, float]] | None = None,
                title: str = ""):
    """One panel per metric, against relative depth (layer / (n_layers - 1)), one line per model and SAE seed.

    ``df``: the table of ``saes.evaluate_all``; ``targets[metric] = (low, high)`` shades the target band."""
    metrics = metrics or _SAE_METRICS
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.1 * len(metrics), 3.0), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics.items()):
        for (model, seed), g in df.groupby(["model", "seed"], sort=False):
            g = g.sort_values("depth")
            name = model if seed == 0 else f"{model} (SAE seed {seed})"
            ax.plot(g["depth"], g[key], marker="o", lw=1.3, ms=4, label=name,
                    ls="-" if seed == 0 else "--")
        if targets and key in targets:
            lo, hi = targets[key]
            ax.axhspan(lo, hi, color="tab:green", alpha=0.08, lw=0)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("relative depth")
    axes[0][0].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def feature_density(densities: dict[str, "np.ndarray"], title: str = "feature density", bins: int = 40):
    """Histogram of log10(fraction of tokens on which a feature fires), one outline per SAE; features that
    never fired are counted in the legend (they have no logarithm)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    all_live = [np.asarray(d)[np.asarray(d) > 0] for d in densities.values()]
    lo = min((np.log10(d).min() for d in all_live if len(d)), default=-6.0)
    edges = np.linspace(min(lo, -1.0) - 0.1, 0.05, bins + 1)
    for (label, d), live in zip(densities.items(), all_live):
        dead = int((np.asarray(d) == 0).sum())
        ax.hist(np.log10(live), bins=edges, histtype="step", lw=1.3, label=f"{label} ({dead} dead)")
    ax.set_xlabel("log10 feature density (fraction of eval tokens on which it fires)")
    ax.set_ylabel("features")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def sae_training_curve(log: list[dict], title: str = "SAE training", l0_target: float | None = None):
    """Reconstruction loss, L1 term, variance explained and L0 on each training batch, against tokens; with a
    steered L1 weight (``l1_coefficient`` in the log) a fourth panel shows λ, and ``l0_target`` (features per
    token) is drawn on the L0 panel."""
    steered = bool(log) and "l1_coefficient" in log[0]
    fig, axes = plt.subplots(1, 4 if steered else 3, figsize=(13 if steered else 10, 2.9))
    tokens = [r["tokens"] for r in log]
    for key in ("mse_loss", "l1_loss"):
        if log and key in log[0]:
            axes[0].plot(tokens, [r[key] for r in log], label=key.replace("_", " "), lw=1.2)
    axes[0].set_title("losses (normalised space)", fontsize=10)
    axes[0].legend(frameon=False, fontsize=8)
    axes[1].plot(tokens, [r["fve"] for r in log], lw=1.2, color="tab:green")
    axes[1].set_title("variance explained (batch)", fontsize=10)
    axes[2].plot(tokens, [r["l0"] for r in log], lw=1.2, color="tab:red")
    if l0_target is not None:
        axes[2].axhline(l0_target, color="0.4", ls="--", lw=1, label="target")
        axes[2].legend(frameon=False, fontsize=8)
    axes[2].set_yscale("log")
    axes[2].set_title("L0 (batch)", fontsize=10)
    if steered:
        axes[3].plot(tokens, [r["l1_coefficient"] for r in log], lw=1.2, color="tab:purple")
        axes[3].set_title("L1 weight λ", fontsize=10)
    for ax in axes:
        ax.set_xlabel("training tokens")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- induction circuits (chapter 5)
def effect_bars(effects, metrics=("logit_B",), title: str | None = None, highlight: str | None = None, ax=None):
    """Mean change of each metric per component (bars) with ±2 standard errors, from a circuits ``Effects``.
    ``highlight`` (default: the component with the largest decrease of the first metric) is drawn darker."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    C = len(effects.labels)
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(11, max(6.0, 1.2 + 0.45 * C * len(metrics))), 3.0))
    else:
        fig = ax.figure
    hi = highlight if highlight is not None else effects.top(metrics[0])
    width = 0.8 / len(metrics)
    x = np.arange(C)
    for j, m in enumerate(metrics):
        d, se = effects.delta(m), effects.delta_se(m)
        colors = [f"C{j}" for _ in range(C)]
        alphas = [1.0 if lab == hi else 0.55 for lab in effects.labels]
        for i in range(C):
            ax.bar(x[i] + (j - (len(metrics) - 1) / 2) * width, d[i], width, yerr=2 * se[i], color=colors[i],
                   alpha=alphas[i], capsize=2, label=f"Δ {m}" if i == 0 else None)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(effects.labels, rotation=90 if C > 12 else 0, fontsize=8)
    ax.set_ylabel("patched − clean")
    ax.set_title(title if title is not None else effects.experiment, fontsize=10)
    if len(metrics) > 1:
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def effect_heatmap(effects, metric: str = "logit_B", title: str | None = None, ax=None, annotate: bool = True):
    """The Δ of ``metric`` folded into the effects' grid (layers x heads, conv outputs x lags ...), on a
    diverging colour scale centred at 0."""
    g = effects.grid(metric)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(5.5, 1.6 + 0.7 * g.shape[1]), max(2.0, 1.0 + 0.45 * g.shape[0])))
    else:
        fig = ax.figure
    lim = float(np.nanmax(np.abs(g))) or 1.0
    im = ax.imshow(g, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(g.shape[1]))
    ax.set_xticklabels(effects.cols, fontsize=8)
    ax.set_yticks(range(g.shape[0]))
    ax.set_yticklabels(effects.rows, fontsize=8)
    if annotate and g.size <= 200:
        for (i, j), v in np.ndenumerate(g):
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, label=f"Δ {metric}", shrink=0.85)
    ax.set_title(title if title is not None else effects.experiment, fontsize=10)
    fig.tight_layout()
    return fig


def circuit_diagrams(circuits: dict, tokens=("A", "B", "B+1", "…", "A"), title: str = ""):
    """Side-by-side flow diagrams, one per model. ``circuits[name]`` is a list of (step, text) from the
    earliest step (e.g. the previous-token step) to the readout, or a dict ``{"steps": [...], "tokens": [...],
    "sources": [token indices]}`` to give that panel its own token row and the tokens whose arrows feed the
    first step. Each step is a box above the token row, with arrows between consecutive steps."""
    from matplotlib.patches import FancyBboxPatch

    n = len(circuits)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.6))
    axes = np.atleast_1d(axes)
    for ax, (name, spec) in zip(axes, circuits.items()):
        spec = spec if isinstance(spec, dict) else {"steps": spec}
        steps, toks = spec["steps"], list(spec.get("tokens", tokens))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.axis("off")
        ax.set_title(name, fontsize=11)
        xs = np.linspace(0.1, 0.9, len(toks))
        for x, t in zip(xs, toks):
            ax.add_patch(FancyBboxPatch((x - 0.06, 0.02), 0.12, 0.08, boxstyle="round,pad=0.01", fc="#eeeeee",
                                        ec="grey"))
            ax.text(x, 0.06, t, ha="center", va="center", fontsize=9)
        ys = np.linspace(0.27, 0.88, len(steps))
        for k, ((step, text), y) in enumerate(zip(steps, ys)):
            ax.add_patch(FancyBboxPatch((0.06, y - 0.075), 0.88, 0.15, boxstyle="round,pad=0.01",
                                        fc=f"C{k}", alpha=0.18, ec=f"C{k}"))
            ax.text(0.08, y + 0.045, step, ha="left", va="center", fontsize=9, weight="bold")
            ax.text(0.08, y - 0.02, text, ha="left", va="center", fontsize=8)
            if k == 0:
                for j in spec.get("sources", [len(toks) // 2]):
                    ax.annotate("", xy=(xs[j], y - 0.08), xytext=(xs[j], 0.11),
                                arrowprops=dict(arrowstyle="->", color="black", lw=1.2))
            else:
                ax.annotate("", xy=(0.5, y - 0.08), xytext=(0.5, ys[k - 1] + 0.08),
                            arrowprops=dict(arrowstyle="->", color="black", lw=1.2))
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig
