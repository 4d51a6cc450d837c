"""Checkpoints in other projects' formats, converted once into ordinary dftune model folders.

:func:`resolve` is what every command calls on a ``--model`` (``scoring.load_model``, train's starting model,
``averaging.merge``, ``export.run``): a source in a format listed in :data:`FORMATS` (a folder, or a hub id in the
Hugging Face cache) becomes its converted folder, made when missing and redone when the source's files change;
anything else passes through unchanged. Converted folders live in ``$DFTUNE_CACHE/converted`` (default
``~/.cache/dftune``), named ``<source name>-<signature of its files>``.

Formats: GenD (:mod:`dftune.model.gend`), timm Vision Transformers (:mod:`dftune.model.timm_vit`). Each module
gives ``NAME``, ``source_folder(source) -> Path | None`` (None: not its format) and ``convert(folder, out,
source)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _formats():
    from dftune.model import gend, timm_vit

    return (gend, timm_vit)


def read_config(folder: str | os.PathLike) -> dict | None:
    """A folder's ``config.json`` as a dict, or None (no file, unreadable, not an object)."""
    p = Path(folder) / "config.json"
    if not p.is_file():
        return None
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def cache_root() -> Path:
    return Path(os.environ.get("DFTUNE_CACHE") or Path.home() / ".cache" / "dftune") / "converted"


def signature(folder: Path, version: str) -> str:
    """What a converted folder was made from: the source's files (names, sizes, times, one level of
    subfolders) and the converter's ``version``."""
    h = hashlib.sha256(version.encode())
    files = [p for p in sorted(folder.iterdir()) if p.is_file()]
    files += [p for d in sorted(folder.iterdir()) if d.is_dir() for p in sorted(d.iterdir()) if p.is_file()]
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def source_format(source: str | os.PathLike):
    """``(format module, folder)`` of a source in one of the formats, else None."""
    for fmt in _formats():
        folder = fmt.source_folder(str(source))
        if folder is not None:
            return fmt, folder
    return None


def resolve(source: str | os.PathLike) -> str:
    """``source`` as dftune loads it: a converted folder for a source in another format (made now when missing or
    out of date), anything else unchanged."""
    found = source_format(source)
    if found is None:
        return str(source)
    fmt, folder = found
    name = Path(str(source).rstrip("/")).name or fmt.NAME
    out = cache_root() / f"{name}-{signature(folder, fmt.VERSION)}"
    if not (out / "config.json").is_file():
        log.warning("%s: a %s checkpoint; converting it to a dftune model folder in %s (once)", source, fmt.NAME,
                    out)
        fmt.convert(folder, out, str(source))
    return str(out)
