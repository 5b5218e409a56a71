"""Figures of chapter 1 (two architectures): loss at each position of a sequence, and training curves.
Each function returns the Figure; the notebook shows it."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["loss_by_position", "training_curves"]


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
    return _finish(fig, ax, "position of the predicted token", ylabel, title)


def training_curves(logs: dict[str, list[dict]], key: str = "loss", title: str = "training loss"):
    """Loss against tokens seen, one line per model (rows from ``train.read_log``)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, rows in logs.items():
        rows = [r for r in rows if key in r]  # eval values are logged every eval_every steps only
        if rows:
            ax.plot([r["tokens"] for r in rows], [r[key] for r in rows], label=name, lw=1.2)
    return _finish(fig, ax, "training tokens", key, title)


def _finish(fig, ax, xlabel: str, ylabel: str, title: str):
    """Axis labels, title and legend of a one-panel line plot; returns the Figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
