"""dftune feeds a model exactly what its Hugging Face image processor would.

For each image-classification family, the default processor (the PIL backend, which is
what transformers gives without torchvision) is the reference:

    processor(images=img, return_tensors="pt")["pixel_values"]

and both dftune pipelines must reproduce it on RGB uint8 arrays of several sizes:

* inference: ``normalise(np.stack([resize_crop_uint8(img, pre)]), pre)``
* training (evaluation transform): ``Normalize(pre)(make_transform(pre, None)(img) stacked)``

Each family also gets a tiny randomly initialised model of its own config class that must
accept the tensor, and ``Preprocess`` must survive ``from_dict(to_dict())`` and a
save/load of the processor. No network, no torchvision; the whole file runs in seconds.

The processors are built from their ``...Pil`` classes on purpose: with torchvision
installed, ``ViTImageProcessor`` / ``AutoImageProcessor`` switch to the torchvision backend,
whose resize (tvF.resize on uint8 tensors) and fused normalisation differ from PIL's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
import transformers

from dftune.model import timm_vit
from dftune.portable import Preprocess, normalise, resize_crop_uint8

# Measured difference of the reference sketch: 0 (bit-identical) for every case below.
ATOL = 1e-5

IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]
# google/efficientnet-b*: sqrt(ImageNet std), divided twice by include_top.
EFFICIENTNET_HUB_STD = [0.47853944, 0.4732864, 0.47434163]


# ---------------------------------------------------------------- tiny models (image size = processor output)

_VIT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, num_labels=2)
_TOWER = dict(patch_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
_TEXT = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=100)


def _vit(s):
    return transformers.ViTForImageClassification(transformers.ViTConfig(image_size=s, patch_size=32, **_VIT))


def _deit(s):
    return transformers.DeiTForImageClassification(transformers.DeiTConfig(image_size=s, patch_size=32, **_VIT))


def _beit(s):
    return transformers.BeitForImageClassification(transformers.BeitConfig(image_size=s, patch_size=32, **_VIT))


def _swin(s):
    return transformers.SwinForImageClassification(transformers.SwinConfig(image_size=s, patch_size=4, embed_dim=8, depths=[1],
                                                     num_heads=[1], window_size=7, num_labels=2))


def _convnext(s):
    return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(num_stages=1, hidden_sizes=[8], depths=[1], num_labels=2))


def _convnextv2(s):
    return transformers.ConvNextV2ForImageClassification(transformers.ConvNextV2Config(num_stages=1, hidden_sizes=[8], depths=[1],
                                                                 num_labels=2))


def _resnet(s):
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1],
                                                         layer_type="basic", num_labels=2))


def _regnet(s):
    return transformers.RegNetForImageClassification(transformers.RegNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1],
                                                         groups_width=8, num_labels=2))


def _mobilenet_v2(s):
    return transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(image_size=s, depth_multiplier=0.1, num_labels=2))


def _efficientnet(s):
    # hidden_dim must equal round_filters(1280) = 128 at width 0.1
    return transformers.EfficientNetForImageClassification(transformers.EfficientNetConfig(
        image_size=s, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, num_labels=2))


def _dinov2(s):
    return transformers.Dinov2ForImageClassification(transformers.Dinov2Config(image_size=s, patch_size=14, hidden_size=16,
                                                         num_hidden_layers=1, num_attention_heads=2, mlp_ratio=1,
                                                         num_labels=2))


def _clip(s):
    return transformers.CLIPForImageClassification(transformers.CLIPConfig(vision_config=dict(image_size=s, **_TOWER), text_config=_TEXT,
                                                     projection_dim=16, num_labels=2))


def _siglip(s):
    return transformers.SiglipForImageClassification(transformers.SiglipConfig(vision_config=dict(image_size=s, **_TOWER),
                                                         text_config=_TEXT, num_labels=2))


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    processor: Callable  # () -> image processor
    model: Callable | None = None  # (image_size) -> model; None: preprocessing-only edge case
    may_refuse: bool = False  # rare settings: from_processor may raise ValueError/NotImplementedError instead


CASES = [
    # class defaults (what `XImageProcessor()` gives without torchvision)
    Case("vit", lambda: transformers.ViTImageProcessorPil(), _vit),
    Case("deit", lambda: transformers.DeiTImageProcessorPil(), _deit),
    Case("beit", lambda: transformers.BeitImageProcessorPil(), _beit),
    Case("convnext", lambda: transformers.ConvNextImageProcessorPil(), _convnext),  # shortest_edge 384: warp, no crop
    Case("mobilenet_v2", lambda: transformers.MobileNetV2ImageProcessorPil(), _mobilenet_v2),
    Case("efficientnet", lambda: transformers.EfficientNetImageProcessorPil(), _efficientnet),  # 346 warp, include_top
    Case("clip", lambda: transformers.CLIPImageProcessorPil(), _clip),
    Case("siglip", lambda: transformers.SiglipImageProcessorPil(), _siglip),
    # families without a processor of their own, configured as their hub checkpoints are
    # (legacy int sizes on purpose: that is how those preprocessor_config.json files read)
    Case("swin-hub", lambda: transformers.ViTImageProcessorPil(size=224, resample=3, image_mean=IMAGENET_DEFAULT_MEAN,
                                                    image_std=IMAGENET_DEFAULT_STD), _swin),
    Case("resnet-hub", lambda: transformers.ConvNextImageProcessorPil(size=224, crop_pct=0.875, resample=3,
                                                           image_mean=IMAGENET_DEFAULT_MEAN,
                                                           image_std=IMAGENET_DEFAULT_STD), _resnet),
    Case("convnext-hub", lambda: transformers.ConvNextImageProcessorPil(size=224, crop_pct=0.875, image_mean=IMAGENET_DEFAULT_MEAN,
                                                             image_std=IMAGENET_DEFAULT_STD), _convnext),
    Case("convnextv2-hub", lambda: transformers.ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875,
                                                               image_mean=IMAGENET_DEFAULT_MEAN,
                                                               image_std=IMAGENET_DEFAULT_STD), _convnextv2),
    Case("regnet-hub", lambda: transformers.ConvNextImageProcessorPil(size=224, crop_pct=0.875, image_mean=IMAGENET_DEFAULT_MEAN,
                                                           image_std=IMAGENET_DEFAULT_STD), _regnet),
    Case("deit-hub", lambda: transformers.DeiTImageProcessorPil(size=256, crop_size=224, image_mean=IMAGENET_DEFAULT_MEAN,
                                                     image_std=IMAGENET_DEFAULT_STD), _deit),
    Case("efficientnet-hub", lambda: transformers.EfficientNetImageProcessorPil(size=224, resample=0,
                                                                     image_mean=IMAGENET_DEFAULT_MEAN,
                                                                     image_std=EFFICIENTNET_HUB_STD), _efficientnet),
    Case("dinov2-hub", lambda: transformers.BitImageProcessorPil(size={"shortest_edge": 256}, crop_size=224,
                                                      image_mean=IMAGENET_DEFAULT_MEAN,
                                                      image_std=IMAGENET_DEFAULT_STD), _dinov2),
    # a timm ViT's eval transform (FSFM's ViT-B/16: timm's vit_base_patch16_224 config) as dftune converts it
    # (dftune.model.timm_vit.processor_of); tests/test_timm_vit.py compares it with timm's transform written out
    Case("timm-vit", lambda: timm_vit.processor_of({"input_size": [3, 224, 224], "interpolation": "bicubic",
                                                    "crop_pct": 0.9, "mean": IMAGENET_DEFAULT_MEAN,
                                                    "std": IMAGENET_DEFAULT_STD}), _vit),
    # edge cases of the arithmetic (no model)
    Case("efficientnet-offset", lambda: transformers.EfficientNetImageProcessorPil(rescale_offset=True, rescale_factor=1 / 127.5,
                                                                        include_top=False)),
    Case("efficientnet-top-only", lambda: transformers.EfficientNetImageProcessorPil(do_normalize=False)),  # include_top still on
    Case("convnext-odd-double-crop", lambda: transformers.ConvNextImageProcessorPil(size=250, crop_pct=0.9, do_center_crop=True,
                                                                         crop_size=201), may_refuse=True),
    Case("clip-crop-pads", lambda: transformers.CLIPImageProcessorPil(size={"shortest_edge": 199})),  # crop 224 > 199: odd pad
    Case("clip-longest-edge", lambda: transformers.CLIPImageProcessorPil(size={"shortest_edge": 230, "longest_edge": 260}),
         may_refuse=True),
    Case("vit-no-rescale", lambda: transformers.ViTImageProcessorPil(do_rescale=False)),
    Case("vit-no-normalise", lambda: transformers.ViTImageProcessorPil(do_normalize=False)),
]
MODEL_CASES = [c for c in CASES if c.model is not None]


# ---------------------------------------------------------------- images: square crops and whole frames


def _smooth(h, w):
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([128 + 127 * np.sin(6 * x + 1), 128 + 127 * np.cos(5 * y), 255 * x * y], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _images():
    rng = np.random.default_rng(0)
    out = {}
    for h, w in [(224, 224), (300, 300), (180, 180), (240, 320), (320, 240)]:  # (240, 320): a 320x240 frame
        out[f"random-{w}x{h}"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for h, w in [(180, 180), (240, 320)]:
        out[f"smooth-{w}x{h}"] = _smooth(h, w)
    return out


IMAGES = _images()


# ---------------------------------------------------------------- the two dftune pipelines


def _infer_tensor(img, pre):
    return normalise(np.stack([resize_crop_uint8(img, pre)]), pre)


def _train_eval_tensor(img, pre):
    from dftune.training.data import Normalize, make_transform

    return Normalize(pre)(torch.from_numpy(np.stack([make_transform(pre, None)(img)])))


PIPELINES = {"inference": _infer_tensor, "train": _train_eval_tensor}


# ---------------------------------------------------------------- caches (processor runs and models once)

_processors: dict = {}
_references: dict = {}
_models: dict = {}


def _processor(case):
    if case.id not in _processors:
        _processors[case.id] = case.processor()
    return _processors[case.id]


def _reference(case, name):
    key = (case.id, name)
    if key not in _references:
        _references[key] = _processor(case)(images=IMAGES[name], return_tensors="pt")["pixel_values"]
    return _references[key]


def _pre(case):
    """Preprocess.from_processor; for ``may_refuse`` cases a clean refusal skips (never a wrong tensor)."""
    try:
        return Preprocess.from_processor(_processor(case))
    except (ValueError, NotImplementedError) as e:
        if case.may_refuse:
            pytest.skip(f"from_processor refuses {case.id}: {e}")
        raise


def _model(case, size):
    key = (case.id, size)
    if key not in _models:
        torch.manual_seed(0)
        _models[key] = case.model(size).eval()
    return _models[key]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("pipeline", list(PIPELINES))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pixel_values_match_processor(case, pipeline):
    pre = _pre(case)
    run = PIPELINES[pipeline]
    for name, img in IMAGES.items():
        ref = _reference(case, name)
        assert (pre.out_height, pre.out_width) == tuple(ref.shape[-2:]), name
        got = run(img, pre)
        assert got.dtype == torch.float32, name
        assert tuple(got.shape) == tuple(ref.shape), name
        diff = float(np.abs(got.detach().cpu().numpy() - ref.numpy().astype(np.float32)).max())  # numpy: no thread pool
        assert diff <= ATOL, f"{case.id} {pipeline} {name}: max |diff| {diff:.3g}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_resize_crop_uint8_shape_and_dtype(case):
    pre = _pre(case)
    for name, img in IMAGES.items():
        out = resize_crop_uint8(img, pre)
        assert out.dtype == np.uint8 and out.shape == (pre.out_height, pre.out_width, 3), (case.id, name)


@pytest.mark.parametrize("pipeline", list(PIPELINES))
@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_tiny_model_accepts_the_tensor(case, pipeline):
    pre = _pre(case)
    assert pre.out_height == pre.out_width  # every family here takes square input
    model = _model(case, pre.out_height)
    x = torch.cat([PIPELINES[pipeline](IMAGES[n], pre) for n in ("random-224x224", "smooth-320x240")])
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    assert tuple(logits.shape) == (2, 2)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_dict_round_trip(case):
    pre = _pre(case)
    d = pre.to_dict()
    back = Preprocess.from_dict(json.loads(json.dumps(d)))  # JSON-safe, exact floats
    assert back == pre
    assert back.to_dict() == d
    assert (back.out_height, back.out_width) == (pre.out_height, pre.out_width)
    img = IMAGES["smooth-320x240"]
    assert torch.equal(_infer_tensor(img, back), _infer_tensor(img, pre))


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_saved_processor_gives_the_same_preprocess(case, tmp_path):
    """The hub/export route: preprocessor_config.json -> AutoImageProcessor (PIL backend)."""
    _processor(case).save_pretrained(tmp_path)
    loaded = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert Preprocess.from_processor(loaded) == Preprocess.from_processor(_processor(case))
