"""The learning-rate schedule: laid out once, at the run's start, over the epochs planned then.

Its layout (total optimizer steps, warm-up steps, the epochs it covers) is kept in the training state, so a
resume continues the same schedule: changing ``epochs`` later moves where the run stops, never the schedule
(:func:`dftune.training.resume.check_resume` refuses to extend a cosine schedule past its end).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

from dftune.training.config import TrainConfig

log = logging.getLogger(__name__)

LAYOUT_KEYS = ("schedule_epochs", "schedule_steps", "warmup_steps")  # in the trainer's counters (trainer.json)


def lr_lambda(total_steps: int, warmup: int, schedule: str) -> Callable[[int], float]:
    """The learning rate's factor after ``step`` optimizer steps: linear warm-up, then constant or cosine."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            t = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    return f


def layout(cfg: TrainConfig, steps_per_epoch: int, run_dir: Path, prev_trainer: dict, prev_meta: dict,
           prev_cfg: TrainConfig | None, say: Callable[[str], None]) -> dict:
    """The schedule's layout ``{schedule_epochs, schedule_steps, warmup_steps}``: a resumed run's own (from its
    checkpoint's counters ``prev_trainer``), else laid out now over the epochs the run started with."""
    if prev_trainer.get("schedule_steps"):
        sched = {k: int(prev_trainer[k]) for k in LAYOUT_KEYS}
        before = prev_trainer.get("steps_per_epoch")
        if before and int(before) != steps_per_epoch:
            msg = (f"{run_dir}: {steps_per_epoch} optimizer steps per epoch now, {before} when the run started "
                   f"(different data or readable files); the learning-rate schedule keeps its "
                   f"{sched['schedule_steps']} steps")
            log.warning(msg)
            say(f"warning: {msg}")
        return sched
    # a fresh run, or a checkpoint from before the layout was stored: the epochs the run started with
    sched_epochs = int(prev_meta.get("schedule", {}).get("epochs") or (prev_cfg or cfg).epochs)
    total = steps_per_epoch * sched_epochs
    return {"schedule_epochs": sched_epochs, "schedule_steps": total, "warmup_steps": int(cfg.warmup_ratio * total)}


def make_scheduler(accelerator, optimizer, sched: dict, schedule: str):
    """The prepared LR scheduler of ``optimizer`` (an Accelerate-prepared one) for layout ``sched``."""
    import torch

    return prepare_scheduler(accelerator, torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer, lr_lambda(sched["schedule_steps"], sched["warmup_steps"], schedule)))


def prepare_scheduler(accelerator, scheduler):
    """``accelerator.prepare`` the LR scheduler, stepping it once per optimizer step actually taken.

    Accelerate's ``AcceleratedScheduler.step`` does nothing when the optimizer step was skipped (fp16
    GradScaler found inf/NaN gradients), and Accelerate saves and loads it with the other state. Left
    alone it also steps ``num_processes`` times per call (it assumes a schedule counted in
    single-process batches); ours is counted in optimizer steps (``len(train_dl)`` after prepare is a
    per-process length), hence ``split_batches`` = one step per call, whatever the process count.
    """
    prepared = accelerator.prepare(scheduler)
    prepared.split_batches = True
    return prepared
