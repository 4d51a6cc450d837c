"""Stage ``predict``: images and videos -> one ``prob_fake`` and label per file, as a CSV.

Each file is framed by :func:`dftune.portable.frame_file` (the model's detector, margin,
size and frame sampling from its ``dftune.json``; an image that already is a face crop is
used whole; no face: the centred square, or ``--no-face real|fake``), scored by :func:`dftune.scoring.score_items`
(batched across files, TTA, ensemble), a video's frames pooled by
:func:`dftune.portable.pool`, and labelled with the model's (or ensemble's) threshold.
The submission script runs the same functions. A file that cannot be read gets a row
with its error and the default label; the batch goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from dftune import portable
from dftune.atomic import write_json, write_text
from dftune.model.meta import CropSettings
from dftune.portable import CsvFormat, FileResult, InputFile, Inputs, collect, collect_inputs, kind_of, to_csv  # noqa: F401
from dftune.portable.workers import frame_one

log = logging.getLogger(__name__)

# the share of files labelled fake that predict warns about: a threshold that does not transfer to these files
# (tuned on another domain's val) shows here first, labelling nearly all of them one class
SHARE_LOW, SHARE_HIGH = 0.05, 0.95
SHARE_MIN_FILES = 20  # fewer files: a share of 0 or 1 says nothing, no warning
SIDECAR = ".json"  # the CSV's sidecar: predictions.csv -> predictions.csv.json

DETECTORS = (*portable.DETECTORS, "none")


class Cropper:
    """A file to the crops the model scores: :func:`dftune.portable.frame_file` with the settings."""

    def __init__(self, crop: CropSettings, detector: str | None = None,
                 already_cropped: float = portable.ALREADY_CROPPED,
                 faces: str = portable.FACES, clipped: str = portable.CLIPPED):
        self.crop = crop
        self.detector_name = detector or crop.detector or "dlib"
        if self.detector_name not in DETECTORS:
            raise ValueError(f"unknown face detector {self.detector_name!r}; choose one of {', '.join(DETECTORS)}")
        self.already_cropped, self.faces, self.clipped = already_cropped, faces, clipped
        # the widths prepare detected at (dftune.json), so that the boxes are the training data's
        self.spec = portable.frame_spec({**asdict(crop), "detector": self.detector_name}, already_cropped, faces,
                                        clipped)
        self._det = portable.get_detector(self.detector_name, **dict(self.spec.detector_kwargs))

    def __call__(self, item: InputFile) -> tuple[list, dict]:
        """``(crops, info)``; ``info['error']`` names the file and the problem (no crops then): the worker
        processes' :func:`dftune.portable.workers.frame_one`, in this process."""
        crops, info = frame_one(self._det, self.spec, item.path, item.kind)
        if info["error"]:  # one bad file never stops the batch
            log.info("%s", info["error"])
        return crops, info


@dataclass
class PredictSettings:
    tta: tuple | None = None  # None: auto, the views the threshold was tuned with (portable.decide_tta)
    batch_size: int = 16
    aggregate: str | None = None  # None: the model's (dftune.json crop.aggregate)
    top_k: int = 3
    threshold: float | None = None  # None: the model's / the ensemble's
    detector: str | None = None
    margin: float | None = None
    size: int | None = None
    frames: int | None = None
    every: int | None = None
    detect_every: int | None = None  # the detector on every K-th sampled frame (None: the model's dftune.json)
    already_cropped: float = portable.ALREADY_CROPPED
    faces: str = portable.FACES  # follow (one person), all (each person pooled, the max), largest (per frame)
    clipped: str = portable.CLIPPED  # a still image whose guide square leaves it: pad, whole
    no_face: str = portable.NO_FACE  # a file with no face found: score (its centred square), real, fake
    error_label: int = 0
    progress: bool = True
    workers: int | None = None  # processes decoding + detecting + cropping; None: cores - 1; 0/1: in-process


def crop_settings(models, s: PredictSettings) -> CropSettings:
    """The first model's crop settings with the command line's overrides."""
    first = models[0].meta.crop
    for m in models[1:]:
        if (m.meta.crop.detector, m.meta.crop.margin, m.meta.crop.size) != (first.detector, first.margin, first.size):
            log.warning("models were trained on different crops (%s vs %s); using the first model's",
                        m.meta.crop, first)
    return CropSettings.from_dict(portable.crop_settings(asdict(first),
                                                         {k: getattr(s, k) for k in portable.CROP_KEYS}))


