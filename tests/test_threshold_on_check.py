"""train/merge --threshold-on check: the stored threshold is the macro-F1-optimal one on the check sets' rows
pooled, and its provenance names them; history.json and the end summary say which threshold was stored; without
--check it is refused with the reason; the default (val) stores 0.5 untuned, as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dftune import checks, metrics, scoring
from dftune.cli import main

torch.set_num_threads(1)

ARGS = ["--epochs", "1", "--batch-size", "8", "--no-progress", "--no-tensorboard", "--set", "num_workers=0"]


@pytest.fixture(scope="module")
def env(make_crops, tiny_vit):
    data = make_crops("d", n_videos=4, frames=2, size=32, methods=("Deepfakes",))
    c1 = make_crops("c1", n_videos=4, frames=2, size=32, methods=("FaceShifter",), first_id=200, seed=4,
                    look="warm-jpeg")
    c2 = make_crops("c2", n_videos=4, frames=2, size=32, methods=("FaceSwap",), first_id=300, seed=5,
                    look="cool-soft")
    return {"data": data, "c1": c1, "c2": c2, "vit": tiny_vit(image_size=32, hidden_size=32)}


def test_pooled_threshold_is_the_optimum_over_every_check_row_with_videos_kept_apart():
    y1, p1 = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])  # this set alone: ~0.25
    y2, p2 = np.array([0, 0, 1, 1]), np.array([0.6, 0.7, 0.8, 0.9])  # this one: ~0.75
    got = checks.pooled_threshold([("a", y1, p1, ["v0", "v0", "v1", "v1"]),
                                   ("b", y2, p2, ["v0", "v0", "v1", "v1"])])  # same video names, other sets
    t, f1 = metrics.best_threshold(np.r_[y1, y2], np.r_[p1, p2])
    assert got["frame"] == {"threshold": t, "macro_f1": f1, "n": 8}
    assert got["video"]["n"] == 4  # a.v0, a.v1, b.v0, b.v1: not merged across sets


def test_train_threshold_on_check_stores_the_check_optimum_naming_the_sets(env, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(env["data"]), "--model", env["vit"], "--out", str(run), "--check",
                 str(env["c1"]), "--check", str(env["c2"]), "--threshold-on", "check", "--wise", "0.5", *ARGS]) == 0
    out = " ".join(capsys.readouterr().out.split())
    rec = json.loads((run / "history.json").read_text())[-1]
    names = [str(env["c1"]), str(env["c2"])]
    stored = rec["threshold"]
    assert stored["value"] == rec["check"]["threshold"]["frame"]["threshold"]  # --level frame
    assert stored["source"]["by"] == "train" and stored["source"]["checks"] == names
    assert stored["source"]["level"] == "frame" and stored["source"]["tta"] == []
    meta = json.loads((run / "best" / "dftune.json").read_text())
    assert meta["threshold"] == stored["value"] != 0.5 and meta["threshold_source"] == stored["source"]
    # the value is the pooled optimum of best/ on the two check sets, scored again from the folder
    sets = [checks.load(n) for n in names]
    again = checks.model_threshold(scoring.load_model(str(run / "best"), device="cpu"), sets)["frame"]
    assert again["threshold"] == pytest.approx(meta["threshold"], abs=1e-4)
    # wise/ gets its own model's check optimum, named the same way
    wise = json.loads((run / "wise" / "dftune.json").read_text())
    w_again = checks.model_threshold(scoring.load_model(str(run / "wise"), device="cpu"), sets)["frame"]
    assert wise["threshold"] == pytest.approx(w_again["threshold"], abs=1e-6)
    assert wise["threshold_source"]["by"] == "merge" and wise["threshold_source"]["checks"] == names
    # the end summary says which threshold was stored, and where it came from
    assert f"best/ threshold: {meta['threshold']:.4f} (tuned for macro F1 by train: data check sets " in out
    assert f"threshold {wise['threshold']:.4f} (tuned for macro F1 by merge: data check sets {names[0]}" in out


def test_threshold_on_val_keeps_the_untuned_default_and_says_so(env, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(env["data"]), "--model", env["vit"], "--out", str(run), "--check",
                 str(env["c1"]), *ARGS]) == 0
    out = " ".join(capsys.readouterr().out.split())
    meta = json.loads((run / "best" / "dftune.json").read_text())
    assert meta["threshold"] == 0.5 and meta["threshold_source"] == {"by": "default"}
    assert json.loads((run / "history.json").read_text())[-1]["threshold"] == {"value": 0.5,
                                                                               "source": {"by": "default"}}
    assert "best/ threshold: 0.5000 (default: not tuned" in out


def test_threshold_on_check_without_check_sets_is_refused_with_the_reason(env, tmp_path, capsys):
    rc = main(["train", "--data", str(env["data"]), "--model", env["vit"], "--out", str(tmp_path / "r"),
               "--threshold-on", "check", *ARGS])
    assert rc == 2 and "--threshold-on check tunes the stored threshold on check sets" in capsys.readouterr().err
    assert not (tmp_path / "r" / "best").exists()
    rc = main(["merge", "--model", env["vit"], "--model", env["vit"],
               "--out", str(tmp_path / "m"), "--threshold-on", "check"])
    assert rc == 2 and "give --check PATH" in capsys.readouterr().err


def test_merge_threshold_on_check_stores_the_merged_models_check_optimum(env, tmp_path, tiny_vit, capsys):
    other = tiny_vit(image_size=32, hidden_size=32, seed=1)
    out = tmp_path / "m"
    assert main(["merge", "--model", env["vit"], "--model", other,
                 "--alpha", "0.5", "--out", str(out), "--check", str(env["c1"]),
                 "--threshold-on", "check"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    meta = json.loads((out / "dftune.json").read_text())
    again = checks.model_threshold(scoring.load_model(str(out), device="cpu"), [checks.load(env["c1"])])["frame"]
    assert meta["threshold"] == pytest.approx(again["threshold"], abs=1e-6)
    assert meta["threshold_source"]["checks"] == [str(env["c1"])] and meta["threshold_source"]["by"] == "merge"
    assert f"threshold {meta['threshold']:.4f} (tuned for macro F1 by merge: data check sets {env['c1']}" in text
