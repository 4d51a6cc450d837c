"""Which RUNNING trials another tune process fails as dead (search.study): a live trial never, a dead one always.

Each test fails before its fix: a trial claimed by a process killed right after it asked looked alive for 5
minutes (its pid was written in a later call); a live trial in another container with the same host name was
failed (its pid does not exist in this pid namespace); one storage error stopped a trial's heartbeats for good
(other machines then failed it as dead while it trained)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from dftune.search.study import Heartbeat, claim, fail_stale, open_storage, pid_space

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _study(folder: Path, create: bool = True):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(folder, None)
    if create:
        return optuna.create_study(study_name="s", storage=storage, direction="maximize", load_if_exists=True)
    return optuna.load_study(study_name="s", storage=storage)


def test_a_process_killed_right_after_it_claimed_a_trial_leaves_a_trial_known_dead(tmp_path):
    _study(tmp_path)
    # the claiming process dies at its first write after the trial exists (before the fix: writing the host)
    code = (f"import os, sys; sys.path.insert(0, {SRC!r}); from pathlib import Path; import optuna; "
            "optuna.logging.set_verbosity(optuna.logging.WARNING); "
            "from dftune.search.study import claim, open_storage; "
            "optuna.Trial.set_user_attr = lambda *a, **k: os._exit(9); "
            f"st = optuna.load_study(study_name='s', storage=open_storage(Path({str(tmp_path)!r}), None)); "
            "claim(st, 3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 9), r.stderr[-2000:]
    st = _study(tmp_path, create=False)
    [t] = st.trials
    assert t.state.name == "RUNNING" and t.user_attrs.get("pid"), t.user_attrs  # marked from the start
    fail_stale(st, stale_after=300)
    assert _study(tmp_path, create=False).trials[0].state.name == "FAIL"  # its pid is gone: failed now


def test_a_live_trial_in_another_pid_space_with_this_host_name_is_not_failed(tmp_path):
    st = _study(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that does not exist here: in another container it is a live trainer
    t = st.ask()
    for k, v in (("host", socket.gethostname()), ("pid", dead.pid), ("pid_space", "another-container"),
                 ("heartbeat", time.time())):
        t.set_user_attr(k, v)
    fail_stale(st, stale_after=300)
    assert _study(tmp_path, create=False).trials[0].state.name == "RUNNING"  # judged by its recent heartbeat
    # the same trial in this pid space is dead at once
    st._storage.set_trial_user_attr(t._trial_id, "pid_space", pid_space())
    fail_stale(st, stale_after=300)
    assert _study(tmp_path, create=False).trials[0].state.name == "FAIL"


def test_claim_marks_the_trial_with_its_pid_space(tmp_path):
    st = _study(tmp_path)
    t = claim(st, 2)
    a = st.trials[0].user_attrs
    assert t.number == 0 and a["pid"] == os.getpid() and a["host"] == socket.gethostname()
    assert a["pid_space"] == pid_space() and a["pid_space"].startswith(socket.gethostname())


class _FlakyStorage:
    """set_trial_user_attr fails twice (a dropped database connection), then works."""

    def __init__(self):
        self.calls, self.written, self.enough = 0, [], threading.Event()

    def set_trial_user_attr(self, trial_id, key, value):
        self.calls += 1
        if self.calls <= 2:
            raise ConnectionError("server closed the connection unexpectedly")
        self.written.append(value)
        if len(self.written) >= 2:
            self.enough.set()


def test_heartbeat_goes_on_after_a_storage_error(caplog):
    storage = _FlakyStorage()
    with Heartbeat(storage, 0, every=0.01):
        assert storage.enough.wait(timeout=60), f"heartbeats stopped after {storage.calls} call(s)"
    assert sum("heartbeat could not be written" in r.getMessage() for r in caplog.records) == 1  # said once


def test_heartbeat_stops_when_the_trial_was_finished_elsewhere():
    from optuna.exceptions import UpdateFinishedTrialError

    class Finished:
        calls = 0

        def set_trial_user_attr(self, *a):
            Finished.calls += 1
            raise UpdateFinishedTrialError("finished")

    hb = Heartbeat(Finished(), 0, every=0.01)
    with hb:
        hb.thread.join(timeout=60)
    assert not hb.thread.is_alive() and Finished.calls == 1


def test_surplus_trial_is_no_killed_trial(tmp_path):
    """Two processes asking for the last slot at once: one steps back with a FAIL marked surplus (no fail_reason,
    no ``interrupted``), which the shared-study test counted as a killed trial."""
    a, b = _study(tmp_path), _study(tmp_path)
    assert claim(a, 2) is not None and claim(b, 2) is not None
    assert claim(a, 2) is None  # both counted 1 free slot of 2 and asked: the later number steps back
    trials = _study(tmp_path, create=False).trials
    surplus = [t for t in trials if t.state.name == "FAIL"]
    assert len(surplus) == 1 and surplus[0].user_attrs.get("surplus") and "interrupted" not in surplus[0].user_attrs
