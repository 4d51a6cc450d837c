"""The trainer's counters (saved in ``last/training_state/trainer.json``) and the summary a run returns."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass


@dataclass
class TrainState:
    """The trainer's own counters: what ``--resume`` continues beside Accelerate's state.

    ``epoch`` is the last epoch done, ``best``/``best_epoch`` the monitor's best value and its epoch,
    ``bad_epochs`` the validations since it improved (early stopping's patience), ``step`` the optimizer
    steps taken; the ``schedule_*``/``warmup_steps`` fields are the LR schedule's layout
    (:func:`dftune.training.schedule.layout`)."""

    epoch: int = 0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    micro_batch: int = 0
    step: int = 0
    schedule_epochs: int = 0
    schedule_steps: int = 0
    warmup_steps: int = 0
    steps_per_epoch: int = 0

    def update(self, values: dict) -> None:
        """Take the counters in ``values`` (a checkpoint's ``trainer.json``: other keys are not counters)."""
        for f in dataclasses.fields(self):
            if f.name in values:
                setattr(self, f.name, values[f.name])

    def to_json(self, skipped: set) -> dict:
        """``trainer.json``: the counters and the images skipped so far."""
        return {**asdict(self), "skipped": sorted(skipped)}


_WISE = ("wise_dir", "wise_alpha", "wise_error", "wise_threshold", "wise_curve")


@dataclass
class TrainSummary:
    """What a run did: where its models are, how far it went and why it stopped, its best validation, and
    what it ran with. ``trainable_*``: what really trained (only the head where ``--head-epochs`` covered
    every epoch run). ``wise_*``: the ``--wise`` model (or why it was not written), None without ``--wise``."""

    run_dir: str
    epochs_run: int
    epochs_planned: int
    best_epoch: int
    monitor: str  # "val <level> <metric>"
    best_value: float | None
    best_val: dict | None  # the best epoch's validation record
    best_dir: str
    last_dir: str
    stopped: str
    skipped: list[str]
    label_map: dict
    micro_batch: int
    mixed_precision: str
    processes: int
    device: str
    threads: int
    threads_from: str
    workers: int
    workers_from: str
    tune: str
    trainable_params: int
    total_params: int
    trainable_share: float
    head_epochs: int = 0  # --head-epochs: the first epochs trained the head alone
    head_params: int = 0  # the head's parameters
    wise_dir: str | None = None
    wise_alpha: float | None = None
    wise_error: str | None = None
    wise_threshold: dict | None = None  # wise/'s stored threshold: {"value", "source"}
    wise_curve: dict | None = None  # --wise auto: the alpha curve on the check sets (merge.choose_alpha's)
    threshold: dict | None = None  # best/'s stored threshold, as history.json records it: {"value", "source"}
    best_check: dict | None = None  # the best epoch's check sets (--check): {"sets": {...}, "mean": {...}}
    best_datasets: dict | None = None  # a mix's val, dataset by dataset, at the best epoch

    def to_dict(self) -> dict:
        """The summary as a dict; the ``wise_*`` keys only where they are set."""
        return {k: v for k, v in asdict(self).items()
                if not (k in (*_WISE, "best_check", "best_datasets") and v is None)}


def trained_counts(plan, cfg, epochs_run: int) -> dict:
    """The summary's count of what trained (``plan`` a :class:`dftune.training.trainable.Plan`): the --tune set,
    or only the head where --head-epochs covered every epoch run."""
    n = plan.n_head if cfg.head_epochs and epochs_run <= cfg.head_epochs else plan.n_trainable
    return {"trainable_params": n, "total_params": plan.total,
            "trainable_share": round(n / max(1, plan.total), 6), "head_epochs": int(cfg.head_epochs),
            "head_params": plan.n_head}