def decision(ens, s: PredictSettings) -> tuple[float, str, tuple]:
    """The threshold predict applies, where it came from (in words), and the TTA views it scores with
    (portable.decide_tta: ``--tta auto`` the threshold's; other views than the threshold's are warned about)."""
    if s.threshold is not None:
        t, source = portable.decide_threshold(s.threshold)
    else:
        t, source = float(ens.threshold), ens.threshold_source
    tta, warning = portable.decide_tta(s.tta, source)
    if warning:
        log.warning("%s", warning)
    text = portable.describe_threshold(t, source)
    return t, text, tta


def score_files(models, items: Sequence[InputFile], s: PredictSettings, threshold: float | None = None
                  ) -> list[FileResult]:
    """Run the whole stage on ``items``; one result per item, in the same order.

    ``models``: a :class:`dftune.scoring.Ensemble` or a list of loaded models (their
    weighted-mean threshold); ``threshold`` overrides both.
    """
    from dftune import scoring
    from dftune.portable import workers

    ens = models if isinstance(models, scoring.Ensemble) else scoring.ensemble_of(models)
    members = ens.models
    if threshold is None:
        threshold = s.threshold if s.threshold is not None else ens.threshold
    if s.tta is None:  # auto, without a threshold decided by run(): the model's threshold's views
        s = replace(s, tta=portable.decide_tta(None, ens.threshold_source)[0])
    crop = crop_settings(members, s)
    how, k = portable.parse_aggregate(crop.aggregate or "mean", s.top_k)
    # predict already frames ahead in a thread while the model runs, so by default the pool leaves the model a
    # core (measured on 2 cores: 2 workers ran at 0.76x of 1; docs/benchmarks.md)
    n_workers = max(1, workers.default_workers() - 1) if s.workers is None else workers.resolve_workers(s.workers)
    if n_workers > 1 and len(items) > 1:  # framed ahead in worker processes, in item order
        detector = crop.detector or "dlib"
        if detector not in DETECTORS:
            raise ValueError(f"unknown face detector {detector!r}; choose one of {', '.join(DETECTORS)}")
        spec = portable.frame_spec({**asdict(crop), "detector": detector}, s.already_cropped, s.faces, s.clipped)
        cropper, loaded = None, workers.frame_files(spec, [(i.path, i.kind) for i in items], n_workers)
    else:  # in this process, files ahead in a thread
        cropper = Cropper(crop, crop.detector, s.already_cropped, s.faces, s.clipped)
        loaded = scoring.prefetch(cropper, items)
    # the model runs on the cores the framing (a thread, or the worker processes) leaves while it waits for it
    with workers.ModelThreads(*workers.framing_beside(n_workers, len(items))) as threads:
        return _scored(members, items, cropper, threads.paced(loaded), s, how, k, threshold)


def _scored(members, items, cropper, loaded, s: PredictSettings, how, k, threshold) -> list[FileResult]:
    from dftune import scoring

    results = []
    for item, info, e, per in scoring.score_items(members, items, cropper, s.tta, s.batch_size, s.progress,
                                                  "predict", "file", loaded=loaded):
        groups = info.pop("groups", None)
        r = FileResult(item.name, str(item.path), item.kind, label=s.error_label, **info)
        if r.error and cropper is None:
            log.info("%s", r.error)
        if not r.error:
            r.prob_fake = portable.pool_faces(e, groups, how, k)
            r.per_model = [portable.pool_faces(row, groups, how, k) for row in per]
            r.label = int(r.prob_fake >= threshold)
            if portable.decided_by_no_face(r.framing, s.no_face):  # --no-face real/fake: every written prob agrees
                r.prob_fake, r.label = portable.no_face_decision(r.prob_fake, r.label, r.framing, s.no_face)
                r.per_model = [r.prob_fake] * len(r.per_model)
        results.append(r)
    return results


def write_csv(path: str | os.PathLike, results: Sequence[FileResult], fmt: CsvFormat,
              model_names: Sequence[str] = ()) -> Path:
    write_text(path, to_csv(results, fmt, model_names))
    return Path(path)


@dataclass
class PredictSummary:
    """What ``predict`` did: the CSV, the rows, and the counts its summary table shows."""

    out: str
    results: list
    models: str  # the models scored, as the summary names them
    device: str
    crop: CropSettings
    tta: tuple
    threshold: float
    threshold_text: str
    files: int
    images: int
    videos: int
    predicted_fake: int
    predicted_real: int
    no_face: int
    no_face_rule: str  # --no-face: score, real or fake
    decided_no_face: int  # files labelled by --no-face real/fake, not by their score
    already_cropped: int
    errors: int
    skipped: list = field(default_factory=list)  # found in the folders but neither an image nor a video
    share_fake: float | None = None  # of the files scored, the share labelled fake at the applied threshold
    share_fake_at_05: float | None = None  # ... and the share 0.5 would label fake
    share_warning: str | None = None  # the share is above SHARE_HIGH or below SHARE_LOW
    sidecar: str | None = None  # the CSV's sidecar JSON: these counts and the decision line


