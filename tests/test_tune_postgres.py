"""`dftune tune` across machines as the README shows it: processes sharing one study on a real PostgreSQL
server (Debian's postgresql, started here on a local socket and port; skipped, with the reason, where it
cannot start). Two processes at once give no duplicate trial numbers; a process killed mid-trial leaves a
trial that the next process fails (its pid is gone) and replaces, so the study still gets its trials."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql)")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="dftune-pg-"))  # outside pytest's 0700 folder, so the server's user reaches it
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no postgres user to run the server as")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    r = subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"initdb failed: {r.stderr.strip()[-300:]}")
    r = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"PostgreSQL did not start: {r.stderr.strip()[-300:]}")
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as con:
            con.execute("CREATE DATABASE optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dftune.model.load import build_tiny_vit
    from dftune.synthetic import make_crops

    root = tmp_path_factory.mktemp("tunepg")
    return make_crops(root / "crops", n_videos=4, frames=2, size=32).parent, build_tiny_vit(root / "vit", image_size=32)


def _tune(crops, vit, out, storage, trials: int) -> list[str]:
    return [sys.executable, "-m", "dftune", "tune", "--data", str(crops), "--model", str(vit), "--out", str(out),
            "--storage", storage, "--study-name", "shared", "--trials", str(trials), "--epochs", "1"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _trials(storage: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="shared", storage=storage).get_trials(deepcopy=False)


def test_two_processes_share_one_study_and_a_killed_trial_is_replaced(postgres, setup, tmp_path):
    from optuna.trial import TrialState

    crops, vit = setup
    # a process killed while its first trial runs: its training hangs (a long trial), so the kill lands mid-trial
    # however loaded the machine is (killed when the database showed a RUNNING trial, it had sometimes finished
    # that trial, or all three of a 1-second epoch, before the kill)
    argv = _tune(crops, vit, tmp_path / "m0", postgres, 3)[3:]
    hang = ("import sys, time\nfrom pathlib import Path\nimport dftune.stages.train as train\n"
            "def run(data, model, out, cfg, **kw):\n    Path(out, 'training').touch()\n    time.sleep(3600)\n"
            f"train.run = run\nfrom dftune.cli import main\nsys.exit(main({argv!r}))\n")
    log = open(tmp_path / "victim.log", "w")  # noqa: SIM115 - closed below
    victim = subprocess.Popen([sys.executable, "-c", hang], env=_env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    started = tmp_path / "m0" / "trials" / "trial_0000" / "training"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if victim.poll() is not None:
                pytest.fail("the first process ended by itself: " + (tmp_path / "victim.log").read_text()[-2000:])
            if started.exists():
                break
            time.sleep(0.02)
        else:
            pytest.fail("the first process never started a trial")
        os.killpg(victim.pid, signal.SIGKILL)
    finally:
        victim.wait(timeout=60)
        log.close()
    assert [t.state for t in _trials(postgres)] == [TrialState.RUNNING]  # killed mid-trial
    # two machines' worth of processes at once, each in its own STUDY_DIR, one shared study of 3 trials
    procs = [subprocess.Popen(_tune(crops, vit, tmp_path / f"m{i}", postgres, 3), env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
    trials = _trials(postgres)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # no duplicate trial numbers
    # a surplus trial (two processes asked for the last slot at once: one steps back) is FAIL without a reason too,
    # but it is no killed trial: under load the processes finish their trials together and this happens
    killed = [t for t in trials if t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs
              and not t.user_attrs.get("surplus")]
    seen = "; ".join(f"{t.number} {t.state.name} pid {t.user_attrs.get('pid')} "
                     f"{ {k: t.user_attrs[k] for k in ('interrupted', 'fail_reason', 'surplus') if k in t.user_attrs} }"
                     for t in trials)
    assert len(killed) == 1, seen  # the dead process's trial, failed by the next one and not counted
    assert killed[0].user_attrs.get("interrupted") == "its process is gone", seen
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 3, seen  # replaced: the study got its trials
    assert not [t for t in trials if t.state == TrialState.RUNNING], seen
