"""Several prepared folders as one: a mix is a folder of links and one manifest, never a copy.

::

    MIX/
      data/<name>/ -> A/         a link to each prepared folder (its crops stay where they are)
      manifest.csv               every row of A, B, ...: path data/<name>/<crop>, video <name>/<video>,
                                 dataset <name> (so each dataset's rows can be reported on their own)
      settings.json              the first folder's crop settings, and "mix": the folders, their settings,
                                 the rows kept and dropped
      summary.json               crops per split and dataset

The same folder given twice is refused. Identities are compared across the folders by name, as
within one dataset: a train row whose identity is a val or test identity of another folder is
dropped and counted (FF++ prepared twice, DeepfakeBench's and dftune's, name their identities alike;
so do Celeb-DF v1 and v2). A mix takes part in ``train``, ``tune``, ``synth`` and ``evaluate`` as any
prepared folder does.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from dftune.atomic import read_json, write_json
from dftune.prepared import ManifestError, Row, counts, manifest_file, read_manifest, write_manifest

log = logging.getLogger(__name__)

LINKS = "data"


class MixError(ValueError):
    """Folders that cannot be mixed; the message names them."""


def _names(folders: Sequence[Path]) -> list[str]:
    out, seen = [], Counter()
    for f in folders:
        base = f.name or "data"
        seen[base] += 1
        out.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return out


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(target, link.parent)
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.path.realpath(link)) == target:
            return
        raise MixError(f"{link}: already exists and is not a link to {target}; use another MIX folder")
    os.symlink(rel, link, target_is_directory=True)


def cross_leaks(rows_by: dict[str, list[Row]]) -> set[tuple[str, int]]:
    """``(dataset, row number)`` of train rows whose identity is a val/test identity of another dataset."""
    held: dict[str, set[str]] = defaultdict(set)  # identity -> datasets holding it in val/test
    for name, rows in rows_by.items():
        for r in rows:
            if r.split != "train":
                for i in (r.target_id, r.source_id):
                    if i:
                        held[i].add(name)
    out = set()
    for name, rows in rows_by.items():
        for n, r in enumerate(rows):
            if r.split == "train" and any(held.get(i, set()) - {name} for i in (r.target_id, r.source_id) if i):
                out.add((name, n))
    return out


def framing(settings: dict) -> str:
    """How a prepared folder's crops were framed, in words: whole frames (no detector) or face crops (detector,
    margin)."""
    if settings.get("no_detect") or settings.get("detector") == "none":
        return "frames used whole (no detector, --no-detect)"
    return f"face crops ({settings.get('detector') or 'dlib'}, margin {float(settings.get('margin') or 1.3):g})"


def leaves(folder: Path, _seen: frozenset = frozenset()) -> list[Path]:
    """The prepared folders a folder's rows come from (resolved): itself, or, for a mix, each of its folders'
    (a mix of mixes down to the folders prepare made)."""
    folder = Path(folder).resolve()
    try:
        settings = read_json(folder / "settings.json") if (folder / "settings.json").exists() else {}
    except (OSError, ValueError):
        settings = {}
    inner = ((settings or {}).get("mix") or {}).get("folders") or {}
    if not inner or folder in _seen:
        return [folder]
    return [leaf for f in inner.values() for leaf in leaves(Path(f), _seen | {folder})]


def _refuse_inside(paths: Sequence[Path]) -> None:
    """Refuse a folder given both on its own and inside a mix given too (or inside two mixes): its rows would be
    trained and validated twice."""
    where: dict[Path, list[Path]] = defaultdict(list)  # prepared folder -> the folders given that hold it
    for p in paths:
        for leaf in leaves(p):
            where[leaf].append(p)
    for leaf, given in where.items():
        if len(given) > 1:
            mixes = [g for g in given if g != leaf]
            alone = " on its own and" if leaf in given else ""
            raise MixError(f"{leaf} is given twice:{alone} inside the mix {' and the mix '.join(map(str, mixes))}; "
                           f"its rows would be trained and validated twice. Give each prepared folder once (drop "
                           f"--data {leaf}, or give the mix's folders one by one)")


def write_mix(folders: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Write the mix of ``folders`` into ``out``; returns its summary (also ``out/summary.json``)."""
    out = Path(out)
    if len(folders) < 2:
        raise MixError("a mix needs at least two prepared folders")
    paths = []
    for f in folders:
        try:
            paths.append(manifest_file(f).parent.resolve())
        except ManifestError as e:
            raise MixError(str(e)) from None
    dup = [p for p, c in Counter(paths).items() if c > 1]
    if dup:
        raise MixError(f"{dup[0]} is given twice; each prepared folder once")
    _refuse_inside(paths)
    if out.resolve() in paths:
        raise MixError(f"{out} is one of the folders to mix; choose another MIX folder")
    names = _names(paths)
    rows_by = {n: read_manifest(p) for n, p in zip(names, paths, strict=True)}
    leaks = cross_leaks(rows_by)
    settings = {n: read_json(p / "settings.json") if (p / "settings.json").exists() else {}
                for n, p in zip(names, paths, strict=True)}
    sizes = {n: s.get("size") for n, s in settings.items() if s.get("size")}
    if len(set(sizes.values())) > 1:
        log.warning("%s: the folders' crops have different sizes (%s); each is resized by the model's processor",
                    out, ", ".join(f"{n} {v}" for n, v in sizes.items()))
    framings = {n: framing(s) for n, s in settings.items() if s}
    if len(set(framings.values())) > 1:
        log.warning("%s: the folders were framed differently (%s): a model trained on the mix learns from two kinds "
                    "of input, and predict frames files one way only (the model's crop settings: the first "
                    "folder's); prepare them alike (the same --detector and --margin, or --no-detect for both)",
                    out, "; ".join(f"{n}: {v}" for n, v in framings.items()))
    mixed: list[Row] = []
    for name, p in zip(names, paths, strict=True):
        _link(p, out / LINKS / name)
        for n, r in enumerate(rows_by[name]):
            if (name, n) in leaks:
                continue
            ds = f"{name}/{r.dataset}" if r.dataset else name
            mixed.append(replace(r, path=f"{LINKS}/{name}/{r.path}", video=f"{name}/{r.video}", dataset=ds))
    dropped = Counter(n for n, _ in leaks)
    mix = {"folders": {n: str(p) for n, p in zip(names, paths, strict=True)}, "settings": settings,
           "rows": {n: len(rows_by[n]) - dropped.get(n, 0) for n in names},
           "dropped_train_rows_sharing_an_identity": dict(dropped)}
    first = next((s for s in settings.values() if s), {})
    write_manifest(out / "manifest.csv", mixed)
    write_json(out / "settings.json", {**first, "mix": mix})
    c = counts(mixed)
    summary = {"complete": True, "out": str(out), "mix": mix, "crops": {"total": len(mixed), "by_split": c},
               "warnings": ([{"file": str(out), "error": f"{sum(dropped.values())} train rows share an identity "
                              f"with another folder's val/test rows; dropped so no identity crosses splits"}]
                            if dropped else [])}
    write_json(out / "summary.json", summary)
    if dropped:
        log.warning("%s", summary["warnings"][0]["error"])
    return summary
