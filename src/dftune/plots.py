"""PNG figures for ``evaluate``: ROC curves and confusion matrices (matplotlib, no display)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from dftune.atomic import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def draw_roc(ax, curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]], title: str = "ROC") -> None:
    """``curves``: name -> (fpr, tpr, auc). One line per name, the chance diagonal dashed."""
    for name, (fpr, tpr, auc) in curves.items():
        if len(fpr):
            ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (reals called fake)",
           ylabel="true positive rate (fakes caught)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


def draw_confusion(ax, cm: Sequence[Sequence[int]], title: str = "confusion matrix",
                   labels: Sequence[str] = ("real", "fake")) -> None:
    """2x2 counts (rows truth, columns prediction) with each cell's count and row share."""
    import numpy as np

    m = np.asarray(cm, dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}\n{share[i, j]:.1%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=10)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)


def _save(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _plt().close(fig)


def roc_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float]], path: str | os.PathLike,
               title: str = "ROC") -> None:
    fig, ax = _plt().subplots(figsize=(5, 5), dpi=110)
    draw_roc(ax, curves, title)
    _save(fig, path)


def confusion_figure(cm: Sequence[Sequence[int]], path: str | os.PathLike, title: str = "confusion matrix",
                     labels: Sequence[str] = ("real", "fake")) -> None:
    fig, ax = _plt().subplots(figsize=(4, 3.6), dpi=110)
    draw_confusion(ax, cm, title, labels)
    _save(fig, path)
