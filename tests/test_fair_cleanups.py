"""Small things said right: a check-set threshold is headed ``check thr`` and a labels CSV's provenance names no
split; the README's ``evaluate --split val --write-threshold`` gives no warning about tuning on the measured split;
``merge --alpha A --check`` says the check sets go unused; ``--resume`` prints its best value readably."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest

from dftune.cli import main
from dftune.prepared import read_manifest

ARGS = ["--batch-size", "8", "--no-progress", "--no-tensorboard", "--set", "num_workers=0", "--set",
        "max_train_batches=1"]


@pytest.fixture(scope="module")
def env(make_crops, tiny_vit):
    a = make_crops("a", n_videos=4, frames=2, size=32, methods=("Deepfakes",))
    b = make_crops("b", n_videos=4, frames=2, size=32, methods=("Face2Face",), first_id=100, look="cool-soft")
    rows = read_manifest(b, ("test",))
    labels = b / "labels.csv"  # a labels CSV of raw files: b's test crops as images
    labels.write_text("filename,label\n" + "".join(f"{r.path},{r.label}\n" for r in rows))
    return {"a": a, "b": b, "labels": labels, "vit": tiny_vit(image_size=32, hidden_size=32)}


def test_a_check_set_threshold_is_headed_check_thr_and_a_labels_csv_names_no_split(env, tmp_path, capsys):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(env["vit"], model)
    out = tmp_path / "e"
    assert main(["evaluate", "--model", str(model), "--data", str(env["a"]), "--check", str(env["labels"]),
                 "--write-threshold", "--out", str(out), "--no-plots", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "check thr" in text and "val thr" not in text
    md = (out / "report.md").read_text()
    assert "| check thr |" in md and "`check thr` = the macro-F1-optimal threshold on the check sets" in md
    src = json.loads((model / "dftune.json").read_text())["threshold_source"]
    assert src["checks"] == [str(env["labels"])] and "(test)" not in src["data"] and ":val" not in src["data"]


def test_evaluate_split_val_write_threshold_gives_no_tuned_on_the_measured_split_warning(env, tmp_path, caplog):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(env["vit"], model)
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--model", str(model), "--data", str(env["a"]), "--split", "val",
                     "--write-threshold", "--no-progress"]) == 0
    assert "tuned on the split being measured" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # measuring val at a threshold tuned on val, for its numbers: said
        assert main(["evaluate", "--model", str(model), "--data", str(env["a"]), "--split", "val",
                     "--no-progress"]) == 0
    assert "tuned on the split being measured" in caplog.text


def test_merge_with_a_fixed_alpha_says_its_check_sets_go_unused(env, tmp_path, capsys):
    assert main(["merge", env["vit"], env["vit"], "--alpha", "0.5", "--check", str(env["b"]), "--out",
                 str(tmp_path / "m")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"--check {env['b']}: not used; it serves --alpha auto" in err and "dftune evaluate --model" in err


def test_resume_prints_its_best_value_readably(env, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(env["a"]), "--model", env["vit"], "--out", str(run), "--epochs", "1",
                 *ARGS]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(env["a"]), "--model", env["vit"], "--out", str(run), "--epochs", "2",
                 "--resume", *ARGS]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "resuming" in ln)
    assert re.search(r"\(best frame f1: \d\.\d{4} at epoch 1\)", line), line
    assert os.path.isdir(run / "best")


def test_a_study_records_a_labels_csv_without_splits_and_still_resumes_one_recorded_with_them(env):
    from dftune.stages import tune

    keys = tune._check_keys([str(env["labels"]), str(env["a"]), f"{env['b']}:test"])
    assert keys == [str(env["labels"].resolve()), f"{env['a'].resolve()}:val+test", f"{env['b'].resolve()}:test"]
    assert tune._same_checks([f"{env['labels'].resolve()}:val+test"], keys[:1])  # a study made before: the same
    assert not tune._same_checks([f"{env['a'].resolve()}:test"], keys[1:2])
