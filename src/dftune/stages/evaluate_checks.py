"""Stage ``evaluate --check PATH`` (repeatable): the decision threshold tuned on check sets, not on the data's val.

A threshold tuned on the training data's own val split fits that data; a hidden test set of other generators and
cameras does not share it. ``--check`` names prepared folders from outside the training data
(:func:`dftune.checks.load`: their val and test splits, or ``PATH:SPLIT``); every model (and with ``--ensemble`` the
ensemble) is scored on them as evaluate scores any crop (:func:`dftune.stages.evaluate.score_rows`: its TTA and
batching), and the threshold is the macro-F1 optimum of the **pooled** scores: all check sets' crops (frame level)
or videos (video level, each set's videos kept apart) together, so each set weighs by its size, as one larger
check set would. The ``--data`` split is then measured at that threshold, and ``--write-threshold`` writes it
with its provenance (``data``: "check sets ... (rows pooled)", ``checks``: the sets). A check set sharing
identities, videos or crop files with the data a model's ``dftune.json`` says it was trained on is refused
(:func:`checks.refuse_leaks`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from dftune import checks, pooling, scoring
from dftune.averaging import crop_of
from dftune.pooling import format_aggregate
from dftune.prepared import read_manifest
from dftune.stages.evaluate import ENSEMBLE, EvalResult, EvalSettings, _unique_names, run, score_rows

log = logging.getLogger(__name__)

def trained_on(model: scoring.LoadedModel) -> list[str]:
    """The prepared folders a model's ``dftune.json`` says it was trained on (``extra.data``, a mix's
    ``extra.datasets``) that still hold a manifest."""
    extra = model.meta.extra or {}
    named = [extra.get("data"), *((extra.get("datasets") or {}).values())]
    return list(dict.fromkeys(str(d) for d in named if d and (Path(d) / "manifest.csv").exists()))


def refuse_leaks(models: Sequence[scoring.LoadedModel], sets: Sequence[checks.CheckSet]) -> None:
    """Refuse a check set sharing identities/videos/crops with the train or val split of any model's training data."""
    for m in models:
        found = trained_on(m)
        if not found:
            log.warning("%s: its dftune.json names no prepared training data (here), so the check sets cannot be "
                        "checked for identities or videos shared with it", m.path)
        for data in found:
            checks.refuse_leaks(sets, read_manifest(data, ("train", "val")), data)


def named(sets: Sequence[checks.CheckSet]) -> list[str]:
    """How the provenance names each check set: as given, with its splits (a labels CSV has none: its files)."""
    return [cs.name if cs.labels else f"{cs.name} ({'+'.join(cs.splits)})" for cs in sets]


def check_thresholds(ensemble: scoring.Ensemble, sets: Sequence[checks.CheckSet], s: EvalSettings,
                     how: str, k: int) -> dict:
    """``{model name (or "ensemble"): {"frame", "video", "from", "n_check_crops", ...}}``: each one's macro-F1
    optimal thresholds on the pooled check sets, in the form ``EvalSettings.fixed_thresholds`` takes."""
    models = ensemble.models
    names = _unique_names([m.path for m in models])
    scored: dict[str, list] = {nm: [] for nm in names}
    with_ensemble = (s.ensemble or ensemble.path) and len(models) > 1
    if with_ensemble:
        scored[ENSEMBLE] = []
    for cs in sets:
        ok, ens, per = score_rows(models, cs.folder, cs.rows, s)  # evaluate's own scoring: its TTA, batches
        y = np.array([r.label for r, good in zip(cs.rows, ok, strict=True) if good], dtype=np.int64)
        videos = [r.video for r, good in zip(cs.rows, ok, strict=True) if good]
        for i, nm in enumerate(names):
            scored[nm].append((cs.name, y, per[i][ok], videos))
        if with_ensemble:
            scored[ENSEMBLE].append((cs.name, y, ens[ok], videos))
    said = ", ".join(named(sets))
    out = {}
    for nm, per_set in scored.items():
        t = checks.pooled_threshold(per_set, format_aggregate(how, k))
        out[nm] = {"frame": t["frame"]["threshold"], "video": t["video"]["threshold"],
                   "from": f"check sets {said}, pooled", "frame_check_macro_f1": t["frame"]["macro_f1"],
                   "video_check_macro_f1": t["video"]["macro_f1"], "n_check_crops": t["frame"]["n"],
                   "n_check_videos": t["video"]["n"]}
    return out


def source(sets: Sequence[checks.CheckSet], s: EvalSettings, how: str, k: int) -> dict:
    """The provenance written with a check-set threshold (the form train/merge ``--threshold-on check`` write):
    which sets (and splits), pooled, and how they were scored."""
    names = named(sets)
    return {"by": "evaluate", "data": "check sets " + ", ".join(names) + " (rows pooled)", "checks": names,
            "level": s.threshold_level, "tta": list(s.tta), "aggregate": format_aggregate(how, k),
            "backend": s.backend}


def run_with_checks(model_dirs: Sequence[str], data: str | os.PathLike, out_dir: str | os.PathLike | None,
                    s: EvalSettings) -> EvalResult:
    """``evaluate --data DATA --check PATH...``: the check sets tune the thresholds (pooled), ``data``'s split is
    measured at them, and ``--write-threshold`` writes them with a provenance naming the check sets."""
    how, k = pooling.parse_aggregate(s.aggregate, s.top_k)
    cache = Path(out_dir) / "checks" if out_dir else None  # a labels CSV's crops (None: a temporary folder)
    sets = [checks.load(c, cache=cache, crop=crop_of([str(m) for m in model_dirs])) for c in s.checks]
    ensemble = scoring.load_ensemble(list(model_dirs), s.fake_label, s.device, s.backend, s.weights)
    refuse_leaks(ensemble.models, sets)
    fixed = check_thresholds(ensemble, sets, s, how, k)
    log.info("thresholds tuned on %s", fixed[next(iter(fixed))]["from"])
    return run(model_dirs, data, out_dir, replace(s, checks=(), fixed_thresholds=fixed,
                                                  threshold_from=source(sets, s, how, k)))
