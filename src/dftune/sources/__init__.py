"""Where inputs come from. Each source indexes a root into :class:`Item`\\ s;
``REGISTRY`` maps ``--source`` names to indexers. A new source is one module plus one line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class SourceError(ValueError):
    """The input itself is wrong (missing root, wrong layout, missing split file)."""


def root_folder(root) -> Path:
    """``root`` as a Path, or a :class:`SourceError` naming it when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    return root


@dataclass
class Item:
    """One input video or image, before face extraction."""

    path: Path
    kind: str  # "video" or "image"
    label: int  # 0 real, 1 fake
    method: str
    video_id: str
    target_id: str = ""
    source_id: str = ""
    split: str = ""  # filled by the split step; "" = not assigned
    preset_split: str = ""  # split the layout itself gives (folders source with train/val/test)

    @property
    def key(self) -> str:
        return f"{self.method}/{self.video_id}"

    @property
    def identities(self) -> list[str]:
        return [i for i in (self.target_id, self.source_id) if i]


def get_indexer(name: str):
    from dftune.sources import celebdf, deepfakebench, dfdc, ffpp, folders, frames, hf, listfile

    registry = {"ffpp": ffpp.index, "folders": folders.index,
                "celebdf": celebdf.index,
                "dfdc": dfdc.index,
                "dfdcp": dfdc.index_preview,
                "frames": frames.index,
                "list": listfile.index,
                "deepfakebench": deepfakebench.index,
                "hf": hf.index}
    try:
        return registry[name]
    except KeyError:
        raise SourceError(f"unknown source {name!r}; choose one of {', '.join(registry)}") from None


SOURCES = ("ffpp", "folders", "celebdf", "dfdc", "dfdcp", "frames", "list", "deepfakebench", "hf")
