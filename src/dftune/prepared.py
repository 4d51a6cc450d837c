"""The manifest: one row per face crop, the one table every stage reads or writes.

Stored as CSV (``DIR/manifest.csv``) so it opens in anything. ``path`` is relative
to the manifest's folder, so a prepared folder can be moved or copied whole.

Columns
-------
path          crop file, relative to the manifest's folder
label         0 real / 1 fake
method        "original" for FF++ real videos, the manipulation method for fakes
              (Deepfakes, Face2Face, ...), or the class folder name for generic sources
video         unique key of the source video (or image): "<method>/<video_id>"
video_id      FF++ id: "000" for a real video, "000_003" (TARGET_SOURCE) for a fake
target_id     identity shown (FF++ TARGET; the real video's own id)
source_id     identity pasted in (FF++ SOURCE); empty for reals
frame_index   frame number in the video (0 for a still image)
split         train / val / test
box_x, box_y, box_size   the square crop in the original frame's pixels
frame_width, frame_height  the original frame's size
detector      face detector that made the box ("dlib", "retinaface", "none")
score         detector confidence (dlib HOG: its detection score)
landmarks     optional JSON [[x, y], ...] in crop pixels (for self-blended images)
dataset       in a mix of prepared folders (``prepare --merge-into``, ``train --data A --data B``): the folder
              the row came from; empty in a single prepared folder
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dftune.atomic import read_json, write_text

SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the problem."""


@dataclass
class Row:
    path: str
    label: int
    method: str
    video: str
    video_id: str
    target_id: str = ""
    source_id: str = ""
    frame_index: int = 0
    split: str = "train"
    box_x: int = 0
    box_y: int = 0
    box_size: int = 0
    frame_width: int = 0
    frame_height: int = 0
    detector: str = ""
    score: float = 0.0
    landmarks: str = ""
    dataset: str = ""

    def landmark_points(self) -> list[list[float]]:
        return json.loads(self.landmarks) if self.landmarks else []


COLUMNS = [f.name for f in fields(Row)]
_REQUIRED = ("path", "label", "video", "split")
_INT = {f.name for f in fields(Row) if f.type in ("int", int)}
_FLOAT = {f.name for f in fields(Row) if f.type in ("float", float)}


def manifest_file(location: str | os.PathLike) -> Path:
    """Accept a prepared folder or a manifest file; return the manifest file."""
    p = Path(location)
    if not p.exists():
        raise ManifestError(f"{p}: does not exist, so no manifest here; check the path, or run `dftune prepare` "
                            f"first")
    if p.is_dir():
        p = p / "manifest.csv"
    if not p.exists():
        raise ManifestError(
            f"{p}: no manifest here; run `dftune prepare` first or point at a folder holding manifest.csv"
        )
    return p


def to_csv(rows: Iterable[Row]) -> str:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(asdict(r))
    return buf.getvalue()


def write_manifest(path: str | os.PathLike, rows: Iterable[Row]) -> Path:
    """Write atomically; rows are sorted for a stable, diffable file."""
    rows = sorted(rows, key=lambda r: (SPLITS.index(r.split) if r.split in SPLITS else 9, r.video, r.frame_index,
                                       r.path))
    write_text(path, to_csv(rows))
    return Path(path)


def read_manifest(location: str | os.PathLike, splits: Iterable[str] | None = None) -> list[Row]:
    """Read and validate a manifest; errors name the file and line."""
    path = manifest_file(location)
    wanted = set(splits) if splits is not None else None
    rows: list[Row] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in _REQUIRED if c not in header]
        if missing:
            raise ManifestError(f"{path}: not a dftune manifest, missing column(s) {', '.join(missing)}")
        for lineno, rec in enumerate(reader, start=2):
            kw = {}
            for c in COLUMNS:
                v = rec.get(c)
                if v is None or v == "":
                    continue
                try:
                    kw[c] = int(v) if c in _INT else float(v) if c in _FLOAT else v
                except ValueError:
                    raise ManifestError(f"{path}:{lineno}: column {c!r} has {v!r}, expected a number") from None
            for c in ("method", "video_id"):
                kw.setdefault(c, "")
            row = Row(**kw)
            if row.label not in (0, 1):
                raise ManifestError(f"{path}:{lineno}: label must be 0 (real) or 1 (fake), got {row.label}")
            if row.split not in SPLITS:
                raise ManifestError(f"{path}:{lineno}: split must be one of {SPLITS}, got {row.split!r}")
            if wanted is None or row.split in wanted:
                rows.append(row)
    return rows


def image_path(location: str | os.PathLike, row: Row) -> Path:
    """Path of one row's crop (``path`` is relative to the manifest's folder)."""
    return manifest_file(location).parent / row.path


def image_paths(location: str | os.PathLike, rows: Iterable[Row]) -> list[Path]:
    """Paths of many rows' crops, the folder resolved once."""
    base = manifest_file(location).parent
    return [base / r.path for r in rows]


def read_settings(location: str | os.PathLike) -> dict | None:
    """``settings.json`` beside the manifest (what ``prepare`` cropped with), or None."""
    p = manifest_file(location).parent / "settings.json"
    if not p.exists():
        return None
    return read_json(p)


def counts(rows: Iterable[Row]) -> dict:
    """Crops per split, class and method: the table every summary shows."""
    out: dict = {}
    for r in rows:
        s = out.setdefault(r.split, {"real": 0, "fake": 0, "videos": set(), "methods": {}})
        s["fake" if r.label else "real"] += 1
        s["videos"].add(r.video)
        s["methods"][r.method] = s["methods"].get(r.method, 0) + 1
    for s in out.values():
        s["videos"] = len(s["videos"])
    return out


PARTS = ".parts"
_log = logging.getLogger(__name__)


def load_parts(out: str | os.PathLike) -> dict[str, dict]:
    """Every video's part file (``prepare``'s unit of resume): ``{key: part}``; each part names its source
    ``file``, ``split``, ``label``, ``method`` and holds its rows."""
    out = Path(out)
    parts = {}
    base = out / PARTS
    if not base.is_dir():
        return parts
    for p in sorted(base.rglob("*.json")):
        try:
            d = read_json(p)
            parts[d["key"]] = d
        except Exception as e:  # a torn or foreign file: redo that video
            _log.warning("%s: unreadable part file (%s); the video will be redone", p, e)
    return parts


def source_videos(location: str | os.PathLike, split: str) -> list[dict]:
    """The source files ``prepare`` read for one split: ``[{key, file, label, method}]`` (from its parts)."""
    parts = load_parts(manifest_file(location).parent)
    return [{k: p[k] for k in ("key", "file", "label", "method")} for _, p in sorted(parts.items())
            if p.get("split") == split and p.get("status") != "failed"]
