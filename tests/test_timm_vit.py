"""timm Vision Transformer checkpoints (FSFM's ViT-B/16 format) converted onto transformers' ViT: offline, on tiny
checkpoints written here as timm saves them, the logits compared with timm's forward written out here (timm
itself does not import without torchvision, which cannot be installed beside dftune's torch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dftune.cli import main
from dftune.model import formats, timm_vit

torch.set_num_threads(1)

D, DEPTH, HEADS, PATCH, SIZE, MLP = 32, 2, 2, 8, 32, 64
PCFG = {"input_size": [3, SIZE, SIZE], "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3], "crop_pct": 0.8, "crop_mode": "center"}


def timm_state(head: int | None, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    sd = {"cls_token": r(1, 1, D), "pos_embed": r(1, (SIZE // PATCH) ** 2 + 1, D),
          "patch_embed.proj.weight": r(D, 3, PATCH, PATCH), "patch_embed.proj.bias": r(D),
          "norm.weight": 1 + r(D), "norm.bias": r(D)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd |= {b + "norm1.weight": 1 + r(D), b + "norm1.bias": r(D), b + "attn.qkv.weight": r(3 * D, D),
               b + "attn.qkv.bias": r(3 * D), b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
               b + "norm2.weight": 1 + r(D), b + "norm2.bias": r(D), b + "mlp.fc1.weight": r(MLP, D),
               b + "mlp.fc1.bias": r(MLP), b + "mlp.fc2.weight": r(D, MLP), b + "mlp.fc2.bias": r(D)}
    if head:
        sd |= {"head.weight": r(head, D), "head.bias": r(head)}
    return sd


def write_timm(folder: Path, head: int | None = 2, label_names=("real", "fake"), arch="vit_small_patch8_32",
               seed: int = 0, **cfg) -> dict:
    """A timm hub folder: config.json as timm's push_to_hub writes it, model.safetensors with timm's names."""
    from safetensors.torch import save_file

    sd = timm_state(head, seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"))
    c = {"architecture": arch, "num_classes": head or 0, "num_features": D, "global_pool": "token",
         "model_args": {"num_heads": HEADS}, "pretrained_cfg": PCFG, **cfg}
    if label_names:
        c["label_names"] = list(label_names)
    (folder / "config.json").write_text(json.dumps(c))
    return sd


def timm_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """timm's VisionTransformer forward (class token, pre-norm blocks, fused qkv, exact GELU, eps 1e-6)."""
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], 1) + sd["pos_embed"]
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(t, (D,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-6)
        q, k, v = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(
            len(x), -1, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // HEADS), -1) @ v
        t = t + F.linear(a.transpose(1, 2).reshape(len(x), -1, D), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.layer_norm(t, (D,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-6)
        t = t + F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                         sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    t = F.layer_norm(t, (D,), sd["norm.weight"], sd["norm.bias"], 1e-6)
    return F.linear(t[:, 0], sd["head.weight"], sd["head.bias"])


def timm_eval_transform(img: np.ndarray) -> torch.Tensor:
    """timm's eval transform for PCFG written with PIL, as torchvision applies it to a PIL image: the shorter side
    to floor(32 / 0.8) = 40 (bicubic), a centre crop of 32 (torchvision's rounding), ToTensor, Normalize."""
    from PIL import Image

    im = Image.fromarray(img)
    w, h = im.size
    s = math.floor(SIZE / PCFG["crop_pct"])
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    im = im.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - SIZE) / 2.0)), int(round((nw - SIZE) / 2.0))
    im = im.crop((left, top, left + SIZE, top + SIZE))
    t = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (t - torch.tensor(PCFG["mean"])[:, None, None]) / torch.tensor(PCFG["std"])[:, None, None]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFTUNE_CACHE", str(tmp_path / "dftune-cache"))


def test_a_timm_vit_gives_timms_logits_and_preprocessing(tmp_path, cache):
    from dftune import scoring
    from dftune.portable import normalise, resize_crop_uint8

    sd = write_timm(tmp_path / "vit", seed=1)
    m = scoring.load_model(tmp_path / "vit", device="cpu")
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = m.module(pixel_values=x).logits
    ref = timm_forward(sd, x)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    assert m.id2label == {0: "real", 1: "fake"} and m.meta.fake_index == 1
    rng = np.random.default_rng(0)
    for h, w in [(48, 48), (64, 64), (35, 35), (40, 60)]:  # square face crops, and a frame
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = torch.as_tensor(normalise(np.stack([resize_crop_uint8(img, m.pre)]), m.pre))[0]
        assert torch.allclose(got, timm_eval_transform(img), atol=1e-5), (h, w)


def test_an_encoder_without_a_head_trains_evaluates_predicts_and_exports(tmp_path, cache, make_crops, capsys):
    """FSFM's release is a self-supervised encoder: no 2-way head. It gets a new real/fake head and is then an
    ordinary ViT everywhere."""
    write_timm(tmp_path / "fsfm", head=None, label_names=None, arch="vit_base_patch16_224")
    (tmp_path / "fsfm" / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n")
    crops = make_crops(n_videos=4, frames=3, size=32, methods=("Deepfakes",))
    run = tmp_path / "run"
    assert main(["train", "--data", str(crops), "--model", str(tmp_path / "fsfm"), "--out", str(run), "--epochs", "1",
                 "--batch-size", "4", "--no-progress", "--no-tensorboard", "--set", "num_workers=0",
                 "--set", "max_train_batches=2"]) == 0
    from transformers import AutoModelForImageClassification

    assert type(AutoModelForImageClassification.from_pretrained(run / "best")).__name__ == "ViTForImageClassification"
    assert main(["evaluate", "--data", str(crops), "--model", str(tmp_path / "fsfm"), "--out", str(tmp_path / "ev"),
                 "--no-progress"]) == 0
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    for i, p in enumerate(sorted(Path(crops).rglob("*.jpg"))[:2]):
        Image.open(p).save(imgs / f"{i}.png")
    assert main(["predict", str(imgs), "--model", str(run / "best"), "--detector", "none", "--out",
                 str(tmp_path / "p.csv"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", str(run / "best"), "--out", str(tmp_path / "sub"), "--bench-seconds", "0"]) == 0
    assert "licence: cc-by-nc-4.0" in capsys.readouterr().out  # FSFM's terms reach the shipped folder


@pytest.mark.parametrize("name,cfg,says", [
    ("avg", {"global_pool": "avg"}, r"avg/config.json: .*global_pool 'avg'.*class-token ViTs only"),
    ("cnn", {"arch": "resnet50"}, r"cnn/config.json: architecture 'resnet50'.*torchvision"),
])
def test_timm_models_it_cannot_convert_are_refused_naming_the_file(tmp_path, cache, name, cfg, says):
    write_timm(tmp_path / name, **cfg)
    with pytest.raises(timm_vit.TimmError, match=says):
        formats.resolve(tmp_path / name)
