"""Stage ``predict``: images and videos -> one ``prob_fake`` and label per file, as a CSV.

Each file goes through the same face detection and square crop as the model's
training data (settings from its ``dftune.json``), the crops through
:mod:`dftune.scoring` (batched, TTA, ensemble), a video's frames are pooled like
``evaluate`` pools them, and the label comes from the model's threshold. A file that
cannot be read gets a row with its error and the default label; the batch goes on.
"""

from __future__ import annotations

import csv
import io as _io
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from dftune.faces.video import IMAGE_EXTS, VIDEO_EXTS, VideoError
from dftune.atomic import write_text
from dftune.model.meta import CropSettings

log = logging.getLogger(__name__)

DETECTORS = ("dlib", "retinaface", "none")


@dataclass
class InputFile:
    path: Path
    name: str  # what the CSV's filename column shows
    kind: str  # "image" / "video" / "unknown"


@dataclass
class FileCrops:
    """What ``predict`` feeds the model for one file."""

    item: InputFile
    crops: list = field(default_factory=list)
    faces_found: int = 0
    frames: int = 0
    error: str = ""


@dataclass
class FileResult:
    name: str
    path: str
    kind: str
    prob_fake: float = float("nan")
    label: int = 0
    faces_found: int = 0
    frames: int = 0
    error: str = ""
    per_model: list = field(default_factory=list)


def kind_of(path: Path) -> str:
    ext = path.suffix.lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else "unknown"


def collect_inputs(inputs: Sequence[str | os.PathLike], name_style: str = "relative") -> list[InputFile]:
    """Files as given and folders searched recursively for images and videos, in a stable order.

    ``name_style``: ``relative`` (to the folder given; a file given directly shows its
    name), ``name`` (file name only), ``stem`` (name without extension), ``path`` (as given).
    """
    out: list[InputFile] = []
    seen: set = set()
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            files = sorted((f for f in p.rglob("*") if f.is_file() and kind_of(f) != "unknown"
                            and not any(part.startswith(".") for part in f.relative_to(p).parts)),
                           key=lambda f: f.relative_to(p).as_posix())
            pairs = [(f, f.relative_to(p).as_posix()) for f in files]
            if not files:
                log.warning("%s: no image or video files found in this folder", p)
        else:
            pairs = [(p, p.name)]  # a missing file still gets a row with its error
        for f, rel in pairs:
            key = os.path.abspath(f)
            if key in seen:
                continue
            seen.add(key)
            name = {"relative": rel, "name": f.name, "stem": f.stem, "path": str(f)}.get(name_style)
            if name is None:
                raise ValueError(f"unknown filename style {name_style!r}; use relative, name, stem or path")
            out.append(InputFile(f, name, kind_of(f)))
    names = [i.name for i in out]
    if len(set(names)) != len(names):
        log.warning("some files share the same name in the CSV (filename style %r); use --filename-style relative "
                    "or path to tell them apart", name_style)
    return out


