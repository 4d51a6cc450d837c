"""Fine-tuning components: settings (config) and the data pipeline (data).

The epoch loop itself is the recipe :mod:`dftune.stages.train`.
"""

from dftune.train.config import TrainConfig

__all__ = ["TrainConfig"]
