"""Check sets: small labelled sets from outside the training data, to select on.

A choice made on the training data's own val split (which epoch becomes ``best/``, the WiSE-FT alpha, the
threshold, what ``tune`` optimises) picks what fits that data; a hidden test set of other generators
rewards what a model keeps. ``--check PATH`` names such a set:

- a prepared folder (or its manifest.csv): its ``val`` and ``test`` splits, or ``PATH:SPLIT[+SPLIT]``;
- a labels CSV (``filename,label``, as ``evaluate --files --labels`` reads; file paths relative to the CSV's
  folder): its images and videos framed once as ``predict`` frames them and cached as a small prepared folder
  (:mod:`dftune.checkfiles`; ``cache`` and ``crop`` say where and with which crop settings).

Several check sets are averaged (each reported too). A check set that shares an identity, a video, a crop or
(a labels CSV) a source file with the training data would measure memory, not transfer: it is refused, naming
it and what it shares.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dftune import checkfiles
from dftune.prepared import SPLITS, ManifestError, Row, manifest_file, read_manifest

DEFAULT_SPLITS = ("val", "test")


class CheckError(ValueError):
    """A check set that cannot be used; the message names it and says why."""


@dataclass
class CheckSet:
    name: str  # as given on the command line
    folder: Path  # the prepared folder (the manifest's)
    splits: tuple[str, ...]
    rows: list[Row] = field(default_factory=list)
    labels: str = ""  # a labels CSV's path (its files framed into ``folder``); "" for a prepared folder
    sources: list[str] = field(default_factory=list)  # a labels CSV's files, resolved

    @property
    def n_real(self) -> int:
        return sum(1 for r in self.rows if r.label == 0)

    @property
    def n_fake(self) -> int:
        return sum(1 for r in self.rows if r.label == 1)


def parse_spec(spec: str) -> tuple[Path, tuple[str, ...]]:
    """``PATH`` or ``PATH:SPLIT[+SPLIT]`` -> (folder, splits); a split that is none of train/val/test after a
    PATH that exists is refused, listing the splits PATH holds."""
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and tail and all(s in SPLITS for s in tail.split("+")) and head:
        return Path(head), tuple(tail.split("+"))
    if sep and tail and head and not Path(text).exists() and Path(head).exists():
        unknown = [s for s in tail.split("+") if s not in SPLITS]
        raise CheckError(f"--check {spec}: unknown split {'+'.join(unknown)!r}; {_splits_there(Path(head))}")
    return Path(text), DEFAULT_SPLITS


def _splits_there(path: Path) -> str:
    """What ``PATH:SPLIT`` may name at ``path``: the splits its manifest holds (with their crops)."""
    if path.is_file() and checkfiles.is_labels_csv(path):
        return f"{path} is a labels CSV (filename,label): its files are one check set, with no splits"
    try:
        rows = read_manifest(path)
    except (ManifestError, OSError, ValueError) as e:
        return f"splits are {', '.join(SPLITS)} (and {e})"
    have = {s: sum(1 for r in rows if r.split == s) for s in SPLITS}
    there = [f"{s} ({n} crops)" for s, n in have.items() if n]
    return (f"{manifest_file(path)} holds {', '.join(there) or 'no rows'}; give PATH:SPLIT with one of them, "
            f"or several joined by + (e.g. {path}:{'+'.join(s for s, n in have.items() if n) or 'test'})")


def is_labels(spec: str | os.PathLike) -> bool:
    """Whether ``--check spec`` names a labels CSV (raw files) rather than a prepared folder; a CSV that reads as
    both, or a labels CSV given a split, is refused as ambiguous."""
    path, splits = parse_spec(str(spec))
    if path.suffix.lower() == ".csv" and not path.exists():
        raise CheckError(f"--check {spec}: {path} not found (a check set is a labels CSV of raw files, or a "
                         f"prepared folder)")
    if not path.is_file():
        return False
    cols = checkfiles.header_of(path)
    if not checkfiles.is_labels_csv(path) and ({"path", "video", "split"} <= set(cols) or path.name == "manifest.csv"):
        return False  # a prepared folder's manifest named directly
    # any other CSV is meant as a labels CSV: its reader says what is wrong with it (header, separator, labels)
    if {"path", "video", "split"} <= set(cols):
        raise CheckError(f"--check {spec}: {path} has both a labels CSV's columns (filename, label) and a "
                         f"manifest's (path, video, split); keep one kind of table per file")
    if str(spec) != str(path):
        raise CheckError(f"--check {spec}: {path} is a labels CSV (filename,label): its files are one check set, "
                         f"with no splits; give --check {path}")
    return True


def _labels_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.csv") if checkfiles.is_labels_csv(p)) if folder.is_dir() else []


def load(spec: str | os.PathLike, *, cache: str | os.PathLike | None = None, crop=None, workers: int | None = None,
         progress: bool = True, say: Callable[[str], None] | None = None) -> CheckSet:
    """The rows of a check set; refused when it is empty or holds one class (its AUC and F1 say nothing).

    A labels CSV's files are framed into ``cache/<name>`` (a temporary folder when None) with ``crop`` (a
    :class:`dftune.model.meta.CropSettings`: the training data's or the model's; None: the guide's), reused
    from there when nothing changed (:func:`dftune.checkfiles.frame_labelled`)."""
    if is_labels(spec):
        return _load_labels(spec, cache, crop, workers, progress, say)
    folder, splits = parse_spec(str(spec))
    try:
        folder = manifest_file(folder).parent
    except ManifestError as e:
        found = _labels_in(folder)
        hint = (f"; it holds the labels CSV {found[0]}: give --check {folder / found[0]} to frame its files as "
                f"predict does" if len(found) == 1 else f"; it holds the labels CSVs {', '.join(found)}: name "
                f"one, --check {folder / found[0]}" if found else "")
        raise CheckError(f"--check {spec}: {e}{hint}") from None
    rows = read_manifest(folder, splits)
    cs = CheckSet(str(spec), folder, splits, rows)
    if not rows:
        raise CheckError(f"--check {spec}: no {'/'.join(splits)} rows in {folder / 'manifest.csv'}")
    _refuse_one_class(cs, '/'.join(splits))
    return cs


def _refuse_one_class(cs: CheckSet, where: str) -> None:
    if cs.n_real == 0 or cs.n_fake == 0:
        raise CheckError(f"--check {cs.name}: one class only ({cs.n_real} real, {cs.n_fake} fake crops in "
                         f"{where}); a check set needs both to rank models")


_TEMP: list = []


def _temporary_cache() -> Path:
    """One folder per process for check sets framed without a cache folder; removed when the process ends."""
    if not _TEMP:
        import atexit
        import shutil
        import tempfile

        _TEMP.append(Path(tempfile.mkdtemp(prefix="dftune-checks-")))
        atexit.register(shutil.rmtree, _TEMP[0], True)
    return _TEMP[0]


def _load_labels(spec, cache, crop, workers, progress, say) -> CheckSet:
    try:
        fr = checkfiles.frame_labelled(spec, cache if cache is not None else _temporary_cache(), crop, workers,
                                       progress, say)
    except checkfiles.CheckFilesError as e:
        raise CheckError(f"--check {spec}: {e}") from None
    cs = CheckSet(str(spec), fr.folder, ("test",), fr.rows, labels=str(spec), sources=fr.sources)
    if not fr.rows:
        raise CheckError(f"--check {spec}: none of its {fr.files} files could be framed ("
                         + "; ".join(s["error"] for s in fr.skipped[:3]) + ")")
    _refuse_one_class(cs, f"the files {spec} labels")
    return cs


def _ids(rows: Sequence[Row]) -> set[str]:
    return {i for r in rows for i in (r.target_id, r.source_id) if i}


def source_files(data: str | os.PathLike, splits) -> set[str]:
    """The source files (resolved) prepare read for ``splits`` of a prepared folder, and of each folder a mix
    (``train --data A --data B``) was made of: what a labels CSV's files are compared with."""
    from dftune.prepared import load_parts, read_settings

    folders = [Path(data)]
    try:
        folders += [Path(f) for f in ((read_settings(data) or {}).get("mix") or {}).get("folders", {}).values()]
    except (ManifestError, OSError, ValueError, AttributeError):
        pass
    out = set()
    for f in folders:
        for p in load_parts(f).values():
            if p.get("split") in splits and p.get("file"):
                out |= _files_of(os.path.realpath(p["file"]))
    return out


