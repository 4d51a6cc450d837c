"""The objective: one val metric read from a train run's ``history.json`` record."""

from __future__ import annotations

import math
from dataclasses import dataclass

# metric name suffix -> key in history's record["val"][level]
METRIC_KEYS = {
    "f1": "best_threshold_f1",  # macro F1 at the val-optimal threshold (the default)
    "f1_05": "macro_f1",  # macro F1 at threshold 0.5
    "auc": "auc",
    "loss": "loss",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
}
METRICS = tuple(f"{lv}_{k}" for lv in ("frame", "video") for k in METRIC_KEYS)
MONITOR = {"auc": "auc", "loss": "loss"}  # train's --monitor for a metric key; the rest monitor f1


@dataclass(frozen=True)
class Metric:
    name: str
    level: str
    key: str

    @property
    def direction(self) -> str:
        return "minimize" if self.key == "loss" else "maximize"

    @property
    def describe(self) -> str:
        what = {"best_threshold_f1": "macro F1 at the val-optimal threshold", "macro_f1": "macro F1 at 0.5",
                "auc": "ROC AUC", "loss": "cross-entropy loss", "accuracy": "accuracy at 0.5",
                "balanced_accuracy": "balanced accuracy at 0.5"}[self.key]
        return f"val {self.level}-level {what} ({self.direction}d)"

    @property
    def monitor(self) -> str:
        """The train monitor that keeps as ``best/`` the epoch this metric likes."""
        return MONITOR.get(self.key, "f1")

    def of(self, record: dict) -> float | None:
        if record["val"] is None:  # an epoch --val-every skipped
            return None
        v = record["val"][self.level].get(self.key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def parse_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    level, suffix = name.split("_", 1)
    return Metric(name, level, METRIC_KEYS[suffix])
