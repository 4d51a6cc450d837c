"""The rules of ``--resume``: what may continue, with which settings, and what ``settings.yaml`` records.

Resuming continues the run with the settings it started with. Settings that would change its learning-rate
schedule, data order or the maths of a step are refused with each change named; the ones in
:data:`dftune.training.config.RESUME_SAFE` are honoured and recorded in the new stretch of ``settings.yaml``
(one entry per start or ``--resume``, with its epoch range, what it changed, and its threads/workers/device).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dftune.atomic import FolderBusy, folder_lock, read_json
from dftune.training import TrainError
from dftune.training import checkpoint as ckpt
from dftune.training.checkpoint import STATE_DIR, TRAINER_FILE
from dftune.training.config import RESUME_SAFE, TrainConfig, load_run_settings, resume_changes
from dftune.training.machine import Machine

log = logging.getLogger(__name__)


@dataclass
class Previous:
    """What a resumed run started with: its checkpoint folder (None for a fresh run), its settings and run
    metadata from ``settings.yaml``, the checkpoint's trainer counters, and the allowed changes
    ``{setting: (old, new)}``."""

    folder: Path | None = None
    cfg: TrainConfig | None = None
    meta: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)
    allowed: dict = field(default_factory=dict)


LOCK = "lock"  # RUN_DIR/.lock: held by the run writing the folder (dftune.atomic.folder_lock)
BUSY_HINT = ("two trainings writing one run folder overwrite each other's checkpoints: wait for it to finish, or "
             "give this one another --out (several processes of one run form one group only when started by "
             "accelerate launch or torchrun; on CPU ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N)")


@contextlib.contextmanager
def run_lock(run_dir: Path, resume: bool, say: Callable[[str], None]):
    """Hold ``RUN_DIR/.lock`` while the run writes the folder, so that a second training started on the same
    ``--out`` (another shell, processes that did not form one Accelerate group) is refused, naming the
    holder (host, pid), instead of racing this one. Only the main process of a group takes it; a lock left
    by a killed run (its pid gone on this host) is taken over, and ``say`` is told."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # as the Accelerator will: several CPU processes form their group only with ACCELERATE_USE_CPU
    main = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).is_main_process
    if not main or (resume and not Path(run_dir).is_dir()):
        yield  # the other processes of the group: the main one holds it; nothing to resume: refused next
        return
    try:
        lock = folder_lock(run_dir, LOCK, "dftune train", hint=BUSY_HINT, on_stale=say)
        lock.__enter__()
    except FolderBusy as e:
        raise TrainError(str(e)) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def continues_from(run_dir: Path, cfg: TrainConfig, resume: bool, model_source: str | None = None) -> Previous:
    """Check that ``run_dir`` can start (no run there) or be resumed (a complete checkpoint, settings that
    keep its schedule, data order and step, the model it started from); return what the run continues
    from."""
    resume_from = ckpt.last_dir(run_dir) if resume else None
    if resume and resume_from is None:
        left = " (a checkpoint was being written when the run stopped; none was completed)" \
            if ckpt.tmp_dir(run_dir / "last").exists() else ""
        raise TrainError(f"{run_dir}: nothing to resume (no complete last/{STATE_DIR}){left}; "
                         f"start without --resume")
    if not resume and ckpt.last_dir(run_dir) is not None:
        raise TrainError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    if resume_from is None:
        return Previous()
    prev = Previous(resume_from, *check_resume(run_dir, cfg, resume_from))
    if model_source is not None:
        check_model(run_dir, prev.meta, str(model_source))
    return prev


def _same_folder(a: str, b: str | None) -> bool:
    try:
        return b is not None and Path(a).is_dir() and Path(b).is_dir() and os.path.samefile(a, b)
    except OSError:
        return False


def check_model(run_dir: Path, meta: dict, model_source: str) -> None:
    """Refuse to resume from another model than the run started from (its head was trained for that
    model's label order, and ``--wise`` would interpolate with the other), and say so when the starting
    model's folder is gone (rather than a hub look-up's network error). A folder elsewhere whose files are
    byte for byte the starting folder's (the SHA-256s settings.yaml recorded, or the folder itself) is the
    same model."""
    started = meta.get("model")
    if started is None:  # settings.yaml from before the model was recorded: nothing to check against
        return
    started = str(started)
    folder = meta.get("model_dir")  # recorded when the run started from a local folder
    same = model_source == started or _same_folder(model_source, started) or _same_folder(model_source, folder)
    if not same and Path(model_source).is_dir():  # a copy of the starting folder (moved, another machine)
        from dftune.runs import same_content

        same = same_content(model_source, meta.get("model_files"), folder)
        if same:
            return
    if not same:
        raise TrainError(
            f"{run_dir}: the run started from --model {started}"
            + (f" ({folder})" if folder and folder != started else "")
            + f" and is resumed with --model {model_source} (not a copy of it: other files or bytes): its checkpoint "
              f"continues the first one (its head was "
              f"trained for that model's labels, and --wise interpolates with the starting model); resume with "
              f"--model {started}, or start a new run (another --out) from this one's weights with "
              f"--model {run_dir / 'last'}")
    if Path(model_source).is_dir() or not (folder is not None or _looks_like_a_path(started)):
        return
    if folder is not None and Path(folder).is_dir():
        raise TrainError(f"{run_dir}: --model {model_source} is not a folder from here ({Path.cwd()}); the run "
                         f"started from {folder}: resume with --model {folder}")
    raise TrainError(
        f"{run_dir}: the model folder the run started from, {model_source}"
        + (f" ({folder})" if folder and folder != model_source else "")
        + " is gone: --resume loads it again (the weights that do not train, the processor, --wise's starting "
          "model); put it back at that path, or start a new run (another --out) from this one's weights with "
          f"--model {run_dir / 'last'}")