def _files_of(path: str) -> set[str]:
    """A recorded source: the file itself, or, for a frame-folder source (``frames``, ``deepfakebench``: the
    source of a video is its folder of frames), the folder's image files (resolved)."""
    if not os.path.isdir(path):
        return {path}
    from dftune.portable import IMAGE_EXTS

    try:
        with os.scandir(path) as it:
            return {os.path.realpath(e.path) for e in it
                    if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS}
    except OSError:
        return set()


def copies_of(files, others) -> list[str]:
    """The files of ``files`` whose bytes equal one of ``others``' under another name (a training video copied
    into a check folder): sizes first (a stat each), a hash only where a size matches."""
    from dftune.atomic import file_sha256

    def size(p):
        try:
            return os.path.getsize(p)
        except OSError:
            return None

    memo: dict = {}

    def digest(p):  # once per file
        if p not in memo:
            memo[p] = file_sha256(p)
        return memo[p]

    by_size: dict = {}
    for o in others:
        by_size.setdefault(size(o), []).append(o)
    by_size.pop(None, None)
    out = []
    for f in files:
        same = by_size.get(size(f), [])
        try:
            if any(o != f and digest(o) == digest(f) for o in same):
                out.append(str(f))
        except OSError:
            continue
    return sorted(out)


def refuse_leaks(checks: Sequence[CheckSet], train_rows: Sequence[Row], data: str | os.PathLike) -> None:
    """Refuse a check set sharing an identity, a video or a crop file with the training data ``train_rows``
    (the rows a run trains or validates on), or (a labels CSV) a file prepare made training data from (a video,
    an image, a frame of a frame-folder source) or a training crop itself, by path or as a copy under another
    name, naming the check set and the first shared items."""
    train_ids, train_videos = _ids(train_rows), {r.video for r in train_rows}
    data_dir = Path(data).resolve()
    train_files = {(data_dir / r.path).resolve() for r in train_rows}
    # a labels CSV's raw files are compared with what prepare read (videos, images, each frame of a frame-folder
    # source) and with the training crops themselves: by path, then by bytes (a copy under another name)
    labels = any(cs.labels for cs in checks)
    sources = source_files(data, {r.split for r in train_rows}) if labels else set()
    crops = {str(p) for p in train_files} if labels else set()
    for cs in checks:
        shared_ids = sorted(_ids(cs.rows) & train_ids)
        # a labels CSV's video keys are its file names, not dataset keys: its files are compared instead
        shared_videos = [] if cs.labels else sorted({r.video for r in cs.rows} & train_videos)
        shared_files = [] if shared_videos else sorted(
            str(p) for p in {(cs.folder / r.path).resolve() for r in cs.rows} & train_files)
        raw = {os.path.realpath(f) for f in cs.sources}
        shared_sources, shared_crops = sorted(raw & sources), sorted(raw & crops)
        copied = copies_of(sorted(raw - sources - crops), sources | crops)
        what = []
        if shared_ids:
            what.append(f"{len(shared_ids)} identities ({', '.join(shared_ids[:5])})")
        if shared_videos:
            what.append(f"{len(shared_videos)} videos ({', '.join(shared_videos[:3])})")
        if shared_files:
            what.append(f"{len(shared_files)} crop files ({', '.join(shared_files[:2])})")
        if shared_sources:
            what.append(f"{len(shared_sources)} source files ({', '.join(shared_sources[:3])})")
        if shared_crops:
            what.append(f"{len(shared_crops)} training crops ({', '.join(shared_crops[:3])})")
        if copied:
            what.append(f"{len(copied)} copies of source files or training crops under other names "
                        f"({', '.join(copied[:3])})")
        if what:
            raise CheckError(f"--check {cs.name}: shares {' and '.join(what)} with the training data {data}; a check "
                             f"set must come from outside it (another dataset, or identities the run never sees)")


