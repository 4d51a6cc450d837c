"""dftune train --tune/--freeze/--head-epochs/--lr-decay/--ema/--paired: offline, on CPU, tiny ViT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import assert_same_tensors, train_killed_after
from dftune.stages import train
from dftune.stages.train import TrainError
from dftune.training import data, trainable
from dftune.training.config import TrainConfig, build
from dftune.training.ema import EMA

torch.set_num_threads(1)

TINY = dict(image_size=32, hidden_size=64)
FAST = dict(epochs=1, lr=1e-3, batch_size=8, num_workers=0, aug=False, patience=0, tensorboard=False)


@pytest.fixture(scope="module")
def crops(make_crops) -> Path:
    return make_crops(n_videos=4, frames=4, size=32, methods=("Deepfakes", "FaceSwap"))


@pytest.fixture(scope="module")
def vit(tiny_vit):
    return tiny_vit({0: "Realism", 1: "Deepfake"}, **TINY)


def _weights(folder) -> dict:
    """A saved model's weights under the names the loaded model uses (the file may hold legacy names)."""
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _expected(mode: str, names) -> set:
    head = {n for n in names if n.startswith("classifier.")}
    if mode == "full":
        return set(names)
    if mode == "head":
        return head
    if mode == "layernorm":
        return head | {n for n in names if "layernorm" in n}
    if mode == "bias":
        return head | {n for n in names if n.endswith("bias")}
    raise AssertionError(mode)


# ------------------------------------------------------------------ each mode trains what it claims


@pytest.mark.parametrize("mode,freeze", [("full", ()), ("head", ()), ("layernorm", ()), ("bias", ()),
                                         ("full", (r"layers\.0\.", r"^vit\.embeddings\."))])
def test_mode_trains_exactly_its_parameters(crops, vit, tmp_path, mode, freeze):
    base = _weights(vit)
    cfg = TrainConfig(**{**FAST, "tune": mode, "freeze": freeze, "max_train_batches": 3})
    summary = train.run(crops, vit, tmp_path / "run", cfg, progress=False)
    after = _weights(tmp_path / "run" / "last")
    assert after.keys() == base.keys()
    want = {n for n in _expected(mode, base) if not any(__import__("re").search(p, n) for p in freeze)}
    changed = {n for n in base if not torch.equal(base[n], after[n])}
    assert changed == want  # frozen ones bit-identical, every trainable one moved
    n_train = sum(base[n].numel() for n in want)
    assert summary.trainable_params == n_train and summary.total_params == sum(t.numel() for t in base.values())
    meta = yaml.safe_load((tmp_path / "run" / "settings.yaml").read_text())
    assert meta["tune"] == mode and meta["freeze"] == list(freeze)
    assert meta["_tuning"]["trainable_params"] == n_train
    assert meta["_tuning"]["trainable_share"] == pytest.approx(n_train / summary.total_params, abs=1e-6)


def test_lora_saves_a_plain_merged_model_equal_to_the_adapted_one(crops, vit, tmp_path):
    from transformers import AutoModelForImageClassification

    from dftune.training.starting import load_model

    cfg = TrainConfig(**{**FAST, "tune": "lora", "lora_rank": 4, "max_train_batches": 3})
    summary = train.run(crops, vit, tmp_path / "run", cfg, progress=False)
    base = _weights(vit)
    merged = AutoModelForImageClassification.from_pretrained(tmp_path / "run" / "last").eval()
    sd = merged.state_dict()
    assert set(sd) == set(base)  # no PEFT names: a plain Hugging Face model
    for n in base:
        moved = not torch.equal(sd[n], base[n])
        adapted = n.startswith("classifier.") or (
            n.endswith(".weight") and any(f".{m}." in n for m in ("q_proj", "k_proj", "v_proj", "o_proj", "fc1",
                                                                  "fc2")))
        assert moved == adapted, n
    # the unmerged PEFT model, as --resume restores it from last/training_state
    raw = load_file(str(tmp_path / "run" / "last" / "training_state" / "weights.safetensors"))
    assert any(".lora_A." in k for k in raw) and any(".lora_B." in k for k in raw)
    model, _, _ = load_model(vit, cfg)
    peft_model, plan = trainable.setup(model, cfg)
    assert set(plan.trainable) <= set(raw)  # the adapters and the head; the frozen base is the starting model's
    peft_model.load_state_dict(raw, strict=False)
    peft_model.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = peft_model(pixel_values=x).logits
        b = merged(pixel_values=x).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert summary.trainable_params == plan.n_trainable < summary.total_params / 2
    meta = yaml.safe_load((tmp_path / "run" / "settings.yaml").read_text())
    assert sorted({t.rsplit(".", 1)[-1] for t in meta["_tuning"]["lora_targets"]}) == [
        "fc1", "fc2", "k_proj", "o_proj", "q_proj", "v_proj"]


