"""Stage ``evaluate``: one or several models measured on a prepared split.

Every crop of the split (and of ``val``, for the threshold) is scored once per model
through :mod:`dftune.scoring` (the same preprocessing and TTA as ``predict``).
Frame-level metrics use the crops; video-level metrics pool a video's crops (mean by
default; median, max, top-k mean). Both are reported at 0.5 and at the macro-F1-optimal
threshold found on val, overall and per manipulation method (each method's fakes
against all reals). ``--write-threshold`` stores the val threshold in the model's
``dftune.json`` so ``predict`` uses it (``--check``: the check sets' instead, see
:mod:`dftune.stages.evaluate_checks`; ``--files``: :mod:`dftune.stages.evaluate_files`).
"""

from __future__ import annotations

import csv
import io as _io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from dftune import metrics, pooling, portable, prepared, scoring
from dftune.atomic import write_json, write_text
from dftune.labelfile import read_labels  # noqa: F401  (evaluate.read_labels)
from dftune.model import meta as modelmeta
from dftune.pooling import format_aggregate

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"


@dataclass
class EvalSettings:
    split: str = "test"
    threshold_split: str = "val"
    tta: tuple = ("flip",)
    aggregate: str = "mean"
    top_k: int = 3
    batch_size: int = 32
    device: str = "auto"
    backend: str = "torch"
    fake_label: str | None = None
    ensemble: bool = False
    weights: Sequence[float] | None = None
    threshold_level: str = "frame"  # which val threshold --write-threshold stores: frame or video
    write_threshold: bool = False
    ensemble_out: str | None = None  # where --ensemble --write-threshold writes ensemble.json (default OUT/)
    from_videos: bool = False  # also score the split's source videos through predict's path
    fixed_thresholds: dict | None = None  # {model name: {"frame": t, "video": t}}: tuned elsewhere (cross-dataset)
    checks: tuple = ()  # --check PATH...: check sets that tune the thresholds instead of threshold_split (pooled)
    threshold_from: dict | None = None  # the fixed thresholds' provenance, written with them (evaluate --check)
    plots: bool = True
    progress: bool = True
    tuning_only: bool = False  # cross_dataset's pass over the training data's val: only its thresholds are used
    # --files only (scored through predict's path, as predict's options): None = the model's dftune.json
    frames: int | None = None
    no_face: str = portable.NO_FACE  # a file with no face found: score, real, fake (portable.no_face_decision)
    faces: str = portable.FACES  # --files: a video's faces, as predict's --faces (all, follow, largest)
    clipped: str = portable.CLIPPED  # --files: a still whose guide square would leave it, as predict's --clipped


def is_main_process() -> bool:
    """False in every process but the first under ``torchrun`` / ``accelerate launch`` (``RANK`` > 0).

    evaluate is scored whole by the main process alone: the others return at once, so one set of
    files is written, by one writer, equal to a single-process run's."""
    return int(os.environ.get("RANK", "0") or 0) == 0


class _Result:
    """A recipe's result; ``to_dict()`` is its metrics.json (before NaN -> null), in field order."""

    _KEYS: dict[str, str] = {}  # field -> metrics.json key, where a key is no Python name

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue
            out[self._KEYS.get(f.name, f.name)] = v
        return out


def _written_to() -> Any:
    """The folder the files went to: set after metrics.json is written, so that file never names it."""
    return field(default=None, metadata={"omit_none": True})


@dataclass
class EvalResult(_Result):
    """``run``: each model measured on one prepared split."""

    data: str
    split: str
    threshold_split: str | None  # what the tuned thresholds came from (None: no val rows, 0.5 only)
    tta: list[str]
    aggregate: str  # frames -> video: mean, median, max or topk:K
    backend: str
    skipped_crops: int
    # model name (or "ensemble") -> {path, model_threshold(_text), val_threshold, frame, video, threshold_written}
    models: dict[str, dict] = field(default_factory=dict)
    from_videos: dict | None = field(default=None, metadata={"omit_none": True})  # --from-videos' comparison
    out: str | None = _written_to()


