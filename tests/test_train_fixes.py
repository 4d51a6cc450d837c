"""dftune train fixes: EMA of batch-norm statistics, --lr-decay over staged encoders, --resume with another
model, --wise with a hub id, a one-class val split, one training per --out, and the smaller ones (leftovers of
a killed --wise, the Ctrl-C hint, --head-epochs covering the run, --paired's count, a deleted model folder,
--help's "not set"). Offline, on CPU, tiny models."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file

from conftest import assert_same_tensors, train_killed_after
from dftune.stages import train
from dftune.stages.train import TrainError
from dftune.training import trainable
from dftune.training.config import TrainConfig, build
from dftune.training.ema import EMA

torch.set_num_threads(1)

FAST = dict(epochs=1, lr=1e-3, batch_size=8, num_workers=0, aug=False, patience=0, tensorboard=False)
LABELS = {0: "Realism", 1: "Deepfake"}


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    from dftune.synthetic import make_crops

    out = tmp_path_factory.mktemp("crops")
    make_crops(out, n_videos=8, frames=4, size=32, methods=("Deepfakes", "FaceSwap"))
    return out


def _tiny_vit(folder, id2label=LABELS) -> str:
    from dftune.model.load import build_tiny_vit

    return str(build_tiny_vit(folder, id2label, image_size=32))


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return _tiny_vit(tmp_path_factory.mktemp("vit"))


def _save(model, folder: Path) -> str:
    """A model folder with a 32 x 32 processor (the crops' size), as a hub snapshot or a local model."""
    model.config.id2label, model.config.label2id = dict(LABELS), {v: k for k, v in LABELS.items()}
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3).save_pretrained(folder)
    return str(folder)


def _resnet(depths=(1, 1)):
    torch.manual_seed(0)
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16][:len(depths)], depths=list(depths), layer_type="basic",
        num_labels=2))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    return _save(_resnet(), tmp_path_factory.mktemp("resnet"))


# ------------------------------------------------------------------ 1. EMA averages the BatchNorm statistics


def test_ema_averages_batchnorm_statistics_and_keeps_the_raw_count(tmp_path):
    from dftune.training.ema import norm_buffers

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    bufs = norm_buffers(net)
    assert [n for n, _ in bufs] == ["1.running_mean", "1.running_var"]  # not num_batches_tracked
    ema = EMA(net.named_parameters(), 0.9, bufs)
    avg = {n: b.detach().clone() for n, b in bufs}
    for k in range(3):
        net(torch.randn(8, 3, 5, 5) + k)
        ema.update()
        for n, b in bufs:
            avg[n] = 0.9 * avg[n] + 0.1 * b.detach()
    raw = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.applied():
        for n, _ in bufs:
            assert torch.allclose(net.state_dict()[n], avg[n], atol=1e-6), n
            assert not torch.equal(net.state_dict()[n], raw[n]), n
        assert int(net[1].num_batches_tracked) == 3  # the raw count
    for k, v in net.state_dict().items():
        assert torch.equal(v, raw[k]), k  # the raw weights and statistics come back exactly
    # saved with the statistics; a state saved before them (parameters only) still loads
    ema.save(tmp_path)
    assert {"1.running_mean", "1.running_var"} <= set(load_file(str(tmp_path / "ema.safetensors")))
    other = EMA(net.named_parameters(), 0.9, norm_buffers(net))
    other.load(tmp_path)
    assert all(torch.equal(other.shadow[n], ema.shadow[n]) for n in ema.shadow)
    from safetensors.torch import save_file

    old = {n: t for n, t in ema.state_dict().items() if "running" not in n}
    save_file(old, str(tmp_path / "ema.safetensors"), metadata={"updates": "3", "decay": "0.9"})
    other.load(tmp_path)
    assert torch.equal(other.shadow["1.running_mean"], net[1].running_mean)  # restarts from the raw ones
    assert other.updates == 3


def _regnet():
    return transformers.RegNetForImageClassification(transformers.RegNetConfig(
        embedding_size=8, hidden_sizes=[8], depths=[1], groups_width=8, num_labels=2))


