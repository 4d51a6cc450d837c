"""Running one or several classifiers on face crops: batched ``prob_fake``.

The shared component of ``evaluate`` and ``predict`` (``train`` has its own loop).

- Each model is loaded with its ``dftune.json`` (label map, threshold, crop settings);
  ``prob_fake`` is the softmax probability of the model's *fake* output, whatever
  index that is, so models whose labels are ordered differently combine correctly.
- Preprocessing reproduces the model's image processor: a crop whose size differs
  from the model's input is resized with PIL and the processor's own resampling
  (what ``transformers.pipeline`` does, so single-image results agree with it);
  rescale and normalisation (processor mean/std) are done on the device, per batch.
- TTA views are made on the device from the normalised batch: ``flip`` (horizontal)
  and ``cropF`` (centre crop of fraction F, resized back); the view probabilities
  are averaged. An ensemble averages the models' ``prob_fake`` (optional weights).
- Backends: ``torch`` (the HF folder), ``int8`` (``model_int8.pt`` written by
  ``dftune export --int8``), ``onnx`` (``model.onnx`` from ``dftune export --onnx``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from dftune.model import meta as modelmeta
from dftune.model.load import input_size

log = logging.getLogger(__name__)

INT8_NAME = "model_int8.pt"
ONNX_NAME = "model.onnx"
BACKENDS = ("torch", "int8", "onnx")


def parse_tta(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"flip,crop0.9"`` -> ``("flip", "crop0.9")``; ``"none"`` or empty -> no TTA.

    Views: ``flip`` (horizontal mirror of every view) and ``cropF`` (0 < F < 1: centre
    crop of that fraction of the side, resized back to the input size). The original
    view is always included.
    """
    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for it in (s.strip().lower() for s in items):
        if not it or it == "none":
            continue
        if it == "flip":
            out.append("flip")
        elif it.startswith("crop"):
            try:
                f = float(it[4:])
            except ValueError:
                raise ValueError(f"TTA view {it!r}: expected cropF with a fraction F, e.g. crop0.9") from None
            if not 0.0 < f < 1.0:
                raise ValueError(f"TTA view {it!r}: the crop fraction must be between 0 and 1")
            out.append(f"crop{f:g}")
        else:
            raise ValueError(f"unknown TTA view {it!r}; use flip, cropF (e.g. crop0.9) or none")
    return tuple(dict.fromkeys(out))


@dataclass
class Preprocess:
    """What the model's image processor does, as numbers."""

    height: int
    width: int
    mean: list[float]
    std: list[float]
    rescale: float = 1 / 255
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    resample: int = 2  # PIL.Image.BILINEAR, ViT's default

    @classmethod
    def from_processor(cls, processor) -> "Preprocess":
        resample = getattr(processor, "resample", 2)
        h, w = input_size(getattr(processor, "size", None))
        mean = getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5]
        std = getattr(processor, "image_std", None) or [0.5, 0.5, 0.5]
        return cls(
            height=h, width=w, mean=[float(v) for v in mean], std=[float(v) for v in std],
            rescale=float(getattr(processor, "rescale_factor", None) or 1 / 255),
            do_resize=bool(getattr(processor, "do_resize", True)),
            do_rescale=bool(getattr(processor, "do_rescale", True)),
            do_normalize=bool(getattr(processor, "do_normalize", True)),
            resample=int(getattr(resample, "value", resample) if resample is not None else 2),
        )

    def key(self) -> tuple:
        return (self.height, self.width, self.do_resize, self.resample)


