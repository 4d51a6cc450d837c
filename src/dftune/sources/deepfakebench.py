"""DeepfakeBench's preprocessed layout: a dataset JSON over folders of face frames (and landmarks).

DeepfakeBench ships its FF++, Celeb-DF, DFDC, DFDCP, DFD, ... frames, and DF40 (40 methods: face swap,
reenactment, entire-face synthesis, editing) its own, as::

    dataset_json/FaceForensics++.json       (or DF40's simswap_ff.json, ...)
    {"FaceForensics++": {                                           dataset
        "FF-real": {                                                label: one method (real or fake)
            "train": {                                              split: train / val / test
                "c23": {                                            compression (optional level)
                    "000": {"label": "FF-real",
                            "frames": ["FaceForensics++/original_sequences/youtube/c23/frames/000/000.png", ...]}}},
            "val": {...}, "test": {...}},
        "FF-DF": {"train": {"c23": {"000_003": {"label": "FF-DF", "frames": [...]}}}, ...}}}
    FaceForensics++/original_sequences/youtube/c23/frames/000/000.png     the face frames (crops already)
    FaceForensics++/original_sequences/youtube/c23/landmarks/000/000.npy  81 (or 68) points, frame pixels

ROOT is the JSON file (or a folder holding exactly one). Frame paths that are relative resolve against
``--frames-root`` (default: the JSON's folder, then the folder above it, where DeepfakeBench keeps its
``datasets/``); absolute paths from the machine that made the JSON resolve the same way from the dataset's
own folder name down. A frame's landmarks are the ``.npy`` of the same name under ``landmarks/`` beside
``frames/``; they go into the manifest (crop pixels) for SBI's masks.

- **Labels -> real/fake** by DeepfakeBench's own ``label_dict`` (its ``train_config.yaml``: ``FF-real`` 0,
  ``FF-DF`` 1, ``CelebDFv2_fake`` 1, ``DFDCP_FakeA`` 1, ...) and DF40's rule that extends it (``<method>_Fake``
  1, ``<method>_Real`` 0). ``--class-map FILE`` (YAML or JSON: ``label: 0|1``, or a DeepfakeBench config
  holding ``label_dict``) adds to or overrides it; a label in neither is an error naming it.
- **Methods** are the labels, so per-method results read as DeepfakeBench's.
- **Splits** are the JSON's. A video listed under several splits (DeepfakeBench lists DFD's videos in all
  three, and Celeb-DF's test videos in train too) is kept in the most held-out one (test, then val), counted.
- **Identities** from FF++-style (``000``, ``000_003``) and Celeb-DF-style (``id0_0000``, ``id0_id1_0000``)
  video names: a train/val video sharing one with a test video is dropped and counted, as for every source.
- Frames the JSON names that are not on disk are counted and listed; the rest goes on.
- Frames are used whole as crops (``--detector none`` is implied: they are DeepfakeBench's face crops).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dftune.sources import SourceError
from dftune.sources.frames import KIND as FRAMES
from dftune.sources.frames import FramesItem
from dftune.sources.heldout import natural_key, pick_methods, read_text, split_around_test
from dftune.sources.splits import RATIOS

log = logging.getLogger(__name__)

# DeepfakeBench's label_dict (training/config/train_config.yaml): the labels its dataset JSONs use
LABELS = {
    "FF-real": 0, "FF-DF": 1, "FF-F2F": 1, "FF-FS": 1, "FF-NT": 1, "FF-FH": 1, "FF-SH": 1,
    "DFD_real": 0, "DFD_fake": 1,
    "CelebDFv1_real": 0, "CelebDFv1_fake": 1, "CelebDFv2_real": 0, "CelebDFv2_fake": 1,
    "DFDCP_Real": 0, "DFDCP_FakeA": 1, "DFDCP_FakeB": 1, "DFDC_Real": 0, "DFDC_Fake": 1,
    "DF_real": 0, "DF_fake": 1, "UADFV_Real": 0, "UADFV_Fake": 1,
}
_DF40 = re.compile(r"^(?P<method>.+)_(?P<side>Real|Fake)$")  # DF40: <method>_Fake / <method>_Real
SPLITS = ("train", "val", "test")
_HELD_OUT = {"train": 0, "val": 1, "test": 2}
_FF_ID = re.compile(r"^(\d{3})(?:_(\d{3}))?$")
_CELEB_ID = re.compile(r"^(id\d+)(?:_(id\d+))?_\d+$")


@dataclass
class BenchItem(FramesItem):
    """A video of DeepfakeBench's frames, with the landmark file of each frame ("" where none)."""

    landmark_files: tuple = ()


def landmarks_of(item, frame_index: int):
    """The frame's landmarks (N x 2, frame pixels) from its ``.npy``, or None."""
    import numpy as np

    files = getattr(item, "landmark_files", ())
    if not files or frame_index >= len(files) or not files[frame_index]:
        return None
    try:
        pts = np.load(files[frame_index]).reshape(-1, 2)
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable landmarks (%s); the crop's face box is used for its mask", files[frame_index], e)
        return None
    return [(float(x), float(y)) for x, y in pts]


