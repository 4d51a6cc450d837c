"""A check set of raw files: a labels CSV (``filename,label``, the file ``evaluate --files --labels`` reads) whose
images and videos (paths relative to the CSV's folder) are framed exactly as ``predict`` frames them.

Every file is framed once by :func:`dftune.portable.workers.frame_files` (predict's path: the detector, its widths,
margin, size and frames of the training data or the model; no face: the centred square) and the crops are kept as
a small prepared folder (PNG crops, one ``test`` row per crop, ``video`` = the file as the CSV names it), so that a
resumed run, every validation and a grid of alphas score the same crops without decoding again. The folder's
``check.json`` records what made it (the labels file and its bytes, each file's size and time, the crop settings);
when any of them differs the folder is rebuilt. A file the CSV names that is not there is an error naming it (the
CSV is wrong: a smaller check set would rank models on other files than the user chose); a file that is there but
cannot be decoded is reported by name and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dftune.model.meta import CropSettings
from dftune.prepared import Row, read_manifest, write_manifest

log = logging.getLogger(__name__)

FORMAT = 1
RECORD = "check.json"  # what made a cached check folder


class CheckFilesError(ValueError):
    """A labels CSV that cannot be a check set; the message names the file and why."""


def header_of(path: str | os.PathLike) -> list[str]:
    """A CSV's column names, lower-cased ([] when it cannot be read as text)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [c.strip().lower() for c in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def is_labels_csv(path: str | os.PathLike) -> bool:
    """A ``filename,label`` CSV (evaluate --labels'), rather than a prepared folder's manifest."""
    cols = header_of(path)
    return "filename" in cols and "label" in cols


def cache_name(labels: str | os.PathLike) -> str:
    """The cache folder's name for a labels CSV: its stem and a hash of where it is (two ``labels.csv`` of two
    folders do not share one)."""
    p = Path(labels).resolve()
    return f"{p.stem}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"


@dataclass
class Framed:
    """A labels CSV's files framed: the cached prepared folder, its rows, and what framing found."""

    folder: Path
    rows: list[Row]
    sources: list[str]  # each framed file's resolved path (the leak check compares them with the training data's)
    files: int  # the files the CSV labels
    images: int = 0
    videos: int = 0
    no_face: list[str] = field(default_factory=list)  # scored on the centred square (predict's no-face rule)
    skipped: list[dict] = field(default_factory=list)  # {"file", "error"}: could not be read
    cached: bool = False  # found in the cache, nothing decoded


def framing_of(crop: CropSettings) -> dict:
    """What decides the crops (all of the crop settings but how a video's scores are pooled)."""
    import dftune.portable as P

    d = {k: v for k, v in asdict(crop).items() if k != "aggregate"}
    d["detector"] = crop.detector or "dlib"  # predict's fallback
    return {**d, "faces": P.FACES, "clipped": P.CLIPPED, "already_cropped": P.ALREADY_CROPPED}


def _record(labels: Path, files: list[tuple[str, Path]], crop: CropSettings) -> dict:
    stat = {name: [p.stat().st_size, p.stat().st_mtime_ns] for name, p in files}
    return {"format": FORMAT, "labels": str(labels.resolve()),
            "labels_sha256": hashlib.sha256(labels.read_bytes()).hexdigest(), "framing": framing_of(crop),
            "files": stat}


def _cached(folder: Path, want: dict) -> dict | None:
    from dftune.atomic import read_json

    try:
        had = read_json(folder / RECORD)
    except (OSError, ValueError):
        return None
    same = {k: had.get(k) for k in want} == want and (folder / "manifest.csv").exists()
    return had if same else None


def frame_labelled(labels: str | os.PathLike, cache: str | os.PathLike, crop: CropSettings | None = None,
                   workers: int | None = None, progress: bool = True,
                   say: Callable[[str], None] | None = None) -> Framed:
    """The labels CSV ``labels``'s files framed into ``cache/<name>`` (:func:`cache_name`), or read from there
    when that folder was made from the same labels, files and crop settings. ``crop``: the training data's or the
    model's crop settings (None: the guide's, with a warning). ``workers``: framing processes (None: the cores
    but one, as predict; 0/1: in this process). ``say`` gets the line saying what the check set holds."""
    from dftune.labelfile import read_labels_counted

    labels = Path(labels)
    say = say or log.info
    try:
        truth, dupes = read_labels_counted(labels)
    except (OSError, ValueError) as e:
        raise CheckFilesError(str(e)) from None
    if dupes:
        log.warning("%s: %d row(s) repeat an earlier row exactly; each file is counted once", labels, dupes)
    if not truth:
        raise CheckFilesError(f"{labels}: labels no file")
    base = labels.parent
    files = [(name, base / name) for name in truth]
    missing = [name for name, p in files if not p.is_file()]
    if missing:
        raise CheckFilesError(f"{labels}: {len(missing)} of the {len(files)} files it labels are not there (paths "
                              f"are relative to {base}): {', '.join(missing[:5])}"
                              + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
                              + "; fix the CSV or put the files there")
    if crop is None:
        crop = CropSettings()
        log.warning("%s: framed with the guide's crop settings (dlib, margin %.1f, %d px, %d frames a video); the "
                    "model's data may have used others", labels, crop.margin, crop.size, crop.frames)
    folder = Path(cache) / cache_name(labels)
    want = _record(labels, files, crop)
    had = _cached(folder, want)
    if had is not None:
        out = Framed(folder, read_manifest(folder), had["sources"], len(files), had["images"], had["videos"],
                     had["no_face"], had["skipped"], cached=True)
    else:
        out = _frame(labels, files, truth, crop, folder, want, workers, progress)
    _say_what(out, labels, crop, say)
    return out


