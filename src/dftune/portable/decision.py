"""The rules that turn scores into labels: crop settings and their overrides, thresholds and their provenance,
ensembles.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from .faces import DETECT_EVERY, FRAMED_NO_FACE, MARGIN, SIZE
from .scoring import parse_tta
from .video import FRAMES

# the guide's settings: what a model folder without dftune.json is assumed to want
# (``detect_every``: the detector on every K-th sampled frame, boxes interpolated between; 1: every frame)
DEFAULT_CROP = {"detector": "dlib", "margin": MARGIN, "size": SIZE, "frames": FRAMES, "every": 0, "aggregate": "mean",
                "detect_every": DETECT_EVERY}
CROP_KEYS = tuple(DEFAULT_CROP)

# How the detector looks at a frame, which shapes every box (``prepare --detect-width``): the width it
# detects at, and RetinaFace's cheaper first pass (``first_width``, 0: none; its faces stand when the
# largest is at least ``first_min_face`` px there). ``dftune.json``'s crop carries them; a model
# without them was detected at 640 in one pass.
DETECT_DEFAULTS = {"detect_width": 640, "first_width": 0, "first_min_face": 32}
# --detect-width auto: RetinaFace at 320 first, again at 640 when the faces there are small; dlib at 640
AUTO_FIRST_WIDTH, AUTO_FIRST_MIN_FACE = 320, 32


def resolve_detect(detector: str, detect_width="auto", first_width=None, first_min_face=None) -> dict:
    """``prepare``'s ``--detect-width`` (``auto`` or pixels) as the explicit settings
    (:data:`DETECT_DEFAULTS`' keys) that go into ``dftune.json``."""
    d = dict(DETECT_DEFAULTS)
    if detect_width in (None, "auto"):
        if detector == "retinaface" and detect_width == "auto":
            d.update(first_width=AUTO_FIRST_WIDTH, first_min_face=AUTO_FIRST_MIN_FACE)
    else:
        d["detect_width"] = int(detect_width)
    if first_width is not None:
        d["first_width"] = int(first_width)
    if first_min_face is not None:
        d["first_min_face"] = int(first_min_face)
    return d


def detector_kwargs(crop: Mapping | None) -> dict:
    """The ``get_detector`` keyword arguments a crop's settings ask for (``{}`` for ``none``)."""
    c = dict(DEFAULT_CROP, **(crop or {}))
    name = c.get("detector")
    d = resolve_detect(name, c.get("detect_width", DETECT_DEFAULTS["detect_width"]), c.get("first_width"),
                       c.get("first_min_face"))
    if name == "retinaface":
        return d
    if name == "dlib":
        return {"detect_width": d["detect_width"]}
    return {}


def frame_spec(crop: Mapping, already_cropped: float, faces: str, clipped: str):
    """The :class:`~.workers.FrameSpec` that frames files with a crop's settings (detector, margin, size,
    frames or every, detect_every and the detector's widths): the one way predict, the check sets and the
    script turn crop settings into framing."""
    from .workers import FrameSpec

    c = dict(DEFAULT_CROP, **crop)
    return FrameSpec(c["detector"], float(c["margin"]), int(c["size"]), int(c["frames"]), int(c["every"] or 0),
                     already_cropped, detector_kwargs=tuple(sorted(detector_kwargs(c).items())), faces=faces,
                     clipped=clipped, detect_every=int(c["detect_every"] or 1))


UNTUNED_ENSEMBLE = {"by": "weighted mean of the members' thresholds (not tuned for the ensemble; "
                          "`dftune evaluate --ensemble --write-threshold` tunes one)"}


def mean_threshold(weights, thresholds) -> float:
    """An untuned ensemble's threshold: its members' thresholds, weighted like their probabilities."""
    w = np.asarray(weights, dtype=np.float64)
    return float((w * np.asarray(thresholds, dtype=np.float64)).sum() / w.sum())


def describe_threshold(threshold: float, source) -> str:
    """Where a decision threshold came from, in words (printed by every predict and evaluate)."""
    if isinstance(source, Mapping):
        how = source.get("by", "?")
        if how == "default":
            return f"{threshold:.4f} (default: not tuned; `dftune evaluate --write-threshold` tunes it)"
        bits = [f"{k} {source[k]}" for k in ("data", "split", "level") if source.get(k)]
        if "tta" in source:
            bits.append(f"TTA {','.join(source['tta']) or 'none'}")
        if source.get("aggregate"):
            bits.append(f"video pooling {source['aggregate']}")
        return f"{threshold:.4f} (tuned for macro F1 by {how}" + (f": {', '.join(bits)})" if bits else ")")
    if source in (None, "", "default"):
        return f"{threshold:.4f} (default: not tuned; `dftune evaluate --write-threshold` tunes it)"
    return f"{threshold:.4f} ({source})"


def crop_settings(model_crop: Mapping | None, overrides: Mapping | None = None) -> dict:
    """The crop a run applies: the guide's defaults, under the (first) model's ``dftune.json`` crop, under the
    command line's overrides that are set (not None)."""
    c = dict(DEFAULT_CROP, **{k: v for k, v in (model_crop or {}).items()})
    c.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if not isinstance(c["detect_every"], int) or c["detect_every"] < 1:
        raise ValueError(f"detect_every (--detect-every) must be a whole number 1 or more, got {c['detect_every']!r}")
    return c


def check_ensemble(data: Mapping) -> None:
    """Refuse an ``ensemble.json`` (edited by hand, say) whose numbers would give infinite or empty scores: every
    weight finite and non-negative, not all zero; the threshold a number in [0, 1]. Names the field."""
    import math

    ws = []
    for i, m in enumerate(data["members"]):
        w = m.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"members[{i}].weight is {w!r}: weights must be finite numbers, 0 or more")
        ws.append(float(w))
    if ws and sum(ws) <= 0:
        raise ValueError("every member's weight is 0: at least one must be above 0")
    t = data.get("threshold", 0.5)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= 1:
        raise ValueError(f"threshold is {t!r}: it must be a number in [0, 1]")


