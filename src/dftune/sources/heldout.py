"""Helpers for sources that ship their own test set (Celeb-DF, DFDC, WildDeepfake, list files).

Such a source sets ``preset_split`` on what its layout or official list places ("test",
sometimes "val" or "train") and leaves ``""`` on the rest; :func:`split_around_test` then
fills in the rest without letting an identity cross splits:

- an unplaced video that shares an identity with the official test set is dropped and
  counted (training on a test identity inflates test scores);
- an identity already placed by the layout (train or val) pulls its unplaced videos along;
- the remaining identities are shuffled with a seed and dealt out by the ratios, to
  train/val (to train only when the layout has its own val set; to train/val/test, with a
  warning, when there is no official test set at all);
- a video whose identities land in different splits (a fake of A and B) is dropped and
  counted, as :func:`dftune.sources.splits.assign_actors` does for FF++'s actors.

Videos with no identity (``target_id`` and ``source_id`` empty) count as their own identity,
or as the ``group`` a source gives them (frames of one source video stay together).
Every index function returns items with ``preset_split`` set on all of them, so the prepare
stage keeps them as given.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from dftune.sources import Item, SourceError
from dftune.sources.splits import RATIOS, SPLITS, _deal

log = logging.getLogger(__name__)

SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test", "eval": "test"}


def natural_key(name: str) -> list:
    """Sort key with numbers compared as numbers: ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def pick_methods(methods: Iterable[str] | None, available: Iterable[str], source: str) -> set[str]:
    """The fake methods to keep. ``None`` or FF++'s default list (prepare's ``--methods``
    default, which names no method of this source) means all; other names must exist."""
    from dftune.sources.ffpp import DEFAULT_METHODS

    available = set(available)
    if not methods or set(methods) == set(DEFAULT_METHODS):
        return available
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise SourceError(f"--methods {' '.join(unknown)}: not a method of the {source} source "
                          f"(it has: {', '.join(sorted(available)) or 'none'})")
    return set(methods)


def _deal_two(keys, seed: int, ratios, splits=("train", "val")) -> dict[str, str]:
    """Shuffle ``keys`` with ``seed`` and deal them to two splits by the first two ``ratios``."""
    keys = sorted(keys)
    random.Random(seed).shuffle(keys)
    a, b = float(ratios[0]), float(ratios[1])
    n = len(keys)
    cut = round(n * a / (a + b)) if a + b > 0 else n
    if n >= 2 and a > 0 and b > 0:  # both get at least one key
        cut = min(max(cut, 1), n - 1)
    return {k: splits[0] if i < cut else splits[1] for i, k in enumerate(keys)}


def split_around_test(items: list[Item], seed: int = 0, ratios=RATIOS, warnings: list | None = None,
                      source: str = "", test_name: str = "the official test set",
                      group: Callable[[Item], str] | None = None) -> list[Item]:
    """Place every item with ``preset_split == ""`` (see the module's docstring); return the
    kept items, each with ``preset_split`` set. Drops are reported in ``warnings``."""
    warnings = warnings if warnings is not None else []

    def ids(it: Item) -> list[str]:
        return it.identities or [group(it) if group else it.key]

    placed = [it for it in items if it.preset_split]
    free = [it for it in items if not it.preset_split]
    # a train/val video the layout or list placed itself, sharing an identity with a test video: dropped too
    test_ids = {i for it in placed if it.preset_split == "test" for i in ids(it)}
    leaked = [it for it in placed if it.preset_split != "test" and any(i in test_ids for i in ids(it))]
    in_test = [{"file": str(it.path), "error": f"placed in {it.preset_split}, but identity "
                f"{', '.join(i for i in ids(it) if i in test_ids)} is in {test_name}; excluded so no identity "
                f"crosses splits"} for it in leaked]
    if leaked:
        drop = {id(it) for it in leaked}
        placed = [it for it in placed if id(it) not in drop]
        log.warning("%s: %d train/val videos share an identity with %s and were dropped", source, len(leaked),
                    test_name)
    if not free:
        if leaked:
            warnings.append({"file": source, "error": f"{source}: dropped {len(leaked)} train/val videos that share "
                             f"an identity with {test_name}", "dropped": in_test[:1000],
                             "split_counts": {"videos": dict(Counter(it.preset_split for it in placed)),
                                              "dropped_identity_in_test": len(leaked)}})
        return placed
    held: dict[str, set] = defaultdict(set)
    for it in placed:
        for i in ids(it):
            held[i].add(it.preset_split)
    has = {it.preset_split for it in placed}
    if "test" not in has:
        targets = SPLITS
        msg = (f"{source}: no official test set found; {len(free)} videos dealt to train/val/test by identity "
               f"(seed {seed}, ratios {list(ratios)}): these scores are not comparable with published ones")
        warnings.append({"file": source, "error": msg})
        log.warning("%s", msg)
    elif "val" in has:
        targets = ("train",)
    else:
        targets = ("train", "val")

    straddle, kept = [], []
    remaining = []
    for it in free:
        shared = [i for i in ids(it) if "test" in held.get(i, ())]
        if shared:
            in_test.append({"file": str(it.path), "error": f"identity {', '.join(shared)} is in {test_name}; "
                                                           f"excluded so no identity crosses splits"})
        else:
            remaining.append(it)
    free_ids = {i for it in remaining for i in ids(it) if i not in held}
    if targets == SPLITS:
        dealt = _deal(free_ids, seed, ratios)
    elif len(targets) == 2:
        dealt = _deal_two(free_ids, seed, ratios)
    else:
        dealt = {i: "train" for i in free_ids}
    id_split = dict(dealt)
    for i, s in held.items():
        if len(s) == 1:
            id_split[i] = next(iter(s))
    for it in remaining:
        splits = {id_split.get(i) for i in ids(it)}
        if len(splits) == 1 and None not in splits:
            it.preset_split = splits.pop()
            kept.append(it)
        else:
            where = ", ".join(f"{i} in {id_split.get(i, 'several splits')}" for i in ids(it))
            straddle.append({"file": str(it.path), "error": f"identities in different splits ({where}); "
                                                            f"excluded so no identity crosses splits"})
    counts = {"seed": seed, "ratios": list(ratios),
              "identities_dealt": dict(Counter(dealt.values())),
              "videos": dict(Counter(it.preset_split for it in placed + kept)),
              "dropped_identity_in_test": len(in_test), "dropped_identities_straddle": len(straddle)}
    text = (f"{source}: {len(placed)} videos placed by the layout/official list, {len(kept)} dealt to "
            f"{'/'.join(targets)} by identity (seed {seed}); dropped {len(in_test)} that share an identity with "
            f"{test_name} and {len(straddle)} whose identities fell in different splits")
    log.info("%s", text)
    entry = {"file": source, "error": text, "split_counts": counts}
    if in_test or straddle:
        entry["dropped"] = (in_test + straddle)[:1000]
    warnings.append(entry)
    return placed + kept


def find_files(root: Path, name: str, depth: int = 2) -> list[Path]:
    """``name`` in ``root`` and up to ``depth`` folder levels below it, sorted."""
    found = []
    for d in range(depth + 1):
        found.extend(root.glob("/".join(["*"] * d + [name])))
    return sorted(p for p in found if p.is_file())


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read ({e})") from None


def label_word(value, where: str) -> int:
    """0/1 or a real/fake word (``REAL``, ``fake``, ``deepfake``, ``original`` ...) -> 0 real, 1 fake."""
    from dftune.portable import label_from_word

    label = label_from_word(value)
    if label is not None:
        return label
    raise SourceError(f"{where}: label {value!r} is neither 0/1 nor a real/fake word")