@dataclass
class CrossResult(_Result):
    """``cross_dataset``: each model on each dataset at the training data's val threshold, and the table."""

    threshold_data: str
    threshold_split: str
    split: str
    thresholds: dict[str, dict]  # model name -> {"frame", "video", "from"}
    datasets: dict[str, str]  # dataset name -> prepared folder
    table: list[dict]  # cross_rows: one row per model and dataset, then each model's mean
    per_dataset: dict[str, EvalResult]
    out: str | None = _written_to()

    def to_dict(self) -> dict:
        return {**super().to_dict(), "per_dataset": {nm: r.to_dict() for nm, r in self.per_dataset.items()}}


@dataclass
class FilesResult(_Result):
    """``evaluate_files``: labelled raw files scored as predict scores them."""

    _KEYS = {"at_05": "at_0.5"}

    inputs: list[str]
    labels: str
    tta: list[str]
    threshold: float
    threshold_source: str  # where the threshold came from, in words
    files: int  # labelled files found
    scored: int
    errors: list[dict]  # {"file", "error"}
    no_face: list[str]
    unlabelled: list[str]
    missing: list[str]
    skipped: list
    at_05: dict  # metrics at 0.5 ("at_0.5" in metrics.json)
    at_threshold: dict
    per_kind: dict[str, dict]  # image / video -> metrics at the threshold
    # the CSV's framing (portable.FRAMED_*) -> metrics at the threshold; one class: counts and accuracy only
    per_framing: dict[str, dict]
    frames: int  # frames sampled per video (the model's, or --frames)
    no_face_rule: str  # --no-face: score, real or fake
    decided_no_face: int  # files labelled by --no-face real/fake, not by their score
    # --labels rows repeating an earlier row exactly (collapsed into it); absent when none
    duplicate_label_rows: int | None = field(default=None, metadata={"omit_none": True})
    out: str | None = _written_to()


def score_rows(models, data: str | os.PathLike, rows: Sequence[prepared.Row], s: EvalSettings):
    """``(ok_mask, ensemble_probs, per_model_probs (M, N))`` for the rows' crops.

    Crops that cannot be read are left out (``ok_mask`` False) with a warning naming them.
    """
    from dftune.portable import load_image

    n = len(rows)
    per = np.full((len(models), n), np.nan)
    ens = np.full(n, np.nan)
    ok = np.zeros(n, dtype=bool)
    paths = prepared.image_paths(data, rows)

    def load(i):
        try:
            return [load_image(paths[i])], True
        except Exception as e:
            log.warning("%s: skipped, cannot read the crop (%s)", paths[i], e)
            return [], False

    for i, good, e, p in scoring.score_items(models, range(n), load, s.tta, s.batch_size, s.progress,
                                               "evaluate", "crop"):
        if good:
            ens[i], per[:, i], ok[i] = e[0], p[:, 0], True
    return ok, ens, per


def _level_report(y, p, methods, thr_val: float | None, seen: Sequence[str] | None = None) -> dict:
    out = {"at_0.5": metrics.full_metrics(y, p, 0.5), "per_method_at_0.5": metrics.per_method(y, p, methods, 0.5)}
    if thr_val is not None:
        out["at_val_threshold"] = metrics.full_metrics(y, p, thr_val)
        out["per_method_at_val_threshold"] = metrics.per_method(y, p, methods, thr_val)
    if seen is not None:
        out["seen_held_out"] = _seen_held_out(y, p, methods, thr_val, set(seen))
    return out


def _seen_held_out(y, p, methods, thr_val: float | None, seen: set) -> dict:
    """The generators the model trained on (``seen``) and the others (``held_out``), each group's fakes against
    all reals (per_method over the two groups), at 0.5 and the val threshold; a group with no fake is absent."""
    group = ["seen" if m in seen else "held_out" for m in methods]
    fakes = {str(m) for m, c in zip(methods, y, strict=True) if c == 1}
    out = {g: {"generators": sorted(m for m in fakes if (m in seen) == (g == "seen")), "at_0.5": r}
           for g, r in metrics.per_method(y, p, group, 0.5).items()}
    if thr_val is not None:
        for g, r in metrics.per_method(y, p, group, thr_val).items():
            out[g]["at_val_threshold"] = r
    return {g: out[g] for g in ("seen", "held_out") if g in out}


