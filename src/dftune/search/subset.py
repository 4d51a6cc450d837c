"""Train on a fraction of the videos: a prepared folder whose manifest keeps part of the train split."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from dftune.atomic import write_text


def subset_data(data_dir: str | os.PathLike, out_dir: str | os.PathLike, fraction: float, seed: int) -> Path:
    """A prepared folder whose manifest keeps ``fraction`` of the train videos (per method, whole videos)
    and every val/test row; its paths point at the original crops (relative to the new folder)."""
    from dftune.prepared import manifest_file, read_manifest, write_manifest

    src = manifest_file(data_dir).parent.resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(src)
    by_method: dict[str, list[str]] = {}
    for r in rows:
        if r.split == "train":
            by_method.setdefault(r.method, [])
            if r.video not in by_method[r.method]:
                by_method[r.method].append(r.video)
    rng = random.Random(seed)
    keep: set[str] = set()
    chosen = {}
    for method in sorted(by_method):
        vids = sorted(by_method[method])
        k = max(1, round(fraction * len(vids)))
        pick = rng.sample(vids, k)
        keep.update(pick)
        chosen[method] = {"kept": k, "of": len(vids)}
    new_rows = []
    rel = Path(os.path.relpath(src, out.resolve()))
    for r in rows:
        if r.split == "train" and r.video not in keep:
            continue
        r.path = (rel / r.path).as_posix()
        new_rows.append(r)
    write_manifest(out / "manifest.csv", new_rows)
    if (src / "settings.json").exists():
        shutil.copyfile(src / "settings.json", out / "settings.json")
    write_text(out / "subset.json", json.dumps({"source": str(src), "fraction": fraction, "seed": seed,
                                                "train_videos": chosen}, indent=1) + "\n")
    return out
