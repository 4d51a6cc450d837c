"""Inputs and the prediction CSV: what files are images or videos, collecting folders, one row per file."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_log = logging.getLogger("dftune.portable")


VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".3gp", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
              ".mts", ".m2ts")


IMAGE_EXTS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif")


NAME_STYLES = ("relative", "name", "stem", "path")


def kind_of(path) -> str:
    """``image``, ``video`` or ``unknown``, from the extension."""
    ext = os.path.splitext(str(path))[1].lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else "unknown"


def sniff_kind(path) -> str:
    """``image``, ``video`` or ``unknown``, from the content: Pillow opens it (header only), else
    PyAV finds a video stream in it."""
    from PIL import Image

    try:
        with Image.open(path):
            return "image"
    except Image.DecompressionBombError:  # too large for Pillow's guard: still an image (load_image copes)
        return "image"
    except Exception:
        pass
    try:
        import av

        with av.open(os.fspath(path)) as c:
            return "video" if c.streams.video else "unknown"
    except Exception:
        return "unknown"


def kind_of_file(path) -> str:
    """:func:`kind_of`, and for an unknown extension the content's kind (:func:`sniff_kind`)."""
    k = kind_of(path)
    return sniff_kind(path) if k == "unknown" and os.path.isfile(path) else k


def not_a_file(path) -> str:
    """Why ``path`` cannot be read as a file, in words; '' for a regular file (or a link to one) and for a path
    that does not exist at all (the reader says so). Checked without opening it: a named pipe would wait."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a symbolic link to {os.readlink(path)!r}, which does not exist"
        return ""
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop (its links never reach a file)"
        return f"cannot be read: {e.strerror}"
    if stat.S_ISREG(st.st_mode):
        return ""
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    if stat.S_ISFIFO(st.st_mode):
        return "a named pipe (FIFO), not a file: reading it would wait for a writer"
    return "not a regular file (a socket or a device)"


@dataclass
class InputFile:
    path: object  # pathlib.Path
    name: str  # what the CSV's filename column shows
    kind: str  # "image" / "video" / "unknown"


@dataclass
class Inputs:
    """What a list of inputs holds: the files to score, and what a folder had that is neither."""

    files: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # found in folders: not an image or video


@dataclass
class FileResult:
    name: str
    path: str
    kind: str
    prob_fake: float = float("nan")
    label: int = 0
    faces_found: int = 0
    frames: int = 0
    framing: str = ""
    error: str = ""
    per_model: list = field(default_factory=list)


def collect_inputs(inputs, name_style: str = "relative") -> list:
    """The files to score (see :func:`collect`)."""
    return collect(inputs, name_style).files


def collect(inputs, name_style: str = "relative") -> Inputs:
    """Files as given and folders searched recursively, in a stable order.

    A file named on the command line always gets a row (a missing or unsupported one, a row
    with its error); a file found in a folder that is not an image or video is listed in
    ``skipped``. ``name_style``: ``relative`` (to the folder given, with the folder's name in
    front when several folders are given; names that still collide show their path as given, so
    two ``a.jpg`` never share a row name), ``name``, ``stem``, ``path`` (as given).
    """
    if name_style not in NAME_STYLES:
        raise ValueError(f"unknown filename style {name_style!r}; use {', '.join(NAME_STYLES)}")
    from pathlib import Path

    out = Inputs()
    seen: set = set()
    several = sum(1 for i in inputs if os.path.isdir(i)) > 1
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            entries = sorted((f for f in p.rglob("*")
                              if not any(part.startswith(".") for part in f.relative_to(p).parts)),
                             key=lambda f: f.relative_to(p).as_posix())
            # a regular file (or a link to one); anything else that is not a folder searched (a dangling link, a
            # link loop, a named pipe, a folder named like a file) is never passed over in silence: a row with its
            # error when its name says image or video, else in `skipped`
            found = [f for f in entries if f.is_file()]
            odd = [f for f in entries if not f.is_file() and not (f.is_dir() and kind_of(f) == "unknown")]
            kinds = {f: kind_of_file(f) for f in found}  # an unknown extension: what the content is
            kinds.update({f: kind_of(f) for f in odd if not f.is_dir() and kind_of(f) != "unknown"})
            files = [f for f in entries if kinds.get(f, "unknown") != "unknown"]
            out.skipped += [str(f) if f in kinds else f"{f} ({not_a_file(f)})" for f in entries
                            if (f in kinds or f in odd) and kinds.get(f, "unknown") == "unknown"]
            prefix = (p.resolve().name + "/") if several else ""
            pairs = [(f, prefix + f.relative_to(p).as_posix()) for f in files]
            if not files:
                _log.warning("%s: no image or video files found in this folder", p)
        else:
            pairs = [(p, p.name)]  # a missing or unsupported file still gets a row with its error
            kinds = {p: kind_of_file(p)}
        for f, rel in pairs:
            key = os.path.abspath(f)
            if key in seen:
                continue
            seen.add(key)
            name = {"relative": rel, "name": f.name, "stem": f.stem, "path": str(f)}[name_style]
            out.files.append(InputFile(f, name, kinds[f]))
    names = [i.name for i in out.files]
    if name_style == "relative" and len(set(names)) != len(names):  # same name, different places: say where
        dup = {n for n in names if names.count(n) > 1}
        for f in out.files:
            if f.name in dup:
                f.name = str(f.path)
        names = [i.name for i in out.files]
    if len(set(names)) != len(names):
        _log.warning("some files share the same name in the CSV (filename style %r); use --filename-style relative "
                    "or path to tell them apart", name_style)
    return out


@dataclass
class CsvFormat:
    filename_column: str = "filename"
    label_column: str = "label"
    prob_column: str = "prob_fake"
    label_words: tuple = ("0", "1")  # (real, fake)
    extra_columns: bool = True  # faces_found, frames, framing, error (and per-model probabilities)
    per_model: bool = False


def to_csv(results, fmt: CsvFormat, model_names: Sequence[str] = ()) -> str:
    """The prediction CSV: one row per file, in the given order."""
    import csv
    import io

    buf = io.StringIO()
    cols = [fmt.filename_column, fmt.label_column]
    if fmt.prob_column:
        cols.append(fmt.prob_column)
    if fmt.extra_columns:
        cols += ["faces_found", "frames", "framing", "error"]
        if fmt.per_model and len(model_names) > 1:
            cols += [f"prob_fake_{n}" for n in model_names]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in results:
        row = [r.name, fmt.label_words[r.label]]
        if fmt.prob_column:
            # a file with no score (an error row) gets its label's probability: never a label beside an empty prob
            row.append(f"{float(r.label):.6f}" if np.isnan(r.prob_fake) else f"{r.prob_fake:.6f}")
        if fmt.extra_columns:
            row += [r.faces_found, r.frames, r.framing, r.error]
            if fmt.per_model and len(model_names) > 1:
                row += [f"{p:.6f}" for p in r.per_model] if r.per_model else [""] * len(model_names)
        w.writerow(row)
    return buf.getvalue()
