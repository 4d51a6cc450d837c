"""Pre-extracted face frames, one folder of images per video (WildDeepfake and the like).

::

    ROOT/real/<video>/<frame>.png          label 0; <video> may be nested: real/10/real/3/0.png
    ROOT/fake/<video>/<frame>.png          label 1
    ROOT/{train,val,test}/{real,fake}/<video>/...     splits given by the layout
    ROOT/{real,fake}_{train,val,test}/<video>/...     WildDeepfake's own names (real_train, fake_test, ...)

A video is a folder that directly holds image files; its frames are those images in natural
order (``2.png`` before ``10.png``), sampled like a video's (``--frames`` evenly spaced or
``--every K``; the frame index is the position in that order). ``--detector none`` uses each
frame whole as the crop (resized to ``--size``); otherwise the face detector runs on it and
a frame that already is a face crop is kept whole, as for images.

Splits: a test folder is the test set; with train and test folders but no val folder (as
WildDeepfake ships), the train videos are dealt to train/val with a seed, keeping the videos
under one top-level folder (one source video's sequences) together; with no split folders,
everything is dealt to train/val/test that way, with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dftune.portable import IMAGE_EXTS
from dftune.sources import Item, SourceError, root_folder
from dftune.sources.heldout import natural_key, split_around_test
from dftune.sources.splits import RATIOS

KIND = "frames"
_WILD_RE = re.compile(r"^(real|fake)_(train|val|valid|validation|test)$", re.IGNORECASE)
_SPLIT = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class FramesItem(Item):
    """A video given as image files (``files``, in order), e.g. a list file's frames of one video."""

    files: tuple = ()


def frame_files(item: Item) -> list[Path]:
    """The frames of a ``frames`` item, in order: its ``files``, or the images in its folder."""
    files = getattr(item, "files", ())
    if files:
        return [Path(f) for f in files]
    folder = Path(item.path)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS),
                  key=lambda p: natural_key(p.name))


def read_frames(item: Item, frames: int = 10, every: int = 0) -> Iterator[tuple[int, object]]:
    """``(index, RGB uint8)`` for the sampled frames of a ``frames`` item (the guide's sampling over
    the frame files: ``linspace(0, n - 1, frames)`` or every k-th)."""
    from dftune.portable import VideoError, load_image, sample_indices

    files = frame_files(item)
    if not files:
        raise VideoError(f"{item.path}: no frame images ({', '.join(IMAGE_EXTS)})")
    for i in sample_indices(len(files), frames, every):
        yield i, load_image(files[i])


def _videos(cls_dir: Path, label: int, split: str, preset: str, warnings: list, groups: dict) -> list[Item]:
    """One item per folder of images under ``cls_dir``; ``groups[key]`` = its top-level folder."""
    items = []
    dirs = sorted({p.parent for p in cls_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS},
                  key=lambda d: natural_key(str(d)))
    for d in dirs:
        rel = d.relative_to(cls_dir)
        if not rel.parts:
            warnings.append({"file": str(cls_dir), "error": "images directly in the class folder (not in one folder "
                                                            "per video); skipped: use --source folders for images"})
            continue
        cls = "fake" if label else "real"
        prefix = (split,) if split else ()  # train/x and test/x are two videos
        vid = "__".join(prefix + rel.parts)
        items.append(Item(d, KIND, label, cls, vid, preset_split=preset))
        groups[items[-1].key] = "/".join((cls,) + prefix + rel.parts[:1])
    return items


def index(root: str | Path, compression: str = "", methods=None, actors: bool = False, warnings: list | None = None,
          seed: int = 0, ratios=RATIOS, **_ignored) -> list[Item]:
    """Index a folder of per-video frame folders; every returned item has ``preset_split`` set."""
    root = root_folder(root)
    warnings = warnings if warnings is not None else []
    bases: list[tuple[Path, int, str]] = []  # (class folder, label, split)
    for c in sorted(root.iterdir()):
        if not c.is_dir():
            continue
        m = _WILD_RE.match(c.name)
        if m:
            bases.append((c, int(m.group(1).lower() == "fake"), _SPLIT[m.group(2).lower()]))
        elif c.name.lower() in _SPLIT:
            for cls in ("real", "fake"):
                if (c / cls).is_dir():
                    bases.append((c / cls, int(cls == "fake"), _SPLIT[c.name.lower()]))
        elif c.name.lower() in ("real", "fake"):
            bases.append((c, int(c.name.lower() == "fake"), ""))
    if not bases:
        raise SourceError(f"{root}: expected real/ and fake/ folders of per-video frame folders (optionally under "
                          f"train/, val/, test/), or WildDeepfake's real_train/, fake_train/, real_test/, fake_test/")
    has_val = any(s == "val" for _, _, s in bases)
    items: list[Item] = []
    groups: dict[str, str] = {}
    for cls_dir, label, split in bases:
        preset = "" if split == "train" and not has_val else split
        items.extend(_videos(cls_dir, label, split, preset, warnings, groups))
    if not items:
        raise SourceError(f"{root}: no frame folders found (a video is a folder of images: {', '.join(IMAGE_EXTS)})")
    return split_around_test(items, seed, ratios, warnings, source=str(root), test_name="the test folder",
                             group=lambda it: groups[it.key])
