"""dftune tune: offline, on CPU, tiny ViTs and demo crops; each trial a real (1-3 epoch) train run."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dftune.search.metric import parse_metric
from dftune.search.space import DEFAULT_SPACE, SpaceError, check_space, keep_effective_batch, load_space, trial_seed
from dftune.search.study import counts_as_finished, open_storage
from dftune.stages import tune
from dftune.training.config import TrainConfig

torch.set_num_threads(1)

# every trial: tiny and quick; --set values are fixed for all trials
SETS = ["num_workers=0", "tensorboard=false", "batch_size=8", "patience=0"]
# a small space so 2-3 trials see different settings
SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
         "schedule": {"type": "categorical", "choices": ["constant", "cosine"]},
         "balance": "loss", "aug": False, "sbi": 0.0, "weight_decay": 0.01, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def crops(make_crops) -> Path:
    return make_crops(n_videos=6, frames=3, size=32, methods=("Deepfakes", "FaceSwap"))


@pytest.fixture(scope="module")
def vit(tiny_vit) -> str:
    return tiny_vit({0: "Realism", 1: "Deepfake"}, hidden_size=32)


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    import yaml

    p = tmp_path_factory.mktemp("space") / "space.yaml"
    p.write_text(yaml.safe_dump(SPACE))
    return p


def _settings(**kw) -> tune.TuneSettings:
    from dftune.training.config import parse_sets

    d = dict(trials=3, epochs=2, space=dict(SPACE), pruner="none", seed=0, sets=parse_sets(SETS))
    d.update(kw)
    return tune.TuneSettings(**d)


def _rows(study_dir: Path) -> list[dict]:
    with open(study_dir / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _cli(*argv) -> int:
    from dftune.cli import main

    return main(list(argv))


# ------------------------------------------------------------------ a whole study, through the CLI


@pytest.fixture(scope="module")
def study(crops, vit, space_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    argv = ["tune", "--data", str(crops), "--model", vit, "--out", str(out), "--trials", "3", "--epochs", "2",
            "--space", str(space_file), "--pruner", "none", "--fraction", "0.5"]
    for s in SETS:
        argv += ["--set", s]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):  # the table, and a line a trial
        assert _cli(*argv) == 0
    return out, argv, buf.getvalue()


def test_study_writes_all_outputs(study, crops):
    out, argv, text = study
    assert "frame_f1 = val frame-level macro F1 at the val-optimal threshold" in text
    assert sum(line.startswith("trial ") for line in text.splitlines()) == 3  # one line a trial
    assert "dftune tune: s" in text and "retrain: dftune train" in text  # the final table and how to retrain
    rows = _rows(out)
    assert [r["number"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert all(len(json.loads(r["frame_f1_per_epoch"])) == 2 for r in rows)
    assert {"lr", "schedule", "value", "duration_s", "fail_reason", "params"} <= set(rows[0])
    for name in ("best.yaml", "report.md", "history.png", "intermediate.png", "importance.png", "study.journal"):
        assert (out / name).exists(), name
    best = max(rows, key=lambda r: float(r["value"]))
    for r in rows:  # weights kept for the best trial only; every history stays
        d = out / "trials" / f"trial_{int(r['number']):04d}"
        assert (d / "history.json").exists()
        assert (d / "best").is_dir() == (r is best) and (d / "last").is_dir() == (r is best)
    assert f"trial {best['number']}" in (out / "report.md").read_text()
    # --fraction 0.5: half the train videos per method, val and test whole; paths reach the same crops
    from dftune.prepared import image_paths, read_manifest

    full, sub = read_manifest(crops), read_manifest(out / "data")
    for split in ("val", "test"):
        assert len([r for r in sub if r.split == split]) == len([r for r in full if r.split == split])
    for method in ("original", "Deepfakes", "FaceSwap"):
        videos = {r.video for r in sub if r.split == "train" and r.method == method}
        assert len(videos) == 3, (method, videos)  # 6 videos per method -> 3
    assert all(p.exists() for p in image_paths(out / "data", sub))


def test_best_yaml_retrains_to_the_same_metric(study, tmp_path, capsys):
    out = study[0]
    import yaml

    y = yaml.safe_load((out / "best.yaml").read_text())
    tune_meta = y["_tune"]
    run = tmp_path / "again"
    assert _cli("train", "--data", tune_meta["data"], "--model", tune_meta["model"], "--config",
                str(out / "best.yaml"), "--out", str(run), "--no-progress") == 0
    hist = json.loads((run / "history.json").read_text())
    settings = yaml.safe_load((run / "settings.yaml").read_text())
    assert settings["seed"] == y["seed"] and settings["lr"] == y["lr"]
    best_epoch = max(hist, key=lambda h: h["val"]["frame"]["macro_f1"])["epoch"]  # monitor: frame f1 @0.5
    rec = next(h for h in hist if h["epoch"] == best_epoch)
    assert rec["val"]["frame"]["best_threshold_f1"] == pytest.approx(tune_meta["value"], abs=1e-9)


def test_rerun_continues_without_repeating(study, tmp_path, capsys):
    src, argv, _ = study
    out = tmp_path / src.name  # a copy: the study's name is its folder's
    shutil.copytree(src, out)
    argv = [str(out) if a == str(src) else a for a in argv]
    # the study from the first test holds 3 finished trials: the same command runs none
    assert _cli(*argv) == 0
    assert "nothing to run" in capsys.readouterr().err
    assert len(_rows(out)) == 3
    # asking for 4 runs exactly one more
    i = argv.index("--trials")
    assert _cli(*(argv[:i + 1] + ["4"] + argv[i + 2:])) == 0
    rows = _rows(out)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    assert sum(line.startswith("trial ") for line in capsys.readouterr().err.splitlines()) == 1


def test_resume_study_dir_needs_nothing_else(study, tmp_path, capsys):
    """`tune --resume STUDY_DIR` takes data, model, space, fraction, epochs and --set from its settings.yaml
    (a difference in any would be refused as another study's settings) and options given now replace them."""
    src, _, _ = study
    out = tmp_path / src.name
    shutil.copytree(src, out)
    assert _cli("tune", "--resume", str(out)) == 0
    said = capsys.readouterr()
    assert "nothing to run" in said.out + said.err
    assert _cli("tune", "--resume", str(out), "--trials", "4") == 0
    assert [r["number"] for r in _rows(out)] == ["0", "1", "2", "3"]
    assert sum(line.startswith("trial ") for line in capsys.readouterr().err.splitlines()) == 1


def test_killed_study_resumes_without_repeating(crops, vit, tmp_path):
    import optuna

    out = tmp_path / "s"
    sm = tune.run(crops, vit, out, _settings(trials=2), say=lambda m: None)
    assert sm.ran_here == 2
    # a process killed mid-trial leaves a RUNNING trial behind (its pid is gone)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    st = optuna.load_study(study_name="s", storage=open_storage(out, None))
    t = st.ask()
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", dead.pid)
    sm = tune.run(crops, vit, out, _settings(trials=3), say=lambda m: None)
    assert sm.ran_here == 1  # 2 finished + 1 more; the killed one is not counted
    rows = _rows(out)
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "COMPLETE"),
                                                         ("2", "INTERRUPTED"), ("3", "COMPLETE")]
    assert "process is gone" in rows[2]["fail_reason"]


