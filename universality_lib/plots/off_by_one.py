"""Figures of chapter 6 (the Off-by-One motif): the conv window and state update drawn as a diagram, effect
profiles over the offsets B..B+3 side by side, and the lag shares of a Mamba layer's conv output and state write.
Each function returns the Figure; the notebook shows it. (Chapter 5's effect bars and heat-maps, which chapter 6
uses too, are in :mod:`universality_lib.plots.circuits`.)"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["off_by_one_diagram", "offset_profiles", "lag_shares"]


def _box(ax, x, y, text, w=0.085, h=0.07, fc="#eeeeee", ec="grey", fontsize=8, **kw):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.006", fc=fc, ec=ec, **kw))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, a, b, color="black", lw=1.0, rad=0.0, style="->", ls="-"):
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=9, color=color, lw=lw, ls=ls,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=2, shrinkB=2))


def off_by_one_diagram(lag: int = 1, title: str = "Where a token is written"):
    """Two schematic panels. Left, a Mamba layer: the conv window of the state write at B+``lag`` spans the inputs
    at lags 0..3 and its tap w_``lag`` carries B; the write enters the state chain h_t = Ā_t ⊙ h_{t-1} + B̄_t x_t,
    read out at the last A as y_T = C_T · h_T. Right, a Transformer: the previous-token head writes A into B's own
    residual stream and the induction head at the last A attends to B."""
    toks = ["r", "A", "B", "B+1", "B+2", "B+3", "…", "A"]
    xs = np.linspace(0.07, 0.93, len(toks))
    b, t_write = 2, 2 + lag
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    for ax in axes:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.axis("off")

    # ---------------------------------------------------------------- Mamba
    ax = axes[0]
    ax.set_title("Mamba layer: conv window, then the state write", fontsize=10)
    y_tok, y_in, y_x, y_h = 0.06, 0.25, 0.5, 0.78
    for j, (x, t) in enumerate(zip(xs, toks)):
        _box(ax, x, y_tok, t, fc="#fde0c5" if j == b else "#eeeeee")
        if t != "…":
            _box(ax, x, y_in, "x_in", w=0.07, h=0.055, fontsize=7)
            _arrow(ax, (x, y_tok + 0.035), (x, y_in - 0.03), color="grey", lw=0.8)
    lo, hi = t_write - 3, t_write
    x0 = xs[max(lo, 0)] - 0.05
    ax.add_patch(plt.Rectangle((x0, y_in - 0.065), xs[hi] + 0.05 - x0, 0.13, fc="tab:blue", alpha=0.08,
                               ec="tab:blue", ls="--"))
    ax.text(x0, y_in - 0.085, "conv window of the write at " + toks[hi] + " (K = 4 taps)", fontsize=7,
            color="tab:blue", ha="left", va="top")
    for j in range(max(lo, 0), hi + 1):
        k = hi - j
        ax.text(xs[j] - 0.03, y_in + 0.055, f"w{k}", ha="center", va="center", fontsize=7,
                color="tab:red" if j == b else "tab:blue", weight="bold" if j == b else None)
        _arrow(ax, (xs[j], y_in + 0.03), (xs[hi], y_x - 0.035), color="tab:red" if j == b else "tab:blue",
               lw=1.6 if j == b else 0.7, rad=0.0)
    _box(ax, xs[hi], y_x, "x = SiLU(c)\nΔ, B", w=0.11, h=0.075, fc="#dbe9f6", fontsize=7)
    for j, x in enumerate(xs):
        if toks[j] == "…":
            ax.text(x, y_h, "…", ha="center", va="center")
            continue
        name = "h_T" if j == len(toks) - 1 else f"h_{toks[j]}"
        _box(ax, x, y_h, name, w=0.075, h=0.06, fc="#fde0c5" if j == hi else "#f3f3f3", fontsize=7)
        if j > 0:
            _arrow(ax, (xs[j - 1] + 0.04, y_h), (x - 0.04, y_h), color="grey", lw=0.8)
    ax.text((xs[0] + xs[1]) / 2, y_h + 0.05, "Ā ⊙ h", fontsize=7, color="grey", ha="center")
    _arrow(ax, (xs[hi], y_x + 0.04), (xs[hi], y_h - 0.033), color="tab:red", lw=1.6)
    ax.text(xs[hi] + 0.012, (y_x + y_h) / 2, "write  B̄ x", fontsize=7, color="tab:red", ha="left")
    ax.text(xs[-1], y_h + 0.075, "y_T = C_T · h_T\n→ logit B", ha="center", fontsize=7)
    ax.text(0.5, 0.955, f"B reaches the state through tap w{lag}: written at {toks[hi]}, not at B", ha="center",
            fontsize=8, color="tab:red")

    # ---------------------------------------------------------------- Transformer
    ax = axes[1]
    ax.set_title("Transformer: heads read and write at B itself", fontsize=10)
    for j, (x, t) in enumerate(zip(xs, toks)):
        _box(ax, x, y_tok, t, fc="#fde0c5" if j == b else "#eeeeee")
        ax.plot([x, x], [y_tok + 0.04, 0.9], color="#dddddd", lw=2, zorder=0)  # residual streams
    _arrow(ax, (xs[1], 0.3), (xs[b], 0.3), color="tab:green", lw=1.8, rad=-0.9)
    ax.text(xs[b] + 0.02, 0.36, "previous-token head at B:\nwrites 'A' into B's residual", fontsize=7,
            color="tab:green", ha="left")
    _arrow(ax, (xs[b], 0.72), (xs[-1], 0.72), color="tab:purple", lw=1.6, rad=-0.3)
    ax.text((xs[b] + xs[-1]) / 2, 0.86, "induction head at the last A:\nattends to B (key 'A'), copies B",
            fontsize=7, color="tab:purple", ha="center")
    ax.text(0.5, 0.955, "both steps read and write position B", ha="center", fontsize=8, color="tab:green")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def offset_profiles(profiles: dict, metric_label: str = "Δ logit B (±2 SE)", title: str = ""):
    """One panel per profile (``circuits.off_by_one.peak`` dicts: ``labels``, ``deltas``, ``ses``, ``index``): the
    change of the metric at each offset, the peak drawn darker."""
    n = len(profiles)
    fig, axes = plt.subplots(1, n, figsize=(3.9 * n, 3.0), squeeze=False)
    for j, (ax, (name, p)) in enumerate(zip(axes[0], profiles.items())):
        d, se = np.asarray(p["deltas"], float), np.asarray(p["ses"], float)
        x = np.arange(len(d))
        alpha = [1.0 if i == p.get("index", int(np.argmax(np.abs(d)))) else 0.45 for i in x]
        for i in x:
            ax.bar(i, d[i], 0.7, yerr=2 * se[i], color=f"C{j}", alpha=alpha[i], capsize=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(p["labels"], fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("patched position")
    axes[0][0].set_ylabel(metric_label)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def lag_shares(decomposition, layer: int, title: str = ""):
    """Left: the three lag shares of one layer (weights alone, conv term, state write) as grouped bars. Right: the
    state-write share of every layer as a layers x lags heat-map. ``decomposition``: a
    ``circuits.off_by_one.WriteDecomposition``."""
    dec = decomposition
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.3), gridspec_kw={"width_ratios": [1.2, 1]})
    ax = axes[0]
    parts = dec.row(layer)
    K = len(dec.lags)
    w = 0.8 / len(parts)
    for j, (name, v) in enumerate(parts.items()):
        ax.bar(np.arange(K) + (j - (len(parts) - 1) / 2) * w, v, w, label=name, color=f"C{j}")
    ax.set_xticks(range(K))
    ax.set_xticklabels([f"lag {k}\n(token t-{k})" if k else "lag 0\n(token t)" for k in dec.lags], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    ax.set_title(f"layer {layer}: where the write at t comes from", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    ax = axes[1]
    im = ax.imshow(dec.write, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(K))
    ax.set_xticklabels([f"lag {k}" for k in dec.lags], fontsize=8)
    ax.set_yticks(range(len(dec.layers)))
    ax.set_yticklabels([f"layer {l}" for l in dec.layers], fontsize=8)
    if dec.write.size <= 200:
        for (i, k), v in np.ndenumerate(dec.write):
            ax.text(k, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 else "black")
    fig.colorbar(im, ax=ax, label="state-write share", shrink=0.85)
    ax.set_title("state-write share by lag, every layer", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
