"""Figures of chapter 3 (feature similarity): MPPC distributions of all conditions, means with bootstrap
intervals, and the layer-pair heat-map. Each function returns the Figure; the notebook shows it."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["mppc_distributions", "mppc_means", "layer_matrix", "paired_mppc"]

_COLOURS = {"random": "tab:grey", "main": "tab:blue", "model_seed": "tab:orange", "sae_seed": "tab:green",
            "neurons_random": "tab:grey", "neurons_main": "tab:blue"}


def _panel(ax, dists: dict, labels: dict, bins, title: str, stats: dict | None):
    for name, v in dists.items():
        v = np.asarray(v, float)
        v = v[np.isfinite(v)]
        colour = _COLOURS.get(name)
        ax.hist(v, bins=bins, histtype="step", lw=1.6, density=True, color=colour,
                label=f"{labels.get(name, name)} (n={len(v):,})")
        if stats and name in stats:
            mean, lo, hi = stats[name]
            ax.axvline(mean, color=colour, ls="--", lw=1)
            ax.axvspan(lo, hi, color=colour, alpha=0.15, lw=0)
    ax.set_xlabel("MPPC (max Pearson correlation with any unit of the other model)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=7, loc="best")


def mppc_distributions(sae: dict, neurons: dict, labels: dict | None = None, stats: dict | None = None,
                       title: str = "", bins: int = 40):
    """Panel a: SAE features, panel b: neurons (as the paper's Figure 3). ``sae`` / ``neurons`` map a condition
    name to its MPPC values (live units); ``stats[name] = (mean, ci_low, ci_high)`` draws the mean (dashed) and
    its bootstrap interval (shaded)."""
    labels = labels or {}
    edges = np.linspace(-0.05, 1.0, bins + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharex=True)
    _panel(axes[0], sae, labels, edges, "(a) SAE features", stats)
    _panel(axes[1], neurons, labels, edges, "(b) neurons", stats)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def mppc_means(table, title: str = "mean MPPC with bootstrap 95% interval"):
    """One point per (condition, direction) of ``similarity.summary_table``, with its interval; SAE features and
    neurons side by side."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ticks = []
    for i, row in enumerate(table.itertuples()):
        colour = _COLOURS.get(row.condition, "k")
        ax.errorbar(i, row.mean, yerr=[[row.mean - row.ci_low], [row.ci_high - row.mean]], fmt="o", color=colour,
                    capsize=3, mfc="white" if row.units == "neurons" else colour)
        ticks.append(f"{row.condition}\n{row.direction}")
    ax.set_xticks(range(len(ticks)), ticks, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("mean MPPC")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def layer_matrix(mat, layers_a, layers_b, name_a: str = "T", name_b: str = "M", title: str = ""):
    """Heat-map [L_a, L_b]: the mean over a's live units of their best match in each layer pair."""
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(layers_b), 1.2 + 0.45 * len(layers_a)))
    im = ax.imshow(np.asarray(mat, float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(layers_b)), layers_b)
    ax.set_yticks(range(len(layers_a)), layers_a)
    ax.set_xlabel(f"{name_b} layer")
    ax.set_ylabel(f"{name_a} layer")
    ax.set_title(title or f"mean best match, {name_a} → {name_b}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig


def paired_mppc(df, name_x: str = "M", name_y: str = "M0", margin: float = 0.1, title: str = ""):
    """Each feature's MPPC against two models (``similarity.paired``): a 2-D histogram with the diagonal and the
    line ``y = x - margin`` (features below it match ``name_x`` by at least ``margin`` more than ``name_y``),
    beside the histogram of the differences."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.1, 1]})
    h = ax.hist2d(df.mppc_x, df.mppc_y, bins=50, range=[[0, 1], [0, 1]], cmap="Blues", cmin=1)
    ax.plot([0, 1], [0, 1], color="0.3", lw=1, label="equal")
    ax.plot([margin, 1], [0, 1 - margin], color="tab:red", lw=1, ls="--", label=f"{name_x} higher by {margin:g}")
    ax.set_xlabel(f"MPPC in {name_x}")
    ax.set_ylabel(f"MPPC in {name_y}")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    fig.colorbar(h[3], ax=ax, fraction=0.05, label="features")
    ax2.hist(df["diff"], bins=60, color="tab:blue", alpha=0.8)
    ax2.axvline(0, color="0.3", lw=1)
    ax2.axvline(margin, color="tab:red", lw=1, ls="--")
    ax2.set_xlabel(f"MPPC in {name_x} − MPPC in {name_y}")
    ax2.set_ylabel("features")
    fig.suptitle(title or f"each feature's best match in {name_x} vs in {name_y}", fontsize=10)
    fig.tight_layout()
    return fig
