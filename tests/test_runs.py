"""Runs to name, resume, re-run, list and compare: ``train --name`` (runs/NAME, NAME2...), ``--resume RUN`` with
nothing else (and a copy of the starting model accepted when identical), ``--config RUN/settings.yaml`` alone,
history.csv / history.png every epoch, and ``dftune runs``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

from conftest import train_killed_after  # noqa: E402
from dftune.cli import main  # noqa: E402
from dftune.training.config import TrainConfig  # noqa: E402

TINY = dict(image_size=32, hidden_size=32)
FLAGS = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--workers", "0", "--no-aug", "--no-tensorboard",
         "--no-progress", "--patience", "0"]
CFG = dict(epochs=2, batch_size=8, lr=1e-3, num_workers=0, aug=False, tensorboard=False, patience=0)


@pytest.fixture(scope="module")
def crops(make_crops) -> Path:
    return make_crops("runs_crops", n_videos=4, frames=3, size=32, methods=("Deepfakes",))


@pytest.fixture
def vit(tiny_vit) -> str:
    return tiny_vit({0: "Realism", 1: "Deepfake"}, name="runs_vit", **TINY)


def test_name_numbers_runs_and_each_writes_history_csv_and_png(crops, vit, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--data", str(crops), "--model", vit, "--name", "exp", *FLAGS]
    assert main(base) == 0
    assert main(base + ["--epochs", "1"]) == 0
    assert (tmp_path / "runs" / "exp" / "best").is_dir() and (tmp_path / "runs" / "exp2" / "best").is_dir()
    assert "run folder: runs/exp2" in capsys.readouterr().err
    run = tmp_path / "runs" / "exp"
    rows = list(csv.DictReader((run / "history.csv").open()))
    hist = json.loads((run / "history.json").read_text())
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r, h in zip(rows, hist, strict=True):
        assert float(r["train_loss"]) == pytest.approx(h["train"]["loss"], rel=1e-5)
        assert float(r["lr"]) == pytest.approx(h["train"]["lr"], rel=1e-5)
        assert float(r["val_frame_macro_f1"]) == pytest.approx(h["val"]["frame"]["macro_f1"], rel=1e-5)
        assert float(r["val_video_auc"]) == pytest.approx(h["val"]["video"]["auc"], rel=1e-5)
    assert (run / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_run_needs_nothing_else_and_accepts_an_identical_copy_of_the_model(crops, vit, tmp_path, capsys):
    out = tmp_path / "run"
    train_killed_after(1, crops, vit, out, TrainConfig(**CFG))
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1]
    # the starting model moved elsewhere (a copy, byte for byte) and its old place emptied
    copy = tmp_path / "moved" / "model"
    shutil.copytree(vit, copy)
    changed = tmp_path / "changed"
    shutil.copytree(vit, changed)
    cfg_json = json.loads((changed / "config.json").read_text())
    cfg_json["layer_norm_eps"] = 1e-6
    (changed / "config.json").write_text(json.dumps(cfg_json))
    shutil.rmtree(vit)
    try:
        assert main(["train", "--resume", str(out), "--model", str(changed), "--no-progress"]) == 2
        assert "not a copy of it" in capsys.readouterr().err
        assert main(["train", "--resume", str(out), "--model", str(copy), "--no-progress"]) == 0
    finally:
        shutil.copytree(copy, vit)
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]
    assert [int(r["epoch"]) for r in csv.DictReader((out / "history.csv").open())] == [1, 2]
    s = yaml.safe_load((out / "settings.yaml").read_text())
    assert s["_stretches"][-1]["resumed"] and s["_stretches"][-1]["last_epoch"] == 2


def test_resume_run_alone_takes_data_and_model_from_the_run(crops, vit, tmp_path):
    out = tmp_path / "run"
    train_killed_after(1, crops, vit, out, TrainConfig(**CFG))
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]


def test_config_of_a_run_reruns_it_without_other_flags(crops, vit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "first"
    assert main(["train", "--data", str(crops), "--model", vit, "--out", str(first), *FLAGS, "--seed", "3"]) == 0
    assert main(["train", "--config", str(first / "settings.yaml"), "--no-progress"]) == 0
    again = tmp_path / "runs" / "train"
    a, b = (yaml.safe_load((d / "settings.yaml").read_text()) for d in (first, again))
    def settings(d):
        return {k: v for k, v in d.items() if not k.startswith("_")}

    assert settings(a) == settings(b)
    assert (a["_data"], a["_model"]) == (b["_data"], b["_model"])
    # the same settings, seed and data: the same training
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (first, again))
    assert [h["train"]["loss"] for h in ha] == pytest.approx([h["train"]["loss"] for h in hb], rel=1e-4)


def test_runs_lists_each_run_with_its_best_epoch_metrics_threshold_and_contest_number(crops, vit, tmp_path,
                                                                                      monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        assert main(["train", "--data", str(crops), "--model", vit, "--name", name, *FLAGS]) == 0
    printed = capsys.readouterr().out
    assert "macro F1 at best/'s threshold, as predict applies it: frame" in printed
    assert main(["runs", "--csv", str(tmp_path / "runs.csv")]) == 0
    table = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [r["run"] for r in rows] == ["a", "b"] and "a" in table and "b" in table
    for r in rows:
        hist = json.loads((tmp_path / "runs" / r["run"] / "history.json").read_text())
        best = [h for h in hist if h["best"]][-1]
        assert int(r["best epoch"]) == best["epoch"]
        assert r["data"] == str(Path(crops).resolve()) and r["model"] == vit
        assert float(r["val frame F1"]) == pytest.approx(best["val"]["frame"]["macro_f1"], abs=1e-4)
        assert float(r["threshold"]) == 0.5 and r["threshold by"] == "default"
        # untuned: predict applies 0.5, so the contest number on val is val's macro F1 at 0.5, frame and video
        assert float(r["contest frame F1"]) == pytest.approx(best["val"]["frame"]["macro_f1"], abs=1e-4)
        assert float(r["contest video F1"]) == pytest.approx(best["val"]["video"]["macro_f1"], abs=1e-4)
        assert r["contest on"] == "val"
    # a threshold written by evaluate: the runs table shows it and the figure evaluate measured there
    assert main(["evaluate", "--model", str(tmp_path / "runs" / "a" / "best"), "--data", str(crops),
                 "--write-threshold", "--no-progress", "--no-plots"]) == 0
    capsys.readouterr()
    assert main(["runs", "--csv", str(tmp_path / "runs2.csv")]) == 0
    a = next(r for r in csv.DictReader((tmp_path / "runs2.csv").open()) if r["run"] == "a")
    stored = json.loads((tmp_path / "runs" / "a" / "best" / "dftune.json").read_text())
    assert a["threshold by"] == "evaluate" and float(a["threshold"]) == pytest.approx(stored["threshold"], abs=1e-4)
    assert a["contest on"].startswith("test of") and a["contest frame F1"]


def test_ctrl_c_in_a_named_run_says_how_to_resume_it(crops, vit, tmp_path, monkeypatch, capsys):
    from dftune.stages import train

    monkeypatch.chdir(tmp_path)
    real = train._train_epoch

    def epoch(r, e, first):
        if e == 2:
            raise KeyboardInterrupt
        return real(r, e, first)

    monkeypatch.setattr(train, "_train_epoch", epoch)
    assert main(["train", "--data", str(crops), "--model", vit, "--name", "x", *FLAGS]) == 130
    assert "continue from epoch 2 with: dftune train --resume runs/x" in capsys.readouterr().err
    monkeypatch.setattr(train, "_train_epoch", real)
    assert main(["train", "--resume", "runs/x", "--no-progress"]) == 0
    assert [h["epoch"] for h in json.loads((tmp_path / "runs" / "x" / "history.json").read_text())] == [1, 2]


def test_history_png_is_drawn_at_the_end_and_at_most_once_a_minute_between(tmp_path, monkeypatch):
    from dftune import runs

    rec = {"epoch": 1, "train": {"loss": 0.7, "macro_f1": 0.5, "lr": 1e-3}, "best": True, "monitor": 0.6,
           "val": {"frame": {"loss": 0.6, "macro_f1": 0.6, "auc": 0.7}, "video": {"macro_f1": 0.5, "auc": 0.8}},
           "check": {"mean": {"frame": {"auc": 0.55}, "video": {"auc": 0.6}}, "sets": {"c": {}}}}
    runs.write_history(tmp_path, [rec], final=False)
    assert (tmp_path / "history.csv").is_file() and not (tmp_path / "history.png").exists()
    monkeypatch.setattr(runs, "DRAW_EVERY_S", 0.0)
    runs.write_history(tmp_path, [rec, {**rec, "epoch": 2, "best": False}], final=False)
    assert (tmp_path / "history.png").is_file()
    (tmp_path / "history.png").unlink()
    monkeypatch.setattr(runs, "DRAW_EVERY_S", 1e9)
    runs.write_history(tmp_path, [rec], final=True)
    assert (tmp_path / "history.png").is_file()
    row = next(csv.DictReader((tmp_path / "history.csv").open()))
    assert row["check_mean_frame_auc"] == "0.55" and row["val_video_auc"] == "0.8" and row["lr"] == "0.001"


def test_what_is_missing_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1"]) == 2
    assert "give --data PREPARED_DIR and --model MODEL (or --resume RUN_DIR" in capsys.readouterr().err
    (tmp_path / "plain.yaml").write_text("epochs: 2\n")
    assert main(["train", "--config", "plain.yaml"]) == 2
    assert "plain.yaml: records no _data / _model" in capsys.readouterr().err
    assert main(["train", "--resume"]) == 2
    assert "give its folder, --resume RUN_DIR" in capsys.readouterr().err
    assert main(["train", "--resume", "a", "--out", "b"]) == 2
    assert "name two runs" in capsys.readouterr().err
    assert main(["train", "--name", "x/y", "--data", "d", "--model", "m"]) == 2
    assert "one folder name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