def mean_of(per: dict[str, dict]) -> dict:
    """The mean over check sets of each level's numbers (``{"frame": {...}, "video": {...}}`` each); a number
    undefined (None) in any set is undefined in the mean."""
    out: dict = {}
    for level in ("frame", "video"):
        keys = set.intersection(*(set(m[level]) for m in per.values())) if per else set()
        row = {}
        for k in sorted(keys):
            vals = [m[level][k] for m in per.values()]
            if all(isinstance(v, (int, float)) and v is not None and not (isinstance(v, float) and math.isnan(v))
                   for v in vals):
                row[k] = sum(vals) / len(vals)
            else:
                row[k] = None
        out[level] = row
    return out


# ---------------------------------------------------------------- scoring a model on check sets


def images_of(cs: CheckSet) -> list:
    """The check set's crops as RGB arrays, read once and kept (a grid of alphas scores them many times)."""
    cached = getattr(cs, "_images", None)
    if cached is None:
        from dftune.portable import load_image
        from dftune.prepared import image_paths

        cached = [load_image(p) for p in image_paths(cs.folder, cs.rows)]
        object.__setattr__(cs, "_images", cached)
    return cached


def probs(model, cs: CheckSet, tta: Sequence[str] = (), batch: int = 64) -> tuple:
    """``(labels, fake probabilities, video keys)`` of a loaded model on a check set's rows, in their order."""
    import numpy as np

    from dftune.scoring import model_prob_fake

    imgs = images_of(cs)
    p = np.concatenate([model_prob_fake(model, imgs[i:i + batch], tta) for i in range(0, len(imgs), batch)])
    return np.array([r.label for r in cs.rows]), p, [r.video for r in cs.rows]