class Cropper:
    """Face detection and the guide's square crop for images and sampled video frames."""

    def __init__(self, crop: CropSettings, detector: str | None = None):
        self.crop = crop
        self.detector_name = detector or crop.detector or "dlib"
        if self.detector_name not in DETECTORS:
            raise ValueError(f"unknown face detector {self.detector_name!r}; choose one of {', '.join(DETECTORS)}")
        self._det = None
        if self.detector_name != "none":
            from dftune.faces.detectors import get_detector

            self._det = get_detector(self.detector_name)

    def crop_frame(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        """``(crop, face_found)``. No detector: the whole image as it is (the processor resizes it)."""
        from dftune.faces.detectors import largest
        from dftune.faces.geometry import crop_square, guide_square, whole_image_box

        if self._det is None:
            return rgb, False
        h, w = rgb.shape[:2]
        face = largest(self._det.detect(rgb))
        if face is not None:
            box = guide_square(face.x1, face.y1, face.x2, face.y2, w, h, self.crop.margin)
            if box[2] > 0:
                return crop_square(rgb, box, self.crop.size), True
        return crop_square(rgb, whole_image_box(w, h), self.crop.size), False

    def __call__(self, item: InputFile) -> FileCrops:
        from dftune.faces.video import load_image, sample_frames

        fc = FileCrops(item)
        try:
            if not item.path.exists():
                raise FileNotFoundError(f"{item.path}: file not found")
            if item.kind == "image":
                crop, found = self.crop_frame(load_image(item.path))
                fc.crops, fc.faces_found, fc.frames = [crop], int(found), 1
            elif item.kind == "video":
                with_face, without = [], []
                for _, rgb in sample_frames(item.path, self.crop.frames, self.crop.every):
                    crop, found = self.crop_frame(rgb)
                    (with_face if found else without).append(crop)
                fc.frames = len(with_face) + len(without)
                if fc.frames == 0:
                    raise VideoError(f"{item.path}: no frames could be decoded")
                fc.faces_found = len(with_face)
                # as in prepare: frames with no face are skipped; none at all -> whole frames
                fc.crops = with_face if with_face else without
            else:
                raise ValueError(f"{item.path}: not an image or video file (extension {item.path.suffix!r}; "
                                 f"images: {', '.join(IMAGE_EXTS)}; videos: {', '.join(VIDEO_EXTS)})")
        except Exception as e:  # one bad file never stops the batch
            fc.crops = []
            fc.error = str(e) if str(item.path) in str(e) else f"{item.path}: {type(e).__name__}: {e}"
            log.info("%s", fc.error)
        return fc


@dataclass
class PredictSettings:
    tta: tuple = ("flip",)
    batch_size: int = 16
    aggregate: str | None = None  # None: the model's (dftune.json crop.aggregate)
    top_k: int = 3
    threshold: float | None = None  # None: the model's (ensemble: weighted mean of the models')
    detector: str | None = None
    margin: float | None = None
    size: int | None = None
    frames: int | None = None
    every: int | None = None
    error_label: int = 0
    progress: bool = True


def crop_settings(models, s: PredictSettings) -> CropSettings:
    """The first model's crop settings with the command line's overrides."""
    crop = replace(models[0].meta.crop)
    for m in models[1:]:
        if (m.meta.crop.detector, m.meta.crop.margin, m.meta.crop.size) != (crop.detector, crop.margin, crop.size):
            log.warning("models were trained on different crops (%s vs %s); using the first model's",
                        m.meta.crop, crop)
    for k in ("detector", "margin", "size", "frames", "every", "aggregate"):
        v = getattr(s, k)
        if v is not None:
            setattr(crop, k, v)
    return crop


def predict_files(models, items: Sequence[InputFile], s: PredictSettings) -> list[FileResult]:
    """Run the whole stage on ``items``; one result per item, in the same order."""
    from dftune import scoring as inference
    from dftune.metrics_extra import aggregate_one, parse_aggregate

    crop = crop_settings(models, s)
    how, k = parse_aggregate(crop.aggregate or "mean", s.top_k)
    threshold = s.threshold if s.threshold is not None else inference.ensemble_threshold(models)
    cropper = Cropper(crop, crop.detector)
    results: list[FileResult | None] = [None] * len(items)
    pending: list[tuple[int, FileCrops]] = []  # files whose crops are in the buffer
    buf: list[np.ndarray] = []
    probs_buf: list[np.ndarray] = []  # scored crops so far, (M+1, n) chunks

    def finish(i: int, fc: FileCrops, ens: np.ndarray, per: np.ndarray):
        r = FileResult(fc.item.name, str(fc.item.path), fc.item.kind, faces_found=fc.faces_found,
                       frames=fc.frames, error=fc.error, label=s.error_label)
        if not fc.error:
            r.prob_fake = aggregate_one(ens, how, k)
            r.per_model = [aggregate_one(row, how, k) for row in per]
            r.label = int(r.prob_fake >= threshold)
        results[i] = r

    def flush(final: bool):
        nonlocal buf, pending, probs_buf
        while len(buf) >= s.batch_size or (final and buf):
            chunk, buf = buf[:s.batch_size], buf[s.batch_size:]
            ens, per = inference.ensemble_prob_fake(models, chunk, s.tta)
            probs_buf.append(np.vstack([ens[None], per]))
        scored = np.hstack(probs_buf) if probs_buf else np.zeros((len(models) + 1, 0))
        used = 0
        j = 0
        while j < len(pending):
            i, fc = pending[j]
            n = len(fc.crops)
            if used + n > scored.shape[1]:
                break  # this file's crops are still in the buffer (and so are the later files')
            finish(i, fc, scored[0, used:used + n], scored[1:, used:used + n])
            used += n
            j += 1
        keep = pending[j:]
        # crops of files not yet complete stay at the front of ``scored``
        probs_buf = [scored[:, used:]] if used < scored.shape[1] else []
        pending = keep

    bar = None
    if s.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), unit="file", desc="predict", dynamic_ncols=True)
    try:
        for i, fc in enumerate(inference.prefetch(cropper, items)):
            pending.append((i, fc))
            buf.extend(fc.crops)
            if len(buf) >= s.batch_size:
                flush(False)
            if bar:
                bar.update(1)
        flush(True)
    finally:
        if bar:
            bar.close()
    assert not pending, "internal error: crops left unscored"
    return results  # type: ignore[return-value]


@dataclass
class CsvFormat:
    filename_column: str = "filename"
    label_column: str = "label"
    prob_column: str = "prob_fake"
    label_words: tuple = ("0", "1")  # (real, fake)
    extra_columns: bool = True  # faces_found, frames, error (and per-model probabilities)
    per_model: bool = False


def to_csv(results: Sequence[FileResult], fmt: CsvFormat, model_names: Sequence[str] = ()) -> str:
    buf = _io.StringIO()
    cols = [fmt.filename_column, fmt.label_column]
    if fmt.prob_column:
        cols.append(fmt.prob_column)
    if fmt.extra_columns:
        cols += ["faces_found", "frames", "error"]
        if fmt.per_model and len(model_names) > 1:
            cols += [f"prob_fake_{n}" for n in model_names]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in results:
        row = [r.name, fmt.label_words[r.label]]
        if fmt.prob_column:
            row.append("" if np.isnan(r.prob_fake) else f"{r.prob_fake:.6f}")
        if fmt.extra_columns:
            row += [r.faces_found, r.frames, r.error]
            if fmt.per_model and len(model_names) > 1:
                row += [f"{p:.6f}" for p in r.per_model] if r.per_model else [""] * len(model_names)
        w.writerow(row)
    return buf.getvalue()


def write_csv(path: str | os.PathLike, results: Sequence[FileResult], fmt: CsvFormat,
              model_names: Sequence[str] = ()) -> Path:
    write_text(path, to_csv(results, fmt, model_names))
    return Path(path)


def summary(results: Sequence[FileResult]) -> dict:
    ok = [r for r in results if not r.error]
    return {
        "files": len(results),
        "images": sum(r.kind == "image" for r in results),
        "videos": sum(r.kind == "video" for r in results),
        "predicted_fake": sum(r.label == 1 for r in ok),
        "predicted_real": sum(r.label == 0 for r in ok),
        "no_face": sum(r.faces_found == 0 for r in ok),
        "errors": len(results) - len(ok),
    }
