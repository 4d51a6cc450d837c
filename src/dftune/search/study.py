"""The Optuna side of a study: storage, pruner, the per-trial sampler seed, and which trials count.

Trials are counted across processes and machines through the storage: a finished trial is COMPLETE,
PRUNED, or FAIL with a recorded reason (``COUNTED``); a RUNNING trial whose process is gone is failed
(``fail_stale``) so another process runs a replacement, unless its run folder shows the run finished (it is
then told COMPLETE: ``recover``); ``claim`` asks for a trial only while a slot is free, and steps back when
another process took the last one first.

The journal's lock is Optuna's symlink lock (``STUDY_DIR/study.journal.lock``, so plain Optuna processes and
dftune's exclude each other) pointing at the journal by its absolute path, and taken over when it stays the
same link for ``LOCK_GRACE`` seconds (a journal write holds it for milliseconds: such a link was left by a
process killed while writing): ``JournalLock``, and ``clear_stale_lock`` at a study's start.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
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


LOCK_GRACE = 10.0  # seconds a journal lock may stay the same link before it is taken over as left by a killed process


def _link_id(path: str) -> tuple | None:
    """The lock link as it is now (its own device, inode and time made, by lstat: a dangling link too; not its ctime,
    which moving it aside changes), or None when gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _take_over(lock: str, seen: tuple) -> bool:
    """Remove the lock link ``seen`` (moved aside first, so a new holder's link is never removed); True if done."""
    aside = f"{lock}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return False
    if _link_id(aside) == seen:
        os.unlink(aside)
        return True
    try:  # a new holder's link, taken meanwhile: given back
        os.link(aside, lock, follow_symlinks=False)
    except OSError as e:
        log.warning("%s: could not give back a lock taken meanwhile (%s)", lock, e)
    os.unlink(aside)
    return False


def _lock_class():
    from optuna.storages.journal import JournalFileSymlinkLock

    class JournalLock(JournalFileSymlinkLock):
        """Optuna's symlink lock on a journal, its link pointing at the journal by its absolute path, that never
        spins on the processor, and takes over a link that stayed the same (by lstat, so a dangling link too:
        Optuna's own grace period stats the link's target and waits forever on one that does not resolve) for
        ``grace`` seconds. Waiting is never a reason to remove a lock (Optuna's acquire releases another
        process's lock on Ctrl-C)."""

        def __init__(self, journal: str | os.PathLike, grace: float | None = None):
            super().__init__(os.path.abspath(journal), grace_period=None)
            self.grace = grace

        def acquire(self) -> bool:
            grace = LOCK_GRACE if self.grace is None else self.grace
            seen, since, said, pause = None, time.monotonic(), time.monotonic(), 0.001
            while True:
                try:
                    os.symlink(self._lock_target_file, self._lock_file)
                    return True
                except FileExistsError:
                    pass
                now, link = time.monotonic(), _link_id(self._lock_file)
                if link != seen:
                    seen, since = link, now
                elif link is not None and now - since >= grace:
                    if _take_over(self._lock_file, link):
                        log.warning("%s: took over the journal lock, unchanged for %g s (left by a process killed "
                                    "while writing the journal)", self._lock_file, grace)
                    seen, pause = None, 0.001
                    continue
                if now - said >= 10:
                    log.warning("%s: waiting for the journal lock (held for %.0f s)", self._lock_file, now - since)
                    said = now
                time.sleep(pause)
                pause = min(pause * 2, 0.1)

    return JournalLock


def journal_lock(journal: str | os.PathLike, grace: float | None = None):
    """The lock every dftune writer of ``journal`` takes (:class:`JournalLock`)."""
    return _lock_class()(journal, grace)


def clear_stale_lock(journal: str | os.PathLike, say: Callable[[str], None] = print,
                     grace: float | None = None) -> None:
    """Take over ``JOURNAL.lock`` when it stays the same link for ``grace`` seconds (``LOCK_GRACE``): left by a
    process killed while writing the journal. Run at a study's start, before any slow work; a lock that is given
    back meanwhile is a live writer's and is left alone."""
    grace = LOCK_GRACE if grace is None else grace
    lock = os.path.abspath(journal) + ".lock"
    first = _link_id(lock)
    if first is None:
        return
    try:
        target = os.readlink(lock)
    except OSError:
        target = "?"
    end = time.monotonic() + grace
    while time.monotonic() < end:
        time.sleep(min(0.05, grace))
        if _link_id(lock) != first:
            return
    if _take_over(lock, first):
        dangling = "" if os.path.exists(os.path.join(os.path.dirname(lock), target)) else \
            f"; it pointed at {target}, which does not exist from there"
        say(f"{lock}: took over the journal lock left by a process killed while writing the journal (unchanged "
            f"for {grace:g} s{dangling})")


