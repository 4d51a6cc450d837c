"""Several processes on this CPU machine: `torchrun --nproc_per_node 2 -m dftune train` forms one gloo group
(not two trainings racing on one --out), its gathered validation equals a single-process evaluate of the
same weights exactly, a run killed after an epoch and resumed in 2 processes ends with the weights of an
uninterrupted one, and the training modes and --wise run under 2 processes. Slow (each run starts two
interpreters): `pytest -m "not slow"` skips them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dftune.model.load import build_tiny_vit
    from dftune.synthetic import make_crops

    root = tmp_path_factory.mktemp("mp")
    crops = make_crops(root / "crops", n_videos=8, frames=4, size=32).parent
    return crops, build_tiny_vit(root / "vit", image_size=32)


def _env(*first: str) -> dict:
    path = os.pathsep.join([*first, SRC, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    env.pop("ACCELERATE_USE_CPU", None)  # dftune must form the group by itself
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            "-m", "dftune", "train", *args]


def _train_args(crops, vit, out, *extra) -> list[str]:
    return ["--data", str(crops), "--model", str(vit), "--out", str(out), "--batch-size", "8", "--no-progress",
            *extra]


def _run(cmd, timeout=300, env=None) -> str:
    p = subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=timeout)
    # each rank's own lines first: the rank that failed is rarely the one whose lines end the output
    ranks = "\n".join(ln for ln in p.stderr.splitlines() if ln.startswith("[rank1]") or "Error" in ln)
    assert p.returncode == 0, p.stdout[-2000:] + "\n--- rank lines ---\n" + ranks[-4000:] + p.stderr[-2000:]
    return p.stdout + p.stderr


def test_a_slower_process_s_state_is_in_the_checkpoint_it_belongs_to(setup, tmp_path):
    """Rank 1 slowed before it saves its training state (a loaded machine): its RNG file is still in last/ — the
    main process waits for it before swapping the folder in (before, it went into a stray last.tmp and last/ had
    rank 0's alone, so a 2-process --resume could not restore rank 1)."""
    crops, vit = setup
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import os, time\n"
        "if os.environ.get('LOCAL_RANK') == '1':\n"
        "    import accelerate\n"
        "    _save = accelerate.Accelerator.save_state\n"
        "    def save_state(self, *a, **k):\n"
        "        time.sleep(2)\n"
        "        return _save(self, *a, **k)\n"
        "    accelerate.Accelerator.save_state = save_state\n")
    out = tmp_path / "run"
    _run(_torchrun(*_train_args(crops, vit, out, "--epochs", "1")), env=_env(str(slow)))
    state = out / "last" / "training_state"
    assert (state / "random_states_0.pkl").exists() and (state / "random_states_1.pkl").exists()
    assert not (out / "last.tmp").exists()


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_two_processes_form_one_group_and_their_validation_equals_a_single_process_evaluate(setup, tmp_path):
    from dftune.prepared import read_manifest
    from dftune.stages import evaluate

    crops, vit = setup
    out = tmp_path / "run"
    text = _run(_torchrun(*_train_args(crops, vit, out, "--epochs", "2")))
    assert "device cpu:0 x2" in text and text.count("best model:") == 1  # one group, one summary
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    settings = (out / "settings.yaml").read_text()
    assert "processes: 2" in settings
    best = next(h for h in hist if h["best"])
    n_val = len(read_manifest(crops, ["val"]))
    assert best["val"]["frame"]["n"] == n_val  # gathered without the padding duplicates
    res = evaluate.run([str(out / "best")], crops, None,
                       evaluate.EvalSettings(split="val", tta=(), plots=False, progress=False, device="cpu"))
    res = res.to_dict()
    frame = res["models"][next(iter(res["models"]))]["frame"]["at_0.5"]
    assert frame["auc"] == best["val"]["frame"]["auc"]
    assert frame["n"] == n_val


def test_a_run_killed_after_an_epoch_resumes_in_two_processes_to_the_uninterrupted_weights(setup, tmp_path):
    crops, vit = setup
    whole = tmp_path / "whole"
    _run(_torchrun(*_train_args(crops, vit, whole, "--epochs", "3")))
    cut = tmp_path / "cut"
    p = subprocess.Popen(_torchrun(*_train_args(crops, vit, cut, "--epochs", "3")), env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # killed once epoch 1's checkpoint is complete
            h = cut / "history.json"
            if h.exists() and (cut / "last" / "training_state").exists() and json.loads(h.read_text() or "[]"):
                break
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGKILL)
    finally:
        p.wait(timeout=60)
    done = len(json.loads((cut / "history.json").read_text()))
    assert done < 3, "the run ended before it could be killed"
    _run(_torchrun(*_train_args(crops, vit, cut, "--epochs", "3", "--resume")))
    a, b = _weights(whole / "last"), _weights(cut / "last")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert [h["epoch"] for h in json.loads((cut / "history.json").read_text())] == [1, 2, 3]


def test_training_modes_and_wise_under_two_processes(setup, tmp_path):
    crops, vit = setup
    out = tmp_path / "modes"
    text = _run(_torchrun(*_train_args(crops, vit, out, "--epochs", "2", "--tune", "lora", "--ema", "0.9",
                                       "--head-epochs", "1", "--paired", "--sbi", "0.5", "--wise", "0.5")))
    assert "device cpu:0 x2" in text
    for d in ("best", "last", "wise"):
        assert (out / d / "model.safetensors").exists(), d
    assert not list(out.glob(".wise*")) and not list(out.glob("*.tmp"))  # written once, by the main process
    meta = json.loads((out / "wise" / "dftune.json").read_text())
    assert meta["extra"]["merge"]["alpha"] == 0.5


def test_predict_under_two_processes_writes_one_csv_equal_to_a_single_process(setup, tmp_path):
    """predict under torchrun scores and writes in the main process alone: one writer, one CSV."""
    from PIL import Image

    from dftune.synthetic import identity

    crops, vit = setup
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        Image.fromarray(identity(i).rgb).resize((96, 96)).save(inputs / f"{i}.png")
    args = ["predict", str(inputs), "--model", str(vit), "--no-progress", "--device", "cpu", "--workers", "0"]
    one = subprocess.run([sys.executable, "-m", "dftune", *args, "--csv", str(tmp_path / "one.csv")], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          "-m", "dftune", *args, "--csv", str(tmp_path / "two.csv")], env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert (two.stdout + two.stderr).count("dftune predict ->") == 1
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
