"""Generic source: a folder of ``real/`` and ``fake/`` subfolders of videos and/or images.

::

    ROOT/real/**.{mp4,jpg,...}       label 0
    ROOT/fake/**.{mp4,jpg,...}       label 1; ``fake/<Method>/...`` names the method
    ROOT/{train,val,test}/{real,fake}/...   splits given by the layout (used as they are)

Without split folders, ``--split-by random`` assigns whole files; identities are unknown
here, so keep one person's files in one split yourself when that matters.
"""

from __future__ import annotations

from pathlib import Path

from dftune.portable import IMAGE_EXTS, VIDEO_EXTS
from dftune.sources import Item, SourceError, root_folder


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS + IMAGE_EXTS)


def _class_items(base: Path, preset: str, label: int) -> list[Item]:
    items = []
    cls = "fake" if label else "real"
    for p in _files(base / cls):
        rel = p.relative_to(base / cls)
        method = rel.parts[0] if label and len(rel.parts) > 1 else cls
        parts = rel.with_suffix("").parts[1:] if method != cls else rel.with_suffix("").parts
        vid = "__".join(parts)  # unique within its method, and a valid file name
        kind = "video" if p.suffix.lower() in VIDEO_EXTS else "image"
        items.append(Item(p, kind, label, method, vid, vid, "", preset_split=preset))
    return items


def index(root: str | Path, warnings: list | None = None, **_ignored) -> list[Item]:
    root = root_folder(root)
    split_dirs = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    bases = [(root / s, s) for s in split_dirs] if split_dirs else [(root, "")]
    items: list[Item] = []
    for base, preset in bases:
        if not (base / "real").is_dir() and not (base / "fake").is_dir():
            raise SourceError(f"{base}: expected real/ and fake/ subfolders of videos or images")
        for label in (0, 1):
            if (base / ("fake" if label else "real")).is_dir():
                items.extend(_class_items(base, preset, label))
    if not items:
        raise SourceError(f"{root}: no videos or images found under real/ and fake/ "
                          f"(videos: {', '.join(VIDEO_EXTS)}; images: {', '.join(IMAGE_EXTS)})")
    return items
