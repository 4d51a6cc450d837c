"""dftune train --ema-horizon SHARE: an EMA whose time constant is a share of the run's optimizer steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import assert_same_tensors, train_killed_after
from dftune.stages import train
from dftune.training.config import TrainConfig, build, with_recipe
from dftune.training.ema import run_decay

torch.set_num_threads(1)

FAST = dict(lr=1e-3, batch_size=8, num_workers=0, aug=False, patience=0, tensorboard=False, max_train_batches=2)


@pytest.fixture(scope="module")
def crops(make_crops) -> Path:
    return make_crops(n_videos=4, frames=4, size=32, methods=("Deepfakes", "FaceSwap"))


@pytest.fixture(scope="module")
def vit(tiny_vit):
    return tiny_vit({0: "Realism", 1: "Deepfake"}, image_size=32, hidden_size=64)


def _decay_saved(run: Path) -> float:
    with safe_open(str(run / "last" / "training_state" / "ema.safetensors"), "pt") as f:
        return float(f.metadata()["decay"])


def test_run_decay_is_one_minus_one_over_the_time_constant():
    assert run_decay(0.0, 0.1, 1000) == pytest.approx(0.99)  # a 100-step time constant
    assert run_decay(0.0, 0.1, 10_000) == pytest.approx(0.999)  # the same share of a 10x longer run
    assert run_decay(0.0, 0.5, 4) == pytest.approx(0.5)
    assert run_decay(0.0, 0.1, 5) == 0.0  # under one step: the average is the weights
    assert run_decay(0.9, 0.0, 1000) == 0.9  # --ema DECAY is per step, whatever the run's length


def test_the_decay_follows_the_run_length(crops, vit, tmp_path):
    """The same --ema-horizon on a run of twice the steps: twice the time constant; settings.yaml and the
    average's file say which decay was used."""
    decays = {}
    for epochs in (2, 4):  # 2 optimizer steps an epoch (max_train_batches)
        run = tmp_path / f"e{epochs}"
        train.run(crops, vit, run, TrainConfig(**FAST, epochs=epochs, ema_horizon=0.5), progress=False)
        meta = yaml.safe_load((run / "settings.yaml").read_text())["_ema"]
        assert meta == {"decay": pytest.approx(1 - 1 / (0.5 * 2 * epochs)), "horizon": 0.5, "steps": 2 * epochs}
        assert _decay_saved(run) == pytest.approx(meta["decay"])
        decays[epochs] = meta["decay"]
    assert decays == {2: pytest.approx(0.5), 4: pytest.approx(0.75)}
    saved = load_file(str(tmp_path / "e4" / "last" / "model.safetensors"))
    raw = load_file(str(tmp_path / "e4" / "last" / "training_state" / "weights.safetensors"))
    assert any(not torch.equal(saved[n], raw[n]) for n in raw if n in saved)  # last/ is the average


def test_resume_is_exact_and_keeps_the_decay_of_the_run_as_laid_out(crops, vit, tmp_path):
    """Killed after epoch 2 of 3 and resumed: the same weights, average and history as an uninterrupted run; a
    resume that asks for more epochs keeps the decay computed from the schedule laid out at the start."""
    cfg = TrainConfig(**FAST, epochs=3, ema_horizon=0.3)
    train.run(crops, vit, tmp_path / "a", cfg, progress=False)

    train_killed_after(2, crops, vit, tmp_path / "b", cfg)
    train.run(crops, vit, tmp_path / "b", cfg, progress=False, resume=True)
    assert_same_tensors(tmp_path / "a" / "last", tmp_path / "b" / "last",
                        ("model.safetensors", "training_state/weights.safetensors", "training_state/ema.safetensors"))
    ha, hb = (json.loads((tmp_path / r / "history.json").read_text()) for r in ("a", "b"))
    assert [h["val"] for h in ha] == [h["val"] for h in hb]
    train.run(crops, vit, tmp_path / "b", build(cfg, {"epochs": 4}), progress=False, resume=True)
    assert _decay_saved(tmp_path / "b") == _decay_saved(tmp_path / "a") == pytest.approx(1 - 1 / (0.3 * 6))
    with pytest.raises(train.TrainError, match="ema_horizon"):  # another horizon is another average
        train.run(crops, vit, tmp_path / "b", build(cfg, {"epochs": 5, "ema_horizon": 0.2}), progress=False,
                  resume=True)


