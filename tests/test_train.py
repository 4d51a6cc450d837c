"""dftune train: offline, on CPU, with tiny ViTs built from a config and crops from the demo generator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import train_killed_after
from dftune.model import labels
from dftune.model import meta as modelmeta
from dftune.portable import Preprocess
from dftune.stages import train
from dftune.stages.train import TrainError
from dftune.training import data
from dftune.training.config import TrainConfig, build, load_yaml, parse_sets

torch.set_num_threads(1)

# a tiny ViT that learns the demo task in a few epochs (hidden 64; hidden 32 barely moves)
TINY = dict(image_size=32, hidden_size=64)
FAST = dict(epochs=8, lr=1e-3, batch_size=8, num_workers=0, aug=False, patience=0, tensorboard=False)


@pytest.fixture(scope="module")
def crops(make_crops) -> Path:
    return make_crops(n_videos=8, frames=8, size=32, methods=("Deepfakes", "FaceSwap"))


@pytest.fixture(scope="module")
def vit(tiny_vit):
    return tiny_vit({0: "Realism", 1: "Deepfake"}, **TINY)


@pytest.fixture(scope="module")
def vit_swapped(tiny_vit):
    return tiny_vit({0: "Deepfake", 1: "Real"}, name="vit_swapped", **TINY)


@pytest.fixture(scope="module")
def fast_run(crops, vit, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    summary = train.run(crops, vit, out, TrainConfig(**FAST), progress=False)
    return out, summary


def _probs(model_dir: Path, crops: Path, split="val"):
    """Fake probabilities of a saved model on a split, through dftune's own input pipeline."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from dftune.prepared import read_manifest

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    proc = AutoImageProcessor.from_pretrained(model_dir)
    meta = modelmeta.load(model_dir, model.config.id2label)
    spec = Preprocess.from_processor(proc)
    rows = read_manifest(crops, splits=[split])
    ds = data.CropDataset(crops, rows, data.make_transform(spec, None))
    batch = data.collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        logits = model(pixel_values=data.Normalize(spec)(batch["pixels"])).logits
    return logits, logits.softmax(-1)[:, meta.fake_index].numpy(), ds.labels, rows, meta, proc


# ------------------------------------------------------------------ learning and checkpoints


def test_loss_falls_and_model_learns(fast_run):
    out, summary = fast_run
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5, 6, 7, 8]
    losses = [h["train"]["loss"] for h in hist]
    # guide-exact (antialiased) crops keep less of the demo fakes' aliasing: a slower fall than with INTER_CUBIC
    assert losses[-1] < 0.8 * losses[0], losses
    assert hist[-1]["val"]["frame"]["auc"] > 0.85
    assert summary.epochs_run == 8 and summary.stopped == "completed all epochs"
    assert (out / "settings.yaml").exists() and (out / "tensorboard").exists() is False


def test_checkpoints_reload_and_reproduce_val_metrics(fast_run, crops):
    from dftune.metrics import binary_metrics

    out, summary = fast_run
    hist = {h["epoch"]: h for h in json.loads((out / "history.json").read_text())}
    for name, epoch in (("best", summary.best_epoch), ("last", summary.epochs_run)):
        logits, p, y, rows, meta, proc = _probs(out / name, crops)
        m = binary_metrics(y, p)
        rec = hist[epoch]["val"]["frame"]
        assert m["auc"] == pytest.approx(rec["auc"], abs=1e-6)
        assert m["loss"] == pytest.approx(rec["loss"], abs=1e-5)
        assert m["macro_f1"] == pytest.approx(rec["macro_f1"])
        # the saved model folder carries what dftune needs to use it again
        assert (meta.fake_index, meta.real_index) == (1, 0)
        assert meta.threshold == 0.5 and meta.extra["train_val_threshold"]["frame"] == rec["best_threshold"]
        assert meta.crop.size == 32 and meta.crop.detector == "retinaface"  # from the data's settings.json
        assert meta.extra["epoch"] == epoch
    # on-device normalisation gives what the model's own processor gives
    from PIL import Image
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(out / "best").eval()
    imgs = [Image.open(crops / r.path).convert("RGB") for r in rows[:6]]
    with torch.no_grad():
        ref = model(**proc(images=imgs, return_tensors="pt")).logits
    best_logits = _probs(out / "best", crops)[0][:6]
    assert torch.allclose(ref, best_logits, atol=1e-4)