# ------------------------------------------------------------------ failures and pruning


def test_failed_trial_is_recorded_and_study_goes_on(crops, vit, tmp_path, monkeypatch):
    import dftune.stages.train as train_mod

    real, calls = train_mod.run, []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "run", flaky)
    out = tmp_path / "s"
    sm = tune.run(crops, vit, out, _settings(trials=3), say=lambda m: None)
    rows = _rows(out)
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert rows[1]["fail_reason"] == "RuntimeError: CUDA out of memory (simulated)"
    assert sm.by_state == {"COMPLETE": 2, "FAIL": 1} and (out / "best.yaml").exists()
    assert "CUDA out of memory" in (out / "report.md").read_text()


def test_pruning_stops_a_bad_trial(crops, vit, tmp_path, monkeypatch):
    """lr 1e-12 is bad on purpose (its metric is forced to 0): the median pruner stops it after epoch 2 of 3."""
    import optuna

    import dftune.stages.train as train_mod

    real = train_mod.run

    def bad_when_tiny_lr(data, model, out, cfg, **kw):
        cb = kw.pop("on_epoch_end")

        def wrapped(epoch, record):
            if cfg.lr < 1e-8:
                record["val"]["frame"]["best_threshold_f1"] = 0.0
            cb(epoch, record)

        return real(data, model, out, cfg, on_epoch_end=wrapped, **kw)

    monkeypatch.setattr(train_mod, "run", bad_when_tiny_lr)
    out = tmp_path / "s"
    space = dict(SPACE, lr={"type": "categorical", "choices": [1e-3, 1e-12]}, schedule="constant")
    out.mkdir()
    st = optuna.create_study(study_name="s", storage=open_storage(out, None), direction="maximize")
    for lr in (1e-3, 1e-3, 1e-3, 1e-12, 1e-3):  # three to learn the median from, the bad one, then a good one
        st.enqueue_trial({"lr": lr})
    sm = tune.run(crops, vit, out, _settings(trials=5, epochs=3, space=space, pruner="median"), say=lambda m: None)
    rows = _rows(out)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3 + ["PRUNED", "COMPLETE"]
    assert rows[3]["epochs_run"] == "2" and json.loads(rows[3]["frame_f1_per_epoch"]) == [0.0, 0.0]
    hist = json.loads((out / "trials" / "trial_0003" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]  # train stopped cleanly after the epoch that was reported
    assert not (out / "trials" / "trial_0003" / "last").exists()  # a pruned trial's weights are deleted
    assert sm.epochs_saved_by_pruning == 1


# ------------------------------------------------------------------ the search space


@pytest.mark.parametrize("content, key, words", [
    ("lrr: {type: float, low: 1.0e-5, high: 1.0e-3}\n", "lrr", "not a training setting"),
    ("lr: {type: float, low: 1.0e-3, high: 1.0e-5}\n", "lr", "low must be below high"),
    ("lr: {type: float, low: 0, high: 1.0e-3, log: true}\n", "lr", "log scale needs low > 0"),
    ("weight_decay: {type: floaty, low: 0, high: 1}\n", "weight_decay", "type must be one of"),
    ("balance: {type: categorical, choices: [loss, bogus]}\n", "balance", "balance must be one of"),
    ("warmup_ratio: {type: float, low: 0.0, high: 1.5}\n", "warmup_ratio", "warmup_ratio must be in"),
    ("seed: {type: int, low: 0, high: 9}\n", "seed", "cannot be searched"),
    ("lr: {type: float, low: 1.0e-5, hi: 1.0e-3}\n", "lr", "unknown field"),
])
def test_bad_space_file_names_the_key(content, key, words, tmp_path, crops, vit, capsys):
    p = tmp_path / "space.yaml"
    p.write_text(content)
    with pytest.raises(SpaceError) as e:
        check_space(load_space(p), TrainConfig(), str(p))
    assert repr(key) in str(e.value) and words in str(e.value) and str(p) in str(e.value)
    # through the CLI: a one-line error naming the key, before any trial runs
    assert _cli("tune", "--data", str(crops), "--model", vit, "--out", str(tmp_path / "s"), "--space", str(p)) == 2
    err = capsys.readouterr().err
    assert "dftune tune: error:" in err and repr(key) in err
    assert not (tmp_path / "s" / "study.journal").exists()


def test_space_helpers():
    base = TrainConfig(batch_size=16, grad_accum=2)
    assert keep_effective_batch(base, {"batch_size": 8}, {})["grad_accum"] == 4
    assert keep_effective_batch(base, {"batch_size": 32}, {})["grad_accum"] == 1
    assert keep_effective_batch(base, {"batch_size": 8, "grad_accum": 1}, {})["grad_accum"] == 1
    searched, fixed = check_space(load_space(None), TrainConfig())
    assert set(searched) == set(DEFAULT_SPACE) and fixed == {}
    assert trial_seed(0, 1) == trial_seed(0, 1) != trial_seed(0, 2) != trial_seed(1, 2)
    assert parse_metric("video_auc").direction == "maximize" and parse_metric("frame_loss").direction == "minimize"
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric("f1")


# ------------------------------------------------------------------ several processes, one study


def test_two_processes_share_one_journal_study(crops, vit, space_file, tmp_path):
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "dftune", "tune", "--data", str(crops), "--model", vit, "--out", str(out),
           "--trials", "4", "--epochs", "1", "--space", str(space_file), "--pruner", "none"]
    for s in SETS:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ran = [sum(line.startswith("trial ") for line in o.splitlines()) for o in outs]
    assert sum(ran) == 4, outs
    import optuna

    st = optuna.load_study(study_name="shared", storage=open_storage(out, None))
    counted = [t for t in st.trials if counts_as_finished(t)]
    assert len(counted) == 4 and len({t.number for t in counted}) == 4
    assert len({json.dumps(t.params, sort_keys=True) for t in counted}) == 4  # no duplicate settings
    assert len(_rows(out)) == 4