def test_head_epochs_train_the_head_alone_first(crops, vit, tmp_path):
    base = _weights(vit)
    seen = {}
    out = tmp_path / "run"

    def grab(epoch, record):
        seen[epoch] = _weights(out / "last")

    cfg = TrainConfig(**{**FAST, "epochs": 2, "head_epochs": 1, "max_train_batches": 2})
    train.run(crops, vit, out, cfg, progress=False, on_epoch_end=grab)
    changed1 = {n for n in base if not torch.equal(base[n], seen[1][n])}
    changed2 = {n for n in base if not torch.equal(seen[1][n], seen[2][n])}
    assert changed1 == {"classifier.weight", "classifier.bias"}
    assert changed2 == set(base)  # then everything (--tune full)


def test_lr_decay_gives_each_layer_its_learning_rate(vit):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(vit)
    named = list(model.named_parameters())
    groups = trainable.param_groups(named, 1e-3, 0.01, lr_decay=0.5)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(lr_of) == len(named)
    L = 2
    for n, p in named:
        lr, wd = lr_of[id(p)]
        if n.startswith("vit.embeddings."):
            want = 1e-3 * 0.5 ** (L + 1)
        elif n.startswith("vit.layers."):
            i = int(n.split(".")[2])
            want = 1e-3 * 0.5 ** (L - i)
        else:  # the final layernorm and the head
            want = 1e-3
        assert lr == pytest.approx(want), n
        assert wd == (0.01 if p.ndim >= 2 else 0.0), n
    # off: the two groups of before (decay on matrices only), lr from the optimizer's default
    g1 = trainable.param_groups(named, 1e-3, 0.01)
    assert len(g1) == 2 and "lr" not in g1[0] and g1[1]["weight_decay"] == 0.0


# ------------------------------------------------------------------ EMA


def test_ema_is_the_hand_computed_average_and_restores_the_raw_weights(tmp_path):
    lin = torch.nn.Linear(3, 2)
    ema = EMA(lin.named_parameters(), 0.9)
    w0 = lin.weight.detach().clone()
    avg = w0.clone()
    for k in range(3):
        with torch.no_grad():
            lin.weight.add_(float(k + 1))
        ema.update()
        avg = 0.9 * avg + 0.1 * lin.weight.detach()
    assert torch.allclose(ema.shadow["weight"], avg, atol=1e-6)
    raw = lin.weight.detach().clone()
    with ema.applied():
        assert torch.equal(lin.weight, ema.shadow["weight"])
    assert torch.equal(lin.weight, raw)
    ema.save(tmp_path)
    other = EMA(lin.named_parameters(), 0.9)
    other.load(tmp_path)
    assert torch.equal(other.shadow["weight"], ema.shadow["weight"]) and other.updates == 3


def test_ema_run_validates_and_saves_the_average(crops, vit, tmp_path):
    cfg = TrainConfig(**{**FAST, "ema": 0.5, "max_train_batches": 3})
    train.run(crops, vit, tmp_path / "run", cfg, progress=False)
    last = tmp_path / "run" / "last"
    saved, raw = _weights(last), load_file(str(last / "training_state" / "weights.safetensors"))
    avg = load_file(str(last / "training_state" / "ema.safetensors"))
    for n in saved:
        assert torch.equal(saved[n], avg[n]), n
    assert any(not torch.equal(saved[n], raw[n]) for n in saved)  # the raw weights train on, apart