def test_saved_threshold_is_the_default_and_the_train_val_optimum_only_information(fast_run):
    """The val optimum seen in training (frame or video level, no TTA) is not what predict should apply."""
    out, summary = fast_run
    hist = {h["epoch"]: h for h in json.loads((out / "history.json").read_text())}
    for name, epoch in (("best", summary.best_epoch), ("last", summary.epochs_run)):
        raw = json.loads((out / name / "dftune.json").read_text())
        meta = modelmeta.load(out / name, {0: "Realism", 1: "Deepfake"})
        assert raw["threshold"] == 0.5 and meta.threshold == 0.5
        assert meta.threshold_source == modelmeta.ModelMeta(1, 0).threshold_source  # "default"
        info = meta.extra["train_val_threshold"]
        val = hist[epoch]["val"]
        assert info["frame"] == val["frame"]["best_threshold"] and info["video"] == val["video"]["best_threshold"]
        assert info["tta"] == [] and "evaluate --write-threshold" in info["note"]


def test_label_swapped_model_learns_the_right_direction(crops, vit_swapped, tmp_path):
    out = tmp_path / "run"
    train.run(crops, vit_swapped, out, TrainConfig(**FAST), progress=False)
    _, p, y, _, meta, _ = _probs(out / "last", crops)
    assert meta.fake_index == 0 and meta.real_index == 1  # the model's own order, not reordered
    cfg = json.loads((out / "last" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "Deepfake", "1": "Real"}
    assert p[y == 1].mean() > p[y == 0].mean() + 0.2
    hist = json.loads((out / "history.json").read_text())
    assert hist[-1]["val"]["frame"]["auc"] > 0.85


@pytest.mark.parametrize("layout", ["current", "scheduler-registered", "weights-in-state"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(crops, vit, tmp_path, layout):
    """layout "scheduler-registered": the interrupted run's state was saved when the LR scheduler was a
    register_for_checkpointing custom object (custom_checkpoint_0.pkl) rather than a prepared one;
    "weights-in-state": saved when the state held Accelerate's own copy of the weights
    (training_state/model.safetensors), which resume then takes instead of last/'s."""
    from safetensors.torch import load_file

    cfg = TrainConfig(**{**FAST, "epochs": 3, "aug": True, "schedule": "cosine", "warmup_ratio": 0.2})
    train.run(crops, vit, tmp_path / "a", cfg, progress=False)

    # the interrupted run also uses loader workers: results must not depend on them
    cfg_b = build(cfg, {"num_workers": 2})
    train_killed_after(2, crops, vit, tmp_path / "b", cfg_b)
    state_dir = tmp_path / "b" / "last" / "training_state"
    assert (state_dir / "scheduler.bin").exists() and not list(state_dir.glob("custom_checkpoint_*"))
    assert not (state_dir / "model.safetensors").exists()  # the weights are last/'s, not a second copy
    if layout == "scheduler-registered":
        (state_dir / "scheduler.bin").rename(state_dir / "custom_checkpoint_0.pkl")
    if layout == "weights-in-state":
        from safetensors.torch import save_file
        from transformers import AutoModelForImageClassification

        m = AutoModelForImageClassification.from_pretrained(state_dir.parent)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(state_dir / "model.safetensors"))
        with torch.no_grad():
            for p in m.parameters():
                p.zero_()
        m.save_pretrained(state_dir.parent)  # last/'s own weights are not the ones to resume from here
    with pytest.raises(TrainError, match="--resume"):
        train.run(crops, vit, tmp_path / "b", cfg_b, progress=False)
    summary = train.run(crops, vit, tmp_path / "b", cfg_b, progress=False, resume=True)
    assert summary.epochs_run == 3
    a = load_file(tmp_path / "a" / "last" / "model.safetensors")
    b = load_file(tmp_path / "b" / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = json.loads((tmp_path / "a" / "history.json").read_text())
    hb = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["val"] for h in ha] == [h["val"] for h in hb]
    assert [h["train"]["loss"] for h in ha] == [h["train"]["loss"] for h in hb]


def test_checkpoints_hold_the_weights_once(crops, vit, tmp_path):
    """training_state holds the optimizer's moments, not a second copy of the weights (<= 2.3x them), and in an
    epoch that is the best so far last/'s model files are best/'s, linked rather than written again."""
    cfg = TrainConfig(**{**FAST, "epochs": 2, "lr": 1e-12, "max_grad_norm": 0, "max_train_batches": 2})
    train.run(crops, vit, tmp_path / "run", cfg, progress=False)
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["best"] for h in hist] == [True, False]  # lr 1e-12: epoch 2 is no better
    best, last = tmp_path / "run" / "best", tmp_path / "run" / "last"
    weights = (last / "model.safetensors").stat().st_size
    state = sum(f.stat().st_size for f in (last / "training_state").rglob("*") if f.is_file())
    assert state <= 2.3 * weights, (state, weights)
    # epoch 2 was not the best: last/ was written on its own
    assert (last / "model.safetensors").stat().st_ino != (best / "model.safetensors").stat().st_ino
    assert json.loads((last / "dftune.json").read_text())["extra"]["epoch"] == 2

    cfg = TrainConfig(**{**FAST, "epochs": 1, "max_train_batches": 2})
    train.run(crops, vit, tmp_path / "one", cfg, progress=False)
    best, last = tmp_path / "one" / "best", tmp_path / "one" / "last"
    for f in best.iterdir():
        assert (last / f.name).stat().st_ino == f.stat().st_ino, f.name  # one file, two names
    assert (last / "training_state" / "trainer.json").exists()


def test_val_every_skips_validation_between_and_always_validates_the_last_epoch(crops, vit, tmp_path, capsys):
    from dftune.cli import main

    run = tmp_path / "run"
    rc = main(["train", "--data", str(crops), "--model", vit, "--out", str(run), "--epochs", "3", "--val-every", "2",
               "--lr", "1e-3", "--batch-size", "8", "--set", "max_train_batches=2", "--no-tensorboard",
               "--no-progress", "--patience", "0"])
    assert rc == 0
    hist = json.loads((run / "history.json").read_text())
    assert [h["val"] is not None for h in hist] == [False, True, True]
    assert not hist[0]["best"] and hist[0]["monitor"] is None
    assert "not validated (--val-every 2)" in capsys.readouterr().out
    assert json.loads((run / "best" / "dftune.json").read_text())["extra"]["best_epoch"] in (2, 3)
    assert json.loads((run / "last" / "dftune.json").read_text())["extra"]["epoch"] == 3
    # a resume may change it (it does not change what the steps compute)
    rc = main(["train", "--data", str(crops), "--model", vit, "--out", str(run), "--resume", "--epochs", "4",
               "--val-every", "1", "--no-progress"])
    assert rc == 0
    assert [h["val"] is not None for h in json.loads((run / "history.json").read_text())] == [False, True, True, True]


def test_early_stopping_stops(crops, vit, tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 6, "lr": 1e-12, "patience": 1, "max_grad_norm": 0})
    summary = train.run(crops, vit, tmp_path / "run", cfg, progress=False)
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(hist) == 2 and summary.epochs_run == 2
    assert summary.stopped.startswith("early stopping") and summary.best_epoch == 1