def _mobilenet_v2():
    return transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(
        image_size=32, depth_multiplier=0.1, num_labels=2))


def _efficientnet():
    return transformers.EfficientNetForImageClassification(transformers.EfficientNetConfig(
        image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, num_labels=2))


@pytest.mark.parametrize("build_model", [_resnet, _regnet, _mobilenet_v2, _efficientnet],
                         ids=["resnet", "regnet", "mobilenet_v2", "efficientnet"])
def test_ema_tracks_the_statistics_of_every_batchnorm_family(build_model):
    """The BatchNorm families of tests/test_processor_parity.py: every running_mean/running_var is averaged."""
    from dftune.training.ema import norm_buffers

    model = build_model()
    want = {n for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))}
    assert want and {n for n, _ in norm_buffers(model)} == want


def test_ema_run_saves_averaged_statistics_and_resumes_them_exactly(crops, resnet, tmp_path):
    """A tiny ResNet with --ema 0.9: best/ and last/ carry the averaged running statistics (not the raw
    model's), ema.safetensors keeps them, and a resumed run ends where an uninterrupted one does."""
    cfg = TrainConfig(**{**FAST, "epochs": 2, "ema": 0.9, "max_train_batches": 3})
    train.run(crops, resnet, tmp_path / "a", cfg, progress=False)
    last = tmp_path / "a" / "last"
    saved = load_file(str(last / "model.safetensors"))
    raw = load_file(str(last / "training_state" / "weights.safetensors"))
    avg = load_file(str(last / "training_state" / "ema.safetensors"))
    stats = [n for n in saved if n.endswith(("running_mean", "running_var"))]
    assert stats
    for n in stats:
        assert torch.equal(saved[n], avg[n]), n
    assert any(not torch.equal(saved[n], raw[n]) for n in stats)  # the raw statistics train on, apart
    counts = [n for n in saved if n.endswith("num_batches_tracked")]
    assert counts and all(torch.equal(saved[n], raw[n]) for n in counts)  # the count is the raw one

    train_killed_after(1, crops, resnet, tmp_path / "b", cfg)
    train.run(crops, resnet, tmp_path / "b", cfg, progress=False, resume=True)
    assert_same_tensors(tmp_path / "a" / "last", tmp_path / "b" / "last",
                        ("model.safetensors", "training_state/ema.safetensors", "training_state/weights.safetensors"))


# ------------------------------------------------------------------ 2. --lr-decay over the whole encoder


def _convnext():
    return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[2, 2], num_labels=2))


def _convnextv2():
    return transformers.ConvNextV2ForImageClassification(transformers.ConvNextV2Config(
        num_stages=2, hidden_sizes=[8, 16], depths=[2, 2], num_labels=2))


def _swin():
    return transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[2, 2], num_heads=[1, 1], window_size=4, num_labels=2))


_TOWER = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2)
_TEXT = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=100)

