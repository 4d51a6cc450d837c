"""Forward/backward of one loader batch in micro-batches, halving the micro-batch on out-of-memory.

The trainer calls :class:`ForwardBackward` once per loader batch; ``grad_accum`` consecutive batches
form one optimizer-step *window*, and the trainer steps and zeroes the gradients after the window's
last batch (``sync=True``).

Out of memory, and why the retry is exact
-----------------------------------------
An out-of-memory error can strike in a forward pass (no gradient touched yet) or in a backward pass,
where autograd has already added this micro-batch's gradient to *some* parameters' ``.grad`` and not
to others. After it, the gradient buffers are in a state nobody can name, so they cannot be patched
up. There is exactly one point where their value is known without keeping a copy of them: the start
of the window, where they are zero (the trainer zeroes them after every optimizer step, and they are
``None`` before the first). So the retry goes back there:

1. keep every batch of the current window (its uint8 pixels, targets, weights and loss divisor:
   a few MB, nothing next to the model) until the window's optimizer step;
2. on out-of-memory anywhere in a batch: zero the gradients, halve the micro-batch, and run the
   forward/backward of *all* the window's batches so far again (the failed one last);
3. if that runs out of memory too, repeat from 2 (down to a micro-batch of 1, then give up).

Each batch's contribution is ``sum_i w_i * CE_i / denom`` over its images, whatever the micro-batch
split, so after step 2 the gradients equal those of a window that never ran out of memory, up to the
order of floating-point additions (the feature losses of ``--uniformity`` / ``--alignment`` compare a
micro-batch's images among themselves, so they equal the batch's only while the micro-batch is the whole
batch, the default). The batches before the failed one already reported their loss and
predictions; their replay only rebuilds gradients. The cost is a replay of at most ``grad_accum``
batches, and only when memory actually ran out. (This holds for models without batch-dependent layers
such as BatchNorm, where a micro-batch split changes the maths anyway: ViT, ConvNeXt, Swin, ... .)

Under DDP, every batch but the window's last runs under ``no_sync``, replays included, and the last
micro-batch of the window's last batch all-reduces, once per window on every process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class ForwardBackward:
    """One loader batch: weighted cross-entropy forward and backward, in micro-batches.

    ``prepare`` turns a stored batch's pixels into model input (e.g. uint8 NHWC -> normalised NCHW);
    it runs per batch, so a window keeps only the compact pixels. ``micro_batch`` is the current
    micro-batch size; it only shrinks. ``on_message`` receives the out-of-memory notice (it is also
    logged).
    """

    def __init__(self, accelerator, model, optimizer, micro_batch: int, prepare: Callable,
                 on_message: Callable[[str], None] | None = None, feature_loss: Callable | None = None):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        # (features, target, weight) -> a scalar added per micro-batch, weighted by its share of the window's
        # images (dftune.training.losses.FeatureLoss); None: cross-entropy alone
        self.feature_loss = feature_loss or None
        self.micro_batch = int(micro_batch)
        self.prepare = prepare
        self.on_message = on_message
        self._window: list[tuple] = []  # this window's batches so far: (pixels, target, weight, denom)

    def __call__(self, pixels, target, weight, denom, sync: bool, share: float = 1.0):
        """Add this batch's gradient of ``sum(weight * CE(logits, target)) / denom``; return (loss, logits).

        ``target`` holds model output indices, ``weight`` one loss weight per image (0 drops it),
        ``sync`` marks the window's last batch; ``share``: this batch's share of the window (1 / batches), what
        the feature loss is scaled by. ``loss`` is the batch's detached loss, ``logits`` its detached float logits.
        """
        import torch

        self._window.append((pixels, target, weight, denom, share))
        todo = [len(self._window) - 1]  # normally just this batch
        while True:
            try:
                for k in todo:
                    out = self._run(*self._window[k], sync=sync and k == len(self._window) - 1)
                break
            except torch.OutOfMemoryError:
                if self.micro_batch <= 1:
                    self._window.clear()
                    raise
            # outside the except block: the failed pass's tensors went with its traceback
            self._shrink()
            todo = list(range(len(self._window)))  # the gradients are gone: replay the whole window
        if sync:
            self._window.clear()
        return out

    def _run(self, pixels, target, weight, denom, share, sync: bool):
        import torch
        import torch.nn.functional as F

        x = self.prepare(pixels)
        n, mb = x.shape[0], self.micro_batch
        loss_sum = torch.zeros((), device=x.device)
        logits_all = []
        for s in range(0, n, mb):
            last = s + mb >= n
            ctx = contextlib.nullcontext() if (sync and last) else self.accelerator.no_sync(self.model)
            with ctx:
                out = self.model(pixel_values=x[s:s + mb])
                logits = out.logits.float()
                ce = F.cross_entropy(logits, target[s:s + mb], reduction="none")
                loss = (ce * weight[s:s + mb]).sum() / denom
                if self.feature_loss is not None:
                    part = share * logits.shape[0] / n
                    loss = loss + part * self.feature_loss(out.features, target[s:s + mb], weight[s:s + mb])
                self.accelerator.backward(loss)
            loss_sum += loss.detach()
            logits_all.append(logits.detach())
        return loss_sum, torch.cat(logits_all)

    def _shrink(self) -> None:
        import torch

        self.optimizer.zero_grad(set_to_none=True)  # back to the window's start: zero
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        old, self.micro_batch = self.micro_batch, self.micro_batch // 2
        n = len(self._window)
        msg = (f"out of memory at micro-batch {old}: continuing with micro-batch {self.micro_batch}, "
               f"{n} batch{'es' if n > 1 else ''} of this optimizer step redone (effective batch unchanged)")
        log.warning(msg)
        if self.on_message is not None:
            self.on_message(msg)