def open_storage(study_dir: Path, url: str | None):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url is None or "://" not in url:  # a journal file: STUDY_DIR/study.journal, or the path given
        path = os.path.abspath(study_dir / "study.journal" if url is None else url)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=journal_lock(path)))
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as e:
        raise ValueError(f"--storage {url}: needs a database driver ({e})") from None


def counts_as_finished(t) -> bool:
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and COUNTED in t.user_attrs


def pid_space() -> str:
    """Where this process's pid means this process: the host name, the boot (``boot_id``: a rebooted machine reuses
    pids) and the pid namespace (two containers given one host name, ``docker --hostname`` or ``--network host``,
    each count pids of their own). Its parts that cannot be read are left out."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        pass
    try:
        parts.append(f"pidns{os.stat('/proc/self/ns/pid').st_ino}")
    except OSError:
        pass
    return ":".join(parts)


def _alive(t, stale_after: float) -> bool:
    """A RUNNING trial whose process still works on it (the same pid space: the pid lives; else a recent heartbeat).
    A trial without ``pid_space`` (made by an older dftune) is judged by its pid on a host of the same name."""
    a = t.user_attrs
    here = a.get("pid_space") == pid_space() if a.get("pid_space") else a.get("host") == socket.gethostname()
    if here and a.get("pid"):
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


def fail_stale(study, stale_after: float, recover: Callable | None = None) -> list[tuple[int, float]]:
    """Mark RUNNING trials whose process is gone (killed, crashed machine) as FAIL, not counted; one whose run had
    finished (``recover(trial)`` gives its value and attributes: its folder shows the whole run) is told COMPLETE
    instead. Returns the recovered trials' (number, value)."""
    from optuna.trial import TrialState

    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _alive(t, stale_after):
            found = None
            if recover is not None:
                try:
                    found = recover(t)
                except Exception as e:  # an unreadable folder: the trial is failed as before
                    log.debug("trial %s not recovered: %s", t.number, e)
            if found is not None:
                value, attrs = found
                try:
                    for k, v in attrs.items():
                        study._storage.set_trial_user_attr(t._trial_id, k, v)
                    study.tell(t.number, value, skip_if_finished=True)
                    recovered.append((t.number, value))
                    continue
                except Exception as e:  # another process did it first
                    log.debug("stale trial %s: %s", t.number, e)
                    continue
            try:
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", "its process is gone")
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            except Exception as e:  # another process did it first
                log.debug("stale trial %s: %s", t.number, e)
    return recovered


class Heartbeat:
    """Refreshes the trial's ``heartbeat`` user attr so other machines can tell a live trial from a dead one."""

    def __init__(self, storage, trial_id: int, every: float = 30.0):
        self.storage, self.trial_id, self.every = storage, trial_id, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        failed = 0
        while not self.stop.wait(self.every):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
                failed = 0
            except Exception as e:  # noqa: BLE001 - a dropped connection, a busy database: tried again next time
                from optuna.exceptions import UpdateFinishedTrialError

                if isinstance(e, UpdateFinishedTrialError):  # finished (or failed by another process): no more beats
                    return
                failed += 1
                if failed == 1:  # a live trial without heartbeats is failed as dead on other machines
                    log.warning("trial heartbeat could not be written (%s: %s); retrying every %g s",
                                type(e).__name__, e, self.every)

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
    """A new trial marked with this host, pid, pid space and a heartbeat; None when another process took the last of the
    ``wanted`` slots first (the trial is then told FAIL and marked ``surplus``: not counted, not reported)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    # created with its marks in one write (Study.ask's steps, with a template trial): a process killed right
    # after asking leaves a trial whose pid can be checked, not one that looks alive for ``stale_after``
    marks = {"host": socket.gethostname(), "pid": os.getpid(), "pid_space": pid_space(), "heartbeat": time.time()}
    study._thread_local.cached_all_trials = None
    trial_id = study._pop_waiting_trial_id()  # a trial queued with enqueue_trial: run first, as ask() does
    if trial_id is None:
        trial_id = study._storage.create_new_trial(
            study._study_id, template_trial=create_trial(state=TrialState.RUNNING, user_attrs=marks))
    trial = optuna.Trial(study, trial_id)
    if trial.user_attrs.get("pid") != marks["pid"]:
        for k, v in marks.items():
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
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    lock = journal_lock(path)
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