# every family of tests/test_processor_parity.py, with more than one block (and stage): (model, blocks)
FAMILIES = {
    "vit": (lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=16, num_labels=2, **_TOWER)), 2),
    "deit": (lambda: transformers.DeiTForImageClassification(transformers.DeiTConfig(
        image_size=32, patch_size=16, num_labels=2, **_TOWER)), 2),
    "beit": (lambda: transformers.BeitForImageClassification(transformers.BeitConfig(
        image_size=32, patch_size=16, num_labels=2, **_TOWER)), 2),
    "dinov2": (lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(
        image_size=28, patch_size=14, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=1,
        num_labels=2)), 2),
    "clip": (lambda: transformers.CLIPForImageClassification(transformers.CLIPConfig(
        vision_config=dict(image_size=32, patch_size=16, **_TOWER), text_config=_TEXT, projection_dim=16,
        num_labels=2)), 2),
    "siglip": (lambda: transformers.SiglipForImageClassification(transformers.SiglipConfig(
        vision_config=dict(image_size=32, patch_size=16, **_TOWER), text_config=_TEXT, num_labels=2)), 2),
    "swin": (_swin, 4),
    "convnext": (_convnext, 4),
    "convnextv2": (_convnextv2, 4),
    "resnet": (lambda: _resnet((2, 2)), 4),
    "regnet": (lambda: transformers.RegNetForImageClassification(transformers.RegNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2], groups_width=8, num_labels=2)), 4),
    "mobilenet_v2": (_mobilenet_v2, None),
    "efficientnet": (_efficientnet, None),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lr_decay_orders_the_blocks_over_the_whole_encoder(family):
    """Depth never decreases along the model (registration order is the forward order for these), every block
    has its own rate, the embeddings/stem the lowest and the head the full lr."""
    build_model, blocks = FAMILIES[family]
    model = build_model()
    named = list(model.named_parameters())
    head = [n for n, _ in named if trainable._under(n, trainable.head_modules(model))]
    groups = trainable.param_groups(named, 1.0, 0.01, lr_decay=0.5, names=[n for n, _ in named], head=head)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    depth, L = trainable.depths([n for n, _ in named], head)
    if blocks is not None:
        assert L == blocks
    assert L >= 2
    body = [depth[n] for n, _ in named if n not in head]
    assert body == sorted(body), family
    assert set(range(1, L + 1)) <= set(body)
    assert body[0] == 0  # the embeddings (or stem)
    for n, p in named:
        assert lr_of[id(p)] == pytest.approx(0.5 ** (L + 1 - depth[n])), n
        if n in head:
            assert lr_of[id(p)] == 1.0, n


def test_lr_decay_puts_a_stage_downsampling_with_the_block_it_feeds():
    def depth_of(model):
        names = [n for n, _ in model.named_parameters()]
        return trainable.depths(names, [n for n in names if n.startswith("classifier.")])[0]

    d = depth_of(_convnext())
    assert d["convnext.encoder.stages.0.layers.0.dwconv.weight"] == 1
    assert d["convnext.encoder.stages.0.layers.1.dwconv.weight"] == 2
    assert d["convnext.encoder.stages.1.layers.0.dwconv.weight"] == 3  # not 1, as stage 0's first block
    assert d["convnext.encoder.stages.1.layers.1.dwconv.weight"] == 4
    assert d["convnext.encoder.stages.1.downsampling_layer.0.weight"] == 3  # the stage's first block, not the head
    assert d["convnext.layernorm.weight"] == d["classifier.weight"] == 5
    d = depth_of(_swin())
    assert d["swin.encoder.layers.1.blocks.0.attention.q_proj.weight"] == 3
    assert d["swin.encoder.layers.0.downsample.reduction.weight"] == 3  # ends stage 0, feeds stage 1's first


def test_lr_decay_refuses_a_model_it_cannot_order_naming_it():
    named = [("features.weight", torch.nn.Parameter(torch.zeros(2, 2))), ("fc.weight", torch.nn.Parameter(
        torch.zeros(2, 2)))]
    with pytest.raises(trainable.TuningError, match=r"TinyNet \(tiny\) has none.*without --lr-decay"):
        trainable.param_groups(named, 1e-3, 0.01, lr_decay=0.5, family="TinyNet (tiny)")


def test_lr_decay_run_on_convnext_records_one_rate_per_depth(crops, tmp_path):
    model_dir = _save(_convnext(), tmp_path / "convnext")
    cfg = TrainConfig(**{**FAST, "lr_decay": 0.5, "max_train_batches": 1})
    train.run(crops, model_dir, tmp_path / "run", cfg, progress=False)
    lrs = yaml.safe_load((tmp_path / "run" / "settings.yaml").read_text())["_tuning"]["layer_lrs"]
    assert sorted(lrs) == [0, 1, 2, 3, 4, 5]  # the embeddings, 4 blocks over 2 stages, the head
    assert lrs[5] == pytest.approx(1e-3) and lrs[1] == pytest.approx(1e-3 * 0.5 ** 4)


# ------------------------------------------------------------------ 3. --resume with another model; a gone folder


