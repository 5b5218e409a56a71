"""Figures of chapter 2 (sparse autoencoders): SAE quality against depth, feature densities, and one SAE's
training curves. Each function returns the Figure; the notebook shows it."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["sae_quality", "feature_density", "sae_training_curve"]

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