def seen_generators(model: scoring.LoadedModel) -> list[str] | None:
    """The fake methods (generators) the model was trained on: its dftune.json's ``train_methods``, else the
    train split of the data it names (when that folder is still there); None when neither says."""
    extra = model.meta.extra or {}
    if extra.get("train_methods") is not None:
        return list(extra["train_methods"])
    data = extra.get("data")
    if not data or not prepared.manifest_file(data).exists():
        return None
    try:
        rows = prepared.read_manifest(data, splits=("train",))
    except Exception as e:  # noqa: BLE001 - an unreadable manifest leaves the training data unknown
        log.info("%s: its training data's manifest is unreadable (%s)", model.path, e)
        return None
    return sorted({r.method for r in rows if r.label == 1})


def _video_rows(rows, p, how, k):
    keys = [r.video for r in rows]
    y = [r.label for r in rows]
    vk, vp, vy = pooling.video_aggregate(keys, p, y, how=how, k=k)
    meth_of = {r.video: r.method for r in rows}
    return vk, vp, vy, [meth_of[v] for v in vk]


def run(model_dirs: Sequence[str], data: str | os.PathLike, out_dir: str | os.PathLike | None,
        s: EvalSettings | None = None) -> EvalResult:
    """Measure the models; write metrics.json, report.md, predictions.csv and PNGs to ``out_dir``."""
    return _run(model_dirs, data, out_dir, s)[0]


def _run(model_dirs: Sequence[str], data: str | os.PathLike, out_dir: str | os.PathLike | None,
         s: EvalSettings | None = None) -> tuple[EvalResult, dict]:
    """``run``, and the scores each level was measured on: ``{level: (y, methods, {model name: p})}``
    (the cross-dataset page draws them)."""
    s = s or EvalSettings()
    how, k = pooling.parse_aggregate(s.aggregate, s.top_k)
    if s.threshold_level not in ("frame", "video"):
        raise ValueError("--level must be frame or video")
    eval_rows, val_rows = _eval_and_val_rows(data, s)

    ensemble = scoring.load_ensemble(model_dirs, s.fake_label, s.device, s.backend, s.weights)
    models = ensemble.models
    if ensemble.path:
        s.ensemble = True  # an ensemble file is measured as the ensemble it is
    names = _unique_names([m.path for m in models])
    rows = eval_rows + (val_rows if val_rows is not eval_rows else [])
    ok, ens, per = score_rows(models, data, rows, s)
    n_eval = len(eval_rows)
    scored = {nm: per[i] for i, nm in enumerate(names)}
    if s.ensemble and len(models) > 1:
        scored[ENSEMBLE] = ens
    ev = _Scored(eval_rows, slice(0, n_eval), ok[:n_eval])
    va = ev if val_rows is eval_rows else _Scored(val_rows, slice(n_eval, len(rows)), ok[n_eval:])

    result = EvalResult(
        data=str(data), split=s.split,
        threshold_split=s.threshold_split if val_rows else (
            ("check sets " + ", ".join(s.threshold_from["checks"])) if s.threshold_from
            else "training data's val" if s.fixed_thresholds else None),
        tta=list(s.tta), aggregate=how if how != "topk" else f"topk:{k}", backend=s.backend,
        skipped_crops=int((~ok).sum()))
    curves: dict = {"frame": {}, "video": {}}
    levels: dict = {"frame": (ev.y, ev.methods, {}), "video": None}
    seen = {nm: seen_generators(m) for nm, m in zip(names, models, strict=True)}
    if ENSEMBLE in scored:  # the ensemble saw what any member saw; unknown when one member's data is
        known = [v for v in seen.values() if v is not None]
        seen[ENSEMBLE] = sorted(set().union(*known)) if len(known) == len(names) else None
    for nm, probs in scored.items():
        model = models[names.index(nm)] if nm in names else None
        entry, level_scores = _model_entry(model, nm, ev, va, probs, how, k, s, seen.get(nm))
        for level, (yy, pp) in level_scores.items():
            fpr, tpr, _ = metrics.roc_points(yy, pp)
            curves[level][nm] = (fpr, tpr, entry[level]["at_0.5"]["auc"])
        levels["frame"][2][nm] = level_scores["frame"][1]
        if levels["video"] is None:
            levels["video"] = (level_scores["video"][0], _video_rows(ev.rows, ev.of(probs), how, k)[3], {})
        levels["video"][2][nm] = level_scores["video"][1]
        result.models[nm] = entry
    _say_one_class_val(result, va, data, s)

    if s.write_threshold:
        if not len(va.rows) and not s.threshold_from:
            raise ValueError(f"--write-threshold needs {s.threshold_split} rows to tune on; the manifest has none")
        _write_thresholds(result, ensemble, names, s.threshold_from or threshold_source(data, s, how, k), s, out_dir)

    for nm, probs in scored.items():  # the threshold predict applies now (after any --write-threshold)
        model = models[names.index(nm)] if nm in names else None
        st = result.models[nm]["at_stored_threshold"] = at_stored_threshold(result.models[nm], model, ensemble, ev,
                                                                            probs, s.top_k)
        if model is not None and "threshold_written" in result.models[nm]:  # dftune runs shows it beside the run
            meta = modelmeta.load(model.path, model.id2label, s.fake_label)
            meta.extra["contest"] = {"threshold": st["threshold"], "on": f"{s.split} of {data} (evaluate, TTA "
                                     f"{','.join(s.tta) or 'none'})", "frame": st["frame"]["macro_f1"],
                                     "video": st["video"]["macro_f1"]}
            modelmeta.save(model.path, meta)

    if s.from_videos:
        crop_video = {nm: dict(zip(*_video_rows(ev.rows, ev.of(v), how, k)[:2], strict=True))
                      for nm, v in scored.items()}
        result.from_videos = from_videos(ensemble, data, s, crop_video, how, k)

    if out_dir is not None:
        _write_outputs(Path(out_dir), result, data, ev, {nm: ev.of(v) for nm, v in scored.items()},
                       dict(zip(names, models, strict=True)), curves, s, how, k)
        result.out = str(Path(out_dir))
    return result, levels


