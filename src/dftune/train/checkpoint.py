"""Checkpoint folders that a kill cannot leave half-written.

A checkpoint (``best/``, ``last/``) is written whole into ``<name>.tmp/`` and then swapped in by two
renames: ``<name>`` -> ``<name>.old``, ``<name>.tmp`` -> ``<name>``. A kill at any moment leaves one
complete folder: ``<name>`` or, between the two renames, ``<name>.old``. :func:`last_dir` finds the one
to resume from.

A write that fails (a full disk) never touches the previous ``<name>``: the half-written ``<name>.tmp/``
is removed (giving its space back) and a :class:`dftune.atomic.WriteError` names the file, the reason and
the free space.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from dftune.atomic import WriteError, read_json, write_error, write_json

log = logging.getLogger(__name__)

STATE_DIR = "training_state"  # inside last/: Accelerate's state (optimizer, scheduler, scaler, RNG)
TRAINER_FILE = "trainer.json"  # inside STATE_DIR: the trainer's own counters (epoch, best, micro-batch, ...)


def tmp_dir(dest: Path) -> Path:
    """The folder a checkpoint for ``dest`` is written into before :func:`swap_in`."""
    return dest.with_name(dest.name + ".tmp")


def swap_in(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp`` so a kill leaves one complete folder (``final`` or ``final.old``)."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def last_dir(run_dir: Path) -> Path | None:
    """The run's resumable checkpoint folder, or None."""
    for name in ("last", "last.old"):  # last.old: killed between the two renames of swap_in
        d = Path(run_dir) / name
        if (d / STATE_DIR / TRAINER_FILE).exists():
            return d
    return None


def save(accelerator, dest: Path, write: Callable[[Path], None], trainer_state: dict | None = None) -> None:
    """Write a checkpoint folder ``dest`` from every process, atomically.

    ``write(folder)`` runs on the main process and writes the model files into the folder. With
    ``trainer_state``, the folder also gets what ``--resume`` needs: Accelerate's state (every process
    writes its RNG state) and the trainer's counters in ``STATE_DIR/TRAINER_FILE``.
    """
    main = accelerator.is_main_process
    tmp = tmp_dir(dest)
    accelerator.wait_for_everyone()
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        if trainer_state is not None:
            accelerator.save_state(str(tmp / STATE_DIR))
        if main:
            write(tmp)
            if trainer_state is not None:
                write_json(tmp / STATE_DIR / TRAINER_FILE, trainer_state)
    except Exception as e:
        err = as_write_error(tmp, e)
        if err is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # the half-written folder goes (its space with it); dest stays
        raise err from e
    if main:
        swap_in(tmp, dest)  # only now, with the new folder complete, does the previous one go
    accelerator.wait_for_everyone()


def as_write_error(folder: Path, e: BaseException) -> WriteError | None:
    """A failed checkpoint write as a :class:`WriteError` naming the file and the free space; None when
    ``e`` is not a write failure. Writers report one in their own ways: an ``OSError``, safetensors'
    ``SafetensorError("... IoError(Os { code: 28, kind: StorageFull, ... })")``, torch.save's
    ``RuntimeError("[enforce fail at inline_container.cc] ... PytorchStreamWriter failed writing file ...")``.
    """
    if isinstance(e, WriteError):
        return e
    if isinstance(e, OSError):
        return write_error(e.filename or folder, e)
    text = str(e)
    if type(e).__name__ == "SafetensorError" or (isinstance(e, RuntimeError) and (
            "PytorchStreamWriter" in text or "file write failed" in text)):
        m = re.search(r"code: (\d+)", text)
        if m:
            code = int(m.group(1))
            return write_error(folder, OSError(code, os.strerror(code)))
        if "PytorchStreamWriter" in text or "IoError" in text or "write" in text.lower():
            return write_error(folder, OSError(errno.EIO, text.strip().splitlines()[0][:300]))
    return None


def load(accelerator, folder: Path) -> dict:
    """Restore Accelerate's state from checkpoint ``folder`` (see :func:`last_dir`); return the trainer's counters."""
    state_dir = Path(folder) / STATE_DIR
    if accelerator.is_main_process:
        upgrade_state(state_dir)
    accelerator.wait_for_everyone()
    accelerator.load_state(str(state_dir))
    return read_json(state_dir / TRAINER_FILE)


def upgrade_state(state_dir: Path) -> None:
    """Let a training state saved before the LR scheduler went through ``accelerator.prepare`` load.

    Such a state holds the scheduler as Accelerate's first custom object (``custom_checkpoint_0.pkl``,
    from ``register_for_checkpointing``); a prepared scheduler is saved as ``scheduler.bin``. Both are
    ``torch.save(scheduler.state_dict())``, so a rename converts it.
    """
    state_dir = Path(state_dir)
    old, new = state_dir / "custom_checkpoint_0.pkl", state_dir / "scheduler.bin"
    if old.exists() and not new.exists() and not (state_dir / "custom_checkpoint_1.pkl").exists():
        os.replace(old, new)
        log.info("%s: scheduler state renamed to the current layout (%s)", state_dir, new.name)
