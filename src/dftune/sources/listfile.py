"""A list file, for any dataset that none of the other sources reads.

::

    ROOT = list.csv (or a folder holding list.csv)
    path,label[,split][,method][,video]      one row per file; paths relative to the list's folder
    videos/a.mp4,real,train,,                 a video
    frames/b/0001.png,fake,test,gan,b         images sharing a video = the frames of that video
    crops/c/,0,,,                             a folder of frame images = one video
    photos/d.jpg,1                            an image

- ``label``: 0/1 or a real/fake word (real, fake, REAL, FAKE, original, deepfake, ...).
- ``split``: train / val / test (also validation, valid, dev); empty = dealt by dftune.
- ``method``: the manipulation's name (per-method results); empty = ``real`` / ``fake``.
- ``video``: which video the row belongs to: image rows with the same method and video
  are one video's frames (per-video results), sampled like a video's frames.
- A header row naming the columns (``path,label,...``) lets them come in any order and adds
  ``identity`` (ids separated by ``;``, e.g. ``id3;id7`` for a fake of id3 with id7's face)
  for identity-disjoint dealing; without a header the columns are in the order above.

Rows with a split keep it; rows without one are dealt to the splits the list does not fill
(to train/val around a given test set; to train/val/test, with a warning, when no row is
test), by identity, or by video when no identity is given. See :mod:`dftune.sources.heldout`.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from pathlib import Path

from dftune.portable import IMAGE_EXTS, VIDEO_EXTS
from dftune.sources import Item, SourceError
from dftune.sources.frames import KIND as FRAMES
from dftune.sources.frames import FramesItem
from dftune.sources.heldout import SPLIT_WORDS, label_word, natural_key, read_text, split_around_test
from dftune.sources.splits import RATIOS

COLUMNS = ("path", "label", "split", "method", "video", "identity")
log = logging.getLogger(__name__)

LIST_NAMES = ("list.csv", "labels.csv")


def _safe(text: str) -> str:
    """A value usable inside a file name (crop names and part files are built from video ids)."""
    out = "".join(c if c.isalnum() or c in "-_.=+" else "_" for c in text.strip()).strip(".")
    return out or "_"


def _rows(path: Path) -> list[dict]:
    rows = [r for r in csv.reader(io.StringIO(read_text(path))) if r and any(c.strip() for c in r)]
    if not rows:
        raise SourceError(f"{path}: the list is empty")
    head = [c.strip().lower() for c in rows[0]]
    if "path" in head and "label" in head:
        unknown = [c for c in head if c and c not in COLUMNS]
        if unknown:
            raise SourceError(f"{path}: unknown column {', '.join(unknown)} (columns: {', '.join(COLUMNS)})")
        cols, body, first = head, rows[1:], 2
    else:
        cols, body, first = list(COLUMNS[:5]), rows, 1
    out = []
    for n, r in enumerate(body, first):
        if len(r) > len(cols):
            raise SourceError(f"{path}:{n}: {len(r)} columns, expected at most {len(cols)} ({','.join(cols)})")
        d = {c: (r[i].strip() if i < len(r) else "") for i, c in enumerate(cols)}
        if not d.get("path") or not d.get("label"):
            raise SourceError(f"{path}:{n}: path and label are required")
        d["line"] = n
        out.append(d)
    return out


def _unique_rows(path: Path, rows: list[dict], warnings: list) -> list[dict]:
    """One row per file: rows naming the same file with the same fields collapse into one (counted); the same
    file under two labels, splits, methods or videos is an error naming the rows (it would train under both,
    or leak between train and test)."""
    by: dict[str, list[dict]] = defaultdict(list)
    for d in rows:
        f = Path(d["path"])
        by[str(f if f.is_absolute() else (path.parent / f).resolve())].append(d)
    out, collapsed = [], 0
    for group in by.values():
        fields = {k: {(g.get(k) or "").strip().lower() for g in group} for k in ("label", "split", "method", "video",
                                                                                  "identity")}
        if "label" in fields:
            fields["label"] = {label_word(g["label"], f"{path}:{g['line']}") for g in group}
        differ = [k for k, v in fields.items() if len(v) > 1]
        if differ:
            lines = ", ".join(str(g["line"]) for g in group)
            raise SourceError(f"{path}: lines {lines} name the same file {group[0]['path']!r} with different "
                              f"{' and '.join(differ)}; keep one row per file")
        collapsed += len(group) - 1
        out.append(group[0])
    if collapsed:
        msg = f"{path}: {collapsed} rows repeat an earlier row exactly (same file, same fields); each file counted once"
        warnings.append({"file": str(path), "error": msg})
        log.warning("%s", msg)
    return sorted(out, key=lambda d: d["line"])


def index(root: str | Path, compression: str = "", methods=None, actors: bool = False, warnings: list | None = None,
          seed: int = 0, ratios=RATIOS, **_ignored) -> list[Item]:
    """Index a list file; every returned item has ``preset_split`` set."""
    root = Path(root)
    warnings = warnings if warnings is not None else []
    if root.is_dir():
        cands = [root / n for n in LIST_NAMES if (root / n).is_file()]
        if not cands:
            raise SourceError(f"{root}: no {' or '.join(LIST_NAMES)} here; give the list file itself as ROOT")
        root = cands[0]
    if not root.is_file():
        raise SourceError(f"{root}: no such list file")
    base = root.parent
    frames: dict[tuple[str, str], list] = defaultdict(list)  # (method, video) -> image rows
    items: list[Item] = []
    for d in _unique_rows(root, _rows(root), warnings):
        where = f"{root}:{d['line']}"
        label = label_word(d["label"], where)
        split = d.get("split", "")
        if split and split.lower() not in SPLIT_WORDS:
            raise SourceError(f"{where}: split {split!r} is not train, val or test")
        d["split"] = SPLIT_WORDS[split.lower()] if split else ""
        d["label_n"] = label
        d["method"] = d.get("method") or ("fake" if label else "real")
        p = Path(d["path"])
        p = p if p.is_absolute() else base / p
        d["file"] = p
        if not p.exists():
            warnings.append({"file": str(p), "error": f"{where}: not found; skipped"})
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and d.get("video"):
            frames[(d["method"], d["video"])].append(d)
            continue
        if p.is_dir():
            kind = FRAMES
        elif p.suffix.lower() in VIDEO_EXTS:
            kind = "video"
        elif p.suffix.lower() in IMAGE_EXTS:
            kind = "image"
        else:
            warnings.append({"file": str(p), "error": f"{where}: neither a video, an image nor a folder; skipped"})
            continue
        vid = _safe(d.get("video") or "__".join(Path(d["path"]).with_suffix("").parts[-3:]))
        items.append(_item(p, kind, d, vid))
    for (method, video), rows in frames.items():
        where = f"{root}: video {video!r} of method {method!r}"
        for key in ("label_n", "split", "identity"):
            if len({r.get(key, "") for r in rows}) > 1:
                raise SourceError(f"{where}: its frames disagree on {key.replace('_n', '')}")
        files = tuple(sorted((r["file"] for r in rows), key=lambda f: natural_key(str(f))))
        items.append(_item(files[0].parent, FRAMES, rows[0], _safe(video), files))
    if not items:
        raise SourceError(f"{root}: no usable row (videos: {', '.join(VIDEO_EXTS)}; images: {', '.join(IMAGE_EXTS)}; "
                          f"or folders of frame images)")
    seen: dict[str, int] = defaultdict(int)
    for it in items:  # two rows naming the same video id: keep both, apart
        seen[it.key] += 1
        if seen[it.key] > 1:
            it.video_id = f"{it.video_id}__{seen[it.key]}"
    return split_around_test(items, seed, ratios, warnings, source=str(root), test_name="the list's test rows",
                             group=lambda it: f"{it.method}/{it.video_id}")


def _item(path: Path, kind: str, d: dict, vid: str, files: tuple = ()) -> Item:
    ids = [i.strip() for i in d.get("identity", "").split(";") if i.strip()]
    cls = FramesItem if files else Item
    extra = {"files": files} if files else {}
    return cls(path, kind, d["label_n"], _safe(d["method"]), vid, ids[0] if ids else "",
               ids[1] if len(ids) > 1 else "", preset_split=d["split"], **extra)