def test_resume_refuses_another_model_naming_both(crops, vit, tmp_path):
    swapped = _tiny_vit(tmp_path / "swapped", {0: "Deepfake", 1: "Real"})
    cfg = TrainConfig(**{**FAST, "max_train_batches": 1})
    train.run(crops, vit, tmp_path / "run", cfg, progress=False)
    with pytest.raises(TrainError) as e:
        train.run(crops, swapped, tmp_path / "run", build(cfg, {"epochs": 2}), progress=False, resume=True)
    assert f"started from --model {vit}" in str(e.value) and f"resumed with --model {swapped}" in str(e.value)
    assert [h["epoch"] for h in json.loads((tmp_path / "run" / "history.json").read_text())] == [1]


def test_resume_whose_model_folder_is_gone_says_so(crops, tmp_path):
    model = _tiny_vit(tmp_path / "model")
    cfg = TrainConfig(**{**FAST, "max_train_batches": 1})
    train.run(crops, model, tmp_path / "run", cfg, progress=False)
    shutil.rmtree(model)
    with pytest.raises(TrainError, match=r"the model folder the run started from, .*model is gone"):
        train.run(crops, model, tmp_path / "run", build(cfg, {"epochs": 2}), progress=False, resume=True)


# ------------------------------------------------------------------ 4. --wise with a hub id


