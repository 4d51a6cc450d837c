"""Frame- and video-level metrics for a real/fake classifier: pure numpy/sklearn.

Every function takes dftune's convention: ``y_true`` 0 = real, 1 = fake, and
``prob_fake`` the model's probability of "fake" (already mapped through the
model's label map). A video-level result is an aggregate of its frames' rows
(:func:`dftune.pooling.video_aggregate`), then the same :func:`binary_metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

_EPS = 1e-7


def _arrays(y_true, prob_fake) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(prob_fake, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob_fake has {p.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 (real) and 1 (fake)")
    return y, p


def log_loss(y_true, prob_fake) -> float:
    """Mean binary cross-entropy (natural log) of ``prob_fake`` against ``y_true``."""
    y, p = _arrays(y_true, prob_fake)
    if not y.size:
        return float("nan")
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def roc_auc(y_true, prob_fake) -> float:
    """ROC AUC (Mann-Whitney U with tied scores counted half); NaN when only one class is present."""
    y, p = _arrays(y_true, prob_fake)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    ranks = np.empty(y.size, dtype=np.float64)
    # average rank (1-based) over runs of equal scores
    starts = np.flatnonzero(np.concatenate([[True], ps[1:] != ps[:-1]]))
    ends = np.append(starts[1:], ps.size)
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def macro_f1(y_true, y_pred) -> float:
    """Mean of the real-class and fake-class F1, as sklearn's ``f1_score(average="macro")``.

    A class absent from both truth and prediction is left out of the mean.
    """
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    yp = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    f1s = []
    for c in (0, 1):
        tp, fp, fn = _class_counts(y, yp, c)
        if tp + fp + fn == 0:
            continue  # class absent in truth and prediction: no information either way
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


def _class_counts(y: np.ndarray, yp: np.ndarray, c: int) -> tuple[int, int, int]:
    """tp, fp, fn of class ``c`` (the one place rows are counted)."""
    return (int(np.sum((yp == c) & (y == c))), int(np.sum((yp == c) & (y != c))),
            int(np.sum((yp != c) & (y == c))))


def confusion(y_true, y_pred) -> dict:
    """Counts with fake as the positive class: tp, fp, tn, fn."""
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    yp = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    tp, fp, fn = _class_counts(y, yp, 1)
    return {"tp": tp, "fp": fp, "tn": int(y.size) - tp - fp - fn, "fn": fn}


def binary_metrics(y_true, prob_fake, threshold: float = 0.5, loss: float | None = None) -> dict:
    """Accuracy, macro F1, ROC AUC (and log loss) at ``threshold`` (fake when prob >= threshold).

    ``loss``: pass the training criterion's own loss to report it; when None the
    binary log loss of ``prob_fake`` is computed. Returned keys: n, n_real, n_fake,
    threshold, accuracy, macro_f1, auc, loss, balanced_accuracy, tpr (fake recall),
    tnr (real recall), tp, fp, tn, fn.
    """
    y, p = _arrays(y_true, prob_fake)
    pred = (p >= threshold).astype(np.int64)
    c = confusion(y, pred)
    n_fake, n_real = int(y.sum()), int(y.size - y.sum())
    tpr = c["tp"] / n_fake if n_fake else float("nan")
    tnr = c["tn"] / n_real if n_real else float("nan")
    recalls = [r for r in (tpr, tnr) if not np.isnan(r)]
    return {
        "n": int(y.size),
        "n_real": n_real,
        "n_fake": n_fake,
        "threshold": float(threshold),
        "accuracy": float(np.mean(pred == y)) if y.size else float("nan"),
        "macro_f1": macro_f1(y, pred),
        "auc": roc_auc(y, p),
        "loss": float(loss) if loss is not None else log_loss(y, p),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "tpr": float(tpr),
        "tnr": float(tnr),
        **c,
    }



def best_threshold(y_true, prob_fake) -> tuple[float, float]:
    """The threshold that maximises macro F1 on these rows: ``(threshold, macro_f1)``.

    Candidates are midpoints between consecutive distinct probabilities (plus the
    ends), so the chosen threshold generalises a little better than a score itself.
    Ties are broken toward the threshold closest to 0.5. With one class only,
    returns (0.5, macro F1 at 0.5).
    """
    y, p = _arrays(y_true, prob_fake)
    if y.size == 0:
        return 0.5, float("nan")
    if y.min() == y.max():
        return 0.5, macro_f1(y, (p >= 0.5).astype(np.int64))
    u = np.unique(p)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]])
    cands = np.clip(cands, 0.0, 1.0)
    # vectorised: predictions for every candidate at once (rows x candidates) for moderate n;
    # sorted cumulative counts keep it O(n log n) for any n.
    order = np.argsort(p)
    ps, ys = p[order], y[order]
    n_fake = ys.sum()
    n_real = ys.size - n_fake
    # number of rows with p < t, and fakes among them, for each candidate t
    below = np.searchsorted(ps, cands, side="left")
    fake_below = np.concatenate([[0], np.cumsum(ys)])[below]
    real_below = below - fake_below
    tp = n_fake - fake_below  # fakes predicted fake (p >= t)
    fn = fake_below
    tn = real_below
    fp = n_real - real_below
    f1_fake = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    f1_real = np.where(2 * tn + fn + fp > 0, 2 * tn / np.maximum(2 * tn + fn + fp, 1), 0.0)
    f1 = (f1_fake + f1_real) / 2
    best = f1.max()
    tied = np.flatnonzero(np.isclose(f1, best, rtol=0, atol=1e-12))
    i = tied[np.argmin(np.abs(cands[tied] - 0.5))]
    return float(cands[i]), float(f1[i])


def summarize(y_true, prob_fake, video_keys: Iterable | None = None, threshold: float = 0.5,
              how: str = "mean", loss: float | None = None) -> dict:
    """Frame-level and (when ``video_keys`` is given) video-level metrics in one dict."""
    out = {"frame": binary_metrics(y_true, prob_fake, threshold, loss=loss)}
    if video_keys is not None:
        from dftune.pooling import video_aggregate

        _, vp, vy = video_aggregate(list(video_keys), prob_fake, y_true, how=how)
        out["video"] = binary_metrics(vy, vp, threshold)
    return out


# ---------------------------------------------------------------- what evaluate reports beyond these

CLASS_NAMES = ("real", "fake")


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
        tp, fp, fn = _class_counts(y, yp, c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0
        out[name] = {"precision": prec, "recall": rec, "f1": f1, "support": int(np.sum(y == c))}
    return out


def full_metrics(y_true, prob_fake, threshold: float = 0.5) -> dict:
    """Everything ``evaluate`` reports for one set of rows at one threshold."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(prob_fake, dtype=np.float64)
    base = binary_metrics(y, p, threshold)
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
