"""The objective: one metric read from a train run's ``history.json`` record: the val split's (``record["val"]``),
or with ``tune --check`` the check sets' mean (``record["check"]["mean"]``: each set's number, averaged)."""

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
MONITOR = {"auc": "auc", "loss": "loss"}  # train's --metric for a metric key; the rest monitor f1


@dataclass(frozen=True)
class Metric:
    name: str
    level: str
    key: str
    on: str = "val"  # val: the training data's val split; check: the mean of the check sets ``checks``
    checks: tuple = ()

    @property
    def direction(self) -> str:
        return "minimize" if self.key == "loss" else "maximize"

    @property
    def describe(self) -> str:
        what = {"best_threshold_f1": "macro F1 at the val-optimal threshold", "macro_f1": "macro F1 at 0.5",
                "auc": "ROC AUC", "loss": "cross-entropy loss", "accuracy": "accuracy at 0.5",
                "balanced_accuracy": "balanced accuracy at 0.5"}[self.key]
        if self.on == "check":
            what = what.replace("the val-optimal threshold", "each set's optimal threshold")
            return (f"the mean over the check sets {', '.join(self.checks)} of the {self.level}-level {what} "
                    f"({self.direction}d)")
        return f"val {self.level}-level {what} ({self.direction}d)"

    @property
    def monitor(self) -> str:
        """The train monitor that keeps as ``best/`` the epoch this metric likes."""
        return MONITOR.get(self.key, "f1")

    def of(self, record: dict) -> float | None:
        """The objective's value in an epoch's record; None where it was not validated or is undefined."""
        if record["val"] is None:  # an epoch --val-every skipped
            return None
        if self.on == "check":
            return _number((((record.get("check") or {}).get("mean") or {}).get(self.level) or {}).get(self.key))
        return self.val_of(record)

    def val_of(self, record: dict) -> float | None:
        """The same metric on the training data's val split (recorded beside a check-set objective)."""
        if record["val"] is None:
            return None
        return _number(record["val"][self.level].get(self.key))


def _number(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def parse_metric(name: str, checks=()) -> Metric:
    """``LEVEL_NAME`` as a :class:`Metric`; with check sets (``tune --check``), their mean is the objective."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    level, suffix = name.split("_", 1)
    checks = tuple(str(c) for c in checks or ())
    return Metric(name, level, METRIC_KEYS[suffix], "check" if checks else "val", checks)