def _say_one_class_val(result: EvalResult, va: _Scored, data, s: EvalSettings) -> None:
    """A val split of one class tunes nothing (best_threshold falls back to 0.5): say so, in the result
    (``val_threshold.note``) and the log, rather than name that val as the threshold's source."""
    if not len(va.rows) or len(set(va.y.tolist())) != 1:
        return
    cls = "real" if int(va.y[0]) == 0 else "fake"
    note = (f"{s.threshold_split} of {data} has only {cls} crops: no threshold can be tuned on it, "
            "0.5 is used")
    log.warning("%s", note)
    for e in result.models.values():
        if e.get("val_threshold") is not None:
            e["val_threshold"]["note"] = note


class _Scored:
    """The rows of one split, which of them scored, and where their scores sit in the scored arrays."""

    def __init__(self, rows: Sequence[prepared.Row], sel: slice, ok: np.ndarray):
        self.sel, self.ok = sel, ok
        self.rows = [r for r, g in zip(rows, ok, strict=True) if g]
        self.y = np.array([r.label for r in self.rows], dtype=np.int64)
        self.methods = [r.method for r in self.rows]

    def of(self, probs: np.ndarray) -> np.ndarray:
        """These rows' scores out of one model's scores over all the scored rows."""
        return probs[self.sel][self.ok]


