"""Stage ``merge``: weight averaging of model folders (WiSE-FT, uniform and greedy soups).

The averaging itself (loading, label alignment, the weighted mean, the folder written, ``--alpha auto`` on check
sets) is :mod:`dftune.averaging`, which ``train --wise`` calls too; this stage is the command's recipe: ``run`` (=
:func:`dftune.averaging.merge`) and the greedy soup, models sorted by their val metric, each added to the soup
only if the soup's val metric does not drop.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dftune.averaging import (  # noqa: F401  (the stage's names: merge's options and errors)
    ALPHA_GRID,
    DTYPES,
    MergeError,
    choose_alpha,
    crop_of,
    load_for_merge,
    refuse_overwriting_an_input,
    save_merged,
)
from dftune.averaging import merge as run
from dftune.model import meta as modelmeta

log = logging.getLogger(__name__)


def greedy_soup(paths: Sequence[str], out: str | os.PathLike, data: str | os.PathLike, metric: str = "auc",
                level: str = "frame", split: str = "val", tta: Sequence[str] = (), force: bool = False) -> dict:
    """The greedy soup: sort by val ``metric``, add each model if the soup's val metric does not drop."""
    from dftune import metrics, prepared, scoring
    from dftune.model import formats
    from dftune.pooling import video_aggregate
    from dftune.portable import load_image, prob_fake

    paths = [formats.resolve(p) for p in paths]  # GenD / timm checkpoints: their converted folders, as merge()
    refuse_overwriting_an_input(paths, out)
    rows = prepared.read_manifest(data, [split])
    if not rows:
        raise MergeError(f"{data}: no {split} rows to judge the soup on")
    n_fake = sum(r.label for r in rows)
    if metric in ("auc", "f1") and n_fake in (0, len(rows)):
        raise MergeError(f"{data}: the {split} split holds one class only ({len(rows) - n_fake} real, {n_fake} fake): "
                         f"{metric} cannot rank the models there; use a split with both classes, or --metric loss")
    imgs = [load_image(p) for p in prepared.image_paths(data, rows)]
    y = np.array([r.label for r in rows])

    def score(model_dir) -> float:
        m = scoring.load_model(model_dir, device="cpu")
        p = np.concatenate([prob_fake(m.run, m.pre, m.fake_index, imgs[i:i + 64], tta, m.device)
                            for i in range(0, len(imgs), 64)])
        if level == "video":
            _, p, yy = video_aggregate([r.video for r in rows], p, y)
        else:
            yy = y
        res = metrics.binary_metrics(yy, p)
        key = {"auc": "auc", "f1": "macro_f1", "loss": "loss"}[metric]
        v = res[key]
        return -v if metric == "loss" else v

    work = Path(tempfile.mkdtemp(prefix="dftune-soup-"))
    try:
        scores = {p: score(p) for p in paths}
        undefined = [p for p, v in scores.items() if v != v]
        if undefined:
            raise MergeError(f"{undefined[0]}: its {split} {level} {metric} is undefined (NaN); the greedy soup "
                             f"cannot rank the models on it")
        order = sorted(paths, key=lambda p: -scores[p])
        chosen, best = [order[0]], scores[order[0]]
        steps = [{"model": order[0], "own": scores[order[0]], "soup": best, "added": True}]
        log.info("greedy soup: start with %s (%s %.4f)", order[0], metric, best)
        for i, p in enumerate(order[1:]):
            trial = work / f"try{i}"
            run(chosen + [p], trial, force=True)
            v = score(str(trial))
            added = v >= best
            if added:
                chosen, best = chosen + [p], v
            steps.append({"model": p, "own": scores[p], "soup": v, "added": added})
            log.info("greedy soup: %s %s -> soup %s %.4f", "added" if added else "skipped", p, metric, v)
        if len(chosen) == 1:
            model, ref = load_for_merge(chosen[0])
            save_merged(model, ref.state, chosen[0], Path(out), {"kind": "greedy soup", "models": chosen}, force)
        else:
            run(chosen, out, force=force)
            meta = modelmeta.load(out)
            meta.extra["merge"] = {"kind": "greedy soup", "models": chosen, "candidates": list(paths)}
            modelmeta.save(out, meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sign = -1.0 if metric == "loss" else 1.0  # ranked on -loss; reported as the loss itself
    for st in steps:
        st["own"], st["soup"] = sign * st["own"], sign * st["soup"]
    return {"out": str(out), "kind": "greedy soup", "models": chosen,
            "val": {p: sign * scores[p] for p in paths}, "steps": steps,
            "soup_val": sign * best, "metric": f"{split} {level} {metric}"}
