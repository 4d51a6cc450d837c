"""An exponential moving average (EMA) of the trainable weights (``dftune train --ema DECAY``).

After every optimizer step each tracked weight's average moves towards it::

    avg = decay * avg + (1 - decay) * weight

The average starts at the weights the run starts with. The trainer keeps training the raw weights (and
saves them, with the optimizer, in ``last/training_state/`` for ``--resume``); validation and the saved
``best/`` and ``last/`` models use the average (:meth:`EMA.applied`). The average itself is saved in
``last/training_state/ema.safetensors`` so that a resumed run continues it exactly.

Only the parameters that train are tracked (the frozen ones never change, so their average is themselves),
and the running statistics of the batch-norm layers (``running_mean``/``running_var``, see
:func:`norm_buffers`), which change in every training forward pass whatever trains: an averaged model with
the raw model's statistics normalises its features with numbers that belong to other weights (as timm's
``ModelEmaV2`` does, the buffers are averaged with the same decay). Their integer ``num_batches_tracked`` is
not averaged: the model keeps the raw count. An ``ema.safetensors`` saved
before the statistics were averaged still loads: their average restarts from the raw statistics.

The decay is given per step (``--ema DECAY``) or as a share of the run (``--ema-horizon SHARE``,
:func:`run_decay`): the average's time constant ``1 / (1 - decay)`` is SHARE x the run's optimizer steps, so a
0.1 horizon means "about the last tenth of the run" on a 300-step proxy and on a 20,000-step FF++ run alike. The
steps are the learning-rate schedule's (laid out once at the run's start and kept in the checkpoint), so a
resumed run recomputes the same decay.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

EMA_FILE = "ema.safetensors"  # inside last/training_state/

log = logging.getLogger(__name__)


def norm_buffers(model) -> list:
    """``(name, buffer)`` for the floating-point running statistics of every normalisation layer of ``model``
    that tracks them (``torch.nn.BatchNorm1d/2d/3d``, ``SyncBatchNorm``, subclasses such as timm's
    ``BatchNormAct2d``, an ``InstanceNorm`` with ``track_running_stats``): ``running_mean`` and
    ``running_var``; not the integer ``num_batches_tracked``."""
    out = []
    for mn, m in model.named_modules():
        if not getattr(m, "track_running_stats", False):
            continue
        for bn, b in m.named_buffers(recurse=False):
            if b is not None and b.is_floating_point():
                out.append((f"{mn}.{bn}" if mn else bn, b))
    return out


def run_decay(decay: float, horizon: float, steps: int) -> float:
    """The per-step decay of a run of ``steps`` optimizer steps: ``decay`` when given (> 0), else
    ``1 - 1 / (horizon * steps)`` (a time constant of ``horizon`` x the run). A time constant under one step (a
    tiny run) is clamped to one step's: decay 0, the average is the weights."""
    if decay > 0:
        return float(decay)
    return 1.0 - 1.0 / max(1.0, float(horizon) * max(1, int(steps)))


def make(model, train_names: set, decay: float):
    """The :class:`EMA` of ``model``'s parameters named in ``train_names`` and of its running statistics
    (:func:`norm_buffers`, which every training forward changes)."""
    return EMA([(n, p) for n, p in model.named_parameters() if n in train_names], decay, norm_buffers(model))


class EMA:
    """The moving average of ``named_params`` (``(name, parameter)`` pairs) and of ``named_buffers`` (the
    running statistics to average alongside, :func:`norm_buffers`), kept in their dtype and on their
    device."""

    def __init__(self, named_params: Iterable, decay: float, named_buffers: Iterable = ()):
        import torch

        if not 0 <= float(decay) < 1:  # 0: the average is the weights (an --ema-horizon under one step)
            raise ValueError(f"EMA decay must be in [0, 1); got {decay}")
        self.decay = float(decay)
        self.params = dict(named_params)
        self.buffers = {n: b for n, b in named_buffers if n not in self.params}
        with torch.no_grad():
            self.shadow = {n: p.detach().clone() for n, p in self.tracked.items()}
        self.updates = 0

    @property
    def tracked(self) -> dict:
        """Every averaged tensor of the model by name: the parameters, then the buffers."""
        return {**self.params, **self.buffers}

    def update(self) -> None:
        """One step: ``avg = decay * avg + (1 - decay) * weight`` for every tracked weight and statistic."""
        import torch

        with torch.no_grad():
            for n, p in self.tracked.items():
                self.shadow[n].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """Inside the block the model holds the averaged weights and statistics; the raw ones come back exactly
        after."""
        import torch

        tracked = self.tracked
        with torch.no_grad():
            raw = {n: p.detach().clone() for n, p in tracked.items()}
            for n, p in tracked.items():
                p.copy_(self.shadow[n])
        try:
            yield self
        finally:
            with torch.no_grad():
                for n, p in tracked.items():
                    p.copy_(raw[n])

    def state_dict(self) -> dict:
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict) -> None:
        """Take a saved average. Every parameter must be there; a statistic that is not (a state saved before
        the statistics were averaged) restarts from the model's current, raw value."""
        import torch

        missing = set(self.params) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} weight(s), e.g. {sorted(missing)[:3]}")
        absent = sorted(n for n in self.buffers if n not in state)
        if absent:
            log.info("EMA state holds no average of %d running statistic(s) (saved before they were averaged); "
                     "their average restarts from the raw ones", len(absent))
        with torch.no_grad():
            for n, t in self.shadow.items():
                t.copy_((state[n] if n in state else self.buffers[n].detach()).to(t.device, t.dtype))

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        save_file(self.state_dict(), str(Path(folder) / EMA_FILE), metadata={"updates": str(self.updates),
                                                                             "decay": str(self.decay)})

    def load(self, folder: str | Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        p = Path(folder) / EMA_FILE
        if not p.exists():
            raise FileNotFoundError(f"{p}: the checkpoint holds no EMA weights (was the run started without --ema?)")
        self.load_state_dict(load_file(str(p)))
        with safe_open(str(p), "pt") as f:
            self.updates = int((f.metadata() or {}).get("updates", 0))
