"""Fine-tuning components: settings (config), the data pipeline (data), the out-of-memory step (step),
checkpoint folders (checkpoint).

The epoch loop itself is the recipe :mod:`dftune.stages.train`.
"""

from dftune.training.config import TrainConfig

__all__ = ["TrainConfig"]
