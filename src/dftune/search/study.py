"""The Optuna side of a study: storage, pruner, the per-trial sampler seed, and which trials count.

Trials are counted across processes and machines through the storage: a finished trial is COMPLETE,
PRUNED, or FAIL with a recorded reason (``COUNTED``); a RUNNING trial whose process is gone is failed
(``fail_stale``) so another process runs a replacement; ``claim`` asks for a trial only while a slot is
free, and steps back when another process took the last one first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

COUNTED = "fail_reason"  # a FAIL trial with this attr failed on its own and counts as finished


def make_sampler(seed: int, trials: int):
    """TPE with random start-up trials (a third of the study, 3 to 10) and a constant liar, so parallel
    processes do not all propose next to the same running trial."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, trials // 3)), constant_liar=True)


def seed_sampler(sampler, seed: int) -> None:
    """Trial N's proposals come from seed hash(study seed, N): a single process repeats its study exactly, and
    parallel processes (different trial numbers) never propose the same random settings."""
    try:
        sampler._rng.rng.seed(seed)
        sampler._random_sampler._rng.rng.seed(seed)
    except AttributeError:  # another Optuna's internals: proposals stay random, which is still correct
        log.debug("could not seed the sampler per trial")


def make_pruner(name, epochs: int):
    import optuna

    if not isinstance(name, str):
        return name
    if name == "median":  # prune below the median of earlier trials at the same epoch, from epoch 2 on
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose median, hyperband or none")


def open_storage(study_dir: Path, url: str | None):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url is None:
        return optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    if "://" not in url:  # a path: a journal file there
        return optuna.storages.JournalStorage(JournalFileBackend(str(Path(url))))
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as e:
        raise ValueError(f"--storage {url}: needs a database driver ({e})") from None


def counts_as_finished(t) -> bool:
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and COUNTED in t.user_attrs


def _alive(t, stale_after: float) -> bool:
    """A RUNNING trial whose process still works on it (same host: the pid lives; else a recent heartbeat)."""
    a = t.user_attrs
    if a.get("host") == socket.gethostname() and a.get("pid"):
        try:
            os.kill(int(a["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return int(a["pid"]) != os.getpid()  # this process runs one trial at a time, and not now
    # no pid to check (another host, or attributes not written yet): the latest sign of life
    start = t.datetime_start.timestamp() if t.datetime_start else 0.0
    return time.time() - max(float(a.get("heartbeat", 0) or 0), start) < stale_after


def fail_stale(study, stale_after: float) -> None:
    """Mark RUNNING trials whose process is gone (killed, crashed machine) as FAIL, not counted."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _alive(t, stale_after):
            try:
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", "its process is gone")
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            except Exception as e:  # another process did it first
                log.debug("stale trial %s: %s", t.number, e)


class Heartbeat:
    """Refreshes the trial's ``heartbeat`` user attr so other machines can tell a live trial from a dead one."""

    def __init__(self, storage, trial_id: int, every: float = 30.0):
        self.storage, self.trial_id, self.every = storage, trial_id, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.every):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


def tally(study) -> tuple[int, int]:
    """(finished, running) trials of the study, in every process."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return sum(counts_as_finished(t) for t in trials), sum(t.state == TrialState.RUNNING for t in trials)


def claim(study, wanted: int):
    """A new trial marked with this host, pid and a heartbeat; None when another process took the last of the
    ``wanted`` slots first (the trial is then told FAIL and marked ``surplus``: not counted, not reported)."""
    from optuna.trial import TrialState

    trial = study.ask()
    for k, v in (("host", socket.gethostname()), ("pid", os.getpid()), ("heartbeat", time.time())):
        trial.set_user_attr(k, v)
    # numbers are handed out by the storage in order: if another process took the last slots between the
    # count and the ask, the later numbers step back
    live = sorted(t.number for t in study.get_trials(deepcopy=False)
                  if counts_as_finished(t) or t.state == TrialState.RUNNING)
    if trial.number in live and live.index(trial.number) >= wanted:
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def set_attr(trial, key: str, value) -> None:
    """Set a user attribute unless the trial was finished elsewhere (e.g. judged stale by another process)."""
    try:
        trial.set_user_attr(key, value)
    except Exception as e:
        log.warning("trial %d: could not record %s (%s)", trial.number, key, e)


class JournalError(ValueError):
    """A journal file Optuna cannot read; the message names the file, the line and how to recover."""


def _is_record(line: bytes) -> bool:
    try:
        rec = json.loads(line.rstrip(b"\r"))
    except ValueError:
        return False
    return isinstance(rec, dict) and "op_code" in rec


def repair_journal(path: Path, say: Callable[[str], None] = print) -> None:
    """Make a journal file Optuna can read, or say exactly why it cannot be.

    A last line cut off (a process killed while appending it) is dropped, so the next record does not get glued
    onto it; a copy of the file as it was is kept beside it (``NAME.torn-TIME``). A last line that is whole but
    lacks its line end gets one. A line that is not a journal record anywhere before the last one is an error
    naming the file and the line. The check holds Optuna's own journal lock, so a record another process is
    writing right now is never taken for a torn one.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a line end; else a last line without one
        bad = next((i for i, line in enumerate(lines) if not _is_record(line)), None)
        if bad is not None and (bad < len(lines) - 1 or tail):
            preview = lines[bad][:80].decode("utf-8", "replace")
            raise JournalError(
                f"{path}: line {bad + 1} of {len(lines) + bool(tail)} is not an Optuna journal record "
                f"({preview!r}), so the study cannot be read past it. To keep the trials recorded before it: "
                f"cp {path} {path}.bak && head -n {bad} {path}.bak > {path} (the records from line {bad + 1} on "
                f"are lost); or start a new STUDY_DIR")
        if tail and bad is None and _is_record(tail):  # whole, only its line end missing
            with open(path, "ab") as f:
                f.write(b"\n")
            say(f"{path}: its last line had no line end; added one")
            return
        if not tail and bad is None:
            return
        keep = lines[:bad] if bad is not None else lines
        copy = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, copy)
        os.truncate(path, sum(len(line) + 1 for line in keep))
        say(f"{path}: its last line was cut off (a process killed while writing it?); dropped it and kept the "
            f"{len(keep)} whole record(s); the file as it was is in {copy.name}")
    finally:
        lock.release()


def journal_study_names(path: Path) -> list[str]:
    """The studies a journal file holds (none when it does not exist)."""
    import optuna

    if not Path(path).is_file() or Path(path).stat().st_size == 0:
        return []
    return optuna.get_all_study_names(open_storage(Path(path).parent, str(path)))