def read_class_map(path: str | Path | None) -> dict[str, int]:
    """DeepfakeBench's labels, with a user's file on top (``label: 0|1``, or a config with ``label_dict``)."""
    out = dict(LABELS)
    if not path:
        return out
    path = Path(path)
    text = read_text(path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error: say which file
        raise SourceError(f"{path}: not a class map ({type(e).__name__}: {e})") from None
    if isinstance(data, dict) and isinstance(data.get("label_dict"), dict):
        data = data["label_dict"]
    if not isinstance(data, dict) or not data:
        raise SourceError(f"{path}: expected a mapping of label -> 0 (real) or 1 (fake), or a config with label_dict")
    for k, v in data.items():
        if v not in (0, 1) or isinstance(v, bool):
            raise SourceError(f"{path}: {k}: {v!r} is neither 0 (real) nor 1 (fake)")
        out[str(k)] = int(v)
    return out


def class_of(label: str, classes: dict[str, int], where: str) -> int:
    if label in classes:
        return classes[label]
    m = _DF40.match(label)
    if m:
        return 1 if m.group("side") == "Fake" else 0
    raise SourceError(f"{where}: label {label!r} is not in DeepfakeBench's label_dict (nor <method>_Fake/_Real as "
                      f"DF40 names them); give its class with --class-map FILE (YAML: '{label}: 1' for fake, 0 real)")


def identities(video: str) -> tuple[str, str]:
    """(target, source) from FF++-style or Celeb-DF-style names; ("", "") when the name says none."""
    for rx in (_FF_ID, _CELEB_ID):
        m = rx.match(video)
        if m:
            return m.group(1), m.group(2) or ""
    return "", ""


def _json_file(root: Path) -> Path:
    if root.is_file():
        return root
    if root.is_dir():
        found = sorted(root.glob("*.json"))
        if len(found) == 1:
            return found[0]
        if found:
            raise SourceError(f"{root}: {len(found)} dataset JSONs here ({', '.join(p.name for p in found[:5])}); "
                              f"give one as ROOT (prepare each into its own --out, then combine with --merge-into)")
    raise SourceError(f"{root}: no DeepfakeBench dataset JSON (e.g. dataset_json/FaceForensics++.json)")


def _videos(split_node: dict, compression: str, where: str) -> dict:
    """``{video: entry}`` of one label/split, through the optional compression level."""
    if not isinstance(split_node, dict):
        raise SourceError(f"{where}: expected an object of videos, got {type(split_node).__name__}")
    if not split_node or all(isinstance(v, dict) and "frames" in v for v in split_node.values()):
        return split_node
    levels = sorted(split_node)
    if compression in split_node:
        return split_node[compression]
    if len(levels) == 1:
        return split_node[levels[0]]
    raise SourceError(f"{where}: compression {compression!r} not there; choose one with --compression "
                      f"({', '.join(levels)})")


class _Resolver:
    """Frame paths of another machine or relative ones -> files here."""

    def __init__(self, json_path: Path, frames_root: str | Path | None, dataset: str):
        self.bases = [Path(frames_root)] if frames_root else [json_path.parent, json_path.parent.parent]
        self.dataset = dataset
        self.prefixes: list[tuple] = []  # leading parts of another machine's paths that tail matching dropped

    def __call__(self, p: str) -> Path | None:
        p = p.replace("\\", "/")
        parts = PurePosixPath(p).parts
        cands = []
        if PurePosixPath(p).is_absolute():
            cands.append(Path(p))
            if self.dataset in parts:  # from the dataset's folder down, under each base
                rel = PurePosixPath(*parts[parts.index(self.dataset):])
                cands += [b / rel for b in self.bases]
        else:
            cands += [b / p for b in self.bases]
        found = next((c for c in cands if c.is_file()), None)
        return found if found is not None else self._tail(parts)

    def _tail(self, parts: tuple) -> Path | None:
        """The path's longest tail (a folder and the file at least) that is a file under a base: a JSON written
        on another machine whose dataset key is not a folder of its paths (DF40's ``simswap_ff`` over
        ``.../FaceForensics++/...``). A prefix that worked once is tried first for the next frames."""
        for pre in self.prefixes:
            if parts[:len(pre)] == pre:
                got = next((b / PurePosixPath(*parts[len(pre):]) for b in self.bases
                            if (b / PurePosixPath(*parts[len(pre):])).is_file()), None)
                if got is not None:
                    return got
        for i in range(1, len(parts) - 1):
            for b in self.bases:
                c = b / PurePosixPath(*parts[i:])
                if c.is_file():
                    self.prefixes.insert(0, parts[:i])
                    return c
        return None


def _landmark_file(frame: Path) -> str:
    parts = list(frame.parts)
    if "frames" not in parts:
        return ""
    i = len(parts) - 1 - parts[::-1].index("frames")
    lm = Path(*parts[:i], "landmarks", *parts[i + 1:]).with_suffix(".npy")
    return str(lm) if lm.is_file() else ""


def index(root: str | Path, compression: str = "c23", methods=None, actors: bool = False,
          warnings: list | None = None, seed: int = 0, ratios=RATIOS, class_map: str | None = None,
          frames_root: str | None = None, **_ignored) -> list[BenchItem]:
    """Index a DeepfakeBench dataset JSON; every returned item has ``preset_split`` set."""
    warnings = warnings if warnings is not None else []
    path = _json_file(Path(root))
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise SourceError(f"{path}: expected DeepfakeBench's {{dataset: {{label: {{split: ...}}}}}}")
    classes = read_class_map(class_map)
    labels = {lab for ds in data.values() for lab in ds}
    keep = pick_methods(methods, labels, "deepfakebench")
    best: dict[tuple[str, str], tuple[str, dict]] = {}  # (label, video) -> (split, entry): most held out wins
    repeated = 0
    disagree: list[str] = []  # videos whose own "label" is not the method key they are listed under
    for dataset, by_label in data.items():
        for label, by_split in by_label.items():
            cls = class_of(label, classes, f"{path}: {dataset}/{label}")
            if cls == 1 and label not in keep:
                continue
            if not isinstance(by_split, dict):
                raise SourceError(f"{path}: {dataset}/{label}: expected an object of splits")
            for split, node in by_split.items():
                if split not in SPLITS:
                    raise SourceError(f"{path}: {dataset}/{label}: split {split!r} is not train, val or test")
                for video, entry in _videos(node, compression, f"{path}: {dataset}/{label}/{split}").items():
                    own = entry.get("label") if isinstance(entry, dict) else None
                    if own is not None and str(own) != label:
                        disagree.append(f"{dataset}/{label}/{split}/{video} says {own!r}")
                    key = (label, str(video))
                    if key in best:
                        repeated += 1
                        if _HELD_OUT[split] <= _HELD_OUT[best[key][0]]:
                            continue
                    best[key] = (split, {**entry, "_dataset": dataset, "_class": cls})
    items, missing, empty = [], [], []
    resolvers: dict[str, _Resolver] = {}
    for (label, video), (split, entry) in sorted(best.items(), key=lambda kv: (kv[0][0], natural_key(kv[0][1]))):
        r = resolvers.setdefault(entry["_dataset"], _Resolver(path, frames_root, entry["_dataset"]))
        files = []
        for f in entry.get("frames") or []:
            got = r(str(f))
            if got is None:
                missing.append(str(f))
            else:
                files.append(got)
        if not files:
            empty.append(f"{label}/{video}")
            continue
        files.sort(key=lambda p: natural_key(p.name))
        target, source = identities(video)
        items.append(BenchItem(files[0].parent, FRAMES, entry["_class"], label, video, target, source,
                               preset_split=split, files=tuple(files),
                               landmark_files=tuple(_landmark_file(f) for f in files)))
    if repeated:
        warnings.append({"file": str(path), "error": f"{repeated} videos are listed under more than one split "
                         f"(DeepfakeBench does so for DFD and Celeb-DF); each kept once, in the most held-out split"})
    if disagree:
        msg = (f"{len(disagree)} videos carry a label that differs from the method they are listed under "
               f"({'; '.join(disagree[:3])}{f' and {len(disagree) - 3} more' if len(disagree) > 3 else ''}); each is "
               f"taken as the method key it is listed under says (real or fake, and its method); check the JSON")
        warnings.append({"file": str(path), "error": msg, "videos": disagree[:1000]})
        log.warning("%s", msg)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        msg = f"{len(missing)} frames named in {path.name} are not on disk ({shown}); the rest go on"
        warnings.append({"file": str(path), "error": msg, "missing": missing[:1000]})
        log.warning("%s", msg)
    if empty:
        warnings.append({"file": str(path), "error": f"{len(empty)} videos have no frame on disk; skipped",
                         "videos": empty[:1000]})
    if not items:
        bases = _Resolver(path, frames_root, "").bases
        first = PurePosixPath(missing[0].replace("\\", "/")) if missing else None
        looked = (f"; the first, {missing[0]}, was looked for as {bases[0] / first.relative_to(first.anchor)} and as "
                  f"each shorter tail of it (down to {bases[0] / PurePosixPath(*first.parts[-2:])})"
                  if first is not None and len(first.parts) > 1 else "")
        raise SourceError(f"{path}: none of its frames is on disk (looked under "
                          f"{', '.join(str(b) for b in bases)}{looked}; "
                          f"set --frames-root to the folder its frame paths start from)")
    return split_around_test(items, seed, ratios, warnings, source=str(path), test_name=f"{path.name}'s test split")