def _eval_and_val_rows(data, s: EvalSettings) -> tuple[list, list]:
    """The rows measured and the rows the threshold is tuned on (the same list when the splits are one)."""
    all_rows = prepared.read_manifest(data)
    eval_rows = [r for r in all_rows if r.split == s.split]
    if not eval_rows:
        have = sorted({r.split for r in all_rows})
        raise ValueError(f"{prepared.manifest_file(data)}: no rows in split {s.split!r} (it has {have})")
    val_rows = [r for r in all_rows if r.split == s.threshold_split] if s.threshold_split != s.split else []
    if s.threshold_split == s.split:
        if s.fixed_thresholds is None and not s.tuning_only and not (s.write_threshold and s.split == "val"):
            # (else nothing measured is tuned on these rows, or val is measured to write its threshold: the README's
            # `evaluate --split val --write-threshold`)
            log.warning("the threshold is tuned on the split being measured (%s): its 'val threshold' result is "
                        "optimistic", s.split)
        val_rows = eval_rows
    if s.fixed_thresholds is not None:
        val_rows = []  # the thresholds come from the training data's val split, never from this dataset
    elif not val_rows:
        log.warning("no %s rows: no tuned threshold, only the 0.5 results", s.threshold_split)
    return eval_rows, val_rows


def _model_entry(model: scoring.LoadedModel | None, nm: str, ev: _Scored, va: _Scored, probs: np.ndarray,
                 how: str, k: int, s: EvalSettings, seen: Sequence[str] | None = None) -> tuple[dict, dict]:
    """One model's (or the ensemble's, ``model`` None) part of the result (its thresholds, frame and video
    metrics; with ``seen``, the generators it trained on, those and the others apart), and the ``(y, p)`` each
    level was measured on, for the ROC figures."""
    p, pv = ev.of(probs), va.of(probs)
    entry: dict = {"path": model.path if model is not None else None}
    if seen is not None:
        entry["seen_generators"] = list(seen)
    if model is not None:
        entry["model_threshold"] = model.meta.threshold
        entry["model_threshold_text"] = model.meta.threshold_text()
    thr_f = thr_v = None
    if s.fixed_thresholds is not None and nm in s.fixed_thresholds:
        thr_f, thr_v = s.fixed_thresholds[nm]["frame"], s.fixed_thresholds[nm]["video"]
        entry["val_threshold"] = {"from": None, **s.fixed_thresholds[nm]}  # with what tuned them (check-set F1s)
    elif len(va.rows):
        thr_f, f1_f = metrics.best_threshold(va.y, pv)
        _, vpv, vyv, _ = _video_rows(va.rows, pv, how, k)
        thr_v, f1_v = metrics.best_threshold(vyv, vpv)
        entry["val_threshold"] = {"frame": thr_f, "frame_val_macro_f1": f1_f,
                                  "video": thr_v, "video_val_macro_f1": f1_v, "n_val_crops": len(va.rows)}
    entry["frame"] = _level_report(ev.y, p, ev.methods, thr_f, seen)
    vk, vp, vy, vm = _video_rows(ev.rows, p, how, k)
    entry["video"] = _level_report(vy, vp, vm, thr_v, seen)
    entry["video"]["n_videos"] = int(len(vk))
    return entry, {"frame": (ev.y, p), "video": (vy, vp)}


def at_stored_threshold(entry: dict, model: scoring.LoadedModel | None, ensemble: scoring.Ensemble, ev: _Scored,
                        probs: np.ndarray, top_k: int) -> dict:
    """Macro F1 at the threshold ``predict`` applies, as it applies it: every crop judged alone (an image) and
    every video's crops pooled with the model's own aggregate (its dftune.json, predict's default), then judged.
    The threshold is the one stored now (``--write-threshold`` of this run included); an ensemble's is its
    file's. ``errors``: the videos labelled wrong, worst first (the report's gallery shows them)."""
    if "threshold_written" in entry:
        t = float(entry["threshold_written"])
    elif model is not None:
        t = float(model.meta.threshold)
    else:
        t = float(ensemble.threshold)
    src = model.meta.threshold_text() if model is not None and "threshold_written" not in entry else (
        f"{t:.4f} written by this evaluate" if "threshold_written" in entry else ensemble.threshold_text())
    crop = (model or ensemble.models[0]).meta.crop
    how, k = pooling.parse_aggregate(crop.aggregate, top_k)
    p = ev.of(probs)
    vk, vp, vy, _ = _video_rows(ev.rows, p, how, k)
    wrong = np.flatnonzero((vp >= t).astype(np.int64) != vy)
    order = wrong[np.argsort(-np.abs(vp[wrong] - t), kind="stable")]
    return {"threshold": t, "source": src, "aggregate": format_aggregate(how, k),
            "frame": metrics.full_metrics(ev.y, p, t), "video": metrics.full_metrics(vy, vp, t),
            "errors": [{"video": str(vk[i]), "label": int(vy[i]), "prob_fake": float(vp[i])} for i in order]}