# ------------------------------------------------------------------ paired batches


def _train_rows(crops):
    from dftune.prepared import read_manifest

    return read_manifest(crops, splits=("train",))


def test_paired_sampler_puts_each_fake_with_its_own_real_frame(crops):
    rows = _train_rows(crops)
    s = data.PairedSampler(rows, batch_size=6, seed=3)  # groups of 3: a real and its 2 fakes
    s.set_epoch(1)
    idx = [i for i, e in s]
    assert sorted(idx) == list(range(len(rows))) and {e for _, e in s} == {1}
    for b in range(0, len(idx), 6):
        batch = [rows[i] for i in idx[b:b + 6]]
        reals = {(r.video_id, r.frame_index) for r in batch if r.label == 0}
        for r in batch:
            if r.label == 1:
                assert r.video_id.split("_")[0] == r.target_id
                assert (r.target_id, r.frame_index) in reals, (r.path, [x.path for x in batch])
    # deterministic per (seed, epoch), another order the next epoch
    again = data.PairedSampler(rows, batch_size=6, seed=3)
    again.set_epoch(1)
    assert list(again) == list(s)
    again.set_epoch(2)
    assert [i for i, _ in again] != idx


def test_paired_sampler_samples_rows_without_a_partner(crops):
    rows = _train_rows(crops)
    real0 = next(i for i, r in enumerate(rows) if r.label == 0)
    rows = rows[:real0] + rows[real0 + 1:]  # its two fakes lose their partner
    groups = data.pair_groups(rows)
    assert sorted(i for g in groups for i in g) == list(range(len(rows)))
    assert sum(len(g) == 1 for g in groups) == 2
    for bs in (4, 5, 7):  # batches that cannot hold whole groups: still every row exactly once
        s = data.PairedSampler(rows, batch_size=bs, seed=0)
        assert sorted(i for i, _ in s) == list(range(len(rows)))


