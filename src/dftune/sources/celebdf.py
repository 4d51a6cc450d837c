"""Celeb-DF (v2, and v1) as its download lays it out.

::

    ROOT/Celeb-real/id0_0000.mp4              real, identity id0
    ROOT/Celeb-synthesis/id0_id16_0000.mp4    fake: TARGET id0 (the video's person), SOURCE id16 (the face pasted in)
    ROOT/YouTube-real/00000.mp4               real, identity unknown (each video its own)
    ROOT/List_of_testing_videos.txt           the official test list: "1 Celeb-real/id0_0000.mp4"
                                              (1 = REAL, 0 = FAKE: the reverse of dftune's labels)

Also read: the ``<folder>/videos/*.mp4`` variant some repositories use, and ``Youtube-real``.

Splits: the list is the test set. The other videos go to train/val by identity, dealt with a
seed and the ratios; a video that shows an identity of the test set is dropped and counted
(Celeb-DF's own list is not identity-disjoint from the rest), and so is a fake whose two
identities fall in different splits. See :mod:`dftune.sources.heldout`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from dftune.portable import VIDEO_EXTS
from dftune.sources import Item, SourceError, root_folder
from dftune.sources.heldout import pick_methods, read_text, split_around_test
from dftune.sources.splits import RATIOS

log = logging.getLogger(__name__)

FOLDERS = {"celeb-real": ("Celeb-real", 0), "youtube-real": ("YouTube-real", 0),
           "celeb-synthesis": ("Celeb-synthesis", 1)}
LIST_NAME = "List_of_testing_videos.txt"
_REAL_RE = re.compile(r"^(id\d+)_(\d+)$")
_FAKE_RE = re.compile(r"^(id\d+)_(id\d+)_(\d+)$")


def _video_dir(folder: Path) -> Path:
    """``folder`` or its ``videos/`` subfolder, whichever holds the videos."""
    sub = folder / "videos"
    return sub if sub.is_dir() else folder


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)


def read_test_list(path: Path) -> dict[tuple[str, str], int]:
    """``(folder lower-case, file stem) -> label`` (dftune's: 0 real, 1 fake) from the official list,
    whose lines are ``<1 real | 0 fake> <folder>/[videos/]<name>.mp4``."""
    out: dict[tuple[str, str], int] = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise SourceError(f"{path}:{n}: expected '<1|0> <folder>/<video>.mp4' (1 = real, 0 = fake), got {line!r}")
        rel = Path(parts[1].replace("\\", "/"))
        out[(rel.parts[0].lower(), rel.stem)] = 0 if parts[0] == "1" else 1
    if not out:
        raise SourceError(f"{path}: the test list is empty")
    return out


def index(root: str | Path, compression: str = "", methods=None, actors: bool = False, warnings: list | None = None,
          seed: int = 0, ratios=RATIOS, **_ignored) -> list[Item]:
    """Index a Celeb-DF root; every returned item has ``preset_split`` set."""
    root = root_folder(root)
    warnings = warnings if warnings is not None else []
    found = {c.name.lower(): c for c in root.iterdir() if c.is_dir() and c.name.lower() in FOLDERS}
    if "celeb-real" not in found and "celeb-synthesis" not in found:
        raise SourceError(f"{root}: not a Celeb-DF root: expected Celeb-real/, Celeb-synthesis/ and YouTube-real/ "
                          f"(videos directly inside or in videos/) and {LIST_NAME}")
    list_path = root / LIST_NAME
    if not list_path.exists():
        cands = [p for p in root.iterdir() if p.is_file() and p.name.lower() == LIST_NAME.lower()]
        if not cands:
            raise SourceError(f"{list_path}: Celeb-DF's official test list is missing (it ships with the dataset; "
                              f"without it results are not comparable with published ones)")
        list_path = cands[0]
    test = read_test_list(list_path)
    keep = pick_methods(methods, ["Celeb-synthesis"], "celebdf")

    items: list[Item] = []
    for low, folder in sorted(found.items()):
        method, label = FOLDERS[low]
        if label and method not in keep:
            continue
        for p in _videos(_video_dir(folder)):
            if low == "celeb-real":
                m = _REAL_RE.match(p.stem)
                ids = (m.group(1), "") if m else None
            elif low == "celeb-synthesis":
                m = _FAKE_RE.match(p.stem)
                ids = (m.group(1), m.group(2)) if m else None
            else:
                ids = ("", "")  # YouTube-real: no identity given
            if ids is None:
                warnings.append({"file": str(p), "error": f"name is not Celeb-DF's "
                                                          f"{'idA_idB_NNNN' if label else 'idN_NNNN'}; skipped"})
                continue
            it = Item(p, "video", label, method, p.stem, ids[0], ids[1])
            listed = test.pop((low, p.stem), None)
            if listed is not None:
                it.preset_split = "test"
                if listed != label:
                    warnings.append({"file": str(p), "error": f"{list_path.name} labels it "
                                                              f"{'real (1)' if not listed else 'fake (0)'} but it is "
                                                              f"in {folder.name}/; the folder's label is used"})
            items.append(it)
    if not items:
        raise SourceError(f"{root}: no videos in Celeb-real/, Celeb-synthesis/ or YouTube-real/ "
                          f"(videos: {', '.join(VIDEO_EXTS)})")
    missing = [f"{f}/{s}" for (f, s) in test if f in found and (f != "celeb-synthesis" or "Celeb-synthesis" in keep)]
    if missing:
        msg = f"{len(missing)} videos of {list_path.name} are not on disk (first: {', '.join(sorted(missing)[:5])})"
        warnings.append({"file": str(list_path), "error": msg})
        log.warning("%s", msg)
    if not any(it.preset_split == "test" for it in items):
        raise SourceError(f"{list_path}: none of its videos is under {root}")
    return split_around_test(items, seed, ratios, warnings, source=str(root), test_name=list_path.name)