def _write_thresholds(result: EvalResult, ensemble: scoring.Ensemble, names: Sequence[str], source: dict,
                      s: EvalSettings, out_dir) -> None:
    """``--write-threshold``: each model's val threshold into its dftune.json, the ensemble's into ensemble.json."""
    models = ensemble.models
    if not ensemble.path:  # members of an ensemble file keep their own thresholds
        for m, nm in zip(models, names, strict=True):
            t = result.models[nm]["val_threshold"][s.threshold_level]
            _write_threshold(m, t, s, source)
            result.models[nm]["threshold_written"] = t
    if ENSEMBLE in result.models:
        e = result.models[ENSEMBLE]
        t = e["val_threshold"][s.threshold_level]
        dest = ensemble.path or s.ensemble_out or (Path(out_dir) / scoring.ENSEMBLE_NAME if out_dir else None)
        if dest is None:
            raise ValueError("--ensemble --write-threshold needs somewhere to write the ensemble: "
                             "--ensemble-out FILE or --out DIR")
        scoring.write_ensemble(dest, [(m.path, m.weight) for m in models], t, source)
        e["threshold_written"] = t
        e["path"] = str(dest)
        log.info("ensemble with threshold %.4f written to %s", t, dest)


def _write_outputs(out: Path, result: EvalResult, data, ev: _Scored, scored: dict, models: dict, curves: dict,
                   s: EvalSettings, how: str, k: int) -> None:
    """metrics.json, predictions.csv, report.md and (with ``s.plots``) report.html and the PNGs."""
    from dftune import report

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", _clean(result.to_dict()))
    write_text(out / "predictions.csv", _predictions_csv(ev.rows, scored))
    write_text(out / "report.md", report.report_md(result))
    if not s.plots:
        return
    from dftune import plots
    from dftune.portable import load_image

    crop_paths = prepared.image_paths(data, ev.rows)
    report.write_html(out / "report.html", report.HtmlReport(
        result, ev.rows, scored, image=lambda i: load_image(crop_paths[i]), models=models,
        video_level=lambda rows_, p_: _video_rows(rows_, p_, how, k)))
    for level in ("frame", "video"):
        plots.roc_figure(curves[level], out / f"roc_{level}.png", f"ROC, {level} level ({s.split})")
    for nm, e in result.models.items():
        for level in ("frame", "video"):
            key = "at_val_threshold" if "at_val_threshold" in e[level] else "at_0.5"
            thr = e[level][key]["threshold"]
            plots.confusion_figure(e[level][key]["confusion_matrix"], out / f"confusion_{_safe(nm)}_{level}.png",
                                   f"{nm}: {level} level, threshold {thr:.3f}")


