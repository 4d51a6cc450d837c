"""A video's frames to one score: mean (the guide's), median, max, top-k mean."""

from __future__ import annotations

import numpy as np

AGGREGATES = ("mean", "median", "max", "topk")


def parse_aggregate(spec, top_k: int = 3) -> tuple[str, int]:
    """``"mean"`` / ``"median"`` / ``"max"`` / ``"topk"`` / ``"topk:5"`` -> ``(how, k)``."""
    s = str(spec).strip().lower()
    if s.startswith("top"):
        rest = (s[4:] if s.startswith("topk") else s[3:]).lstrip(":=")
        k = int(rest) if rest else int(top_k)
        if k < 1:
            raise ValueError(f"aggregate {spec!r}: k must be at least 1")
        return "topk", k
    if s not in AGGREGATES:
        raise ValueError(f"aggregate must be one of mean, median, max, topk[:K]; got {spec!r}")
    return s, int(top_k)


def pool(probs, how: str = "mean", k: int = 3) -> float:
    """One video's score from its frames' ``prob_fake``; NaN for no frames."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return float("nan")
    if how == "median":
        return float(np.median(p))
    if how == "max":
        return float(p.max())
    if how == "topk":
        return float(np.sort(p)[-max(1, min(int(k), p.size)):].mean())
    if how != "mean":
        raise ValueError(f"unknown aggregate {how!r}")
    return float(p.mean())


def format_aggregate(how: str, k: int) -> str:
    return f"topk:{k}" if how == "topk" else how


def pool_faces(probs, groups=None, how: str = "mean", k: int = 3) -> float:
    """A file's score from its crops' ``prob_fake``: :func:`pool` of them all, or, with ``groups``
    (crop indices per person, ``frame_file(faces="all")``), each person pooled alone and the
    highest taken (one fake face makes the video fake)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if not groups:
        return pool(p, how, k)
    return max(pool(p[list(g)], how, k) for g in groups)