def _frame(labels: Path, files, truth: dict, crop: CropSettings, folder: Path, record: dict, workers, progress
           ) -> Framed:
    import numpy as np
    from PIL import Image

    from dftune import portable
    from dftune.atomic import staged_folder, write_json
    from dftune.portable import workers as W
    from dftune.progress import bar

    f = framing_of(crop)
    spec = portable.frame_spec(f, f["already_cropped"], f["faces"], f["clipped"])
    jobs = [(str(p), portable.kind_of_file(p)) for _, p in files]
    n = max(1, W.default_workers() - 1) if workers is None else W.resolve_workers(workers)
    out = Framed(folder, [], [], len(files))
    with staged_folder(folder) as tmp:
        b = bar(len(jobs), f"framing check set {labels.name}", "file", enabled=progress)
        try:
            for i, ((name, path), (kind, _), (crops, info)) in enumerate(zip(files, jobs,
                                                                               W.frame_files(spec, jobs, n),
                                                                               strict=True)):
                b.update(1)
                if info["error"]:
                    log.warning("check set %s: skipped %s", labels, info["error"])
                    out.skipped.append({"file": name, "error": info["error"]})
                    continue
                kind = "video" if info["frames"] > 1 or kind == "video" else "image"
                out.images += kind == "image"
                out.videos += kind == "video"
                if info["faces_found"] == 0:
                    out.no_face.append(name)
                out.sources.append(str(path.resolve()))
                (tmp / "crops" / f"{i:05d}").mkdir(parents=True)
                for k, c in enumerate(crops):
                    rel = f"crops/{i:05d}/{k:03d}.png"
                    Image.fromarray(np.asarray(c)).save(tmp / rel, compress_level=1)  # lossless: predict's pixels
                    out.rows.append(Row(path=rel, label=truth[name], method="fake" if truth[name] else "real",
                                        video=name, video_id=name, frame_index=k, split="test",
                                        detector=f["detector"]))
                b.set_postfix(crops=len(out.rows))
        finally:
            b.close()
        write_manifest(tmp / "manifest.csv", out.rows)
        write_json(tmp / "settings.json", {**asdict(crop), "source": "check set", "labels": str(labels)})
        write_json(tmp / RECORD, {**record, "sources": out.sources, "images": out.images, "videos": out.videos,
                                  "no_face": out.no_face, "skipped": out.skipped})
    out.rows = read_manifest(folder)  # as the cache gives them (sorted)
    return out


def _n(k: int, unit: str) -> str:
    return f"{k} {unit}{'' if k == 1 else 's'}"


def _say_what(fr: Framed, labels: Path, crop: CropSettings, say: Callable[[str], None]) -> None:
    real = sum(1 for r in fr.rows if r.label == 0)
    n_real_files = len({r.video for r in fr.rows if r.label == 0})
    n_fake_files = len({r.video for r in fr.rows if r.label == 1})
    how = (f"from its cache {fr.folder}" if fr.cached else
           f"framed as predict frames them ({crop.detector or 'dlib'}, margin {crop.margin:g}, {crop.size} px, "
           f"{crop.every and f'every {crop.every}th frame' or f'{crop.frames} frames'} a video) into {fr.folder}")
    line = (f"check set {labels}: {_n(fr.files, 'file')} ({_n(fr.images, 'image')}, {_n(fr.videos, 'video')}; "
            f"{n_real_files} real, {n_fake_files} fake) -> {_n(len(fr.rows), 'crop')} ({real} real), {how}")
    if fr.no_face:
        line += f"; no face in {len(fr.no_face)} (the centred square: {', '.join(fr.no_face[:3])})"
    if fr.skipped:
        line += (f"; {len(fr.skipped)} unreadable, skipped: "
                 + "; ".join(s["error"] for s in fr.skipped[:3]))
    say(line)
