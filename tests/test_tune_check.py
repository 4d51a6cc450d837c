"""tune --check: the study optimises the check sets' mean metric, records the val metric beside it (Optuna user
attributes, trials.csv, the table), selects each trial's epoch on the check sets, says so in best.yaml (which keeps
the check sets for the retrain); a continued study with other check sets, and a check set sharing identities with
the tuning data, are refused (the latter before any trial runs). 1 trial of 1 epoch on a tiny ViT."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest
import torch
import yaml

torch.set_num_threads(1)

SETS = ["num_workers=0", "tensorboard=false", "batch_size=8", "patience=0", "aug=false", "sbi=0"]


@pytest.fixture(scope="module")
def env(make_crops, tiny_vit):
    data = make_crops("d", n_videos=4, frames=2, size=32, methods=("Deepfakes",))
    c1 = make_crops("c1", n_videos=4, frames=2, size=32, methods=("FaceShifter",), first_id=200, seed=4,
                    look="warm-jpeg")
    c2 = make_crops("c2", n_videos=4, frames=2, size=32, methods=("FaceSwap",), first_id=300, seed=5)
    return {"data": data, "c1": c1, "c2": c2, "vit": tiny_vit(image_size=32)}


def _cli(env, out, *extra) -> tuple[int, str, str]:
    from dftune.cli import main

    argv = ["tune", "--data", str(env["data"]), "--model", env["vit"], "--out", str(out), "--trials", "1",
            "--epochs", "1", "--pruner", "none"]
    for s in SETS:
        argv += ["--set", s]
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = main(argv + list(extra))
    return rc, " ".join(o.getvalue().split()), e.getvalue()


def test_tune_check_optimises_the_check_sets_mean_and_keeps_val_beside_it(env, tmp_path):
    import optuna

    out = tmp_path / "s"
    rc, text, _ = _cli(env, out, "--check", str(env["c1"]))
    assert rc == 0
    trial_run = out / "trials" / "trial_0000"
    hist = {h["epoch"]: h for h in json.loads((trial_run / "history.json").read_text())}
    ran = yaml.safe_load((trial_run / "settings.yaml").read_text())
    assert ran["checks"] == [str(env["c1"])] and ran["select_on"] == "check"  # the trial selects on them too
    study = optuna.load_study(study_name=json.loads((out / "study.json").read_text())["study_name"],
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    t = study.trials[0]
    best = hist[t.user_attrs["best_epoch"]]
    assert t.value == best["check"]["mean"]["frame"]["best_threshold_f1"]  # the objective: the check sets' mean
    assert t.user_attrs["val_value"] == best["val"]["frame"]["best_threshold_f1"]  # val, recorded beside it
    with open(out / "trials.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert float(row["value"]) == t.value and float(row["val_value"]) == t.user_attrs["val_value"]
    assert "val frame_f1" in text and f"the mean over the check sets {env['c1']}" in text
    b = yaml.safe_load((out / "best.yaml").read_text())
    assert b["_tune"]["optimised_on"] == "check" and b["_tune"]["checks"] == [str(env["c1"])]
    assert "check sets" in b["_tune"]["optimised"]
    assert b["checks"] == [str(env["c1"])] and b["select_on"] == "check"  # the retrain scores and selects on them
    from dftune.training.config import load_yaml

    assert load_yaml(out / "best.yaml")["checks"] == [str(env["c1"])]
    assert "val |" in (out / "report.md").read_text()

    # a continued study with other check sets (or none) is refused, naming both
    rc, _, err = _cli(env, out, "--check", str(env["c2"]))
    assert rc == 2 and f"--check {env['c1'].resolve()}:val+test -> {env['c2'].resolve()}:val+test" in err
    rc, _, err = _cli(env, out)
    assert rc == 2 and "-> (none: val)" in err
    rc, _, _ = _cli(env, out, "--check", str(env["c1"]))  # the same: continued (nothing to run)
    assert rc == 0


def test_a_val_study_is_not_continued_with_check_sets(env, tmp_path):
    out = tmp_path / "s"
    assert _cli(env, out)[0] == 0
    rc, _, err = _cli(env, out, "--check", str(env["c1"]))
    assert rc == 2 and "--check (none: val) -> " in err


def test_a_check_set_leaking_identities_with_the_tuning_data_is_refused_before_any_trial(env, tmp_path):
    out = tmp_path / "s"
    rc, _, err = _cli(env, out, "--check", str(env["c1"]), "--check", str(env["data"]))
    assert rc == 2 and f"--check {env['data']}: shares" in err and "identities" in err
    assert not out.exists()  # no study, no trial


def test_trials_select_on_the_check_sets_unless_set_otherwise(env):
    from dftune.search.metric import parse_metric
    from dftune.stages import tune

    metric = parse_metric("frame_auc", [str(env["c1"])])
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}
    base, _, fixed = tune._base_and_space(tune.TuneSettings(space=space, checks=(str(env["c1"]),)), metric)
    assert base.checks == (str(env["c1"]),) and base.select_on == "check" and fixed["select_on"] == "check"
    base, _, _ = tune._base_and_space(tune.TuneSettings(space=space, checks=(str(env["c1"]),),
                                                        sets={"select_on": "val"}), metric)
    assert base.checks == (str(env["c1"]),) and base.select_on == "val"  # --set wins; the objective stays check
    assert metric.of({"val": {"frame": {"auc": 0.9}}}) is None  # no check record: undefined, never val's
    assert metric.val_of({"val": {"frame": {"auc": 0.9}}}) == 0.9