def resize_uint8(images: Sequence[np.ndarray], pre: Preprocess) -> np.ndarray:
    """Stack RGB uint8 images at the model's input size (PIL resize, processor resampling)."""
    from PIL import Image

    out = np.empty((len(images), pre.height, pre.width, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {im.shape}")
        if im.shape[0] == pre.height and im.shape[1] == pre.width or not pre.do_resize:
            if im.shape[:2] != (pre.height, pre.width):
                raise ValueError(f"image of size {im.shape[1]}x{im.shape[0]} and the processor does not resize")
            out[i] = im
        else:
            out[i] = np.asarray(Image.fromarray(im).resize((pre.width, pre.height), resample=pre.resample))
    return out


def normalise(batch_uint8, pre: Preprocess, device):
    """(N, H, W, 3) uint8 (numpy or tensor) -> normalised (N, 3, H, W) float32 on ``device``."""
    import torch

    x = torch.as_tensor(batch_uint8).to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    if pre.do_rescale:
        x = x * pre.rescale
    if pre.do_normalize:
        mean = torch.tensor(pre.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(pre.std, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def tta_views(x, tta: Sequence[str]):
    """The TTA views of a normalised batch: the batch itself, centre crops, and their mirrors."""
    import torch.nn.functional as F

    views = [x]
    h, w = x.shape[-2:]
    for t in tta:
        if t.startswith("crop"):
            f = float(t[4:])
            ch, cw = max(1, int(round(h * f))), max(1, int(round(w * f)))
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            c = x[..., y0:y0 + ch, x0:x0 + cw]
            views.append(F.interpolate(c, size=(h, w), mode="bilinear", align_corners=False, antialias=False))
    if "flip" in tta:
        views += [v.flip(-1) for v in views]
    return views


@dataclass
class LoadedModel:
    """A classifier ready for ``prob_fake``: its runner, preprocessing and dftune metadata."""

    path: str
    meta: modelmeta.ModelMeta
    pre: Preprocess
    id2label: dict
    backend: str = "torch"
    run: Callable = field(repr=False, default=None)  # normalised (N,3,H,W) tensor -> logits tensor
    device: str = "cpu"
    weight: float = 1.0
    module: object = field(repr=False, default=None)

    @property
    def name(self) -> str:
        return Path(self.path).name or str(self.path)

    @property
    def fake_index(self) -> int:
        return self.meta.fake_index


def pick_device(device: str | None = "auto") -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return device


def _quiet_transformers():
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - old transformers
        pass


def load_int8(model_dir: str | os.PathLike):
    """Rebuild the dynamic-int8 model ``dftune export --int8`` saved (state dict of the quantized model)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageClassification

    p = Path(model_dir) / INT8_NAME
    if not p.exists():
        raise FileNotFoundError(f"{p}: no int8 model here; run `dftune export MODEL --out DIR --int8` first")
    cfg = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForImageClassification.from_config(cfg).eval()
    q = quantize_int8(model)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notes on quantized storages
        q.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
    return q.eval()


def quantize_int8(model):
    """Dynamic int8 quantization of the ``nn.Linear`` layers (the guide's Q4)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def load_model(path: str | os.PathLike, fake_label: str | None = None, device: str = "auto",
               backend: str = "torch", weight: float = 1.0, threads: int = 0) -> LoadedModel:
    """Load a model folder (HF format) with its ``dftune.json`` for the chosen backend."""
    import torch
    from transformers import AutoConfig, AutoImageProcessor

    _quiet_transformers()
    path = str(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a model folder (no config.json)")
    device = pick_device(device)
    cfg = AutoConfig.from_pretrained(path)
    id2label = {int(k): v for k, v in cfg.id2label.items()}
    meta = modelmeta.load(path, id2label, fake_label)
    processor = AutoImageProcessor.from_pretrained(path)
    pre = Preprocess.from_processor(processor)
    module = None
    if backend == "torch":
        from dftune.model.load import load_classifier

        module, _ = load_classifier(path)
        module = module.to(device).eval()

        def run(x, _m=module):
            return _m(pixel_values=x).logits
    elif backend == "int8":
        if device != "cpu":
            raise ValueError("the int8 backend (dynamic quantization) runs on the CPU only; use --device cpu")
        module = load_int8(path)

        def run(x, _m=module):
            # one image at a time: dynamic quantization scales activations over the whole input
            # tensor, so a batched image's result would depend on the other images in its batch
            return torch.cat([_m(pixel_values=x[i:i + 1]).logits for i in range(x.shape[0])])
    else:
        import onnxruntime as ort

        p = Path(path) / ONNX_NAME
        if not p.exists():
            raise FileNotFoundError(f"{p}: no ONNX model here; run `dftune export MODEL --out DIR --onnx` first")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        providers = [p_ for p_ in providers if p_ in ort.get_available_providers()]
        sess = ort.InferenceSession(str(p), opts, providers=providers)
        inp = sess.get_inputs()[0].name

        def run(x, _s=sess, _n=inp):
            out = _s.run(None, {_n: x.detach().cpu().numpy().astype(np.float32)})[0]
            return torch.from_numpy(out)
    if len(id2label) != 2:
        raise ValueError(f"{path}: dftune needs a two-class (real/fake) model, this one has {len(id2label)} labels")
    return LoadedModel(path=path, meta=meta, pre=pre, id2label=id2label, backend=backend, run=run,
                       device=device, weight=float(weight), module=module)


def load_models(paths: Sequence[str], fake_label: str | None = None, device: str = "auto",
                backend: str = "torch", weights: Sequence[float] | None = None) -> list[LoadedModel]:
    if not paths:
        raise ValueError("no model given (--model DIR)")
    if weights is not None and len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weight(s) for {len(paths)} model(s); give one weight per --model")
    ws = list(weights) if weights is not None else [1.0] * len(paths)
    if any(w < 0 for w in ws) or sum(ws) <= 0:
        raise ValueError("model weights must be non-negative and not all zero")
    return [load_model(p, fake_label, device, backend, w) for p, w in zip(paths, ws)]


def model_prob_fake(model: LoadedModel, images: Sequence[np.ndarray], tta: Sequence[str] = ()) -> np.ndarray:
    """``prob_fake`` of one model for a batch of RGB uint8 images (any sizes)."""
    import torch

    if len(images) == 0:
        return np.zeros(0, dtype=np.float64)
    batch = resize_uint8(images, model.pre)
    with torch.inference_mode():
        x = normalise(batch, model.pre, model.device)
        probs = None
        views = tta_views(x, tta)
        for v in views:
            p = torch.softmax(model.run(v).float(), dim=-1)[:, model.fake_index]
            probs = p if probs is None else probs + p
        probs = probs / len(views)
    return probs.double().cpu().numpy()


def ensemble_prob_fake(models: Sequence[LoadedModel], images: Sequence[np.ndarray],
                       tta: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of the models' ``prob_fake``; returns ``(ensemble, per_model)`` (M, N)."""
    per = np.stack([model_prob_fake(m, images, tta) for m in models]) if models else np.zeros((0, len(images)))
    w = np.array([m.weight for m in models], dtype=np.float64)
    return (w[:, None] * per).sum(0) / w.sum(), per


def ensemble_threshold(models: Sequence[LoadedModel]) -> float:
    """The decision threshold of an ensemble: its models' thresholds, weighted like their probabilities."""
    w = np.array([m.weight for m in models], dtype=np.float64)
    t = np.array([m.meta.threshold for m in models], dtype=np.float64)
    return float((w * t).sum() / w.sum())


def batched(items: Sequence, size: int):
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + size]


@dataclass
class _Raised:
    error: BaseException


def prefetch(fn, items: Sequence, depth: int = 4) -> Iterator:
    """``map(fn, items)`` computed one step ahead in a background thread (decode/detect
    overlaps the model's forward pass)."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def work():
        try:
            for it in items:
                if stop.is_set():
                    return
                q.put(fn(it))
        except BaseException as e:  # handed to the consumer, raised there
            q.put(_Raised(e))
        finally:
            q.put(done)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            r = q.get()
            if r is done:
                break
            if isinstance(r, _Raised):
                raise r.error
            yield r
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)