def test_cli_flags_reach_settings_and_resume_refuses_a_mode_change(crops, vit, tmp_path, capsys):
    from dftune.cli import main

    out = tmp_path / "run"
    args = ["train", "--data", str(crops), "--model", vit, "--out", str(out), "--no-progress", "--epochs", "1",
            "--tune", "bias", "--freeze", r"layers\.1\.", "--freeze", "cls_token", "--paired", "--head-epochs", "1",
            "--lr-decay", "0.8", "--ema", "0.9", "--set", "num_workers=0", "--set", "max_train_batches=2",
            "--no-aug", "--no-tensorboard"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "trainable parameters:" in text and "--tune bias" in text
    s = yaml.safe_load((out / "settings.yaml").read_text())
    assert (s["tune"], s["freeze"], s["paired"], s["head_epochs"], s["lr_decay"], s["ema"]) == (
        "bias", [r"layers\.1\.", "cls_token"], True, 1, 0.8, 0.9)
    assert s["_tuning"]["layer_lrs"][3] == pytest.approx(1e-5)
    with pytest.raises(TrainError, match="tune"):
        train.run(crops, vit, out, build(TrainConfig(**{**FAST, "epochs": 2}), {
            k: s[k] for k in ("freeze", "paired", "head_epochs", "lr_decay", "ema", "max_train_batches")},
            {"tune": "layernorm"}), resume=True, progress=False)


# ------------------------------------------------------------------ resume in each mode


@pytest.mark.parametrize("extra", [
    {"tune": "full", "ema": 0.8},
    {"tune": "layernorm", "head_epochs": 1, "lr_decay": 0.7},
    {"tune": "lora", "ema": 0.8, "head_epochs": 1, "lora_dropout": 0.1},
], ids=["full+ema", "layernorm+lpft+lrdecay", "lora+ema+lpft"])
def test_resume_gives_the_same_result_in_each_mode(crops, vit, tmp_path, extra):
    cfg = TrainConfig(**{**FAST, "epochs": 3, "aug": True, "schedule": "cosine", "max_train_batches": 3, **extra})
    train.run(crops, vit, tmp_path / "a", cfg, progress=False)

    train_killed_after(2, crops, vit, tmp_path / "b", cfg)
    summary = train.run(crops, vit, tmp_path / "b", cfg, progress=False, resume=True)
    assert summary.epochs_run == 3
    for f in ("model.safetensors", "training_state/weights.safetensors", "training_state/ema.safetensors"):
        if not (tmp_path / "a" / "last" / f).exists():
            continue
        a, b = _weights_file(tmp_path / "a" / "last" / f), _weights_file(tmp_path / "b" / "last" / f)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)
    ha = json.loads((tmp_path / "a" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["val"] for h in ha] == [h["val"] for h in hb]
    assert [h["train"]["loss"] for h in ha] == [h["train"]["loss"] for h in hb]


def _weights_file(p):
    return load_file(str(p))


def test_recipe_generalise_averages_then_writes_the_wise_ft_model(crops, vit, tmp_path, capsys):
    """--recipe generalise = --ema-horizon 0.4 --wise 0.75 under the flags (a given --ema replaces its EMA);
    RUN/wise = 0.25 * start + 0.75 * best/, a plain model folder with best/'s crop settings."""
    from dftune.cli import main
    from dftune.training.config import with_recipe

    run = tmp_path / "run"
    assert main(["train", "--data", str(crops), "--model", vit, "--out", str(run), "--recipe", "generalise",
                 "--epochs", "2", "--lr", "1e-3", "--batch-size", "8", "--no-aug", "--no-tensorboard",
                 "--no-progress", "--ema", "0.5"]) == 0
    settings = yaml.safe_load((run / "settings.yaml").read_text())
    assert settings["recipe"] == "generalise" and settings["wise_alpha"] == 0.75
    assert (settings["ema"], settings["ema_horizon"]) == (0.5, 0.0)  # a flag beats the recipe's EMA, either way
    assert "WiSE-FT model" in capsys.readouterr().out
    start, best, wise = _weights(vit), _weights(run / "best"), _weights(run / "wise")
    moved = [n for n in start if not torch.equal(start[n], best[n])]
    assert moved
    for n in start:
        assert torch.allclose(wise[n], 0.25 * start[n] + 0.75 * best[n], atol=1e-6), n
    meta = json.loads((run / "wise" / "dftune.json").read_text())
    assert meta["crop"]["size"] == 32 and meta["threshold"] == 0.5  # the data's crops, not the hub defaults
    assert build(None, {"recipe": "generalise"}).ema_horizon == 0.4  # a recipe named through the library applies too
    assert with_recipe(None, {"recipe": "generalise"}).ema_horizon == 0.4
    cfg = with_recipe({"recipe": "generalise", "ema": 0.9}, {})
    assert (cfg.ema, cfg.ema_horizon, cfg.wise_alpha) == (0.9, 0.0, 0.75)  # the settings file beats the recipe
    with pytest.raises(ValueError, match="recipe must be one of"):
        with_recipe(None, {"recipe": "fast"})


# ------------------------------------------------------------------ --tune svd-residual (Effort)

ATTENTION = ("attention.q_proj.", "attention.k_proj.", "attention.v_proj.", "attention.o_proj.")  # transformers 5


def test_the_split_starts_at_the_weights_and_trains_only_the_residual(vit):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(vit).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(pixel_values=x).logits
    model, plan = trainable.setup(model, TrainConfig(**{**FAST, "tune": "svd-residual", "svd_rank": 2}))
    with torch.no_grad():
        after = model.eval()(pixel_values=x).logits
    assert torch.allclose(before, after, atol=1e-5)
    # 2 blocks x 4 projections; the rest (MLP, embeddings) untouched
    assert len(plan.svd_targets) == 8 and all(any(a in t + "." for a in ATTENTION) for t in plan.svd_targets)
    cls = trainable.svd_residual_class()
    for t in plan.svd_targets:
        m = model.get_submodule(t)
        assert isinstance(m, cls) and m.S_residual.shape == (2,) and m.U_residual.shape == (64, 2)
        s = torch.linalg.svdvals(m.merged_weight().double())
        assert torch.allclose(m.S_residual.double(), s[-2:], atol=1e-5)  # the two smallest components train
    head = {n for n, _ in model.named_parameters() if n.startswith("classifier.")}
    residual = {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in ("U_residual", "S_residual",
                                                                                   "V_residual")}
    assert set(plan.trainable) == head | residual and len(residual) == 24
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head | residual


def test_run_saves_a_plain_model_equal_to_the_split_one_and_resume_is_exact(crops, vit, tmp_path):
    from transformers import AutoModelForImageClassification

    cfg = TrainConfig(**{**FAST, "epochs": 3, "tune": "svd-residual", "svd_rank": 3, "aug": True,
                         "schedule": "cosine", "max_train_batches": 3})
    summary = train.run(crops, vit, tmp_path / "a", cfg, progress=False)
    base, after = _weights(vit), _weights(tmp_path / "a" / "last")
    assert after.keys() == base.keys()  # a plain ViT folder: no split names
    changed = {n for n in base if not torch.equal(base[n], after[n])}
    want = {n for n in base if n.startswith("classifier.")} | {
        n for n in base if n.endswith(".weight") and any(a in n for a in ATTENTION)}
    assert changed == want  # biases, MLP, norms, embeddings bit-identical
    for n in want - {n for n in base if n.startswith("classifier.")}:  # a rank-3 part replaced by another rank-3
        assert torch.linalg.matrix_rank((after[n] - base[n]).double(), atol=1e-6) <= 6, n
    meta = yaml.safe_load((tmp_path / "a" / "settings.yaml").read_text())
    assert meta["svd_rank"] == 3 and len(meta["_tuning"]["svd_targets"]) == 8
    assert summary.trainable_params == meta["_tuning"]["trainable_params"] < summary.total_params / 10

    # the split model restored from the state gives the saved plain model's outputs
    from dftune.training.starting import load_model

    raw = load_file(str(tmp_path / "a" / "last" / "training_state" / "weights.safetensors"))
    assert any(k.endswith(".U_residual") for k in raw) and any(k.endswith(".weight_main") for k in raw)
    model, _, _ = load_model(vit, cfg)
    split, _ = trainable.setup(model, cfg)
    split.load_state_dict(raw, strict=False)
    plain = AutoModelForImageClassification.from_pretrained(tmp_path / "a" / "last").eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(split.eval()(pixel_values=x).logits, plain(pixel_values=x).logits, atol=1e-5)

    train_killed_after(2, crops, vit, tmp_path / "b", cfg)
    assert train.run(crops, vit, tmp_path / "b", cfg, progress=False, resume=True).epochs_run == 3
    assert_same_tensors(tmp_path / "a" / "last", tmp_path / "b" / "last",
                        ["model.safetensors", "training_state/weights.safetensors"])
    ha = json.loads((tmp_path / "a" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["train"]["loss"] for h in ha] == [h["train"]["loss"] for h in hb]


def test_cli_refuses_families_without_attention_and_lora_options(crops, vit, tmp_path, capsys):
    from transformers import ConvNextConfig, ConvNextForImageClassification, ViTImageProcessor

    from dftune.cli import main

    conv = tmp_path / "convnext"
    ConvNextForImageClassification(ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=2,
        id2label={0: "real", 1: "fake"}, label2id={"real": 0, "fake": 1})).save_pretrained(conv)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(conv)
    with pytest.raises(TrainError, match=r"svd-residual.*ConvNextForImageClassification \(convnext\).*--tune lora"):
        train.run(crops, str(conv), tmp_path / "c", TrainConfig(**{**FAST, "tune": "svd-residual"}), progress=False)
    common = ["train", "--data", str(crops), "--model", vit, "--no-progress", "--epochs", "1", "--no-tensorboard",
              "--set", "max_train_batches=1", "--set", "num_workers=0"]
    assert main([*common, "--out", str(tmp_path / "l"), "--tune", "svd-residual", "--lora-rank", "4"]) == 2
    err = capsys.readouterr().err
    assert "--tune svd-residual" in err and "--lora-rank 4" in err and "--tune lora" in err
    assert main([*common, "--out", str(tmp_path / "ok"), "--tune", "svd-residual", "--svd-rank", "2"]) == 0
    assert "--tune svd-residual" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "ok" / "settings.yaml").read_text())["svd_rank"] == 2
