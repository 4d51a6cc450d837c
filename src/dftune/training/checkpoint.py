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
from collections.abc import Callable
from pathlib import Path

from dftune.atomic import WriteError, read_json, replace_folder, write_error, write_json, write_text

log = logging.getLogger(__name__)

STATE_DIR = "training_state"  # inside last/: Accelerate's state (optimizer, scheduler, scaler, RNG), no weights
TRAINER_FILE = "trainer.json"  # inside STATE_DIR: the trainer's own counters (epoch, best, micro-batch, ...)
# inside STATE_DIR, only when last/'s model is not the raw training weights (--ema: it is the average; --tune lora:
# adapters merged): the raw trainable parameters and the buffers, under the training model's own names
WEIGHTS_FILE = "weights.safetensors"
LEGACY_WEIGHTS = "model.safetensors"  # Accelerate's full copy of the weights, in states saved before WEIGHTS_FILE


def without_model_weights(accelerator) -> None:
    """Make ``accelerator.save_state``/``load_state`` skip the model: they keep the optimizer, scheduler,
    scaler and RNG states, while the weights come from ``last/`` itself (or :data:`WEIGHTS_FILE`), so a
    checkpoint does not hold them twice. Uses Accelerate's documented state hooks: the save hook empties the
    list of state dicts to write, the load hook the list of models to fill."""
    accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())


def tmp_dir(dest: Path) -> Path:
    """The folder a checkpoint for ``dest`` is written into before :func:`dftune.atomic.replace_folder`."""
    return dest.with_name(dest.name + ".tmp")


def last_dir(run_dir: Path) -> Path | None:
    """The run's resumable checkpoint folder, or None."""
    for name in ("last", "last.old"):  # last.old: killed between the two renames of replace_folder
        d = Path(run_dir) / name
        if (d / STATE_DIR / TRAINER_FILE).exists():
            return d
    return None


def save(accelerator, dest: Path, write: Callable[[Path], None], trainer_state: dict | None = None,
         raw_weights: Callable[[], dict] | None = None) -> None:
    """Write a checkpoint folder ``dest`` from every process, atomically.

    ``write(folder)`` runs on the main process and writes the model files into the folder. With
    ``trainer_state``, the folder also gets what ``--resume`` needs: Accelerate's state without the weights
    (every process writes its RNG state; see :func:`without_model_weights`), the trainer's counters in
    ``STATE_DIR/TRAINER_FILE`` and, when ``raw_weights`` is given (the saved model is not the raw
    training weights), its tensors in ``STATE_DIR/WEIGHTS_FILE``.
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
            # every process's RNG file is in the folder before the main one completes and swaps it in: a
            # process slower than the main one (a loaded machine) otherwise wrote into a folder already gone
            accelerator.wait_for_everyone()
        if main:
            write(tmp)
            if trainer_state is not None:
                if raw_weights is not None:
                    from safetensors.torch import save_file

                    save_file(raw_weights(), str(tmp / STATE_DIR / WEIGHTS_FILE))
                write_json(tmp / STATE_DIR / TRAINER_FILE, trainer_state)
    except Exception as e:
        err = as_write_error(tmp, e)
        if err is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # the half-written folder goes (its space with it); dest stays
        raise err from e
    if main:
        replace_folder(tmp, dest)  # only now, with the new folder complete, does the previous one go
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


def remove_leftovers(run_dir: Path) -> list[str]:
    """Remove what a run killed while writing left in ``run_dir``: the staged folder of ``--wise``'s merge
    (``.wise.tmp-*``, a full copy of the weights) and the temporary files of atomic writes (``.NAME.tmp-*``);
    return a line for each. (``best.tmp``/``last.tmp`` go at the next checkpoint.)"""
    lines = []
    for p in sorted(Path(run_dir).glob(".*.tmp-*")):
        what = "WiSE-FT model folder" if p.name.startswith(".wise.tmp-") else "file"
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as e:
            log.warning("%s: could not remove %s (%s)", run_dir, p.name, e)
            continue
        lines.append(f"{run_dir}: removed {p.name}, a half-written {what} left by a run killed while writing it")
    return lines


def link_files(src: Path, dst: Path) -> None:
    """Put every file of checkpoint folder ``src`` into ``dst`` without writing its bytes again: a hard link
    (checkpoint files are never changed in place, only replaced by :func:`dftune.atomic.replace_folder`), a copy
    where the file system has none."""
    for f in sorted(Path(src).iterdir()):
        if not f.is_file():
            continue
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def load(accelerator, folder: Path, model, required: set[str]) -> dict:
    """Restore checkpoint ``folder`` (see :func:`last_dir`) into the run: Accelerate's state (optimizer,
    scheduler, scaler, RNG) and the weights of ``model`` (the unwrapped training model) from
    :func:`load_weights`. Return the trainer's counters."""
    state_dir = Path(folder) / STATE_DIR
    if accelerator.is_main_process:
        upgrade_state(state_dir)
    accelerator.wait_for_everyone()
    accelerator.load_state(str(state_dir))
    load_weights(folder, model, required)
    return read_json(state_dir / TRAINER_FILE)


