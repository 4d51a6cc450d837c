"""Fine-tuning components: settings (config), data pipeline (data), the trainer (loop).

``dftune train`` (dftune.commands.train) is the recipe; import heavy parts lazily.
"""

from dftune.train.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def train(*args, **kwargs):
    """See :func:`dftune.train.loop.train`."""
    from dftune.train.loop import train as _train

    return _train(*args, **kwargs)