def score(model, cs: CheckSet, tta: Sequence[str] = (), aggregate: str = "mean", batch: int = 64) -> dict:
    """``{"frame": metrics, "video": metrics}`` of a loaded model (:class:`dftune.scoring.LoadedModel`) on a
    check set, each with its val-optimal threshold: the same numbers a validation records."""
    from dftune import metrics
    from dftune.pooling import parse_aggregate, video_aggregate

    y, p, _ = probs(model, cs, tta, batch)
    how, k = parse_aggregate(aggregate)
    _, vp, vy = video_aggregate([r.video for r in cs.rows], p, y, how=how, k=k)
    out = {}
    for level, (yy, pp) in (("frame", (y, p)), ("video", (vy, vp))):
        m = metrics.binary_metrics(yy, pp)
        m["best_threshold"], m["best_threshold_f1"] = metrics.best_threshold(yy, pp)
        out[level] = {k2: (None if isinstance(v, float) and math.isnan(v) else v) for k2, v in m.items()
                      if isinstance(v, (int, float))}
    return out


def score_all(model, checks: Sequence[CheckSet], tta: Sequence[str] = (), aggregate: str = "mean") -> dict:
    """Each check set's numbers and their mean: ``{"sets": {name: ...}, "mean": ...}``."""
    per = {cs.name: score(model, cs, tta, aggregate) for cs in checks}
    return {"sets": per, "mean": mean_of(per)}


METRIC_KEYS = {"auc": "auc", "f1": "macro_f1", "loss": "loss"}


def value(result: dict, metric: str = "auc", level: str = "frame") -> float:
    """The number a choice is made on (higher is better: a loss is negated); NaN where undefined."""
    v = result["mean"][level].get(METRIC_KEYS[metric])
    if v is None:
        return float("nan")
    return -float(v) if metric == "loss" else float(v)


# ---------------------------------------------------------------- a threshold chosen on the check sets


def pooled_threshold(scored: Sequence[tuple], aggregate: str = "mean") -> dict:
    """The macro-F1-optimal threshold over every check set's rows pooled into one set, at each level:
    ``{"frame": {"threshold", "macro_f1", "n"}, "video": {...}}``.

    ``scored`` holds ``(name, labels, fake probabilities, video keys)`` per check set. Several sets combine by
    pooling their rows (a video stays within its set: keys are prefixed with the set's name), not by averaging
    per-set thresholds: the threshold is the one that labels all the check data best, so a larger set weighs
    more, as it does in a macro F1 over the sets' union."""
    import numpy as np

    from dftune import metrics
    from dftune.pooling import parse_aggregate, video_aggregate

    ys = np.concatenate([np.asarray(s[1]) for s in scored]) if scored else np.zeros(0)
    ps = np.concatenate([np.asarray(s[2], dtype=np.float64) for s in scored]) if scored else np.zeros(0)
    keys = [f"{s[0]}\x00{v}" for s in scored for v in s[3]]
    how, k = parse_aggregate(aggregate)
    _, vp, vy = video_aggregate(keys, ps, ys, how=how, k=k)
    out = {}
    for level, (yy, pp) in (("frame", (ys, ps)), ("video", (vy, vp))):
        t, f1 = metrics.best_threshold(yy, pp)
        out[level] = {"threshold": float(t), "macro_f1": None if f1 != f1 else float(f1), "n": int(len(yy))}
    return out


def threshold_source(names: Sequence[str], level: str, aggregate: str, by: str, **more) -> dict:
    """A threshold's provenance when it was tuned on check sets ``names`` (pooled) at ``level``, without TTA:
    what dftune.json keeps and predict prints."""
    return {"by": by, "data": "check sets " + ", ".join(names) + " (rows pooled)", "checks": list(names),
            "level": level, "tta": [], "aggregate": aggregate, **more}


def model_threshold(model, checks: Sequence[CheckSet], aggregate: str = "mean") -> dict:
    """:func:`pooled_threshold` of a loaded model (:class:`dftune.scoring.LoadedModel`) on ``checks``, no TTA."""
    return pooled_threshold([(cs.name, *probs(model, cs)) for cs in checks], aggregate)
