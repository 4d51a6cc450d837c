"""An epoch's statistics: the training counters summed over batches and processes, the epoch's record as
TensorBoard scalars, and the line the run reports for it."""

from __future__ import annotations

from dftune.training.config import TrainConfig

# the six training counters an epoch sums, per process, then over processes
COUNTERS = ("loss", "n", "tp", "fp", "tn", "fn")


def zeros(device):
    """An epoch's counters before its first batch (:data:`COUNTERS`)."""
    import torch

    return torch.zeros(len(COUNTERS), device=device)


def batch_counts(loss, win_len: int, logits, fake_index: int, labels, valid):
    """One loader batch's counters: its loss (``win_len`` undoes the window's divisor) and, over its readable
    images, the count and the confusion counts of fake at probability 0.5."""
    import torch

    pred = (logits.softmax(-1)[:, fake_index] >= 0.5).long()
    y, v = labels, valid
    return torch.stack([loss * win_len, v.sum(), ((pred == 1) & (y == 1) & v).sum(),
                        ((pred == 1) & (y == 0) & v).sum(), ((pred == 0) & (y == 0) & v).sum(),
                        ((pred == 0) & (y == 1) & v).sum()]).float()


def train_stats(total: list[float], batches: int, images: int, seconds: float, lr: float, micro_batch: int) -> dict:
    """The epoch's ``train`` record from its counters summed over processes (``total``), the loader batches
    run by all processes, the images seen, the training time, the last learning rate and the micro-batch."""
    tp, fp, tn, fn = total[2:]
    f1s = [2 * tp / max(1, 2 * tp + fp + fn), 2 * tn / max(1, 2 * tn + fn + fp)]
    return {"loss": total[0] / max(1, batches), "accuracy": (tp + tn) / max(1, total[1]), "macro_f1": sum(f1s) / 2,
            "images_per_s": images / seconds, "lr": lr, "micro_batch": micro_batch}


def scalars(rec: dict) -> dict:
    """An epoch's record as TensorBoard scalars: ``train/...`` and, when validated, ``val_frame/...``,
    ``val_video/...``."""
    out = {f"train/{k}": v for k, v in rec["train"].items() if isinstance(v, (int, float))}
    for level in ("frame", "video") if rec["val"] is not None else ():
        for k, v in rec["val"][level].items():
            if isinstance(v, (int, float)) and v is not None:
                out[f"val_{level}/{k}"] = v
    sets = {"check_mean": (rec.get("check") or {}).get("mean"),
            **{f"check_{n}": m for n, m in ((rec.get("check") or {}).get("sets") or {}).items()},
            **{f"val_{n}": m for n, m in (rec.get("datasets") or {}).items()}}
    for name, m in sets.items():
        for level in ("frame", "video") if m else ():
            for k, v in m[level].items():
                if isinstance(v, (int, float)) and v is not None:
                    out[f"{name.replace('/', '_')}_{level}/{k}"] = v
    return out


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def extra_lines(rec: dict) -> list[str]:
    """The lines after an epoch's for the sets validated beside val: the check sets' mean (and each set), a
    mix's val by dataset."""
    out = []
    chk = rec.get("check")
    if chk:
        fr, vi = chk["mean"]["frame"], chk["mean"]["video"]
        out.append(f"  check sets (mean of {len(chk['sets'])}): frame f1 {_fmt(fr.get('macro_f1'))} auc "
                   f"{_fmt(fr.get('auc'))} | video f1 {_fmt(vi.get('macro_f1'))} auc {_fmt(vi.get('auc'))}")
        if len(chk["sets"]) > 1:
            out += [f"    {n}: frame auc {_fmt(m['frame'].get('auc'))} video auc {_fmt(m['video'].get('auc'))}"
                    for n, m in chk["sets"].items()]
    for n, m in (rec.get("datasets") or {}).items():
        out.append(f"  val {n}: frame f1 {_fmt(m['frame'].get('macro_f1'))} auc {_fmt(m['frame'].get('auc'))} | "
                   f"video f1 {_fmt(m['video'].get('macro_f1'))} auc {_fmt(m['video'].get('auc'))}")
    return out


def epoch_line(rec: dict, cfg: TrainConfig) -> str:
    """The line the run reports after an epoch."""
    tr = rec["train"]
    if rec["val"] is None:
        return (f"epoch {rec['epoch']}/{cfg.epochs}: train loss {tr['loss']:.4f} f1 {tr['macro_f1']:.4f} "
                f"({tr['images_per_s']:.0f} img/s) | not validated (--val-every {cfg.val_every})")
    fr, vi = rec["val"]["frame"], rec["val"]["video"]
    return (f"epoch {rec['epoch']}/{cfg.epochs}: train loss {tr['loss']:.4f} f1 {tr['macro_f1']:.4f} "
            f"({tr['images_per_s']:.0f} img/s) | val frame loss {_fmt(fr['loss'])} f1 {_fmt(fr['macro_f1'])} "
            f"auc {_fmt(fr['auc'])} | video f1 {_fmt(vi['macro_f1'])} auc {_fmt(vi['auc'])}"
            f"{'  * best' if rec['best'] else ''}")
