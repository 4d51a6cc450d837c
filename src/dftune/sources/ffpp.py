"""FaceForensics++ as the official download lays it out.

::

    ROOT/original_sequences/youtube/<c>/videos/000.mp4             real, id 000
    ROOT/original_sequences/actors/<c>/videos/01__scene.mp4        real (DeepFakeDetection actors)
    ROOT/manipulated_sequences/<Method>/<c>/videos/000_003.mp4     fake, TARGET 000, SOURCE 003
    ROOT/manipulated_sequences/DeepFakeDetection/<c>/videos/01_02__scene__X.mp4
"""

from __future__ import annotations

import json
import logging
import re
from importlib import resources
from pathlib import Path

from dftune.portable import VIDEO_EXTS
from dftune.sources import Item, SourceError, root_folder

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
OPTIONAL_METHODS = ("DeepFakeDetection", "FaceShifter")
COMPRESSIONS = ("c23", "c40", "raw")
_FAKE_RE = re.compile(r"^(\d{3})_(\d{3})$")
_DFD_FAKE_RE = re.compile(r"^(\d{2})_(\d{2})__")
_ACTOR_RE = re.compile(r"^(\d{2})__")


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)


def index(root: str | Path, compression: str = "c23", methods=DEFAULT_METHODS, actors: bool = False,
          warnings: list | None = None, **_split_settings) -> list[Item]:
    """Index an FF++ root; raises :class:`SourceError` when the layout is not FF++'s."""
    root = root_folder(root)
    warnings = warnings if warnings is not None else []
    orig = root / "original_sequences"
    manip = root / "manipulated_sequences"
    if not orig.is_dir() and not manip.is_dir():
        raise SourceError(
            f"{root}: not a FaceForensics++ root: expected original_sequences/youtube/{compression}/videos/ and "
            f"manipulated_sequences/<Method>/{compression}/videos/ (use --source folders for real/ and fake/ folders)"
        )
    items: list[Item] = []
    yt = orig / "youtube" / compression / "videos"
    if yt.is_dir():
        for p in _videos(yt):
            if not re.fullmatch(r"\d{3}", p.stem):
                warnings.append({"file": str(p), "error": "name is not a 3-digit FF++ id; skipped"})
                continue
            items.append(Item(p, "video", 0, "original", p.stem, p.stem))
    else:
        found = sorted(d.name for d in (orig / "youtube").iterdir()) if (orig / "youtube").is_dir() else []
        msg = f"{yt}: no real videos for compression {compression}" + (f" (found: {', '.join(found)})" if found else "")
        warnings.append({"file": str(yt), "error": msg})
        log.warning(msg)
    if actors:
        act = orig / "actors" / compression / "videos"
        if act.is_dir():
            for p in _videos(act):
                m = _ACTOR_RE.match(p.stem)
                items.append(Item(p, "video", 0, "actors", p.stem, m.group(1) if m else p.stem))
        else:
            warnings.append({"file": str(act), "error": "actors videos asked for but not present"})
    for method in methods:
        d = manip / method / compression / "videos"
        if not d.is_dir():
            msg = f"{d}: method {method} not present for compression {compression}"
            warnings.append({"file": str(d), "error": msg})
            log.warning(msg)
            continue
        for p in _videos(d):
            m = _FAKE_RE.match(p.stem) or _DFD_FAKE_RE.match(p.stem)
            if not m:
                warnings.append({"file": str(p), "error": "name is not TARGET_SOURCE; skipped"})
                continue
            items.append(Item(p, "video", 1, method, p.stem, m.group(1), m.group(2)))
    if not items:
        raise SourceError(f"{root}: no videos found for compression {compression} and methods {', '.join(methods)}")
    return items


def load_split_files(folder: str | Path | None = None) -> dict[str, str]:
    """Map each id to its split from ``train.json``/``val.json``/``test.json``.

    ``None`` reads the official splits shipped with dftune (from the FaceForensics
    repository's ``dataset/splits/``). Errors name the file.
    """
    mapping: dict[str, str] = {}
    for split in ("train", "val", "test"):
        if folder is None:
            ref = resources.files("dftune.resources").joinpath("ffpp_splits", f"{split}.json")
            name, text = f"dftune/resources/ffpp_splits/{split}.json", ref.read_text(encoding="utf-8")
        else:
            path = Path(folder) / f"{split}.json"
            if not path.exists():
                raise SourceError(f"{path}: split file missing (a split folder holds train.json, val.json, test.json)")
            name, text = str(path), path.read_text(encoding="utf-8")
        try:
            pairs = json.loads(text)
            ids = [str(i) for pair in pairs for i in pair]
        except (json.JSONDecodeError, TypeError) as e:
            raise SourceError(f"{name}: not a JSON list of [TARGET, SOURCE] pairs ({e})") from None
        for i in ids:
            if mapping.get(i, split) != split:
                raise SourceError(f"{name}: id {i} is also in the {mapping[i]} split; splits must be disjoint")
            mapping[i] = split
    return mapping
