"""Frame rows to video rows: the one pooling step for train's validation, evaluate and predict.

A video's score is its frames' ``prob_fake`` pooled by :func:`dftune.portable.pool`
(mean, the guide's, or median, max, top-k mean) — the same function the submission
script uses — and its label is its rows' label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dftune.portable import AGGREGATES, format_aggregate, parse_aggregate, pool

__all__ = ["AGGREGATES", "format_aggregate", "parse_aggregate", "pool", "video_aggregate"]


def video_aggregate(video_keys: Sequence, probs, labels, how: str = "mean", k: int = 3):
    """Pool frame rows into one row per video: ``(keys, probs, labels)`` as arrays sorted by key.

    Rows of one video with different labels are an error.
    """
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    keys = np.asarray([str(v) for v in video_keys])
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not (keys.size == p.size == y.size):
        raise ValueError(f"video_keys ({keys.size}), probs ({p.size}) and labels ({y.size}) differ in length")
    if keys.size == 0:
        return keys, p, y
    order = np.argsort(keys, kind="stable")
    keys, p, y = keys[order], p[order], y[order]
    uniq, starts = np.unique(keys, return_index=True)
    ends = np.append(starts[1:], keys.size)
    out_p = np.empty(uniq.size)
    out_y = np.empty(uniq.size, dtype=np.int64)
    for i, (s, e) in enumerate(zip(starts, ends, strict=False)):
        yy = y[s:e]
        if yy.min() != yy.max():
            raise ValueError(f"video {uniq[i]!r} has rows labelled both real and fake")
        out_y[i] = yy[0]
        out_p[i] = pool(p[s:e], how, k)
    return uniq, out_p, out_y
