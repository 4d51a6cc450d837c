"""Stage ``evaluate --check PATH`` (repeatable): the decision threshold tuned on check sets, not on the data's val.

A threshold tuned on the training data's own val split fits that data; a hidden test set of other generators and
cameras does not share it. ``--check`` names prepared folders from outside the training data
(:func:`dftune.checks.load`: their val and test splits, or ``PATH:SPLIT``); every model (and with ``--ensemble`` the
ensemble) is scored on them as evaluate scores any crop (:func:`dftune.stages.evaluate.score_rows`: its TTA and
batching), and the threshold is the macro-F1 optimum of the **pooled** scores: all check sets' crops (frame level)
or videos (video level, each set's videos kept apart) together, so each set weighs by its size, as one larger
check set would. The ``--data`` split is then measured at that threshold, and ``--write-threshold`` writes it with
its provenance: ``{"by": "evaluate", "checks": [...], "pooled": ...}``. A check set sharing identities, videos or
crop files with the data a model's ``dftune.json`` says it was trained on is refused (:func:`checks.refuse_leaks`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from dftune import checks, metrics, pooling, scoring
from dftune.pooling import format_aggregate
from dftune.prepared import read_manifest
from dftune.stages.evaluate import ENSEMBLE, EvalResult, EvalSettings, _unique_names, run, score_rows

log = logging.getLogger(__name__)

POOLED = "the check sets' scores pooled (frame: all their crops; video: all their videos), one optimum"


def trained_on(model: scoring.LoadedModel) -> list[str]:
    """The prepared folders a model's ``dftune.json`` says it was trained on (``extra.data``, a mix's
    ``extra.datasets``) that still hold a manifest."""
    extra = model.meta.extra or {}
    named = [extra.get("data"), *((extra.get("datasets") or {}).values())]
    return list(dict.fromkeys(str(d) for d in named if d and (Path(d) / "manifest.csv").exists()))


def refuse_leaks(models: Sequence[scoring.LoadedModel], sets: Sequence[checks.CheckSet]) -> None:
    """Refuse a check set sharing identities/videos/crops with the train or val split of any model's training data."""
    for m in models:
        for data in trained_on(m):
            checks.refuse_leaks(sets, read_manifest(data, ("train", "val")), data)


def check_thresholds(ensemble: scoring.Ensemble, sets: Sequence[checks.CheckSet], s: EvalSettings,
                     how: str, k: int) -> dict:
    """``{model name (or "ensemble"): {"frame", "video", "from", "n_check_crops", ...}}``: each one's macro-F1
    optimal thresholds on the pooled check sets, in the form ``EvalSettings.fixed_thresholds`` takes."""
    models = ensemble.models
    names = _unique_names([m.path for m in models])
    ys, keys, ens_p, per_p = [], [], [], []
    for cs in sets:
        ok, ens, per = score_rows(models, cs.folder, cs.rows, s)
        rows = [r for r, good in zip(cs.rows, ok, strict=True) if good]
        ys.append(np.array([r.label for r in rows], dtype=np.int64))
        keys += [f"{cs.name}\x00{r.video}" for r in rows]  # one video key per set: sets never merge videos
        ens_p.append(ens[ok])
        per_p.append(per[:, ok])
    y = np.concatenate(ys)
    scored = {nm: np.concatenate([p[i] for p in per_p]) for i, nm in enumerate(names)}
    if (s.ensemble or ensemble.path) and len(models) > 1:
        scored[ENSEMBLE] = np.concatenate(ens_p)
    said = ", ".join(f"{cs.name} ({'+'.join(cs.splits)})" for cs in sets)
    out = {}
    for nm, p in scored.items():
        thr_f, f1_f = metrics.best_threshold(y, p)
        _, vp, vy = pooling.video_aggregate(keys, p, y, how=how, k=k)
        thr_v, f1_v = metrics.best_threshold(vy, vp)
        out[nm] = {"frame": thr_f, "video": thr_v, "from": f"check sets {said}, pooled",
                   "frame_check_macro_f1": f1_f, "video_check_macro_f1": f1_v, "n_check_crops": int(len(y)),
                   "n_check_videos": int(len(vy))}
    return out


def source(sets: Sequence[checks.CheckSet], s: EvalSettings, how: str, k: int) -> dict:
    """The provenance written with a check-set threshold: which sets (and splits), how they were pooled."""
    return {"by": "evaluate", "checks": [f"{cs.name} ({'+'.join(cs.splits)})" for cs in sets], "pooled": POOLED,
            "level": s.threshold_level, "tta": list(s.tta), "aggregate": format_aggregate(how, k),
            "backend": s.backend}


def run_with_checks(model_dirs: Sequence[str], data: str | os.PathLike, out_dir: str | os.PathLike | None,
                    s: EvalSettings) -> EvalResult:
    """``evaluate --data DATA --check PATH...``: the check sets tune the thresholds (pooled), ``data``'s split is
    measured at them, and ``--write-threshold`` writes them with a provenance naming the check sets."""
    how, k = pooling.parse_aggregate(s.aggregate, s.top_k)
    sets = [checks.load(c) for c in s.checks]
    ensemble = scoring.load_ensemble(list(model_dirs), s.fake_label, s.device, s.backend, s.weights)
    refuse_leaks(ensemble.models, sets)
    fixed = check_thresholds(ensemble, sets, s, how, k)
    log.info("thresholds tuned on %s", fixed[next(iter(fixed))]["from"])
    return run(model_dirs, data, out_dir, replace(s, checks=(), fixed_thresholds=fixed,
                                                  threshold_from=source(sets, s, how, k)))