def run(inputs: Sequence[str], model_paths: Sequence[str], s: PredictSettings, out: str | os.PathLike,
        fmt: CsvFormat, *, weights: Sequence[float] | None = None, fake_label: str | None = None,
        device: str = "auto", backend: str = "torch", filename_style: str = "relative") -> PredictSummary:
    """The stage: files and folders -> framed crops -> scores -> pooled -> labelled rows -> ``out`` (one row per
    file, errors as rows)."""
    from dftune import scoring

    found = collect(inputs, filename_style)
    if not found.files:
        raise FileNotFoundError(f"no image or video files in {', '.join(map(str, inputs))}"
                                + (f" ({len(found.skipped)} other files skipped)" if found.skipped else ""))
    ens = scoring.load_ensemble(list(model_paths), fake_label, device, backend, weights)
    models = ens.models
    thr, thr_text, tta = decision(ens, s)
    s = replace(s, tta=tta)
    results = score_files(ens, found.files, s, threshold=thr)
    write_csv(out, results, fmt, [m.name for m in models])
    names = ens.path or ", ".join(f"{m.path} (w={m.weight:g})" if len(models) > 1 else m.path for m in models)
    sm = PredictSummary(out=str(out), results=results, models=names, device=models[0].device,
                        crop=crop_settings(models, s), tta=tuple(s.tta), threshold=thr, threshold_text=thr_text,
                        skipped=list(found.skipped), no_face_rule=s.no_face, **summary(results, s.no_face),
                        **shares(results, thr))
    sm.sidecar = str(write_sidecar(sm))
    return sm


def shares(results: Sequence[FileResult], threshold: float) -> dict:
    """The share of the scored files labelled fake at ``threshold`` and the share 0.5 would label fake, and a
    warning when the first is above SHARE_HIGH or below SHARE_LOW (with at least SHARE_MIN_FILES files). No
    threshold is fitted to these scores: labels stay the applied threshold's."""
    ok = [r for r in results if not r.error]
    if not ok:
        return {"share_fake": None, "share_fake_at_05": None, "share_warning": None}
    share = sum(r.label == 1 for r in ok) / len(ok)
    at_05 = sum(r.prob_fake >= 0.5 for r in ok) / len(ok)
    warning = None
    if len(ok) >= SHARE_MIN_FILES and not SHARE_LOW <= share <= SHARE_HIGH:
        warning = (f"{share:.1%} of the {len(ok)} files are labelled fake at threshold {threshold:.4g} (0.5 would "
                   f"label {at_05:.1%}): a threshold tuned on other data may not transfer to these files; compare "
                   f"with --threshold 0.5 before trusting the labels")
    return {"share_fake": share, "share_fake_at_05": at_05, "share_warning": warning}


def decision_line(sm: PredictSummary) -> str:
    """What predict decided, in one line (the summary table and the sidecar show it)."""
    if sm.share_fake is None:
        return "no file could be scored"
    return (f"{sm.predicted_fake} of {sm.predicted_fake + sm.predicted_real} files labelled fake ({sm.share_fake:.1%}) "
            f"at threshold {sm.threshold:.4g}; at 0.5: {sm.share_fake_at_05:.1%}")


def write_sidecar(sm: PredictSummary) -> Path:
    """``<csv>.json`` beside the CSV: the counts, the threshold and where it came from, the decision line and
    the share warning."""
    path = Path(str(sm.out) + SIDECAR)
    keep = {k: v for k, v in asdict(sm).items() if k not in ("results", "sidecar")}
    write_json(path, {**keep, "crop": asdict(sm.crop), "tta": list(sm.tta), "decided": decision_line(sm)})
    return path


def summary(results: Sequence[FileResult], no_face: str = portable.NO_FACE) -> dict:
    ok = [r for r in results if not r.error]
    return {
        "files": len(results),
        "images": sum(r.kind == "image" for r in results),
        "videos": sum(r.kind == "video" for r in results),
        "predicted_fake": sum(r.label == 1 for r in ok),
        "predicted_real": sum(r.label == 0 for r in ok),
        "no_face": sum(r.faces_found == 0 for r in ok),
        "decided_no_face": sum(portable.decided_by_no_face(r.framing, no_face) for r in ok),
        "already_cropped": sum(r.framing == portable.FRAMED_CROPPED for r in ok),
        "errors": len(results) - len(ok),
    }