# ------------------------------------------------------------------ labels and heads


def test_model_without_fake_real_labels_is_refused(crops, tiny_vit, tmp_path, capsys):
    from dftune.cli import main

    vague = tiny_vit({0: "LABEL_0", 1: "LABEL_1"}, name="vague", **TINY)
    with pytest.raises(labels.LabelMappingError, match="--fake-label"):
        train.run(crops, vague, tmp_path / "x", TrainConfig(**FAST), progress=False)
    rc = main(["train", "--data", str(crops), "--model", vague, "--out", str(tmp_path / "y"), "--workers", "0"])
    assert rc == 2 and "--fake-label" in capsys.readouterr().err
    # naming the fake class makes it usable
    cfg = TrainConfig(**{**FAST, "epochs": 1, "fake_label": "LABEL_0"})
    train.run(crops, vague, tmp_path / "z", cfg, progress=False)
    meta = modelmeta.load(tmp_path / "z" / "best")
    assert (meta.fake_index, meta.real_index) == (0, 1)


def test_head_of_another_size_only_with_reinit_head(crops, tiny_vit, tmp_path):
    three = tiny_vit({0: "cat", 1: "dog", 2: "bird"}, name="three", **TINY)
    with pytest.raises(labels.LabelMappingError, match="--reinit-head"):
        train.run(crops, three, tmp_path / "x", TrainConfig(**FAST), progress=False)
    cfg = TrainConfig(**{**FAST, "epochs": 1, "reinit_head": True})
    train.run(crops, three, tmp_path / "y", cfg, progress=False)
    saved = json.loads((tmp_path / "y" / "best" / "config.json").read_text())
    assert saved["id2label"] == {"0": "Realism", "1": "Deepfake"}


