"""Validation and the monitor: frame- and video-level metrics over the val split, gathered over processes.

Validation runs under ``torch.inference_mode`` (at twice the training batch: the stage's val loader), with the
EMA weights in the model when ``--ema`` keeps an average. The monitor (``--metric``, ``--level``) picks
one of its numbers; :func:`improved` says whether it beats the best so far.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dftune import metrics
from dftune.pooling import video_aggregate
from dftune.training import TrainError
from dftune.training.config import TrainConfig

# what a validation record keeps of binary_metrics' output, per level
KEEP = ("n", "n_real", "n_fake", "loss", "accuracy", "macro_f1", "auc", "balanced_accuracy",
        "best_threshold", "best_threshold_f1")


def averaged(ema):
    """The EMA weights in the model for the block (``ema`` an :class:`dftune.training.ema.EMA`), else nothing
    changes (``ema`` None)."""
    return ema.applied() if ema is not None else contextlib.nullcontext()


def validate(accelerator, model, val_dl, normalize, val_ds, val_rows, fake_index: int, aggregate: str,
             skipped: set, ema=None, scores: list | None = None) -> dict:
    """``{"frame": metrics, "video": metrics}`` of ``model`` (the EMA weights with ``ema``) on ``val_dl``.

    ``val_ds``/``val_rows`` are the loader's dataset and manifest rows (labels, paths, videos); an image that
    cannot be decoded is added to ``skipped`` and left out. ``aggregate`` pools frames into videos. ``scores``,
    a list, gets ``(labels, fake probabilities, video keys)`` of the rows scored appended."""
    import torch

    with averaged(ema):
        model.eval()
        probs, indices, valid = [], [], []
        with torch.inference_mode():
            for batch in val_dl:
                logits = model(pixel_values=normalize(batch["pixels"])).logits.float()
                p = logits.softmax(-1)[:, fake_index]
                # uint8, not bool: every collective backend gathers it
                p, idx, ok = accelerator.gather_for_metrics((p, batch["index"], batch["valid"].to(torch.uint8)))
                probs.append(p.cpu()), indices.append(idx.cpu()), valid.append(ok.cpu().bool())
        model.train()
    p, idx, ok = torch.cat(probs).numpy(), torch.cat(indices).numpy(), torch.cat(valid).numpy()
    for i in idx[~ok]:
        skipped.add(f"{val_ds.paths[i]}: cannot decode as an image")
    p, idx = p[ok].astype(np.float64), idx[ok]
    y = val_ds.labels[idx]
    keys = [val_rows[i].video for i in idx]
    if scores is not None:
        scores.append((y, p, keys))
    frame = metrics.binary_metrics(y, p)
    _, vp, vy = video_aggregate(keys, p, y, how=aggregate)
    video = metrics.binary_metrics(vy, vp)
    t, t_f1 = metrics.best_threshold(y, p)
    vt, vt_f1 = metrics.best_threshold(vy, vp)
    frame.update(best_threshold=t, best_threshold_f1=t_f1)
    video.update(best_threshold=vt, best_threshold_f1=vt_f1)
    return {"frame": short(frame), "video": short(video)}


def short(m: dict) -> dict:
    """The :data:`KEEP` metrics of ``m``, NaN as None (JSON has no NaN)."""
    return {k: (None if isinstance(m[k], float) and math.isnan(m[k]) else m[k]) for k in KEEP if k in m}


def monitor_value(val: dict, cfg: TrainConfig) -> float:
    """The monitored number of validation ``val``; NaN where it is undefined (AUC with one class in val)."""
    key = {"f1": "macro_f1", "auc": "auc", "loss": "loss"}[cfg.monitor]
    v = val[cfg.monitor_level][key]
    return float("nan") if v is None else float(v)  # AUC is undefined with one class in val


def improved(v: float, best: float | None, higher_is_better: bool) -> bool:
    """Whether monitor value ``v`` beats ``best`` (None or NaN: no best yet, any defined value does)."""
    if best is None or math.isnan(best):
        return not math.isnan(v)
    return v > best if higher_is_better else v < best


def check_val_classes(data_dir: Path, val_counts: np.ndarray, cfg: TrainConfig, say: Callable[[str], None]) -> None:
    """Refuse a val split of one class: the best checkpoint and early stopping would be chosen on a macro F1 of
    1.0 for calling everything that class, or an undefined AUC. --metric loss, asked for, is let through with
    a warning."""
    if not (val_counts == 0).any():
        return
    have = "real" if val_counts[1] == 0 else "fake"
    counts = f"{int(val_counts[0])} real, {int(val_counts[1])} fake"
    if cfg.monitor == "loss":
        say(f"warning: {data_dir}: the val split holds {have} crops only ({counts}): --metric loss selects on it, "
            f"which favours a model that leans to calling crops {have}; its F1 and AUC mean nothing")
        return
    raise TrainError(
        f"{data_dir}: the val split holds {have} crops only ({counts}): train chooses its best checkpoint and stops "
        f"early on val {cfg.monitor}, which one class cannot rank (macro F1 is 1.0 for a model that calls "
        f"everything {have}, AUC is undefined). Re-deal the splits (dftune prepare --split-by random, other --ratios "
        f"or --seed) or add the missing class to val; or pass --metric loss to select on the val loss (which, "
        f"with one class, favours a model leaning to it)")
