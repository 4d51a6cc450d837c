"""The model's image processor as numbers: resize rule, centre crop, rescale and normalise (exact, uint8 until
the last step).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

_log = logging.getLogger("dftune.portable")


# Processors whose _preprocess is the plain PilBackend chain (resize -> centre crop -> rescale -> normalise).
_STANDARD = {
    "ViTImageProcessor", "DeiTImageProcessor", "BeitImageProcessor", "MobileNetV2ImageProcessor",
    "CLIPImageProcessor", "BitImageProcessor", "SiglipImageProcessor",
}


_CONVNEXT = "ConvNextImageProcessor"  # resize with crop_pct (ResNet, RegNet, ConvNeXt(V2), CvT hub checkpoints)


_EFFICIENTNET = "EfficientNetImageProcessor"  # rescale_offset, include_top


SUPPORTED = frozenset(_STANDARD | {_CONVNEXT, _EFFICIENTNET})


def _base_name(processor) -> str:
    n = type(processor).__name__
    return n[:-3] if n.endswith("Pil") else n[:-4] if n.endswith("Fast") else n


def _size_dict(s) -> dict:
    """SizeDict (transformers 5) / dict / None -> {key: int} without the None entries."""
    if s is None:
        return {}
    items = dict(s).items() if not hasattr(s, "items") else s.items()
    return {k: int(v) for k, v in items if v is not None}


def _three(v) -> tuple:
    if isinstance(v, (int, float)):
        return (float(v),) * 3
    return tuple(float(x) for x in v)


@dataclass(frozen=True)
class Preprocess:
    """What a model's image processor does to an RGB uint8 image, as numbers: the resize rule
    (``fixed`` to resize_height x resize_width, ``shortest`` edge with the long side truncated as
    transformers does, ``none``), the centre crops in order, then rescale (EfficientNet's offset),
    normalise (and EfficientNet's second division by std). Read once from the processor and used
    by training, inference and the submission script; the pixels equal ``processor(images=...)``'s
    (the PIL processors transformers uses without torchvision), checked per family in the tests.
    """

    out_height: int
    out_width: int
    resize: str = "fixed"          # "fixed" (warp to resize_height x resize_width) | "shortest" | "none"
    resize_height: int = 0
    resize_width: int = 0
    shortest_edge: int = 0         # "shortest": short side -> shortest_edge, long side int(S*long/short)
    longest_edge: int = 0          # "shortest": cap on the long side (HF get_size_with_aspect_ratio); 0 = none
    resample: int = 2              # PIL code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming
    crops: tuple = ()              # centre crops applied in order, ((h, w), ...); zero-padded when larger
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    rescale_offset: bool = False   # EfficientNet: x * factor - 1
    do_normalize: bool = True
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    extra_std_divide: bool = False  # EfficientNet include_top: divide by std a second time (mean 0)
    processor: str = ""            # source class name, for messages only

    # ------------------------------------------------------------ construction
    @classmethod
    def from_processor(cls, processor) -> Preprocess:
        base = _base_name(processor)
        if base not in SUPPORTED:  # the plain resize -> crop -> rescale -> normalise chain, unchecked
            _log.warning("%s: not one of the image processors dftune checks for parity (%s); reading it as the "
                         "standard resize, centre crop, rescale, normalise", type(processor).__name__,
                         ", ".join(sorted(SUPPORTED)))
        g = lambda k: getattr(processor, k, None)  # noqa: E731
        size, crop = _size_dict(g("size")), _size_dict(g("crop_size"))
        resample = 2 if g("resample") is None else int(g("resample"))  # PILImageResampling enum -> int
        crops = []
        if not g("do_resize"):
            geo = dict(resize="none")
        elif base == _CONVNEXT:
            s = size["shortest_edge"]  # the processor raises too without it
            pct = g("crop_pct") if g("crop_pct") is not None else 224 / 256
            if s < 384:  # resize short side to int(s / crop_pct), then centre crop s x s
                geo = dict(resize="shortest", shortest_edge=int(s / pct))
                crops.append((s, s))
            else:  # warp, no crop
                geo = dict(resize="fixed", resize_height=s, resize_width=s)
        elif "shortest_edge" in size:
            geo = dict(resize="shortest", shortest_edge=size["shortest_edge"], longest_edge=size.get("longest_edge", 0))
        elif "height" in size and "width" in size:
            geo = dict(resize="fixed", resize_height=size["height"], resize_width=size["width"])
        else:
            raise ValueError(f"{type(processor).__name__}: size {size} is not a fixed input size dftune can use")
        if g("do_center_crop"):
            crops.append((crop["height"], crop["width"]))
        if crops:
            out = crops[-1]
        elif geo["resize"] == "fixed":
            out = (geo["resize_height"], geo["resize_width"])
        else:
            raise ValueError(f"{type(processor).__name__}: output size depends on the image (resize {geo}, no crop)")
        eff = base == _EFFICIENTNET
        return cls(
            out_height=int(out[0]), out_width=int(out[1]), resample=resample, crops=tuple(crops),
            do_rescale=bool(g("do_rescale")),
            rescale_factor=float(g("rescale_factor") if g("rescale_factor") is not None else 1 / 255),
            rescale_offset=bool(eff and g("rescale_offset")),
            do_normalize=bool(g("do_normalize")),
            mean=_three(g("image_mean") if g("image_mean") is not None else 0.5),
            std=_three(g("image_std") if g("image_std") is not None else 0.5),
            extra_std_divide=bool(eff and g("include_top")), processor=base, **geo,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["crops"] = [list(c) for c in self.crops]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d) -> Preprocess:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown Preprocess keys {sorted(unknown)}")
        d = dict(d)
        d["crops"] = tuple(tuple(int(x) for x in c) for c in d.get("crops", ()))
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
        return cls(**d)


def resize_hw(h: int, w: int, pre: Preprocess) -> tuple[int, int]:
    """The (height, width) the processor resizes an h x w image to."""
    if pre.resize == "fixed":
        return pre.resize_height, pre.resize_width
    if pre.resize == "none":
        return h, w
    s = pre.shortest_edge
    if pre.longest_edge:  # transformers.image_transforms.get_size_with_aspect_ratio
        mx, raw = pre.longest_edge, None
        lo, hi = float(min(h, w)), float(max(h, w))
        if hi / lo * s > mx:
            raw = mx * lo / hi
            s = int(round(raw))
        if (h <= w and h == s) or (w <= h and w == s):
            return h, w
        if w < h:
            return (int(raw * h / w) if raw is not None else int(s * h / w)), s
        return s, (int(raw * w / h) if raw is not None else int(s * w / h))
    # transformers.image_transforms.get_resize_output_image_size(default_to_square=False)
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(s * long / short)
    return (new_long, s) if w <= h else (s, new_long)


def centre_crop(img: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """transformers.image_transforms.center_crop: offsets floor((n - c) / 2); when smaller, zero
    padding with ceil((c - n) / 2) before and the rest after (per axis)."""
    h, w = img.shape[:2]
    if h >= ch and w >= cw:
        t, left = (h - ch) // 2, (w - cw) // 2
        return img[t:t + ch, left:left + cw]
    out = np.zeros((ch, cw) + img.shape[2:], dtype=img.dtype)
    t, left = max((h - ch) // 2, 0), max((w - cw) // 2, 0)
    src = img[t:t + ch, left:left + cw]
    dt, dl = max((ch - h + 1) // 2, 0), max((cw - w + 1) // 2, 0)
    out[dt:dt + src.shape[0], dl:dl + src.shape[1]] = src
    return out


def resize_crop_uint8(img: np.ndarray, pre: Preprocess) -> np.ndarray:
    """One H x W x 3 uint8 image to the model's out_height x out_width x 3 input, as its processor
    resizes (PIL, its resampling) and centre-crops."""
    from PIL import Image

    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {getattr(img, 'dtype', type(img))} "
                         f"{getattr(img, 'shape', '')}")
    h, w = img.shape[:2]
    nh, nw = resize_hw(h, w, pre)
    if (nh, nw) != (h, w):  # PIL returns a copy for an unchanged size, so skipping is exact
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), resample=pre.resample))
    for ch, cw in pre.crops:
        img = centre_crop(img, ch, cw)
    if img.shape[:2] != (pre.out_height, pre.out_width):
        raise ValueError(f"a {w}x{h} image gives {img.shape[1]}x{img.shape[0]} with this processor, not the model's "
                         f"{pre.out_width}x{pre.out_height} (it does not resize)")
    return np.ascontiguousarray(img)


def value_table(pre: Preprocess) -> np.ndarray:
    """(3, 256) float32: the processor's output value for each channel and uint8 input, computed
    with the processor's own numpy arithmetic (float64 rescale -> float32, float32 normalise)."""
    x = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    if pre.do_rescale:  # image_transforms.rescale
        x = (x.astype(np.float64) * pre.rescale_factor).astype(np.float32)
        if pre.rescale_offset:  # EfficientNet
            x -= 1
    if pre.do_normalize:  # image_transforms.normalize
        x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
        x = (x - np.array(pre.mean, dtype=x.dtype)[:, None]) / np.array(pre.std, dtype=x.dtype)[:, None]
    if pre.extra_std_divide:  # EfficientNet include_top: normalize(x, mean=0, std)
        x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
        x = (x - np.zeros(3, dtype=x.dtype)[:, None]) / np.array(pre.std, dtype=x.dtype)[:, None]
    return x.astype(np.float32)


@functools.lru_cache(maxsize=32)
def _table(pre: Preprocess) -> np.ndarray:
    t = value_table(pre)
    t.flags.writeable = False
    return t


@functools.lru_cache(maxsize=32)
def _table_tensor(pre: Preprocess, device: str):
    import torch

    return torch.from_numpy(_table(pre).reshape(-1).copy()).to(device)


def normalise(batch_uint8_nhwc, pre: Preprocess, device="cpu"):
    """(N, H, W, 3) uint8 (numpy or torch) -> (N, 3, H, W) float32 on ``device``: a lookup in
    :func:`value_table`, so bit-identical to the processor on any device. CPU: numpy ``take``
    (uint8 indices, no conversion); other devices: ``index_select`` with int32 indices."""
    import torch

    dev = torch.device(device)
    is_tensor = isinstance(batch_uint8_nhwc, torch.Tensor)
    if dev.type == "cpu":
        x = batch_uint8_nhwc.cpu().numpy() if is_tensor else np.asarray(batch_uint8_nhwc)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
        table = _table(pre)
        out = np.empty((x.shape[0], 3, x.shape[1], x.shape[2]), dtype=np.float32)
        for c in range(3):
            np.take(table[c], x[..., c], out=out[:, c])
        return torch.from_numpy(out)
    x = torch.as_tensor(batch_uint8_nhwc)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.to(dev, non_blocking=True)
    idx = x.int() + torch.tensor([0, 256, 512], dtype=torch.int32, device=x.device)
    out = _table_tensor(pre, str(x.device)).index_select(0, idx.reshape(-1)).view(x.shape)
    return out.permute(0, 3, 1, 2).contiguous()


def stack_inputs(images: Sequence[np.ndarray], pre: Preprocess) -> np.ndarray:
    """(N, H, W, 3) uint8 batch at the model's input size."""
    out = np.empty((len(images), pre.out_height, pre.out_width, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = resize_crop_uint8(im, pre)
    return out
