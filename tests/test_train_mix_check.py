"""train on several prepared folders in one run (each dataset's val on its own row, shares per dataset), and
check sets from outside the training data scored at every validation (--check), deciding best/ with
--select-on check and choosing the WiSE-FT alpha with --wise auto."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dftune.cli import main


@pytest.fixture(scope="module")
def env(make_crops, tiny_vit):
    a = make_crops("a", n_videos=4, frames=2, size=32, methods=("Deepfakes", "FaceSwap"))
    b = make_crops("b", n_videos=4, frames=2, size=32, methods=("Face2Face",), first_id=100, look="cool-soft")
    check = make_crops("chk", n_videos=4, frames=2, size=32, methods=("FaceShifter",), first_id=200, seed=4,
                       look="warm-jpeg")
    return {"a": a, "b": b, "check": check, "vit": tiny_vit(image_size=32, hidden_size=32)}


ARGS = ["--epochs", "2", "--batch-size", "8", "--no-progress", "--no-tensorboard", "--set", "num_workers=0"]


def test_two_datasets_in_one_run_report_each_val_and_name_both(env, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(env["a"]), "--data", str(env["b"]), "--model", env["vit"], "--out", str(run),
                 *ARGS]) == 0
    out = " ".join(capsys.readouterr().out.split())
    hist = json.loads((run / "history.json").read_text())
    names = {env["a"].name, env["b"].name}  # a mix names each dataset after its folder
    assert set(hist[-1]["datasets"]) == names  # each dataset's val on its own row...
    assert hist[-1]["val"]["frame"]["n"] == sum(m["frame"]["n"] for m in hist[-1]["datasets"].values())  # ...pooled
    assert re.search(rf"val {env['a'].name}: frame f1 [0-9.]+ auc", out) and f"val {env['b'].name}" in out
    meta = json.loads((run / "best" / "dftune.json").read_text())["extra"]
    assert set(meta["datasets"]) == names and meta["data"] == str((run / "data").resolve())
    # a resume reuses the mix; other --data is refused
    assert main(["train", "--data", str(env["a"]), "--data", str(env["check"]), "--model", env["vit"], "--out",
                 str(run), "--resume", *ARGS]) == 2


def test_data_weights_give_each_dataset_its_share_of_an_epoch():
    from dftune.training.data import EpochSampler

    labels = np.array([0, 1] * 50 + [0, 1] * 5)  # 100 rows of one dataset, 10 of another
    w = np.array([0.5 / 100] * 100 + [0.5 / 10] * 10)
    idx = np.concatenate([EpochSampler(labels, seed=s, weights=w).indices() for s in range(20)])
    assert abs((idx >= 100).mean() - 0.5) < 0.05  # the small dataset is half of every epoch, as asked
    plain = EpochSampler(labels, seed=0).indices()
    assert sorted(plain.tolist()) == list(range(110))  # without weights: a permutation, as before


def test_check_sets_are_scored_beside_val_and_can_decide_best_and_alpha(env, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(env["a"]), "--model", env["vit"], "--out", str(run), "--check",
                 str(env["check"]), "--select-on", "check", "--metric", "auc", "--wise", "auto", *ARGS]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "check sets (mean of 1)" in out and "beside val, at the best epoch" in out
    hist = json.loads((run / "history.json").read_text())
    for h in hist:
        assert h["monitor"] == h["check"]["mean"]["frame"]["auc"]  # the check sets decide
    best = max(hist, key=lambda h: h["monitor"])
    assert json.loads((run / "best" / "dftune.json").read_text())["extra"]["epoch"] == best["epoch"]
    curve = json.loads((run / "wise" / "dftune.json").read_text())["extra"]["merge"]["alpha_auto"]
    assert curve["checks"] == [str(env["check"])] and len(curve["points"]) == 11
    assert (run / "wise" / "alpha_curve.png").exists()
    # the end summary shows the curve the alpha was chosen on, the chosen one marked
    assert f"--wise auto: {curve['chosen']:g}, best on {env['check']}" in out and out.count("<- chosen") == 1


def test_a_check_set_from_the_training_data_is_refused_naming_what_it_shares(env, tmp_path, capsys):
    rc = main(["train", "--data", str(env["a"]), "--model", env["vit"], "--out", str(tmp_path / "r"), "--check",
               str(env["a"]), *ARGS])
    assert rc == 2 and re.search(r"--check .*: shares \d+ identities", capsys.readouterr().err)
    rc = main(["train", "--data", str(env["a"]), "--model", env["vit"], "--out", str(tmp_path / "r2"), "--wise",
               "auto", *ARGS])
    assert rc == 2 and "on the training data's own val it picks 1.0" in capsys.readouterr().err