# ------------------------------------------------------------------ robustness


def test_corrupt_image_is_skipped_and_reported(crops, vit, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(crops, data)
    bad_train = sorted((data / "train" / "fake").glob("*.jpg"))[0]
    bad_val = sorted((data / "val" / "real").glob("*.jpg"))[0]
    bad_train.write_bytes(b"not a jpeg at all")
    bad_val.write_bytes(b"\xff\xd8\xff garbage")
    summary = train.run(data, vit, tmp_path / "run", TrainConfig(**{**FAST, "epochs": 1}), progress=False)
    text = (tmp_path / "run" / "skipped.txt").read_text()
    assert str(bad_train) in text and str(bad_val) in text
    assert len(summary.skipped) == 2
    from dftune.prepared import read_manifest

    n_val = len(read_manifest(data, splits=["val"]))
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert hist[0]["val"]["frame"]["n"] == n_val - 1


def test_out_of_memory_halves_micro_batch_and_keeps_the_step(crops, vit, tmp_path, monkeypatch):
    from transformers import ViTForImageClassification

    cfg = TrainConfig(**{**FAST, "epochs": 1})
    train.run(crops, vit, tmp_path / "plain", cfg, progress=False)

    forward = ViTForImageClassification.forward

    def small_gpu(self, pixel_values=None, **kw):
        if self.training and pixel_values.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(self, pixel_values=pixel_values, **kw)

    monkeypatch.setattr(ViTForImageClassification, "forward", small_gpu)
    summary = train.run(crops, vit, tmp_path / "oom", cfg, progress=False)
    assert summary.micro_batch == 2
    # same effective batch: the same training curve (weights differ only by float summation order,
    # which Adam magnifies on gradients that are pure noise, such as attention key biases)
    ha = json.loads((tmp_path / "plain" / "history.json").read_text())[0]
    hb = json.loads((tmp_path / "oom" / "history.json").read_text())[0]
    assert hb["train"]["micro_batch"] == 2 and ha["train"]["micro_batch"] == 8
    assert hb["train"]["loss"] == pytest.approx(ha["train"]["loss"], rel=1e-4)
    assert hb["val"]["frame"]["loss"] == pytest.approx(ha["val"]["frame"]["loss"], rel=1e-3)


class _OutOfMemoryInBackward(torch.autograd.Function):
    """Identity whose backward runs out of memory (simulated)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated, in backward)")


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_out_of_memory_mid_window_keeps_the_window_gradients(crops, vit, tmp_path, monkeypatch, where):
    """grad_accum 2, micro-batch 4 of 8: out of memory in the 2nd micro-batch of the window's 2nd batch.

    In a backward pass it strikes when the head and the encoder already hold that micro-batch's gradient
    and the embeddings do not. The window is then redone at micro-batch 2, so the run must equal, bit for
    bit, the run that used micro-batch 2 from the start (the same sums in the same order), and the run at
    micro-batch 4 without the error up to float summation order. Dropping the window's first batch (the
    old bug) moves the weights by about lr (1e-3).
    """
    from safetensors.torch import load_file
    from transformers import ViTForImageClassification

    cfg = TrainConfig(**{**FAST, "epochs": 1, "grad_accum": 2, "micro_batch": 4, "max_train_batches": 4})
    train.run(crops, vit, tmp_path / "mb2", build(cfg, {"micro_batch": 2}), progress=False)
    train.run(crops, vit, tmp_path / "mb4", cfg, progress=False)

    forward = ViTForImageClassification.forward
    calls = []

    def flaky_gpu(self, pixel_values=None, **kw):
        if self.training:
            calls.append(pixel_values.shape[0])
            if len(calls) == 4:  # batch 2 of the first window, its 2nd micro-batch
                if where == "forward":
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
                hook = self.vit.embeddings.register_forward_hook(lambda m, i, out: _OutOfMemoryInBackward.apply(out))
                try:
                    return forward(self, pixel_values=pixel_values, **kw)
                finally:
                    hook.remove()
        return forward(self, pixel_values=pixel_values, **kw)

    monkeypatch.setattr(ViTForImageClassification, "forward", flaky_gpu)
    summary = train.run(crops, vit, tmp_path / "oom", cfg, progress=False)
    assert summary.micro_batch == 2
    oom, mb2, mb4 = (load_file(tmp_path / r / "last" / "model.safetensors") for r in ("oom", "mb2", "mb4"))
    for k in oom:
        assert torch.equal(oom[k], mb2[k]), k
        assert torch.allclose(oom[k], mb4[k], rtol=0, atol=1e-4), k
    # window 1: 4+4, 4+failed 4, then both batches again at 2+2+2+2; window 2: 2 x (2+2+2+2)
    assert calls == [4, 4, 4, 4] + [2] * 16


def test_lr_schedule_advances_once_per_optimizer_step_taken(crops, vit, tmp_path, monkeypatch):
    """A step skipped by fp16's GradScaler (inf/NaN gradients) does not advance the schedule; nor does the
    number of processes (a step is one optimizer step, not one step per process)."""
    from types import SimpleNamespace

    import accelerate.scheduler
    from accelerate.optimizer import AcceleratedOptimizer

    from dftune.training.schedule import lr_lambda

    cfg = TrainConfig(**{**FAST, "epochs": 1, "max_train_batches": 6, "schedule": "cosine", "warmup_ratio": 0})
    step = AcceleratedOptimizer.step
    calls = []

    def every_other_step_overflows(self, closure=None):  # what GradScaler.step + Accelerate report on inf/NaN
        calls.append(1)
        self._is_overflow = len(calls) % 2 == 0
        if not self._is_overflow:
            return step(self, closure)

    monkeypatch.setattr(AcceleratedOptimizer, "step", every_other_step_overflows)
    monkeypatch.setattr(accelerate.scheduler, "AcceleratorState", lambda: SimpleNamespace(num_processes=4))
    train.run(crops, vit, tmp_path / "run", cfg, progress=False)
    assert len(calls) == 6
    lr = json.loads((tmp_path / "run" / "history.json").read_text())[0]["train"]["lr"]
    assert lr == pytest.approx(cfg.lr * lr_lambda(6, 0, "cosine")(3))  # 3 steps taken of 6: half the peak
    assert lr == pytest.approx(cfg.lr / 2)


# ------------------------------------------------------------------ components


def test_config_layers_and_errors(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("lr: 3.0e-5\nbalance: sampler\naug_jpeg_quality: [30, 90]\n")
    cfg = build(None, load_yaml(y), parse_sets(["epochs=2", "aug_jpeg=0", "aug=false"]), {"batch_size": 8})
    assert (cfg.lr, cfg.balance, cfg.epochs, cfg.batch_size) == (3e-5, "sampler", 2, 8)
    assert cfg.aug_jpeg == 0.0 and cfg.aug is False and cfg.aug_jpeg_quality == (30, 90)
    d = TrainConfig()
    assert (d.batch_size, d.lr, d.epochs, d.patience, d.monitor) == (16, 1e-5, 5, 3, "f1")
    with pytest.raises(ValueError, match="unknown training setting"):
        build(None, {"learning_rate": 1})
    with pytest.raises(ValueError, match="balance"):
        build(None, {"balance": "oversample"})


def test_augmentation_is_a_function_of_seed_epoch_index(crops):
    from dftune.prepared import read_manifest

    spec = Preprocess(out_height=32, out_width=32, resize_height=32, resize_width=32)
    rows = read_manifest(crops, splits=["train"])
    ds = data.CropDataset(crops, rows, data.make_transform(spec, data.AugSettings.from_config(TrainConfig())), seed=3)
    a, b, c = ds[(5, 1)]["image"], ds[(5, 1)]["image"], ds[(5, 2)]["image"]
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    plain = data.CropDataset(crops, rows, data.make_transform(spec, None))
    assert np.array_equal(plain[5]["image"], plain[(5, 1)]["image"])  # no augmentation outside train


def test_sampler_balance_and_class_weights():
    y = np.array([0] * 20 + [1] * 80)
    s = data.EpochSampler(y, seed=0, balanced=True)
    s.set_epoch(1)
    drawn = y[[i for i, _ in s]]
    assert 0.4 < drawn.mean() < 0.6
    s2 = data.EpochSampler(y, seed=0)
    s2.set_epoch(1)
    order1 = [i for i, _ in s2]
    s2.set_epoch(2)
    assert sorted(order1) == list(range(100)) and order1 != [i for i, _ in s2]
    assert data.class_weights([20, 80]) == pytest.approx([2.5, 0.625])  # the guide's 4:1


def test_cli_config_overrides_and_resume(crops, vit, tmp_path, capsys):
    import yaml

    from dftune.cli import main

    y = tmp_path / "run.yaml"
    y.write_text("epochs: 3\nlr: 1.0e-3\nbatch_size: 8\nbalance: sampler\naug_jpeg: 0\n")
    out = tmp_path / "run"
    base = ["train", "--data", str(crops), "--model", vit, "--out", str(out), "--workers", "0", "--no-progress",
            "--no-tensorboard"]
    assert main(base + ["--config", str(y), "--epochs", "1", "--set", "aug_blur=0"]) == 0
    s = yaml.safe_load((out / "settings.yaml").read_text())
    assert (s["epochs"], s["lr"], s["batch_size"], s["balance"], s["aug_jpeg"], s["aug_blur"]) == \
        (1, 1e-3, 8, "sampler", 0.0, 0.0)
    assert s["_label_map"]["fake_index"] == 1 and s["_effective_batch"] == 8
    assert "best model" in capsys.readouterr().out
    # --resume keeps the run's own settings; flags given now override them
    assert main(base + ["--resume", "--epochs", "2"]) == 0
    s = yaml.safe_load((out / "settings.yaml").read_text())
    assert (s["epochs"], s["balance"], s["lr"]) == (2, "sampler", 1e-3)
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]


# ------------------------------------------------------------------ resume with changed settings


@pytest.fixture(scope="module")
def cosine_interrupted(crops, vit, tmp_path_factory):
    """A 3-epoch cosine run (3 optimizer steps per epoch) killed after epoch 1. Copy it before resuming."""
    cfg = TrainConfig(**{**FAST, "epochs": 3, "schedule": "cosine", "warmup_ratio": 0.0, "max_train_batches": 3})
    out = tmp_path_factory.mktemp("cosine") / "run"

    class Killed(Exception):
        pass

    def kill(epoch, record):
        raise Killed

    with pytest.raises(Killed):
        train.run(crops, vit, out, cfg, progress=False, on_epoch_end=kill)
    return out, cfg


def _copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def test_resume_refuses_settings_that_change_the_schedule_or_data_order(cosine_interrupted, crops, vit, tmp_path,
                                                                        capsys):
    from dftune.cli import main

    src, cfg = cosine_interrupted
    run = _copy_run(src, tmp_path)
    settings = (run / "settings.yaml").read_bytes()
    with pytest.raises(TrainError) as e:
        train.run(crops, vit, run, build(cfg, {"batch_size": 4, "lr": 1e-4, "seed": 1, "patience": 2}), progress=False,
              resume=True)
    msg = str(e.value)
    assert "batch_size: 8 -> 4" in msg and "lr: 0.001 -> 0.0001" in msg and "seed: 0 -> 1" in msg
    assert "patience" not in msg.split("refused:")[1].split("Settings a resume may change")[0]  # patience is safe
    # the command line says the same, exit status 2
    rc = main(["train", "--data", str(crops), "--model", vit, "--out", str(run), "--resume", "--batch-size", "16",
               "--no-progress"])
    assert rc == 2 and "batch_size: 8 -> 16" in capsys.readouterr().err
    # a cosine schedule laid out over 3 epochs cannot be extended: it ends at lr 0
    with pytest.raises(TrainError, match="cosine"):
        train.run(crops, vit, run, build(cfg, {"epochs": 5}), progress=False, resume=True)
    # nothing was touched
    assert (run / "settings.yaml").read_bytes() == settings
    assert json.loads((run / "last" / "training_state" / "trainer.json").read_text())["epoch"] == 1


def test_resume_honours_safe_settings_and_keeps_the_schedule_laid_out_at_the_start(cosine_interrupted, crops, vit,
                                                                                   tmp_path):
    import yaml

    from dftune.training.schedule import lr_lambda

    src, cfg = cosine_interrupted
    run = _copy_run(src, tmp_path)
    summary = train.run(crops, vit, run, build(cfg, {"epochs": 2, "patience": 5}), progress=False, resume=True)
    assert summary.epochs_run == 2 and summary.epochs_planned == 2
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    # stopping a 3-epoch cosine schedule after 2 epochs keeps its 3-epoch layout (9 steps): step 6 of 9, not
    # a schedule recomputed over 2 epochs (which would be at lr 0 by now)
    assert hist[1]["train"]["lr"] == pytest.approx(cfg.lr * lr_lambda(9, 0, "cosine")(6))
    assert hist[1]["train"]["lr"] > 0.2 * cfg.lr
    s = yaml.safe_load((run / "settings.yaml").read_text())
    assert (s["epochs"], s["patience"], s["batch_size"]) == (2, 5, 8)
    assert s["_schedule"]["epochs"] == 3 and s["_schedule"]["steps"] == 9
    first, second = s["_stretches"]
    assert (first["first_epoch"], first["last_epoch"], first["planned_epochs"], first["resumed"]) == (1, 1, 3, False)
    assert (second["first_epoch"], second["last_epoch"], second["resumed"]) == (2, 2, True)
    assert second["changed"] == {"epochs": {"from": 3, "to": 2}, "patience": {"from": 0, "to": 5}}


# ------------------------------------------------------------------ a full disk at a checkpoint


@pytest.mark.parametrize("error", ["oserror", "safetensors"])
def test_full_disk_at_a_checkpoint_keeps_the_last_one_and_resume_continues(crops, vit, tmp_path, monkeypatch, error):
    from safetensors import SafetensorError
    from transformers import ViTForImageClassification

    from dftune.atomic import WriteError
    from dftune.cli import main
    from dftune.training import checkpoint as ckpt

    save, link = ViTForImageClassification.save_pretrained, ckpt.link_files
    saves = []

    def disk_fills(folder):
        """last/'s model files are written (save_pretrained) or linked from best/ (link_files): the disk fills
        at epoch 2's, whichever way it goes."""
        if Path(folder).name == "last.tmp":
            saves.append(folder)
            if len(saves) == 2:  # epoch 2's last/
                (Path(folder) / "model.safetensors").write_bytes(b"half")
                if error == "oserror":
                    raise OSError(28, "No space left on device")
                raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                      'message: "No space left on device" })')

    def full_disk(self, folder, *a, **kw):
        disk_fills(folder)
        return save(self, folder, *a, **kw)

    def full_disk_link(src, dst):
        disk_fills(dst)
        return link(src, dst)

    monkeypatch.setattr(ViTForImageClassification, "save_pretrained", full_disk)
    monkeypatch.setattr(ckpt, "link_files", full_disk_link)
    cfg = TrainConfig(**{**FAST, "epochs": 2, "max_train_batches": 2})
    run = tmp_path / "run"
    with pytest.raises(WriteError) as e:
        train.run(crops, vit, run, cfg, progress=False)
    msg = str(e.value)
    assert "No space left on device" in msg and "free on" in msg and str(run / "last.tmp") in msg
    assert "--resume" in msg and "epoch 1" in msg
    assert not (run / "last.tmp").exists()  # the half-written folder went
    assert json.loads((run / "last" / "training_state" / "trainer.json").read_text())["epoch"] == 1
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and "checkpoint" not in hist[0]
    assert hist[1]["checkpoint"].startswith("not saved")
    # space freed: --resume continues from epoch 1's checkpoint
    monkeypatch.undo()
    rc = main(["train", "--data", str(crops), "--model", vit, "--out", str(run), "--resume", "--no-progress"])
    assert rc == 0
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and "checkpoint" not in hist[1]
    assert json.loads((run / "last" / "training_state" / "trainer.json").read_text())["epoch"] == 2


