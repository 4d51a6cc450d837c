"""Metrics ``evaluate`` reports beyond :mod:`dftune.metrics`: EER, average precision,
per-class precision/recall/F1, the confusion matrix, the per-method breakdown.

Pure functions on arrays (0 = real, 1 = fake; ``prob_fake``), checked against
scikit-learn in the tests.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dftune import metrics as _m

CLASS_NAMES = ("real", "fake")


def parse_aggregate(spec: str, top_k: int = 3) -> tuple[str, int]:
    """``"mean"`` / ``"median"`` / ``"max"`` / ``"topk"`` / ``"topk:5"`` -> ``(how, k)``."""
    s = str(spec).strip().lower()
    if s.startswith("topk") or s.startswith("top"):
        rest = s[4:] if s.startswith("topk") else s[3:]
        rest = rest.lstrip(":=")
        k = int(rest) if rest else int(top_k)
        if k < 1:
            raise ValueError(f"aggregate {spec!r}: k must be at least 1")
        return "topk", k
    if s not in _m.AGGREGATES:
        raise ValueError(f"aggregate must be one of mean, median, max, topk[:K]; got {spec!r}")
    return s, int(top_k)


def aggregate_one(probs: Sequence[float], how: str = "mean", k: int = 3) -> float:
    """One file's (video's) probability from its frames' probabilities."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return float("nan")
    _, out, _ = _m.video_aggregate(["v"] * p.size, p, np.zeros(p.size, dtype=np.int64), how=how, k=k)
    return float(out[0])


def average_precision(y_true, prob_fake) -> float:
    """Average precision with fake as positive (sklearn's step-wise definition)."""
    y = np.asarray(y_true, dtype=np.int64)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, np.asarray(prob_fake, dtype=np.float64)))


def roc_points(y_true, prob_fake) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of the ROC curve; empty arrays with one class only."""
    y = np.asarray(y_true, dtype=np.int64)
    if y.size == 0 or y.min() == y.max():
        return np.zeros(0), np.zeros(0), np.zeros(0)
    from sklearn.metrics import roc_curve

    return roc_curve(y, np.asarray(prob_fake, dtype=np.float64))


def eer(y_true, prob_fake) -> tuple[float, float]:
    """Equal error rate and its threshold: where the false-positive rate meets the miss rate.

    Linear interpolation between the two ROC points that bracket FPR = FNR.
    """
    fpr, tpr, thr = roc_points(y_true, prob_fake)
    if fpr.size == 0:
        return float("nan"), float("nan")
    fnr = 1.0 - tpr
    d = fpr - fnr  # increases along the curve: -1 .. +1
    i = int(np.searchsorted(d, 0.0))
    if i == 0:
        return float((fpr[0] + fnr[0]) / 2), float(min(thr[0], 1.0))
    if i >= d.size:
        return float((fpr[-1] + fnr[-1]) / 2), float(thr[-1])
    d0, d1 = d[i - 1], d[i]
    a = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    rate = fpr[i - 1] + a * (fpr[i] - fpr[i - 1])
    t0, t1 = min(thr[i - 1], 1.0), thr[i]
    return float(rate), float(t0 + a * (t1 - t0))


def confusion_matrix(y_true, y_pred) -> list[list[int]]:
    """2x2 counts, rows = truth (real, fake), columns = prediction (real, fake) — sklearn's layout."""
    y = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    return [[int(np.sum((y == t) & (yp == p))) for p in (0, 1)] for t in (0, 1)]


def per_class(y_true, y_pred) -> dict:
    """Precision, recall, F1 and support for each class (0/0 counts as 0, like sklearn's zero_division=0)."""
    y = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    out = {}
    for c, name in enumerate(CLASS_NAMES):
        tp = int(np.sum((yp == c) & (y == c)))
        fp = int(np.sum((yp == c) & (y != c)))
        fn = int(np.sum((yp != c) & (y == c)))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0
        out[name] = {"precision": prec, "recall": rec, "f1": f1, "support": int(np.sum(y == c))}
    return out


def full_metrics(y_true, prob_fake, threshold: float = 0.5) -> dict:
    """Everything ``evaluate`` reports for one set of rows at one threshold."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(prob_fake, dtype=np.float64)
    base = _m.binary_metrics(y, p, threshold)
    pred = (p >= threshold).astype(np.int64)
    e, et = eer(y, p)
    base.update({
        "average_precision": average_precision(y, p),
        "eer": e,
        "eer_threshold": et,
        "per_class": per_class(y, pred),
        "confusion_matrix": confusion_matrix(y, pred),
    })
    return base


def per_method(y_true, prob_fake, methods: Sequence[str], threshold: float = 0.5) -> dict:
    """Each manipulation method's fakes against *all* reals: ``{method: full_metrics}``."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(prob_fake, dtype=np.float64)
    meth = np.asarray([str(m) for m in methods])
    real = y == 0
    out = {}
    for m in sorted(set(meth[y == 1].tolist())):
        sel = real | ((y == 1) & (meth == m))
        out[m] = full_metrics(y[sel], p[sel], threshold)
    return out
