"""Split assignment that never lets an identity cross splits.

- official: FF++'s published pairs; the real video ``T`` and the fakes ``T_S`` / ``S_T``
  of every method go to their pair's split.
- random: identities connected by any fake (``T`` and ``S`` of ``T_S``) form groups;
  whole groups are shuffled with a seed and dealt out by the ratios.
- actors (FF++'s DeepFakeDetection and its ``actors`` reals, which no official split
  covers): the *actors* are shuffled with a seed and dealt out by the ratios; each real
  goes to its actor's split, a fake ``T_S`` to the split of ``T`` and ``S`` when they share
  one, and is dropped (with a reason) when they do not. Grouping these by fake, as random
  does, would join all 28 actors into one group and put every such video in one split.
- A layout that names its splits (folders source with train/val/test) is kept as given.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from dftune.sources import Item, SourceError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
RATIOS = (0.72, 0.14, 0.14)  # FF++'s official 720/140/140
# FF++ methods with no official split: split by actor (see assign_actors)
ACTOR_METHODS = ("actors", "DeepFakeDetection")


def assign_official(items: list[Item], id_split: dict[str, str]) -> tuple[list[Item], list[dict]]:
    """Set ``item.split`` from an id -> split map; returns (kept, excluded-with-reason).

    Items with a ``preset_split`` keep it. A DeepFakeDetection fake that comes without one,
    next to actor videos that have theirs, is one :func:`assign_actors` dropped because its
    two actors are in different splits; it is excluded with that reason.
    """
    actor_split = {i: it.preset_split for it in items if it.method in ACTOR_METHODS and it.preset_split
                   for i in it.identities}
    kept, excluded = [], []
    for it in items:
        if it.preset_split:
            it.split = it.preset_split
            kept.append(it)
            continue
        if it.method in ACTOR_METHODS and actor_split and not any(i in id_split for i in it.identities):
            where = ", ".join(f"{i} in {actor_split.get(i, 'a split with no kept video')}" for i in it.identities)
            excluded.append({"file": str(it.path), "error": f"{_straddle_reason(it)} ({where}); "
                                                            f"excluded so no actor crosses splits"})
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


def _straddle_reason(it: Item) -> str:
    return f"{it.method} fake of actors {it.target_id} and {it.source_id}: the actors are in different splits"


def _deal(keys, seed: int, ratios) -> dict[str, str]:
    """Shuffle ``keys`` with ``seed`` and deal them out as train/val/test by ``ratios``."""
    keys = sorted(keys)
    random.Random(seed).shuffle(keys)
    total = sum(ratios)
    n = len(keys)
    cut1 = round(n * ratios[0] / total)
    cut2 = cut1 + round(n * ratios[1] / total)
    if n >= 3:  # every split gets at least one key
        cut1 = min(max(cut1, 1), n - 2)
        cut2 = min(max(cut2, cut1 + 1), n - 1)
    return {k: "train" if i < cut1 else "val" if i < cut2 else "test" for i, k in enumerate(keys)}


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


@dataclass
class ActorSplit:
    """What :func:`assign_actors` did: kept items (split set), dropped fakes with reasons, counts."""

    kept: list[Item]
    excluded: list[dict]
    seed: int
    ratios: tuple
    actors: dict[str, int] = field(default_factory=dict)  # split -> actors
    reals: dict[str, int] = field(default_factory=dict)  # split -> real videos
    fakes: dict[str, int] = field(default_factory=dict)  # split -> fake videos

    def counts(self) -> dict:
        return {"seed": self.seed, "ratios": list(self.ratios), "actors": self.actors, "reals": self.reals,
                "fakes": self.fakes, "fakes_dropped": len(self.excluded)}

    def message(self) -> str:
        def per(d):
            return ", ".join(f"{s} {d.get(s, 0)}" for s in SPLITS)

        return (f"DeepFakeDetection/actors videos split by actor (seed {self.seed}, ratios {list(self.ratios)}): "
                f"actors {per(self.actors)}; real videos {per(self.reals)}; fake videos {per(self.fakes)}; "
                f"{len(self.excluded)} fakes dropped because their two actors are in different splits")


def assign_actors(items: list[Item], seed: int = 0, ratios=RATIOS) -> ActorSplit:
    """Split by actor (the ``target_id``/``source_id`` the FF++ indexer parsed from the names).

    Actors are dealt out first; a real goes to its actor's split, a fake to the split its two
    actors share; a fake whose actors are in different splits is dropped (``split`` left "")
    and listed in ``excluded`` with the reason.
    """
    actor_split = _deal({i for it in items for i in (it.identities or [it.key])}, seed, ratios)
    kept, excluded = [], []
    for it in items:
        splits = {actor_split[i] for i in (it.identities or [it.key])}
        if len(splits) == 1:
            it.split = splits.pop()
            kept.append(it)
        else:
            it.split = ""
            where = ", ".join(f"{i} in {actor_split[i]}" for i in it.identities)
            excluded.append({"file": str(it.path), "error": f"{_straddle_reason(it)} ({where}); "
                                                            f"excluded so no actor crosses splits"})
    result = ActorSplit(kept, excluded, seed, tuple(ratios),
                        actors=dict(Counter(actor_split.values())),
                        reals=dict(Counter(it.split for it in kept if it.label == 0)),
                        fakes=dict(Counter(it.split for it in kept if it.label == 1)))
    log.warning("%s", result.message())
    return result


def assign_random(items: list[Item], seed: int = 0, ratios=RATIOS) -> list[Item]:
    """Identity-grouped random split (FF++'s official proportions by default).

    DeepFakeDetection/actors items are split by actor (:func:`assign_actors`); the fakes it
    drops are left out of the returned list (their ``split`` stays "").
    """
    preset = [it for it in items if it.preset_split]
    for it in preset:
        it.split = it.preset_split
    rest = [it for it in items if not it.preset_split]
    actor_items = [it for it in rest if it.method in ACTOR_METHODS]
    groups = _groups([it for it in rest if it.method not in ACTOR_METHODS])
    for k, split in _deal(groups, seed, ratios).items():
        for it in groups[k]:
            it.split = split
    if actor_items:
        assign_actors(actor_items, seed, ratios)
    return [it for it in items if it.split]


def generator_names(items: list[Item]) -> list[str]:
    """The generators (fake methods) the items name, sorted."""
    return sorted({it.method for it in items if it.label == 1})


def assign_generators(items: list[Item], holdout=(), by_generator: bool = False, seed: int = 0,
                      ratios=RATIOS) -> tuple[list[Item], list[dict], dict]:
    """Generators kept out of training, on top of the identity-safe split the items already have.

    ``holdout``: these generators' fakes all go to test. ``by_generator``: every other generator is dealt
    whole to train/val/test (``seed``, ``ratios``), its fakes following it. Reals keep their split. A moved
    fake whose identity (or group) another kept video holds in another split is dropped with the reason,
    so no identity crosses splits. Returns ``(kept, excluded, placement)``, placement = ``{"held_out":
    [...], "train": [...], "val": [...], "test": [...], "fakes_dropped": n}`` (empty when nothing asked)."""
    holdout = [g for g in dict.fromkeys(holdout) if g]
    if not holdout and not by_generator:
        return items, [], {}
    have = generator_names(items)
    unknown = [g for g in holdout if g not in have]
    if unknown:
        raise SourceError(f"--holdout-generators {','.join(unknown)}: not in the data; its generators are "
                          f"{', '.join(have) or 'none (no fake has a method)'}")
    gen_split = _deal([g for g in have if g not in holdout], seed, ratios) if by_generator else {}
    gen_split.update({g: "test" for g in holdout})
    moved = [it for it in items if it.label == 1 and it.method in gen_split]
    moving = {id(it) for it in moved}
    held: dict[str, set] = defaultdict(set)
    for it in items:
        if id(it) not in moving:
            for i in it.identities or [it.key]:
                held[i].add(it.split)
    excluded, dropped = [], set()
    for it in moved:
        target = gen_split[it.method]
        clash = [f"{i} in {'/'.join(sorted(held[i]))}" for i in (it.identities or [it.key])
                 if held.get(i, {target}) != {target}]
        if clash:
            excluded.append({"file": str(it.path), "error": f"generator {it.method} is dealt to {target}, but identity "
                                                            f"{', '.join(clash)}; excluded so no identity crosses "
                                                            f"splits"})
            dropped.add(id(it))
        else:
            it.split = it.preset_split = target
    kept = [it for it in items if id(it) not in dropped]
    placement = {"held_out": holdout,  # each split's generators, as kept
                 **{s: sorted({it.method for it in kept if it.label == 1 and it.split == s}) for s in SPLITS},
                 "by_generator": by_generator, "seed": seed if by_generator else None, "fakes_dropped": len(dropped)}
    log.warning("generators: %s; %d fakes dropped whose identity is in another split",
                "; ".join(f"{s} {', '.join(placement[s]) or '-'}" for s in SPLITS), len(dropped))
    return kept, excluded, placement