def load_weights(folder: Path, model, required: set[str]) -> None:
    """Put the raw training weights of checkpoint ``folder`` into ``model``: from ``STATE_DIR/WEIGHTS_FILE``
    when the checkpoint has one (``--ema``, ``--tune lora``), from a state saved before it
    (``STATE_DIR/model.safetensors``), else from the model files of ``folder`` itself. ``required`` (the
    parameters that train) must all be there; the others are the starting model's, which is loaded already."""
    folder = Path(folder)
    state_dir = folder / STATE_DIR
    for src in (state_dir / WEIGHTS_FILE, state_dir / LEGACY_WEIGHTS):
        if src.exists():
            tensors = _read_safetensors([src])
            break
    else:  # last/ itself, through transformers' loader: it maps the names a model is saved under (which
        # transformers 5 may keep in an older form, e.g. ViT's encoder.layer.N) to the module's own
        src = folder
        tensors = type(model).from_pretrained(str(folder)).state_dict()
    own = model.state_dict()
    missing = sorted(n for n in required if n not in tensors)
    if missing:
        raise ValueError(f"{src}: the checkpoint lacks {len(missing)} trained weight(s), e.g. {missing[:3]}; "
                         f"it does not belong to this run's model")
    unknown = sorted(n for n in tensors if n not in own)
    if unknown:
        raise ValueError(f"{src}: {len(unknown)} weight(s) this run's model does not have, e.g. {unknown[:3]}")
    model.load_state_dict(tensors, strict=False)


def _read_safetensors(files: list[Path]) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


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


def checkpoint_failed(e: WriteError, run_dir: Path, epoch: int, history: list[dict], skipped: set,
                       main: bool) -> WriteError:
    """Epoch ``epoch``'s checkpoint could not be written: keep the history of what was done, and say what the
    run can do now."""
    history[-1]["checkpoint"] = f"not saved: {e}"
    if main:
        try:
            write_json(run_dir / "history.json", history)
            if skipped:
                write_text(run_dir / "skipped.txt", "\n".join(sorted(skipped)) + "\n")
        except WriteError as e2:
            log.error("%s", e2)
    last = last_dir(run_dir)
    if last is not None:
        done = int(read_json(last / STATE_DIR / TRAINER_FILE).get("epoch", 0))
        then = (f"{last} still holds the complete checkpoint of epoch {done}: free some space, then run the same "
                f"command with --resume to continue from epoch {done + 1}")
    else:
        then = "no checkpoint was completed yet: free some space and start the run again (without --resume)"
    return WriteError(e.errno, f"{e}\nepoch {epoch}'s checkpoint was not written; {then} "
                               f"(history.json lists the epochs trained)")