# ------------------------------------------------------------------ threads and loader workers


def test_threads_and_workers_follow_the_machine():
    from dftune.training.machine import resolve_threads, resolve_workers

    def threads(setting=0, **kw):
        return resolve_threads(setting, **{"cores": 16, "processes": 1, "gpu": False, "env": {}, **kw})[0]

    assert threads() == 16
    assert threads(processes=4) == 4 and threads(cores=2, processes=4) == 1
    assert threads(env={"OMP_NUM_THREADS": "3"}) == 3 and threads(processes=4, env={"OMP_NUM_THREADS": "2"}) == 2
    assert threads(env={"OMP_NUM_THREADS": "junk"}) == 16
    assert threads(current=1) == 1  # auto never raises what the process already has
    assert threads(gpu=True) is None  # torch's default on a GPU
    assert threads(5) == 5 and threads(5, gpu=True) == 5 and threads(5, current=1) == 5

    def workers(setting=-1, **kw):
        return resolve_workers(setting, **{"cores": 16, "processes": 1, "gpu": False, **kw})[0]

    assert workers() == 0 and workers(gpu=True) == 8 and workers(gpu=True, cores=4) == 4
    assert workers(gpu=True, processes=4) == 4 and workers(3) == 3 and workers(0, gpu=True) == 0
    d = TrainConfig()
    assert (d.threads, d.num_workers) == (0, -1)