def _looks_like_a_path(source: str) -> bool:
    """Whether a recorded ``--model`` was a folder rather than a hub id (``org/name``): an absolute or
    explicitly relative path, or one with more parts than a hub id has."""
    return (os.path.isabs(source) or source.startswith(("./", "../", "~", ".\\")) or source.count("/") > 1
            or "\\" in source)


def check_resume(run_dir: Path, cfg: TrainConfig, resume_from: Path) -> tuple[TrainConfig | None, dict, dict, dict]:
    """Refuse a resume that would change the run's schedule, data order or step; return
    ``(previous settings, previous run metadata, the checkpoint's trainer counters, allowed changes)``."""
    trainer = read_json(resume_from / STATE_DIR / TRAINER_FILE)
    p = run_dir / "settings.yaml"
    if not p.exists():
        log.warning("%s: no settings.yaml; cannot check the settings against the run's own", run_dir)
        return None, {}, trainer, {}
    prev, meta = load_run_settings(p)
    allowed, refused = resume_changes(prev, cfg)
    if refused:
        lines = "\n".join(f"  {k}: {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
        raise TrainError(
            f"{run_dir}: --resume continues the run with the settings it started with; these would change its "
            f"learning-rate schedule, data order or training steps, and are refused:\n{lines}\n"
            f"Settings a resume may change: {', '.join(RESUME_SAFE)}. To train with other settings, start a new "
            f"run (another --out), e.g. from this one's weights with --model {run_dir / 'last'}")
    done = int(trainer.get("epoch", 0))
    sched_epochs = int(trainer.get("schedule_epochs") or meta.get("schedule", {}).get("epochs") or prev.epochs)
    if cfg.epochs < done:
        raise TrainError(f"{run_dir}: epochs {cfg.epochs} is fewer than the {done} already trained; "
                         f"the run is complete (its models are in {run_dir / 'best'} and {run_dir / 'last'})")
    if cfg.schedule == "cosine" and cfg.epochs > sched_epochs:
        raise TrainError(
            f"{run_dir}: epochs: {prev.epochs} -> {cfg.epochs} cannot extend this run: its cosine learning-rate "
            f"schedule was laid out over {sched_epochs} epochs and reaches lr 0 at their end, so further epochs "
            f"would not train. Resume with --epochs {sched_epochs} or fewer, or start a new run from its weights "
            f"(--model {run_dir / 'last'}, another --out)")
    return prev, meta, trainer, allowed


def check_processes(run_dir: Path, prev: Previous, processes: int) -> None:
    """Refuse to resume with another process count: it would change the effective batch and data order."""
    if prev.folder is not None and prev.meta.get("processes") not in (None, processes):
        raise TrainError(f"{run_dir}: the run started with {prev.meta['processes']} process(es) and is resumed "
                         f"with {processes}: that changes its effective batch and data order; "
                         f"resume with {prev.meta['processes']} process(es)")


def _show(v) -> str:
    return repr(v) if isinstance(v, str) or v is None else str(v)


def stretches(prev: Previous, done: int, cfg: TrainConfig, machine: Machine, accelerator) -> list[dict]:
    """``settings.yaml``'s ``_stretches``: the previous ones (a resume) and this one, last, which starts after
    the ``done`` epochs of the checkpoint (its ``last_epoch`` is set as epochs complete)."""
    kept = previous_stretches(prev.cfg, prev.meta, done) if prev.folder is not None else []
    kept.append({"first_epoch": done + 1, "last_epoch": None, "planned_epochs": cfg.epochs,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": prev.folder is not None,
                 "changed": {k: {"from": a, "to": b} for k, (a, b) in prev.allowed.items()},
                 "threads": machine.threads, "workers": machine.workers, "device": str(accelerator.device),
                 "processes": accelerator.num_processes})
    return kept


def previous_stretches(prev_cfg: TrainConfig | None, prev_meta: dict, done: int) -> list[dict]:
    """The stretches recorded before this resume, cut to the ``done`` epochs its checkpoint holds (a stretch
    whose epochs were not saved is dropped: they are trained again now)."""
    old = [dict(s) for s in prev_meta.get("stretches") or []]
    if not old:  # a run from before stretches were recorded
        old = [{"first_epoch": 1, "last_epoch": done, "planned_epochs": prev_cfg.epochs if prev_cfg else None,
                "resumed": False, "note": "recorded before settings.yaml kept stretches"}]
    kept = [s for s in old if int(s.get("first_epoch") or 1) <= done]
    if kept:
        kept[-1]["last_epoch"] = done
    return kept


def resume_config(run_dir: str | os.PathLike, overrides: dict) -> TrainConfig:
    """Settings for ``--resume``: the run's own settings.yaml, with explicit overrides (e.g. more epochs)."""
    from dftune.training.config import build

    p = Path(run_dir) / "settings.yaml"
    if not p.exists():
        raise TrainError(f"{run_dir}: no settings.yaml to resume from")
    cfg, _ = load_run_settings(p)
    return build(cfg, overrides)
