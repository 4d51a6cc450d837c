"""Split assignment that never lets an identity cross splits.

- official: FF++'s published pairs; the real video ``T`` and the fakes ``T_S`` / ``S_T``
  of every method go to their pair's split.
- random: identities connected by any fake (``T`` and ``S`` of ``T_S``) form groups;
  whole groups are shuffled with a seed and dealt out by the ratios.
- A layout that names its splits (folders source with train/val/test) is kept as given.
"""

from __future__ import annotations

import random
from collections import defaultdict

from dftune.sources import Item

SPLITS = ("train", "val", "test")


def assign_official(items: list[Item], id_split: dict[str, str]) -> tuple[list[Item], list[dict]]:
    """Set ``item.split`` from an id -> split map; returns (kept, excluded-with-reason)."""
    kept, excluded = [], []
    for it in items:
        if it.preset_split:
            it.split = it.preset_split
            kept.append(it)
            continue
        splits = {id_split.get(i) for i in it.identities}
        if None in splits:
            missing = [i for i in it.identities if i not in id_split]
            excluded.append({"file": str(it.path), "error": f"id {', '.join(missing)} is in no split file; excluded"})
        elif len(splits) > 1:
            excluded.append({"file": str(it.path),
                             "error": f"identities {it.target_id} and {it.source_id} are in different splits "
                                      f"({', '.join(sorted(splits))}); excluded so no identity crosses splits"})
        else:
            it.split = splits.pop()
            kept.append(it)
    return kept, excluded


def _groups(items: list[Item]) -> dict[str, list[Item]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for it in items:
        ids = it.identities or [it.key]
        for other in ids[1:]:
            parent[find(other)] = find(ids[0])
        find(ids[0])
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[find((it.identities or [it.key])[0])].append(it)
    return groups


def assign_random(items: list[Item], seed: int = 0, ratios=(0.72, 0.14, 0.14)) -> list[Item]:
    """Identity-grouped random split (FF++'s official proportions by default)."""
    preset = [it for it in items if it.preset_split]
    for it in preset:
        it.split = it.preset_split
    rest = [it for it in items if not it.preset_split]
    groups = _groups(rest)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    total = sum(ratios)
    n = len(keys)
    cut1 = round(n * ratios[0] / total)
    cut2 = cut1 + round(n * ratios[1] / total)
    if n >= 3:  # every split gets at least one group
        cut1 = min(max(cut1, 1), n - 2)
        cut2 = min(max(cut2, cut1 + 1), n - 1)
    for i, k in enumerate(keys):
        split = "train" if i < cut1 else "val" if i < cut2 else "test"
        for it in groups[k]:
            it.split = split
    return items