def test_help_explains_every_option_and_default(capsys):
    from dftune.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--help"])
    text = capsys.readouterr().out
    for flag in ("--trials", "--timeout", "--metric", "--space", "--pruner", "--epochs", "--fraction", "--seed",
                 "--storage", "--study-name", "--keep-all", "--set"):
        assert flag in text, flag
    for line in text.splitlines():
        assert line.count("(default") <= 1, line
    assert "(default: True)" not in text and "(default: False)" not in text
    flat = " ".join(text.split())
    assert "(default: 20)" in flat and "(default: median)" in flat
    assert "(default: f1)" in flat and "(default: frame)" in flat


def test_continuing_with_another_metric_or_fraction_is_refused(crops, vit, tmp_path):
    out = tmp_path / "s"
    tune.run(crops, vit, out, _settings(trials=1, epochs=1, fraction=0.5), say=lambda m: None)
    manifest = (out / "data" / "manifest.csv").read_text()
    with pytest.raises(ValueError, match="trains on --fraction 0.5"):
        tune.run(crops, vit, out, _settings(trials=2, epochs=1, fraction=1.0), say=lambda m: None)
    with pytest.raises(ValueError, match="optimises frame_f1"):
        tune.run(crops, vit, out, _settings(trials=2, epochs=1, fraction=0.5, metric="video_auc"), say=lambda m: None)
    assert (out / "data" / "manifest.csv").read_text() == manifest and len(_rows(out)) == 1


def test_same_seed_repeats_the_study(crops, vit, tmp_path):
    a = tune.run(crops, vit, tmp_path / "a", _settings(trials=2, epochs=1), say=lambda m: None)
    b = tune.run(crops, vit, tmp_path / "b", _settings(trials=2, epochs=1), say=lambda m: None)
    assert [(r["params"], r["value"]) for r in a.rows] == [(r["params"], r["value"]) for r in b.rows]
    assert [r["seed"] for r in _rows(tmp_path / "a")] == [str(trial_seed(0, 0)), str(trial_seed(0, 1))]
