"""PNG figures (matplotlib, no display): ``evaluate``'s ROC curves and confusion matrices, ``tune``'s
optimisation history, per-epoch curves and parameter importances."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

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


def tune_history_figure(complete: Sequence[tuple[int, float]], pruned: Sequence[tuple[int, float]],
                        path: str | os.PathLike, ylabel: str, title: str, maximize: bool) -> None:
    """Each complete trial's value by trial number with the best so far as a step line, and each pruned
    trial's last reported value as a cross. ``complete`` and ``pruned``: (number, value) pairs."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _plt().subplots(figsize=(7, 4), dpi=100)
    comp = sorted(complete)
    if comp:
        ax.scatter([n for n, _ in comp], [v for _, v in comp], label="complete", color="C0")
        run, best_line = None, []
        for _, v in comp:
            run = v if run is None else (max(run, v) if maximize else min(run, v))
            best_line.append(run)
        ax.step([n for n, _ in comp], best_line, where="post", color="C1", label="best so far")
    if pruned:
        ax.scatter([n for n, _ in pruned], [v for _, v in pruned], marker="x", color="C3", label="pruned (last epoch)")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


def tune_curves_figure(curves: Sequence[tuple[int, Mapping[int, float], bool]], path: str | os.PathLike,
                       ylabel: str, title: str) -> None:
    """One line per trial of its value at each epoch, dashed when ``True`` (pruned); ``curves``: (number,
    {epoch: value}, dashed) for every trial, a trial with no values drawing nothing; labelled up to 10 trials."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _plt().subplots(figsize=(7, 4), dpi=100)
    labelled = len(curves) <= 10
    for number, iv, dashed in curves:
        if iv:
            ax.plot(sorted(iv), [iv[k] for k in sorted(iv)], marker=".", alpha=0.7,
                    linestyle="--" if dashed else "-", label=f"#{number}" if labelled else None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if labelled:
        ax.legend(fontsize=7)
    _save(fig, path)


def importance_figure(importances: Mapping[str, float], path: str | os.PathLike, xlabel: str, title: str) -> None:
    """Horizontal bars, the most important setting on top (``importances`` ordered most important first)."""
    fig, ax = _plt().subplots(figsize=(6, 0.4 * len(importances) + 1.2), dpi=100)
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def alpha_curve_figure(curve: Mapping, path: str | os.PathLike) -> None:
    """WiSE-FT's alpha against the check sets' metric (and the fine-tuned data's val, where known), the chosen
    alpha marked: where the val curve keeps rising to 1.0 and the check curve turns, is what it is for."""
    fig, ax = _plt().subplots(figsize=(5.5, 3.6), dpi=110)
    pts = curve["points"]
    xs = [p["alpha"] for p in pts]
    ax.plot(xs, [p["check"] for p in pts], "o-", label="check sets (mean)")
    if any("val" in p for p in pts):
        ax.plot(xs, [p.get("val") for p in pts], "s--", label="fine-tune data's val")
    ax.axvline(curve["chosen"], color="grey", lw=1, ls=":", label=f"chosen alpha {curve['chosen']:g}")
    ax.set(xlabel="alpha: (1 - alpha) x start + alpha x fine-tuned", ylabel=curve["metric"],
           title="WiSE-FT alpha chosen on the check sets")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


REAL_COLOUR = "tab:green"
# the methods' colours: matplotlib's ten without the real class's green, so no method is drawn like the reals
METHOD_COLOURS = ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
                  "tab:olive", "tab:cyan")


def draw_histogram(ax, y, p, methods: Sequence[str], threshold: float | None, title: str,
                   threshold_label: str = "val threshold") -> None:
    """Score histograms on ``ax``: the reals in their own green, then each method's fakes in a colour of
    ``METHOD_COLOURS`` (by sorted method name); 0.5 dotted and ``threshold`` (if any) as a solid line."""
    import numpy as np

    y, p = np.asarray(y), np.asarray(p, dtype=float)
    bins = np.linspace(0, 1, 31)
    meth = np.asarray([str(m) for m in methods])
    ax.hist(p[y == 0], bins=bins, alpha=0.6, label=f"real ({int((y == 0).sum())})", color=REAL_COLOUR)
    for j, m in enumerate(sorted(set(meth[y == 1].tolist()))):
        sel = (y == 1) & (meth == m)
        ax.hist(p[sel], bins=bins, alpha=0.45, histtype="stepfilled", label=f"{m} ({int(sel.sum())})",
                color=METHOD_COLOURS[j % len(METHOD_COLOURS)])
    for t, style, lab in ((0.5, ":", "0.5"), (threshold, "-", threshold_label)):
        if t is not None:
            ax.axvline(t, color="black", ls=style, lw=1.2, label=f"{lab} = {t:.3f}")
    ax.set(xlabel="prob_fake", ylabel="count", title=title)
    ax.legend(fontsize=7, ncol=2)


def history_figure(rows: Sequence[Mapping[str, object]], path: str | os.PathLike, title: str = "training") -> None:
    """A run's curves, one row a epoch (``history.csv``'s columns): losses, then macro F1 and AUC of val and
    of every set validated beside it (check sets, a mix's datasets), then the learning rate; the best epoch
    marked."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=100)
    epochs = [int(r["epoch"]) for r in rows]

    def series(col):
        pts = [(e, float(r[col])) for e, r in zip(epochs, rows, strict=True) if r.get(col) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    cols = list(dict.fromkeys(k for r in rows for k in r))
    for ax, pick, ylabel in ((axes[0], lambda c: c.endswith("loss") and "frame_loss" in c or c == "train_loss",
                              "loss"),
                             (axes[1], lambda c: c.endswith(("_macro_f1", "_auc")) and not c.startswith("train"),
                              "macro F1 (at 0.5) / AUC"),
                             (axes[2], lambda c: c == "lr", "learning rate")):
        for c in cols:
            if pick(c):
                x, y = series(c)
                if x:
                    ax.plot(x, y, marker="o", ms=3, lw=1.3, ls="--" if c.endswith("_auc") else "-", label=c)
        best = [e for e, r in zip(epochs, rows, strict=True) if str(r.get("best")) in ("1", "True")]
        for e in best[-1:]:
            ax.axvline(e, color="grey", lw=0.8, ls=":")
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{title} (dotted: best epoch)")
    _save(fig, path)