def _fake_hub(cache: Path, repo: str) -> Path:
    """A Hugging Face cache holding ``repo`` as from_pretrained leaves it (snapshots/<hash>, refs/main)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    _tiny_vit(snap)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An offline Hugging Face cache holding the tiny model ``org/name``; its snapshot folder."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snap = _fake_hub(cache, "org/name")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snap


def test_wise_with_a_hub_id_merges_with_the_cached_snapshot(crops, hub, tmp_path):
    cfg = TrainConfig(**{**FAST, "wise_alpha": 0.5, "max_train_batches": 1})
    s = train.run(crops, "org/name", tmp_path / "run", cfg, progress=False)
    assert s.wise_error is None and s.wise_dir == str(tmp_path / "run" / "wise")
    recipe = json.loads((tmp_path / "run" / "wise" / "dftune.json").read_text())["extra"]["merge"]
    assert str(hub) in json.dumps(recipe)  # (1 - a) x the snapshot from_pretrained read + a x best/


def test_wise_without_a_local_copy_of_the_hub_model_fails_at_the_start(crops, hub, tmp_path, monkeypatch):
    import dftune.model.load as load

    # the model loads from the hub, but no local folder of it is to be found
    real = load.load_classifier
    monkeypatch.setattr(train, "_hub_folder", lambda source: source)
    monkeypatch.setattr(load, "load_classifier", lambda src, **kw: real(hub if src == "org/name" else src, **kw))
    cfg = TrainConfig(**{**FAST, "wise_alpha": 0.5, "max_train_batches": 1})
    with pytest.raises(TrainError, match="org/name has no local copy in the Hugging Face cache"):
        train.run(crops, "org/name", tmp_path / "run", cfg, progress=False)
    assert not (tmp_path / "run" / "history.json").exists()  # refused before any epoch


# ------------------------------------------------------------------ 5. a one-class val split


@pytest.fixture
def real_only_val(crops, tmp_path) -> Path:
    from dftune.prepared import read_manifest, write_manifest

    out = tmp_path / "crops"
    shutil.copytree(crops, out)
    rows = [r for r in read_manifest(out) if not (r.split == "val" and r.label == 1)]
    write_manifest(out / "manifest.csv", rows)
    return out


def test_one_class_val_is_refused_at_the_start(real_only_val, vit, tmp_path):
    cfg = TrainConfig(**{**FAST, "max_train_batches": 1})
    with pytest.raises(TrainError,
                       match=r"the val split holds real crops only \(\d+ real, 0 fake\).*--split-by random"):
        train.run(real_only_val, vit, tmp_path / "run", cfg, progress=False)
    assert not (tmp_path / "run" / "history.json").exists()
    said = []
    s = train.run(real_only_val, vit, tmp_path / "run2", build(cfg, {"monitor": "loss"}), progress=False,
                  say=said.append)
    assert s.best_epoch == 1 and any("warning" in x and "real crops only" in x for x in said)


# ------------------------------------------------------------------ 6. one training per --out


def test_a_second_training_on_the_same_out_is_refused_naming_the_holder(crops, vit, tmp_path):
    run = tmp_path / "run"
    code = ("import sys, time; from dftune.atomic import folder_lock\n"
            "with folder_lock(sys.argv[1], 'lock', 'dftune train'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    cfg = TrainConfig(**{**FAST, "max_train_batches": 1})
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(TrainError, match=rf"dftune train \(pid {p.pid}\) is writing this folder \(host "
                                             rf"{socket.gethostname()}.*another --out"):
            train.run(crops, vit, run, cfg, progress=False)
    finally:
        p.kill()
        p.wait()
    assert not (run / "last").exists()
    # the killed holder's lock is stale (its pid is gone on this host): taken over, and said
    said = []
    train.run(crops, vit, run, cfg, progress=False, say=said.append)
    assert any(f"took over the lock .lock left by dftune train (pid {p.pid})" in x for x in said)
    assert (run / ".lock").read_text() == ""  # given back at the end


# ------------------------------------------------------------------ 7. the smaller ones


def test_leftover_wise_folder_is_removed_on_resume(crops, vit, tmp_path):
    cfg = TrainConfig(**{**FAST, "max_train_batches": 1})
    train.run(crops, vit, tmp_path / "run", cfg, progress=False)
    left = tmp_path / "run" / ".wise.tmp-abc123"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"0" * 1000)
    said = []
    train.run(crops, vit, tmp_path / "run", build(cfg, {"epochs": 2}), progress=False, resume=True, say=said.append)
    assert not left.exists()
    assert any("removed .wise.tmp-abc123, a half-written WiSE-FT model folder" in x for x in said)


_real_train_epoch = train._train_epoch


def _interrupt_at(monkeypatch, epoch_to_stop: int):
    real = _real_train_epoch

    def epoch(r, epoch, first_epoch):
        if epoch == epoch_to_stop:
            raise KeyboardInterrupt
        return real(r, epoch, first_epoch)

    monkeypatch.setattr(train, "_train_epoch", epoch)


def test_ctrl_c_says_to_add_resume(crops, vit, tmp_path, monkeypatch, capsys):
    from dftune.cli import main

    args = ["train", "--data", str(crops), "--model", vit, "--out", str(tmp_path / "run"), "--epochs", "3",
            "--batch-size", "8", "--set", "num_workers=0", "--set", "max_train_batches=1", "--no-tensorboard",
            "--no-aug", "--no-progress"]
    _interrupt_at(monkeypatch, 2)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "run the same command with --resume added to continue from epoch 2" in err
    _interrupt_at(monkeypatch, 3)
    assert main(args + ["--resume"]) == 130
    assert "run the same command again to continue from epoch 3" in capsys.readouterr().err


def test_head_epochs_covering_the_run_say_only_the_head_trained(crops, vit, tmp_path, capsys):
    from dftune.cli import main

    rc = main(["train", "--data", str(crops), "--model", vit, "--out", str(tmp_path / "run"), "--epochs", "1",
               "--head-epochs", "3", "--batch-size", "8", "--set", "num_workers=0", "--set",
               "max_train_batches=1", "--no-tensorboard", "--no-aug", "--no-progress"])
    out = " ".join(capsys.readouterr().out.split())  # the summary's lines as one (the console may wrap them)
    assert rc == 0
    assert "--head-epochs 3 covers all 1 epoch(s): only the classifier head trains" in out
    assert "--tune full did not train: --head-epochs 3 covered all 1 epoch(s) run, so only the classifier " \
           "head trained: 66 of" in out


def test_paired_says_how_many_pairs_it_formed_once(crops, vit, tmp_path):
    said = []
    cfg = TrainConfig(**{**FAST, "paired": True, "max_train_batches": 1})
    train.run(crops, vit, tmp_path / "run", cfg, progress=False, say=said.append)
    lines = [x for x in said if x.startswith("--paired:")]
    # make_crops: 8 train identities x 4 frames, each real frame with its 2 fakes
    assert lines == ["--paired: 32 real frame(s) with the fakes made from them (64 fakes), 0 of 96 train rows "
                     "without a partner (sampled alone)"]


def test_train_help_says_not_set(capsys):
    from dftune.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "do not say which is fake (default: not set)" in text
