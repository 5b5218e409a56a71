"""Figures of chapter 4 (is similarity universality?): the depth panels and the complexity-vs-MPPC panels.
Each function returns the Figure; the notebook shows it."""
from __future__ import annotations

import matplotlib.patheffects as patheffects
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["depth_panels", "complexity_panels"]


def depth_panels(layer_mat, counts, layers_a, layers_b, mean_best, expected, name_a: str = "T", name_b: str = "M",
                 title: str = ""):
    """(a) heat-map [L_a, L_b] of the mean best match within each layer pair; (b) for each layer of a, the
    fraction of its units whose best match lies in each layer of b (colour), their mean best-match layer with
    its interval (points) and the equal-relative-depth layer (dashed line), on both panels."""
    counts = np.asarray(counts, float)
    frac = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    w = 2.4 + 0.5 * len(layers_b)
    fig, axes = plt.subplots(1, 2, figsize=(2 * w, 2.6 + 0.5 * len(layers_a)))
    ya = np.arange(len(layers_a))
    ex = np.interp(expected, layers_b, np.arange(len(layers_b)))  # in column coordinates
    for ax, mat, label, vmax in ((axes[0], np.asarray(layer_mat, float), "mean best match (Pearson r)", 1.0),
                                 (axes[1], frac, "fraction of the row's units", max(frac.max(), 1e-9))):
        im = ax.imshow(mat, vmin=0, vmax=vmax, cmap="viridis", aspect="auto")
        ax.plot(ex, ya, "w--", lw=1.4, path_effects=[patheffects.withStroke(linewidth=2.8, foreground="k")],
                label=f"equal relative depth ({name_b} layer = {len(layers_b) / len(layers_a):g}·({name_a} layer + 1)"
                      " − 1)")
        ax.set_xticks(range(len(layers_b)), layers_b)
        ax.set_yticks(ya, layers_a)
        ax.set_xlabel(f"{name_b} layer")
        ax.set_ylabel(f"{name_a} layer")
        fig.colorbar(im, ax=ax, fraction=0.05, label=label)
    m = np.asarray(mean_best, float)  # [L_a, 3] mean, low, high (in layers of b)
    mx = np.interp(m, layers_b, np.arange(len(layers_b)))
    axes[1].errorbar(mx[:, 0], ya, xerr=[mx[:, 0] - mx[:, 1], mx[:, 2] - mx[:, 0]], fmt="o", color="tab:red",
                     capsize=3, label="mean best-match layer (95% interval)")
    axes[0].set_title(f"(a) mean best match of {name_a}'s features per layer pair", fontsize=10)
    axes[1].set_title(f"(b) where each {name_a} layer's features find their MPPC", fontsize=10)
    handles, labs = axes[1].get_legend_handles_labels()
    fig.legend(handles, labs, frameon=False, fontsize=8, loc="lower center", ncol=2)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))  # room for the legend below
    return fig


def complexity_panels(binned: dict, corr=None, labels: dict | None = None, title: str = ""):
    """One panel per measure: its mean in each MPPC bin with the bootstrap 95% interval (``binned[measure]`` from
    ``complexity.binned_means``), the number of features per bin, and Spearman's rho in the title (``corr``
    from ``complexity.correlations``)."""
    labels = labels or {}
    rho = {} if corr is None else {r.measure: r for r in corr.itertuples()}
    fig, axes = plt.subplots(1, len(binned), figsize=(3.3 * len(binned), 3.2), squeeze=False)
    for ax, (m, b) in zip(axes[0], binned.items()):
        x = (b["lo"] + b["hi"]).to_numpy() / 2
        ok = b["n"].to_numpy() > 0
        ax.errorbar(x[ok], b["mean"][ok], yerr=[(b["mean"] - b["ci_low"])[ok], (b["ci_high"] - b["mean"])[ok]],
                    fmt="o-", color="tab:blue", capsize=3)
        for xi, yi, n in zip(x[ok], b["mean"][ok], b["n"][ok]):
            ax.annotate(f"n={n}", (xi, yi), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7,
                        color="grey")
        ax.set_xlabel("MPPC bin")
        ax.set_ylabel(labels.get(m, m))
        ax.set_xlim(0, 1)
        r = rho.get(m)
        sub = f"\nSpearman ρ = {r.rho:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]" if r is not None else ""
        ax.set_title(f"{m}{sub}", fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