def ensemble_members(data: Mapping, folder) -> list[tuple[str, float]]:
    """An ``ensemble.json``'s members as ``(path, weight)``, relative paths resolved against ``folder`` (the
    file's own, so an ensemble folder can move); raises KeyError/TypeError/ValueError on a malformed file
    (:func:`check_ensemble` first)."""
    check_ensemble(data)
    out = []
    for m in data["members"]:
        p = str(m["path"])
        path = p if os.path.isabs(p) else os.path.normpath(os.path.join(str(folder), p))
        out.append((path, float(m.get("weight", 1.0))))
    return out


def weighted_mean(weights, per_model) -> np.ndarray:
    """An ensemble's ``prob_fake``: its members' (``per_model``: M x N), weighted by ``weights``."""
    w = np.asarray(weights, dtype=np.float64)
    per = np.asarray(per_model, dtype=np.float64)
    return (w[:, None] * per).sum(0) / w.sum()


def decide_threshold(explicit=None, ensemble=None, models=(), weights=()) -> tuple[float, object]:
    """The threshold a prediction applies and where it came from: ``explicit`` (``--threshold``), else the
    ensemble file's ``(threshold, source)``, else a single model's ``(threshold, source)``, else the weighted
    mean of the ``models``' thresholds (untuned for the ensemble, and said so)."""
    if explicit is not None:
        return float(explicit), "--threshold"
    if ensemble is not None:
        return float(ensemble[0]), ensemble[1]
    models = list(models)
    if len(models) == 1:
        return float(models[0][0]), models[0][1]
    return mean_threshold(weights, [t for t, _ in models]), dict(UNTUNED_ENSEMBLE)


# The views a prediction scores (``--tta``). ``auto`` (predict's and the script's default): the views the applied
# threshold was tuned with when its provenance records them (a threshold is a point on the scale of those views'
# scores, and flip TTA moves every probability), else DEFAULT_TTA. Views given explicitly are applied as given,
# with a warning when they differ from the threshold's.
TTA_AUTO = "auto"
DEFAULT_TTA = ("flip",)


def threshold_tta(source) -> tuple | None:
    """The TTA views a threshold was tuned with, from its provenance (``threshold_source``); None when it does
    not say (the default 0.5, ``--threshold``, an untuned ensemble)."""
    if isinstance(source, Mapping) and isinstance(source.get("tta"), (list, tuple)):
        return parse_tta(list(source["tta"]))
    return None


def decide_tta(requested, source, program: str = "predict") -> tuple[tuple, str | None]:
    """The views a prediction applies and a warning (None: none): ``requested`` None or ``auto``: the
    threshold's (:func:`threshold_tta`), else :data:`DEFAULT_TTA`; else ``requested`` (a spec or a tuple), with
    a warning naming both when the threshold was tuned with other views."""
    tuned = threshold_tta(source)
    if requested is None or (isinstance(requested, str) and requested.strip().lower() == TTA_AUTO):
        return (tuned if tuned is not None else DEFAULT_TTA), None
    views = parse_tta(requested)
    if tuned is None or tuple(tuned) == tuple(views):
        return views, None
    a, b = ",".join(tuned) or "none", ",".join(views) or "none"
    return views, (f"the threshold was tuned with TTA {a} but {program} runs with TTA {b}: labels may shift; "
                   f"use --tta {a} (or --tta auto, the default) or re-run `dftune evaluate --write-threshold "
                   f"--tta {b}`")


# A file in which no face was found (framing ``whole:no-face``): ``score`` its centred square as any other file
# (the default), or call it ``real`` / ``fake`` as a contest's baseline does. A file read with ``--detector none``
# looked for no face, so the rule never applies to it.
NO_FACE_RULES = ("score", "real", "fake")
NO_FACE = "score"


def decided_by_no_face(framing: str, rule: str = NO_FACE) -> bool:
    """Whether ``rule`` (:data:`NO_FACE_RULES`) decides a file framed ``framing``, not its score."""
    if rule not in NO_FACE_RULES:
        raise ValueError(f"unknown no-face rule {rule!r}; use {', '.join(NO_FACE_RULES)}")
    return rule != "score" and framing == FRAMED_NO_FACE


def no_face_decision(prob: float, label: int, framing: str, rule: str = NO_FACE) -> tuple[float, int]:
    """The ``(prob_fake, label)`` a file gets: its pooled score and thresholded label, unless no face was found in
    it and ``rule`` is ``real`` / ``fake``; then that label, and its value (0.0 / 1.0) as the probability, as an
    error row gets, so that a written label and probability never disagree."""
    if not decided_by_no_face(framing, rule):
        return prob, label
    decided = 1 if rule == "fake" else 0
    return float(decided), decided
