"""Figures of chapter 5 (induction circuits): effect bars and heat-maps of a patching sweep, and the circuit
drawn as a flow diagram per model. Each function returns the Figure; the notebook shows it."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["effect_bars", "effect_heatmap", "circuit_diagrams"]


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