def test_threads_flag_reaches_torch_and_the_summary(crops, vit, tmp_path, monkeypatch, capsys):
    import yaml
    from transformers import ViTForImageClassification

    from dftune.cli import main

    forward = ViTForImageClassification.forward
    seen = set()

    def spy(self, *a, **kw):
        seen.add(torch.get_num_threads())
        return forward(self, *a, **kw)

    monkeypatch.setattr(ViTForImageClassification, "forward", spy)
    out = tmp_path / "run"
    torch.set_num_threads(2)
    try:
        rc = main(["train", "--data", str(crops), "--model", vit, "--out", str(out), "--epochs", "1", "--threads", "1",
                   "--set", "max_train_batches=2", "--batch-size", "8", "--no-progress", "--no-tensorboard"])
        assert torch.get_num_threads() == 2  # the caller's count is back
    finally:
        torch.set_num_threads(1)
    assert rc == 0 and seen == {1}
    printed = capsys.readouterr().out
    assert "threads 1 (--threads)" in printed and "loader workers 0 (auto: 0 on CPU)" in printed
    s = yaml.safe_load((out / "settings.yaml").read_text())
    assert (s["threads"], s["num_workers"], s["_threads"], s["_workers"]) == (1, -1, 1, 0)
    assert (s["_stretches"][0]["threads"], s["_stretches"][0]["workers"]) == (1, 0)


# ------------------------------------------------------------------ output off a terminal


def test_progress_off_a_terminal_is_a_few_lines_per_epoch(crops, vit, tmp_path, capfd):
    cfg = TrainConfig(**{**FAST, "epochs": 2, "max_train_batches": 3})
    capfd.readouterr()
    train.run(crops, vit, tmp_path / "run", cfg, progress=True)
    out, err = capfd.readouterr()
    assert "\r" not in err and "\r" not in out  # no bar redraws in a log
    assert "Writing model shards" not in err
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert len(lines) <= 3 * cfg.epochs + 2, lines
    assert sum("epoch 1/2" in ln for ln in err.splitlines()) == 2  # a start line and an end line