def from_videos(ensemble, data, s: EvalSettings, crop_video: dict, how: str, k: int) -> dict:
    """The split's source videos scored through predict's own path (decode, detect, crop in memory,
    whole frames when no face), side by side with the video scores pooled from the crops on disk."""
    from dftune.prepared import source_videos
    from dftune.stages import predict

    vids = source_videos(data, s.split)
    if not vids:
        raise ValueError(f"{data}: --from-videos needs prepare's part files (.parts/) naming the {s.split} videos")
    missing = [v["file"] for v in vids if not Path(v["file"]).exists()]
    if missing:
        raise FileNotFoundError(f"--from-videos: {len(missing)} source videos are not where prepare read them, "
                                f"e.g. {missing[0]}")
    items = [predict.InputFile(Path(v["file"]), v["key"], "video") for v in vids]
    ps = predict.PredictSettings(tta=s.tta, batch_size=s.batch_size, aggregate=format_aggregate(how, k), top_k=k,
                           progress=s.progress)
    res = predict.score_files(ensemble, items, ps, threshold=0.5)
    y = np.array([v["label"] for v in vids])
    ok = np.array([not r.error for r in res])
    out = {"videos": len(vids), "errors": int((~ok).sum()),
           "no_face_videos": int(sum(r.faces_found == 0 for r in res if not r.error)), "models": {}}
    names = list(crop_video)
    for j, nm in enumerate(names):
        p = np.array([r.prob_fake if nm == ENSEMBLE else (r.per_model[j] if r.per_model else np.nan) for r in res])
        m = metrics.full_metrics(y[ok], p[ok], 0.5)
        both = [(p[i], crop_video[nm][vids[i]["key"]]) for i in range(len(vids))
                if ok[i] and vids[i]["key"] in crop_video[nm]]
        a = np.array(both) if both else np.zeros((0, 2))
        out["models"][nm] = {
            "auc": m["auc"], "macro_f1_at_0.5": m["macro_f1"], "n": int(ok.sum()),
            "compared_with_crops": len(both),
            "only_from_videos": int(ok.sum()) - len(both),  # e.g. no face in any frame: no crops on disk
            "mean_abs_diff": float(np.abs(a[:, 0] - a[:, 1]).mean()) if len(a) else float("nan"),
            "max_abs_diff": float(np.abs(a[:, 0] - a[:, 1]).max()) if len(a) else float("nan"),
            "label_agreement_at_0.5": float(np.mean((a[:, 0] >= 0.5) == (a[:, 1] >= 0.5))) if len(a) else float("nan"),
        }
    return out


def threshold_source(data, s: EvalSettings, how: str, k: int) -> dict:
    """How a written threshold was tuned: predict applies it knowing this, and prints it."""
    return {"by": "evaluate", "data": str(data), "split": s.threshold_split, "level": s.threshold_level,
            "tta": list(s.tta), "aggregate": format_aggregate(how, k), "backend": s.backend}


def _write_threshold(m: scoring.LoadedModel, t: float, s: EvalSettings, source: dict) -> None:
    meta = modelmeta.load(m.path, m.id2label, s.fake_label)
    meta.threshold = float(t)
    meta.threshold_source = source
    modelmeta.save(m.path, meta)
    log.info("%s: threshold %.4f written to %s", m.path, t, modelmeta.meta_path(m.path))


