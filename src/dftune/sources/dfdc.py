"""The Deepfake Detection Challenge datasets: the full DFDC (``dfdc``) and its preview (``dfdcp``).

Full DFDC (``--source dfdc``)::

    ROOT/[train/]dfdc_train_part_0/metadata.json   {"x.mp4": {"label": "FAKE", "split": "train", "original": "y.mp4"},
                                                    "y.mp4": {"label": "REAL", "split": "train", "original": null}}
    ROOT/[train/]dfdc_train_part_0/x.mp4 ...
    ROOT/test/labels.csv + videos                 the public test set: filename,label (1 = fake)
    ROOT/test/metadata.json + videos              (or {"x.mp4": {"is_fake": 1}, ...}, as Meta's release has it)
    ROOT/validation/labels.csv + videos           Meta's release also has a validation set: it is val when a
                                                  test set is present too, else it is the test set

A fake's identity is its ``original`` (DFDC publishes no actor ids), so a fake and its
real video stay in one split and per-video pairs hold; training videos are dealt to
train/val by original with a seed (to train only when a validation set is present).
Methods: ``original`` (real) and ``DFDC`` (fake; DFDC names no method per video).

DFDC preview (``--source dfdcp``)::

    ROOT/dataset.json      {"method_A/643049/643049_A/1955430.mp4": {"label": "fake", "set": "train",
                                                                      "target_id": "643049", "swapped_id": "..."}, ...}
    ROOT/original_videos/<id>/...mp4    real
    ROOT/method_A/..., ROOT/method_B/...    fakes of the two methods

``set`` = test is the test set; ``set`` = train is dealt to train/val by identity
(``target_id``, and ``swapped_id`` for fakes; the folder after the method when absent).
Method = the first folder of the path.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from dftune.portable import VIDEO_EXTS
from dftune.sources import Item, SourceError, root_folder
from dftune.sources.heldout import find_files, label_word, pick_methods, read_text, split_around_test
from dftune.sources.splits import RATIOS

log = logging.getLogger(__name__)

REAL_METHOD = "original"
FAKE_METHOD = "DFDC"


def _load_json(path: Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not valid JSON ({e})") from None


def _locate(folder: Path, name: str) -> Path | None:
    for p in (folder / name, folder / "videos" / name):
        if p.is_file():
            return p
    return None


def _labels_csv(path: Path, warnings: list) -> dict[str, int]:
    rows = list(csv.reader(io.StringIO(read_text(path))))
    first = 1
    if rows and rows[0] and rows[0][0].strip().lower() in ("filename", "file", "path", "video"):
        rows, first = rows[1:], 2
    out, line, repeats = {}, {}, 0
    for n, r in enumerate(rows, first):
        if not r or not r[0].strip():
            continue
        if len(r) < 2:
            raise SourceError(f"{path}:{n}: expected filename,label")
        name, label = r[0].strip(), label_word(r[1], f"{path}:{n}")
        if name in out:
            if out[name] != label:
                raise SourceError(f"{path}: lines {line[name]} and {n} give {name} two labels ({out[name]} and "
                                  f"{label}); keep one row per video")
            repeats += 1
            continue
        out[name], line[name] = label, n
    if repeats:
        msg = f"{path}: {repeats} rows repeat an earlier row exactly; each video counted once"
        warnings.append({"file": str(path), "error": msg})
        log.warning("%s", msg)
    return out


def _is_train_part(meta) -> bool:
    return isinstance(meta, dict) and bool(meta) and all(isinstance(v, dict) and "label" in v for v in meta.values())


def _is_heldout(meta) -> bool:
    return isinstance(meta, dict) and bool(meta) and all(isinstance(v, dict) and "is_fake" in v for v in meta.values())


def _missing_text(names: list[str], where: str) -> str:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"{len(names)} videos named in {where} are not on disk ({shown}); skipped"


def _heldout_sets(root: Path, warnings: list) -> list[tuple[Path, dict[str, int]]]:
    """(folder, {file name: label}) for every labelled held-out set: labels.csv, or a
    metadata.json with ``is_fake`` entries."""
    sets = [(p.parent, _labels_csv(p, warnings)) for p in find_files(root, "labels.csv")]
    for p in find_files(root, "metadata.json"):
        meta = _load_json(p)
        if _is_heldout(meta):
            sets.append((p.parent, {k: int(v["is_fake"]) for k, v in meta.items()}))
    return sets


def index(root: str | Path, compression: str = "", methods=None, actors: bool = False, warnings: list | None = None,
          seed: int = 0, ratios=RATIOS, **_ignored) -> list[Item]:
    """Index the full DFDC: training parts, and the labelled test (and validation) sets."""
    root = root_folder(root)
    warnings = warnings if warnings is not None else []
    pick_methods(methods, [FAKE_METHOD], "dfdc")
    items: list[Item] = []
    parts = []
    for p in find_files(root, "metadata.json"):
        m = _load_json(p)
        if _is_train_part(m):
            parts.append(p)
        elif not _is_heldout(m):  # neither shape: say so rather than lose its videos
            raise SourceError(f"{p}: not DFDC's metadata.json: expected an object of video name -> "
                              f"{{\"label\": \"REAL\"|\"FAKE\", \"original\": ...}} (a training part) or -> "
                              f"{{\"is_fake\": 0|1}} (a labelled test set)")
    missing: list[str] = []
    for meta_path in parts:
        meta = _load_json(meta_path)
        for name, v in sorted(meta.items()):
            p = _locate(meta_path.parent, name)
            if p is None:
                missing.append(str(meta_path.parent / name))
                continue
            label = label_word(v.get("label"), f"{meta_path}: {name}")
            original = Path(v.get("original") or name).stem if label else Path(name).stem
            items.append(Item(p, "video", label, FAKE_METHOD if label else REAL_METHOD, Path(name).stem, original))
    heldout = _heldout_sets(root, warnings)
    names = {d.name.lower() for d, _ in heldout}
    has_test = any(n.startswith("test") for n in names)
    for folder, labels in heldout:
        low = folder.name.lower()
        split = "val" if low in ("validation", "val", "valid") and has_test else "test"
        for name, label in sorted(labels.items()):
            p = _locate(folder, name)
            if p is None:
                missing.append(str(folder / name))
                continue
            items.append(Item(p, "video", label, FAKE_METHOD if label else REAL_METHOD, Path(name).stem,
                              preset_split=split))
    if missing:
        msg = _missing_text(missing, "DFDC's metadata.json/labels.csv")
        warnings.append({"file": str(root), "error": msg, "missing": missing[:1000]})
        log.warning("%s", msg)
    if not items:
        raise SourceError(f"{root}: not a DFDC root: expected dfdc_train_part_*/metadata.json (label FAKE/REAL, "
                          f"original) and/or a test set with labels.csv (filename,label; 1 = fake) beside its videos")
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = len(keys) - len(set(keys))
        raise SourceError(f"{root}: {dup} video names occur twice (in two parts or sets); DFDC's names are unique, "
                          f"so the root holds a copy of some part")
    return split_around_test(items, seed, ratios, warnings, source=str(root), test_name="the DFDC test set")


def index_preview(root: str | Path, compression: str = "", methods=None, actors: bool = False,
                  warnings: list | None = None, seed: int = 0, ratios=RATIOS, **_ignored) -> list[Item]:
    """Index the DFDC preview from its ``dataset.json``."""
    root = root_folder(root)
    warnings = warnings if warnings is not None else []
    found = find_files(root, "dataset.json", depth=1)
    if not found:
        raise SourceError(f"{root}: not a DFDC preview root: expected dataset.json beside original_videos/, "
                          f"method_A/ and method_B/")
    meta_path = found[0]
    meta = _load_json(meta_path)
    if not isinstance(meta, dict):
        raise SourceError(f"{meta_path}: expected a JSON object of path -> {{label, set, ...}}")
    fake_methods = {Path(k).parts[0] for k, v in meta.items() if str(v.get("label", "")).lower() == "fake"}
    keep = pick_methods(methods, fake_methods, "dfdcp")
    items, missing = [], []
    for rel, v in sorted(meta.items()):
        parts = Path(rel.replace("\\", "/")).parts
        label = label_word(v.get("label"), f"{meta_path}: {rel}")
        method = parts[0]
        if label and method not in keep:
            continue
        p = meta_path.parent / rel
        if Path(rel).suffix.lower() not in VIDEO_EXTS:
            continue
        if not p.is_file():
            missing.append(str(p))
            continue
        if (method == "original_videos") == bool(label):  # the folder says one class, the label the other
            warnings.append({"file": str(p), "error": f"{meta_path.name} labels it {'fake' if label else 'real'} but "
                                                      f"it is in {method}/; {meta_path.name}'s label is used"})
        s = str(v.get("set", "")).lower()
        if s not in ("train", "test"):
            raise SourceError(f"{meta_path}: {rel}: set {v.get('set')!r} is neither train nor test")
        target = str(v.get("target_id") or (parts[1] if len(parts) > 2 else ""))
        source = str(v.get("swapped_id") or "") if label else ""
        vid = "__".join(Path(*parts[1:]).with_suffix("").parts)
        items.append(Item(p, "video", label, method, vid, target, source if source != target else "",
                          preset_split="test" if s == "test" else ""))
    if missing:
        msg = _missing_text(missing, meta_path.name)
        warnings.append({"file": str(meta_path), "error": msg, "missing": missing[:1000]})
        log.warning("%s", msg)
    if not items:
        raise SourceError(f"{meta_path}: no video of it is under {meta_path.parent}")
    return split_around_test(items, seed, ratios, warnings, source=str(root), test_name="the DFDC preview test set")