def test_settings_refuse_both_ways_and_the_users_ema_replaces_the_recipes():
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(ema=0.99, ema_horizon=0.1)
    with pytest.raises(ValueError, match="ema_horizon"):
        TrainConfig(ema_horizon=1.5)
    for name in ("guide", "generalise"):  # either way given by the user wins over whatever the recipe holds
        cfg = with_recipe(None, {"recipe": name, "ema": 0.99})
        assert (cfg.ema, cfg.ema_horizon) == (0.99, 0.0)
        cfg = with_recipe({"recipe": name, "ema_horizon": 0.2}, {})
        assert (cfg.ema, cfg.ema_horizon) == (0.0, 0.2)


def test_cli_flag_reaches_the_settings_and_help_states_its_default(crops, vit, tmp_path, capsys):
    from dftune.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--ema-horizon EMA_HORIZON" in text
    flag_help = text.rsplit("--ema-horizon EMA_HORIZON", 1)[1].split("--wise", 1)[0]  # its entry, not the usage
    assert "share of the run's optimizer steps" in flag_help and "(default: 0" in flag_help
    run = tmp_path / "run"
    assert main(["train", "--data", str(crops), "--model", vit, "--out", str(run), "--epochs", "1",
                 "--ema-horizon", "0.5", "--set", "num_workers=0", "--set", "max_train_batches=2", "--no-aug",
                 "--no-tensorboard", "--no-progress"]) == 0
    s = yaml.safe_load((run / "settings.yaml").read_text())
    assert (s["ema"], s["ema_horizon"], s["_ema"]["decay"]) == (0.0, 0.5, 0.0)  # 1 step: under one step's constant
    assert main(["train", "--data", str(crops), "--model", vit, "--out", str(tmp_path / "two"), "--ema", "0.9",
                 "--ema-horizon", "0.1", "--no-progress"]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_recipe_named_through_the_library_is_applied_as_the_flag_applies_it(tmp_path):
    """config.build(..., {"recipe": NAME}) and TrainConfig(recipe=NAME) train what settings.yaml says (the recipe's
    settings under the ones given), as --recipe NAME does; a resolved settings.yaml reads back unchanged."""
    from dftune.training.config import RECIPES, load_run_settings, save_yaml

    want = RECIPES["generalise"]
    flag = with_recipe(None, {"recipe": "generalise"})
    for cfg in (build(None, {"recipe": "generalise"}), build({"recipe": "generalise", "epochs": 2}),
                TrainConfig(recipe="generalise"), TrainConfig(epochs=2, recipe="generalise")):
        assert {k: getattr(cfg, k) for k in want} == want == {k: getattr(flag, k) for k in want}
    # a setting given wins over the recipe's, whichever way in
    assert build(None, {"recipe": "generalise", "wise_alpha": 0}).wise_alpha == 0.0
    assert TrainConfig(recipe="generalise", wise_alpha=0.0).wise_alpha == 0.0
    assert (TrainConfig(recipe="generalise", ema=0.99).ema_horizon, TrainConfig(recipe="generalise", ema=0.99).ema) \
        == (0.0, 0.99)
    # settings.yaml holds every setting resolved: reading it back lays nothing again (an explicit 0 stays 0)
    cfg = TrainConfig(recipe="generalise", wise_alpha=0.0)
    save_yaml(tmp_path / "settings.yaml", cfg)
    assert load_run_settings(tmp_path / "settings.yaml")[0] == cfg
    assert build(cfg, {"epochs": 9}).wise_alpha == 0.0  # a resolved base is not re-laid
    assert TrainConfig().ema_horizon == 0.0 and build(None).wise_alpha == 0.0  # the guide's: no recipe
