"""Fine-tuning components: settings (config), the machine's threads/workers/precision (machine), the data
pipeline (data), which parameters train (trainable), the out-of-memory step (step), the LR schedule
(schedule), resume rules (resume), validation and the monitor (validate), epoch statistics (stats), model
folders (writer) and checkpoint folders (checkpoint).

The epoch loop itself is the recipe :mod:`dftune.stages.train`.
"""

from dftune.training.config import TrainConfig


class TrainError(ValueError):
    """A run that cannot start; the message says why and what to do."""


__all__ = ["TrainConfig", "TrainError"]
