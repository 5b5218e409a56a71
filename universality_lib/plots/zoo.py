"""Figures of chapter 1 (two architectures): loss at each position of a sequence, and training curves.
Each function returns the Figure; the notebook shows it."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["induction_curves", "loss_by_position", "prob_by_prefix", "ratio_by_prefix", "training_curves"]


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


# the induction probes that training logs every eval_every steps (zoo.train_model's probe): panel title -> ratio
INDUCTION_PANELS = {
    "random tokens (period-64 check)": lambda r: r["repeat_second"] / r["repeat_first"] if "repeat_second" in r else None,
    "held-out English text": lambda r: r.get("natural_text_ratio"),
    "held-out code": lambda r: r.get("natural_code_ratio"),
}


def induction_curves(logs: dict[str, list[dict]], threshold: float = 0.5):
    """Repeat / first-copy loss ratio against tokens seen, one panel per probe (random tokens, held-out English,
    held-out code), one line per model; the panels a log lacks (a code-only corpus has no English) are left out."""
    panels = {t: f for t, f in INDUCTION_PANELS.items() if any(f(r) is not None for rows in logs.values() for r in rows)}
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.6 * max(1, len(panels)), 3.2), sharey=True,
                             squeeze=False)
    for ax, (title, f) in zip(axes[0], panels.items()):
        for name, rows in logs.items():
            pts = [(r["tokens"], f(r)) for r in rows if f(r) is not None]
            if pts:
                ax.plot(*zip(*pts), label=name, lw=1.2)
        ax.axhline(threshold, color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training tokens")
    axes[0][0].set_ylabel("repeat / first-copy loss")
    axes[0][0].legend(frameon=False)
    fig.tight_layout()
    return fig


def prob_by_prefix(table, title: str = "clean p(B) when the first A does not open the row"):
    """One line per model: mean p(B) against the random tokens before the first A (``zoo_check.prob_B_by_prefix``)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(table))
    for name in table.columns:
        ax.plot(x, table[name].to_numpy(dtype=float), marker="o", label=name, lw=1.5)
    ax.set_xticks(x, [str(k) for k in table.index])
    ax.set_ylim(0, 1)
    return _finish(fig, ax, "random tokens between BOS and the first A", "mean p(B)", title)


def ratio_by_prefix(tables: dict, threshold: float = 0.5,
                    title: str = "natural-text induction when the first copy does not open the row"):
    """One panel per kind of text (``tables[kind]`` from ``zoo_check.natural_ratio_by_prefix``), one line per model:
    the repeat / first-copy ratio against the tokens before the first copy; dotted, the criterion's ``threshold``."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.2), sharey=True, squeeze=False)
    for ax, (kind, table) in zip(axes[0], tables.items()):
        x = np.arange(len(table))
        for name in table.columns:
            ax.plot(x, table[name].to_numpy(dtype=float), marker="o", label=name, lw=1.5)
        ax.axhline(threshold, color="grey", ls=":", lw=1)
        ax.set_xticks(x, [str(k) for k in table.index])
        ax.set_ylim(0, 1.1)
        ax.set_title(kind)
        ax.set_xlabel("tokens before the first copy")
    axes[0][0].set_ylabel("repeat / first-copy loss")
    axes[0][-1].legend(frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _finish(fig, ax, xlabel: str, ylabel: str, title: str):
    """Axis labels, title and legend of a one-panel line plot; returns the Figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
