"""An exponential moving average (EMA) of the trainable weights (``dftune train --ema DECAY``).

After every optimizer step each tracked weight's average moves towards it::

    avg = decay * avg + (1 - decay) * weight

The average starts at the weights the run starts with. The trainer keeps training the raw weights (and
saves them, with the optimizer, in ``last/training_state/`` for ``--resume``); validation and the saved
``best/`` and ``last/`` models use the average (:meth:`EMA.applied`). The average itself is saved in
``last/training_state/ema.safetensors`` so that a resumed run continues it exactly.

Only the parameters that train are tracked (the frozen ones never change, so their average is themselves).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

EMA_FILE = "ema.safetensors"  # inside last/training_state/


class EMA:
    """The moving average of ``named_params`` (``(name, parameter)`` pairs), kept in the parameters' dtype
    and on their device."""

    def __init__(self, named_params: Iterable, decay: float):
        import torch

        if not 0 < float(decay) < 1:
            raise ValueError(f"EMA decay must be in (0, 1); got {decay}")
        self.decay = float(decay)
        self.params = dict(named_params)
        with torch.no_grad():
            self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        self.updates = 0

    def update(self) -> None:
        """One step: ``avg = decay * avg + (1 - decay) * weight`` for every tracked weight."""
        import torch

        with torch.no_grad():
            for n, p in self.params.items():
                self.shadow[n].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """Inside the block the model holds the averaged weights; the raw ones come back exactly after."""
        import torch

        with torch.no_grad():
            raw = {n: p.detach().clone() for n, p in self.params.items()}
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
        try:
            yield self
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(raw[n])

    def state_dict(self) -> dict:
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict) -> None:
        import torch

        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} weight(s), e.g. {sorted(missing)[:3]}")
        with torch.no_grad():
            for n, t in self.shadow.items():
                t.copy_(state[n].to(t.device, t.dtype))

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
