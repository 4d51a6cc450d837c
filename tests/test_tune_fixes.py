"""dftune tune: fixes (retrain data, recipes, resume checks, torn journals, moved folders, failures, inputs).

Each test fails before its fix; every study here is 1-2 trials of 1 epoch on tiny ViTs and demo crops."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from dftune.search.space import SpaceError, check_space, load_space
from dftune.stages import tune
from dftune.training.config import RECIPES, TrainConfig, parse_sets

torch.set_num_threads(1)

SETS = ["num_workers=0", "tensorboard=false", "batch_size=8", "patience=0"]
SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
         "schedule": {"type": "categorical", "choices": ["constant", "cosine"]},
         "balance": "loss", "aug": False, "sbi": 0.0, "weight_decay": 0.01, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def crops(make_crops) -> Path:
    return make_crops(n_videos=4, frames=2, size=32, methods=("Deepfakes",))


@pytest.fixture(scope="module")
def vit(tiny_vit) -> str:
    return tiny_vit({0: "Realism", 1: "Deepfake"}, image_size=32)


def _settings(**kw) -> tune.TuneSettings:
    d = dict(trials=1, epochs=1, space=dict(SPACE), pruner="none", seed=0, sets=parse_sets(SETS))
    d.update(kw)
    return tune.TuneSettings(**d)


def _rows(study_dir: Path) -> list[dict]:
    with open(study_dir / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _cli(*argv) -> tuple[int, str, str]:
    from dftune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _argv(crops, vit, out, *extra) -> list[str]:
    a = ["tune", "--data", str(crops), "--model", vit, "--out", str(out), "--trials", "1", "--epochs", "1",
         "--pruner", "none"]
    for s in SETS:
        a += ["--set", s]
    return a + list(extra)


def _quiet(m):
    return None


# ------------------------------------------------------------------ 1. --fraction: retrain on all the data


def test_fraction_retrain_command_and_best_yaml_name_the_original_data(crops, vit, tmp_path):
    out = tmp_path / "s"
    rc, text, _ = _cli(*_argv(crops, vit, out, "--fraction", "0.5"))
    assert rc == 0
    assert f"retrain: dftune train --data {crops} " in text
    assert str(out / "data") not in text.split("retrain:")[1]
    meta = yaml.safe_load((out / "best.yaml").read_text())["_tune"]
    assert meta["retrain_data"] == str(crops.resolve())
    assert meta["data"] == str((out / "data").resolve())  # what the trial trained and was scored on
    report = (out / "report.md").read_text()
    assert f"dftune train --data {crops} " in report and f"- data: `{crops}`" in report
    # 6. the end line says why importance.png is missing (1 complete trial)
    assert "importance.png not drawn: parameter importances: need at least 2 complete trials" in text


# ------------------------------------------------------------------ 2. --set recipe=generalise


def test_recipe_is_expanded_for_trials_and_kept_in_best_yaml(crops, vit, tmp_path):
    out = tmp_path / "s"
    lines = []
    sm = tune.run(crops, vit, out, _settings(sets=parse_sets(SETS + ["recipe=generalise"])), say=lines.append)
    assert sm.by_state == {"COMPLETE": 1}
    best = yaml.safe_load((out / "best.yaml").read_text())
    recipe = RECIPES["generalise"]
    assert best["recipe"] == "generalise" and {k: best[k] for k in recipe} == recipe
    ran = yaml.safe_load((out / "trials" / "trial_0000" / "settings.yaml").read_text())
    assert {k: ran[k] for k in recipe} == recipe
    assert all(f"{k}={v}" in lines[1] for k, v in recipe.items())  # the fixed settings line
    # --set still wins over the recipe, a sampled value over both
    space = dict(SPACE, wise_alpha={"type": "float", "low": 0.5, "high": 0.9})
    base, searched, _ = tune._base_and_space(_settings(sets={"recipe": "generalise", "ema": "0.9"}, space=space),
                                             tune.parse_metric("frame_f1"))
    assert base.ema == 0.9 and base.ema_horizon == 0.0 and "wise_alpha" in searched
    # a searched EMA, either way, replaces the recipe's (whichever way the recipe gives it)
    for key, spec in (("ema", {"type": "float", "low": 0.9, "high": 0.99}),
                      ("ema_horizon", {"type": "float", "low": 0.1, "high": 0.5})):
        base, searched, fixed = tune._base_and_space(_settings(sets={"recipe": "generalise"},
                                                               space=dict(SPACE, **{key: spec})),
                                                     tune.parse_metric("frame_f1"))
        assert key in searched and (base.ema, base.ema_horizon) == (0.0, 0.0)
        assert not {"ema", "ema_horizon"} & set(fixed) and fixed["wise_alpha"] == recipe["wise_alpha"]
    with pytest.raises(SpaceError, match="'recipe': cannot be searched"):
        tune._base_and_space(_settings(space=dict(SPACE, recipe={"type": "categorical",
                                                                 "choices": ["guide", "generalise"]})),
                             tune.parse_metric("frame_f1"))


# ------------------------------------------------------------------ 3. resuming with other data, model, epochs, --set


def test_resume_with_other_data_model_epochs_or_set_is_refused(crops, vit, tmp_path, tmp_path_factory):
    from dftune.model.load import build_tiny_vit
    from dftune.synthetic import make_crops

    out = tmp_path / "s"
    tune.run(crops, vit, out, _settings(), say=_quiet)
    other_data = make_crops(tmp_path / "other", n_videos=4, frames=2, size=32, methods=("FaceSwap",), seed=1)
    other_vit = str(build_tiny_vit(tmp_path / "vit2", {0: "Realism", 1: "Deepfake"}, image_size=32, hidden_size=16))
    with pytest.raises(ValueError) as e:
        tune.run(other_data, other_vit, out, _settings(epochs=2, sets=parse_sets(SETS[:2] + ["batch_size=4"])),
                 say=_quiet)
    msg = str(e.value)
    assert f"--data {crops.resolve()} -> {other_data.resolve()}" in msg
    assert f"--model {vit} -> {other_vit}" in msg
    assert "--epochs 1 -> 2" in msg and "--set batch_size: 8 -> 4" in msg and "--set patience: 0 -> (not set)" in msg
    assert len(_rows(out)) == 1
    # the same data and model elsewhere (another machine's paths), and a --set that changes nothing learned: fine
    shutil.copytree(crops, tmp_path / "crops2")
    shutil.copytree(vit, tmp_path / "vit3")
    sm = tune.run(tmp_path / "crops2", str(tmp_path / "vit3"), out, _settings(sets=parse_sets(SETS + ["threads=1"])),
                  say=_quiet)
    assert sm.ran_here == 0 and sm.trials == 1


# ------------------------------------------------------------------ 4. a torn journal


def test_torn_journal_is_repaired_and_a_bad_middle_line_named(crops, vit, tmp_path):
    out = tmp_path / "s"
    tune.run(crops, vit, out, _settings(), say=_quiet)
    journal = out / "study.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-7])  # the last record cut (a process killed while appending it)
    lines = []
    sm = tune.run(crops, vit, out, _settings(trials=2), say=lines.append)
    assert any(str(journal) in m and "cut off" in m and ".torn-" in m for m in lines), lines
    # the cut record was trial 0's COMPLETE: its folder shows the run finished, so it is recovered, not run again
    assert sm.ran_here == 1 and [r["state"] for r in _rows(out)] == ["COMPLETE", "COMPLETE"]
    assert any("trial   0 COMPLETE" in m and "recovered from" in m for m in lines), lines
    torn = list(out.glob("study.journal.torn-*"))
    assert len(torn) == 1 and torn[0].read_bytes() == whole[:-7]
    # what an earlier dftune left: the next record glued onto the cut line -> that line dropped
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"op_code":5,"worker_id":"x","trial_id":0,"user_a' + good.splitlines(True)[-1])
    lines.clear()
    assert tune.run(crops, vit, out, _settings(trials=2), say=lines.append).ran_here == 0
    assert any("cut off" in m for m in lines) and journal.read_bytes().startswith(good)  # + a create-study record
    good = journal.read_bytes()
    # garbage in the middle: an error naming the file and the line, through the CLI too (exit 2)
    recs = good.splitlines(True)
    journal.write_bytes(b"".join(recs[:3]) + b"garbage\n" + b"".join(recs[3:]))
    with pytest.raises(ValueError, match=rf"{journal}: line 4 of {len(recs) + 1} is not an Optuna journal record"):
        tune.run(crops, vit, out, _settings(trials=2), say=_quiet)
    rc, _, err = _cli(*_argv(crops, vit, out, "--trials", "2"))
    assert rc == 2 and f"{journal}: line 4" in err and "head -n 3" in err


# ------------------------------------------------------------------ 5. a renamed or moved folder


def test_moved_folder_continues_its_own_study_and_keeps_its_trials(crops, vit, tmp_path):
    a = tmp_path / "a"
    tune.run(crops, vit, a, _settings(), say=_quiet)
    assert json.loads((a / "study.json").read_text())["study_name"] == "a"
    b = tmp_path / "moved" / "b"
    b.parent.mkdir()
    a.rename(b)
    before = (b / "trials" / "trial_0000" / "history.json").read_bytes()
    sm = tune.run(crops, vit, b, _settings(trials=2), say=_quiet)
    assert sm.study == "a" and sm.ran_here == 1
    assert [r["number"] for r in _rows(b)] == ["0", "1"]
    assert (b / "trials" / "trial_0000" / "history.json").read_bytes() == before
    with pytest.raises(ValueError, match="holds study 'a'"):
        tune.run(crops, vit, b, _settings(trials=2, study_name="other"), say=_quiet)


def test_another_studys_trial_folder_is_moved_aside_not_deleted(crops, vit, tmp_path):
    out = tmp_path / "s"
    old = out / "trials" / "trial_0000"
    (old / "best").mkdir(parents=True)
    (old / "best" / "model.safetensors").write_text("the old study's best weights")
    lines = []
    tune.run(crops, vit, out, _settings(), say=lines.append)
    aside = [p for p in (out / "trials").iterdir() if p.name.startswith("trial_0000.other-")]
    assert len(aside) == 1 and (aside[0] / "best" / "model.safetensors").read_text() == "the old study's best weights"
    assert any("moved it to" in m for m in lines)


def test_folder_made_before_study_json_adopts_its_only_study(crops, vit, tmp_path):
    import optuna

    from dftune.search.study import open_storage

    out = tmp_path / "renamed"
    out.mkdir()
    optuna.create_study(study_name="original", storage=open_storage(out, None), direction="maximize")
    lines = []
    sm = tune.run(crops, vit, out, _settings(), say=lines.append)
    assert sm.study == "original" and any("continuing it" in m for m in lines)


# ------------------------------------------------------------------ 6. fair ones


def test_every_trial_failed_exits_1_and_says_how_to_run_more(crops, vit, tmp_path, monkeypatch):
    import dftune.stages.train as train_mod

    def broken(*a, **kw):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(train_mod, "run", broken)
    out = tmp_path / "s"
    rc, text, _ = _cli(*_argv(crops, vit, out))
    assert rc == 1
    assert "1 failed and count toward --trials" in text and "--trials 2 runs 1 more" in text
    rc, text, err = _cli(*_argv(crops, vit, out))  # the same command again: nothing to run, and how to run more
    assert rc == 1 and "nothing to run (1 of them failed, and count: --trials 2 runs 1 more)" in err  # progress


def test_missing_data_or_model_is_refused_before_any_trial(crops, vit, tmp_path):
    out = tmp_path / "s"
    rc, _, err = _cli(*_argv(crops, str(tmp_path / "no-such-model"), out))
    assert rc == 2 and f"--model {tmp_path / 'no-such-model'}: no such model folder" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = _cli(*_argv(crops, str(tmp_path / "empty"), out))
    assert rc == 2 and "not a Hugging Face model folder (no config.json" in err
    rc, _, err = _cli(*_argv(tmp_path / "nodata", vit, out))
    assert rc == 2 and f"--data {tmp_path / 'nodata'}: " in err and "no manifest here" in err
    assert not (out / "study.journal").exists()


def test_space_bounds_written_1e_6_are_numbers(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_text("lr: {type: float, low: 1e-6, high: 1e-3, log: true}\nhead_epochs: {type: int, low: '0', high: 2}\n")
    searched, _ = check_space(load_space(p), TrainConfig(), str(p))
    assert searched["lr"]["low"] == 1e-6 and searched["lr"]["high"] == 1e-3
    assert searched["head_epochs"]["low"] == 0
    p.write_text("lr: {type: float, low: tiny, high: 1e-3}\n")
    with pytest.raises(SpaceError, match="needs numeric low and high"):
        check_space(load_space(p), TrainConfig(), str(p))
