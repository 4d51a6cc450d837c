"""Check sets: small labelled sets from outside the training data, to select on.

A choice made on the training data's own val split (which epoch becomes ``best/``, the WiSE-FT alpha, the
threshold, what ``tune`` optimises) picks what fits that data; a hidden test set of other generators
rewards what a model keeps. ``--check PATH`` names a prepared folder whose ``val`` and ``test`` splits
(or ``PATH:SPLIT[+SPLIT]``) are such a set. Several check sets are averaged (each reported too).

A check set that shares an identity or a video with the training data would measure memory, not
transfer: it is refused, naming it and what it shares.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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

    @property
    def n_real(self) -> int:
        return sum(1 for r in self.rows if r.label == 0)

    @property
    def n_fake(self) -> int:
        return sum(1 for r in self.rows if r.label == 1)


def parse_spec(spec: str) -> tuple[Path, tuple[str, ...]]:
    """``PATH`` or ``PATH:SPLIT[+SPLIT]`` -> (folder, splits)."""
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and tail and all(s in SPLITS for s in tail.split("+")) and head:
        return Path(head), tuple(tail.split("+"))
    return Path(text), DEFAULT_SPLITS


def load(spec: str | os.PathLike) -> CheckSet:
    """The rows of a check set; refused when it is empty or holds one class (its AUC and F1 say nothing)."""
    folder, splits = parse_spec(str(spec))
    try:
        folder = manifest_file(folder).parent
    except ManifestError as e:
        raise CheckError(f"--check {spec}: {e}") from None
    rows = read_manifest(folder, splits)
    cs = CheckSet(str(spec), folder, splits, rows)
    if not rows:
        raise CheckError(f"--check {spec}: no {'/'.join(splits)} rows in {folder / 'manifest.csv'}")
    if cs.n_real == 0 or cs.n_fake == 0:
        raise CheckError(f"--check {spec}: one class only ({cs.n_real} real, {cs.n_fake} fake crops in "
                         f"{'/'.join(splits)}); a check set needs both to rank models")
    return cs


def _ids(rows: Sequence[Row]) -> set[str]:
    return {i for r in rows for i in (r.target_id, r.source_id) if i}


def refuse_leaks(checks: Sequence[CheckSet], train_rows: Sequence[Row], data: str | os.PathLike) -> None:
    """Refuse a check set sharing an identity, a video or a crop file with the training data ``train_rows``
    (the rows a run trains or validates on), naming the check set and the first shared items."""
    train_ids, train_videos = _ids(train_rows), {r.video for r in train_rows}
    data_dir = Path(data).resolve()
    train_files = {(data_dir / r.path).resolve() for r in train_rows}
    for cs in checks:
        shared_ids = sorted(_ids(cs.rows) & train_ids)
        shared_videos = sorted({r.video for r in cs.rows} & train_videos)
        shared_files = [] if shared_videos else sorted(
            str(p) for p in {(cs.folder / r.path).resolve() for r in cs.rows} & train_files)
        what = []
        if shared_ids:
            what.append(f"{len(shared_ids)} identities ({', '.join(shared_ids[:5])})")
        if shared_videos:
            what.append(f"{len(shared_videos)} videos ({', '.join(shared_videos[:3])})")
        if shared_files:
            what.append(f"{len(shared_files)} crop files ({', '.join(shared_files[:2])})")
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