def _unique_names(paths: Sequence[str]) -> list[str]:
    names = []
    for p in paths:
        parts = Path(p).resolve().parts
        nm = parts[-1]
        i = 2
        while nm in names and i <= len(parts):
            nm = "/".join(parts[-i:])
            i += 1
        names.append(nm)
    return names


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _clean(o):
    """NaN -> None so metrics.json is strict JSON."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return None if np.isnan(o) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return o


def _predictions_csv(rows, scored: dict) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "video", "method", "label", "frame_index"] + [f"prob_fake_{n}" for n in scored])
    for i, r in enumerate(rows):
        w.writerow([r.path, r.video, r.method, r.label, r.frame_index] + [f"{v[i]:.6f}" for v in scored.values()])
    return buf.getvalue()


# ---------------------------------------------------------------- across datasets


def cross_dataset(model_dirs: Sequence[str], datas: Sequence[str], out_dir: str | os.PathLike | None,
                  s: EvalSettings, threshold_data: str | None = None) -> CrossResult:
    """The field's cross-dataset table: each model measured on each prepared dataset's ``s.split``,
    at 0.5 and at the threshold tuned on the *training* data's val split (``threshold_data``, default
    the first ``--data``; never on a test dataset), with the mean over datasets."""
    from dataclasses import replace

    td = threshold_data or datas[0]
    names = _unique_names([str(Path(d)) for d in datas])
    r0 = run(model_dirs, td, None, replace(s, split=s.threshold_split, write_threshold=False, plots=False,
                                                from_videos=False, ensemble=s.ensemble, tuning_only=True))
    if s.split == s.threshold_split and any(Path(d).resolve() == Path(td).resolve() for d in datas):
        log.warning("%s is measured on %s, the split its threshold is tuned on: its F1@thr is optimistic",
                    td, s.split)
    fixed = {nm: {"frame": e["val_threshold"]["frame"], "video": e["val_threshold"]["video"],
                  "from": f"{td} ({s.threshold_split})"}
             for nm, e in r0.models.items() if e.get("val_threshold")}
    for nm, e in r0.models.items():
        if nm in fixed and e["val_threshold"].get("note"):
            fixed[nm]["note"] = e["val_threshold"]["note"]
    out = Path(out_dir) if out_dir is not None else None
    per: dict[str, EvalResult] = {}
    levels: dict[str, dict] = {}
    for nm, d in zip(names, datas, strict=True):
        sub = out / _safe(nm) if out is not None else None
        per[nm], levels[nm] = _run(model_dirs, d, sub, replace(s, fixed_thresholds=fixed, write_threshold=False))
    result = CrossResult(threshold_data=str(td), threshold_split=s.threshold_split, split=s.split,
                         thresholds=fixed, datasets={nm: str(d) for nm, d in zip(names, datas, strict=True)},
                         table=cross_rows(per), per_dataset=per)
    if out is not None:
        from dftune import report

        write_json(out / "metrics.json", _clean(result.to_dict()))
        write_text(out / "report.md", report.cross_md(result))
        if s.plots:
            links = {nm: f"{_safe(nm)}/report.html" for nm in names if (out / _safe(nm) / "report.html").exists()}
            report.write_cross_html(out / "report.html", result, links, scores=levels)
        result.out = str(out)
    return result


def one_class(res: EvalResult) -> str | None:
    """``"real"`` / ``"fake"`` when the measured videos of ``res`` are of that class only, else None."""
    e = next(iter(res.models.values()), None)
    if e is None:
        return None
    pc = e["video"]["at_0.5"]["per_class"]
    have = [c for c in ("real", "fake") if pc[c]["support"]]
    return have[0] if len(have) == 1 else None


def generators_mark(entry: dict) -> str | None:
    """Whether a dataset's fakes come from generators the model trained on: ``held out``, ``seen``, ``seen + held
    out``; None when the model's training data is unknown or the dataset has no fake."""
    seen = entry.get("seen_generators")
    fakes = list(entry["video"]["per_method_at_0.5"])
    if seen is None or not fakes:
        return None
    held = [m for m in fakes if m not in seen]
    return "held out" if len(held) == len(fakes) else "seen" if not held else "seen + held out"


def cross_rows(per: dict[str, EvalResult]) -> list[dict]:
    """One row per model and dataset (video level F1, frame and video AUC), then each model's mean.

    A dataset of one class (its AUC, AP and EER undefined) is left out of *every* mean, F1 included,
    so each mean is over the same datasets; the mean row then names it (``left_out``)."""
    rows = []
    models = list(next(iter(per.values())).models) if per else []
    single = {ds for ds, res in per.items() if one_class(res)}
    for m in models:
        mine = []
        for ds, res in per.items():
            e = res.models[m]
            v, f = e["video"], e["frame"]
            thr = v.get("at_val_threshold") or {}
            mine.append({"model": m, "dataset": ds, "videos": v.get("n_videos"), "frame_auc": f["at_0.5"]["auc"],
                         "video_auc": v["at_0.5"]["auc"], "ap": v["at_0.5"]["average_precision"],
                         "eer": v["at_0.5"]["eer"], "f1_0.5": v["at_0.5"]["macro_f1"], "f1_thr": thr.get("macro_f1"),
                         "generators": generators_mark(e)})
        rows += mine
        keys = ("frame_auc", "video_auc", "ap", "eer", "f1_0.5", "f1_thr")
        used = [r for r in mine if r["dataset"] not in single]
        mean = {k: float(np.nanmean([r[k] if r[k] is not None else np.nan for r in used])) if used else float("nan")
                for k in keys}
        row = {"model": m, "dataset": "mean", "videos": sum(r["videos"] or 0 for r in used), **mean}
        if single:
            row["left_out"] = sorted(single)
        rows.append(row)
    return rows
