"""dftune tune after a kill -9: the journal lock a killed process leaves is taken over (it hung every later run),
and a trial killed after its run finished is recovered from its folder (it was discarded and run again).

Each test fails before its fix (the lock tests by their timeout); the studies are 1 trial of 1 epoch on a tiny ViT."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dftune.atomic import read_json, write_json
from dftune.search import study as study_mod
from dftune.search.study import open_storage
from dftune.stages import tune
from dftune.training.config import parse_sets

torch.set_num_threads(1)

SETS = ["num_workers=0", "tensorboard=false", "batch_size=8", "patience=0"]
SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}, "balance": "loss", "aug": False,
         "sbi": 0.0, "weight_decay": 0.01, "warmup_ratio": 0.0, "schedule": "constant"}
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def made(make_crops, tiny_vit, tmp_path_factory):
    """(crops, model, a study folder holding 1 complete trial, its weights kept)."""
    crops = make_crops(n_videos=4, frames=2, size=32, methods=("Deepfakes",))
    vit = tiny_vit({0: "Realism", 1: "Deepfake"}, image_size=32)
    out = tmp_path_factory.mktemp("lockstudy") / "s"
    tune.run(crops, vit, out, _settings(), say=lambda m: None)
    return crops, vit, out


def _settings(**kw) -> tune.TuneSettings:
    d = dict(trials=1, epochs=1, space=dict(SPACE), pruner="none", seed=0, sets=parse_sets(SETS), keep_all=True)
    d.update(kw)
    return tune.TuneSettings(**d)


def _copy(out: Path, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    shutil.copytree(out, where / "s", symlinks=True)
    return where / "s"


def _tune_here(cwd: Path, crops, vit, trials: int) -> subprocess.CompletedProcess:
    """``dftune tune --out s`` (a relative --out, as a user types it) in ``cwd``, with a 1 s lock grace; a hang
    ends in TimeoutExpired instead of hanging the test."""
    argv = ["tune", "--data", str(crops), "--model", str(vit), "--out", "s", "--trials", str(trials), "--epochs", "1",
            "--pruner", "none", "--keep-all"]
    for s in SETS:
        argv += ["--set", s]
    code = ("import sys; import dftune.search.study as st; st.LOCK_GRACE = 1.0; from dftune.cli import main; "
            f"sys.exit(main({argv!r}))")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def test_a_dangling_journal_lock_is_taken_over(made, tmp_path):
    """What a process killed while writing the journal left before the fix: ``s/study.journal.lock -> s/study.journal``
    (relative, so it points at s/s/study.journal): Optuna's grace period could not stat it and spun forever."""
    crops, vit, out = made
    s = _copy(out, tmp_path)
    os.symlink("s/study.journal", s / "study.journal.lock")
    r = _tune_here(tmp_path, crops, vit, trials=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"{s / 'study.journal.lock'}: took over the journal lock" in r.stderr
    assert "which does not exist from there" in r.stderr
    assert not os.path.lexists(s / "study.journal.lock")
    assert [t.state.name for t in _study(s).trials] == ["COMPLETE", "COMPLETE"]  # the new trial was written


def test_the_lock_of_a_process_killed_while_holding_it_is_taken_over(made, tmp_path):
    """A process that opened the study's storage as tune does (relative --out) is killed -9 holding its lock."""
    crops, vit, out = made
    s = _copy(out, tmp_path)
    code = (f"import sys, time; sys.path.insert(0, {SRC!r}); from pathlib import Path; "
            "from dftune.search.study import open_storage; "
            "st = open_storage(Path('s'), None); st._backend._lock.acquire(); print('held', flush=True); "
            "time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert os.path.lexists(s / "study.journal.lock")
    r = _tune_here(tmp_path, crops, vit, trials=1)  # nothing to run: the journal is still read under its lock
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "took over the journal lock" in r.stderr and "nothing to run" in r.stderr  # progress and warnings: stderr
    assert not os.path.lexists(s / "study.journal.lock")


def test_journal_lock_takes_over_a_dangling_link_and_never_a_live_one(tmp_path):
    journal = tmp_path / "study.journal"
    journal.touch()
    lock = tmp_path / "study.journal.lock"
    os.symlink("nowhere/study.journal", lock)
    t0 = time.monotonic()
    mine = study_mod.journal_lock(journal, grace=0.5)
    assert mine.acquire()
    assert time.monotonic() - t0 < 30 and os.readlink(lock) == str(journal)  # absolute: it resolves
    mine.release()
    # a lock that is given back and taken again within the grace is a live writer's: waited for, never removed
    os.symlink(str(journal), lock)
    said = []
    study_mod.clear_stale_lock(journal, said.append, grace=0.3)
    assert said and "took over" in said[0] and not os.path.lexists(lock)
    os.symlink(str(journal), lock)
    import threading

    def churn():  # a live writer: the link is replaced within the grace
        time.sleep(0.1)
        os.unlink(lock)
        os.symlink(str(journal), lock)

    th = threading.Thread(target=churn)
    th.start()
    said = []
    study_mod.clear_stale_lock(journal, said.append, grace=1.0)
    th.join()
    assert said == [] and os.path.lexists(lock)


def test_a_trial_killed_after_its_run_finished_is_recovered(made, tmp_path):
    """Killed after its last epoch (history.json complete, best/ written) but before telling Optuna: COMPLETE from
    its folder, not failed and run again."""
    import optuna

    crops, vit, out = made
    s = _copy(out, tmp_path)
    st = optuna.load_study(study_name="s", storage=open_storage(s, None))
    done = st.trials[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = st.ask()
    for k, v in (("host", socket.gethostname()), ("pid", dead.pid), ("config", done.user_attrs["config"]),
                 ("epochs_planned", 1)):
        t.set_user_attr(k, v)
    shutil.copytree(s / "trials" / "trial_0000", s / "trials" / "trial_0001")
    mark = read_json(s / "trials" / "trial_0001" / "trial.json")
    write_json(s / "trials" / "trial_0001" / "trial.json", {**mark, "number": 1})
    said = []
    sm = tune.run(crops, vit, s, _settings(trials=2), say=said.append)
    assert sm.ran_here == 0, said  # nothing run again
    trials = _study(s).trials
    assert [x.state.name for x in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[1].value == done.value and trials[1].user_attrs["best_epoch"] == 1
    assert any(line.startswith("trial   1 COMPLETE") and "recovered from" in line for line in said), said
    # a trial killed mid-run (history short of its epochs) is still failed and replaced
    t = st.ask()
    for k, v in (("host", socket.gethostname()), ("pid", dead.pid), ("config", {**done.user_attrs["config"],
                                                                                 "epochs": 3})):
        t.set_user_attr(k, v)
    shutil.copytree(s / "trials" / "trial_0000", s / "trials" / "trial_0002")
    write_json(s / "trials" / "trial_0002" / "trial.json", {**mark, "number": 2})
    sm = tune.run(crops, vit, s, _settings(trials=3), say=lambda m: None)
    assert sm.ran_here == 1
    assert [x.state.name for x in _study(s).trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]


def _study(s: Path):
    import optuna

    return optuna.load_study(study_name="s", storage=open_storage(s, None))
