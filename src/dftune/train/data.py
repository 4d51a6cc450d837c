"""Training data: the manifest as a dataset, augmentations, sampling, batching.

Work is split the way timm splits it: loader workers decode, resize and augment
uint8 images (numpy/PIL, no torchvision; OpenCV stays out of forked workers); a batch travels as uint8 NHWC
(4x smaller than float, pinned on GPU); :class:`Normalize` turns it into the model's
input on the device in one fused op per batch, with the model processor's mean/std.

Randomness is a pure function of (seed, epoch, sample index), so an epoch is the
same whatever the number of workers, and a resumed run replays it exactly.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dftune.prepared import Row, image_path
from dftune.model.load import input_size

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- preprocessing geometry


@dataclass(frozen=True)
class InputSpec:
    """What the model expects, read from its image processor."""

    height: int
    width: int
    mean: tuple
    std: tuple
    rescale: float = 1 / 255
    resample: int = 2  # PIL code (2 = bilinear, the ViT processor's)
    crop_height: int = 0  # >0: centre crop after resize (processors with do_center_crop)
    crop_width: int = 0

    @property
    def out_size(self) -> tuple[int, int]:
        return (self.crop_height, self.crop_width) if self.crop_height else (self.height, self.width)

    @classmethod
    def from_processor(cls, processor) -> "InputSpec":
        """Read size, crop, mean/std, rescale and resample from any HF image processor.

        Tolerates ``size`` as a dict, transformers 5's ``SizeDict`` or an int, with
        height/width or shortest_edge (crops are square, so shortest_edge is the side).
        """
        h, w = input_size(getattr(processor, "size", None), 224)
        mean = list(getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5])
        std = list(getattr(processor, "image_std", None) or [0.5, 0.5, 0.5])
        if not getattr(processor, "do_normalize", True):
            mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        rescale = float(getattr(processor, "rescale_factor", 1 / 255) or 1 / 255)
        if not getattr(processor, "do_rescale", True):
            rescale = 1.0
        ch = cw = 0
        if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None) is not None:
            ch, cw = input_size(processor.crop_size, h)
        resample = getattr(processor, "resample", None)
        resample = int(getattr(resample, "value", resample)) if resample is not None else 2
        return cls(h, w, tuple(float(x) for x in mean), tuple(float(x) for x in std), rescale, resample, ch, cw)


def resize(img: np.ndarray, size: tuple[int, int], resample: int = 2) -> np.ndarray:
    """Resize as the Hugging Face processors do (PIL, antialiased), so train matches predict."""
    h, w = size
    if img.shape[0] == h and img.shape[1] == w:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((w, h), resample=resample))


def center_crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    y = max(0, (img.shape[0] - h) // 2)
    x = max(0, (img.shape[1] - w) // 2)
    return img[y:y + h, x:x + w]


# ---------------------------------------------------------------- augmentations


@dataclass(frozen=True)
class AugSettings:
    hflip: float = 0.5
    crop_scale: float = 0.85
    color: float = 0.2
    jpeg: float = 0.5
    jpeg_quality: tuple = (40, 95)
    blur: float = 0.1
    noise: float = 0.1

    @classmethod
    def from_config(cls, cfg) -> "AugSettings | None":
        if not cfg.aug:
            return None
        return cls(cfg.aug_hflip, cfg.aug_crop_scale, cfg.aug_color, cfg.aug_jpeg, tuple(cfg.aug_jpeg_quality),
                   cfg.aug_blur, cfg.aug_noise)


def _random_resized_crop(img, rng, min_scale, ratio=(0.9, 1.1)):
    h, w = img.shape[:2]
    area = h * w
    for _ in range(5):
        a = area * rng.uniform(min_scale, 1.0)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            y = int(rng.integers(0, h - ch + 1))
            x = int(rng.integers(0, w - cw + 1))
            return img[y:y + ch, x:x + cw]
    return img


def _color_jitter(img, rng, s):
    x = img.astype(np.float32)
    b = 1 + rng.uniform(-s, s)
    c = 1 + rng.uniform(-s, s)
    sat = 1 + rng.uniform(-s, s)
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = x * (b * c * sat) + (grey * (b * c * (1 - sat)))[..., None] + (1 - c) * b * grey.mean()
    return np.clip(x, 0, 255).astype(np.uint8)


def _jpeg(img, rng, quality):
    import io

    from PIL import Image

    q = int(rng.integers(quality[0], quality[1] + 1))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=q)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _blur(img, rng):
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2)))))


def _noise(img, rng):
    n = rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return np.clip(img.astype(np.float32) + n, 0, 255).astype(np.uint8)


def make_transform(spec: InputSpec, aug: AugSettings | None):
    """The per-image pipeline, uint8 RGB in and out: ``fn(img, rng_or_None) -> img``.

    Order: random resized crop, resize to the model's input (as its processor does),
    flip, colour, then the degradations the test data may carry (blur, noise, JPEG).
    With ``aug=None`` or ``rng=None`` it is the evaluation pipeline: resize (+ centre crop).
    """
    size = (spec.height, spec.width)

    def evaluate(img):
        img = resize(img, size, spec.resample)
        return center_crop(img, spec.out_size) if spec.crop_height else img

    if aug is None:
        return lambda img, rng=None: evaluate(img)

    def train(img, rng=None):
        if rng is None:
            return evaluate(img)
        if aug.crop_scale < 1:
            img = _random_resized_crop(img, rng, aug.crop_scale)
        img = evaluate(img)
        if aug.hflip and rng.random() < aug.hflip:
            img = img[:, ::-1]
        if aug.color > 0:
            img = _color_jitter(img, rng, aug.color)
        if aug.blur and rng.random() < aug.blur:
            img = _blur(np.ascontiguousarray(img), rng)
        if aug.noise and rng.random() < aug.noise:
            img = _noise(img, rng)
        if aug.jpeg and rng.random() < aug.jpeg:
            img = _jpeg(np.ascontiguousarray(img), rng, aug.jpeg_quality)
        return np.ascontiguousarray(img)

    return train


# ---------------------------------------------------------------- dataset, sampler, collate


def read_rgb(path: str) -> np.ndarray:
    """Decode to RGB uint8 with PIL; raise ValueError naming the file if it cannot.

    PIL rather than OpenCV in loader workers: OpenCV's thread pool, once used in the
    parent (the demo data generator, a detector), deadlocks forked workers.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise ValueError(f"{path}: cannot decode as an image ({e})") from None


class CropDataset:
    """Rows of one split of a manifest. ``ds[i]`` or ``ds[(i, epoch)]`` -> sample dict.

    A sample whose image cannot be read comes back with ``valid=False`` and a black
    image (so batches keep their shape across processes); the loop skips and reports it.
    """

    def __init__(self, location: str | os.PathLike, rows: Sequence[Row], transform, seed: int = 0,
                 sbi: float = 0.0):
        self.rows = list(rows)
        self.sbi = float(sbi)  # probability that a real crop becomes a self-blended pseudo-fake
        self.paths = [str(image_path(location, r)) for r in self.rows]
        self.labels = np.array([r.label for r in self.rows], dtype=np.int64)
        self.transform = transform
        self.seed = int(seed)
        self._blank = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, None)
        rng = None if epoch is None else np.random.default_rng((self.seed, int(epoch), int(i)))
        label = int(self.labels[i])
        try:
            raw = read_rgb(self.paths[i])
            # SBI happens before the augmentations, as if the pseudo-fake had been on disk; it needs
            # the per-(seed, epoch, index) rng, so evaluation data (rng None) is never altered
            if self.sbi and label == 0 and rng is not None and rng.random() < self.sbi:
                from dftune.sbi import self_blend

                raw = self_blend(raw, self.rows[i].landmark_points() or None, rng)[0]
                label = 1
            img = self.transform(raw, rng)
            valid = True
        except Exception as e:  # one bad file never stops a run
            log.warning("skipping %s", e)
            if self._blank is None:
                self._blank = self.transform(np.zeros((8, 8, 3), np.uint8), None)
            img, valid = self._blank, False
        return {"image": img, "label": label, "index": int(i), "valid": valid}

    def class_counts(self) -> np.ndarray:
        """Expected real/fake counts of an epoch: pseudo-fakes count as fake (for class weights)."""
        n_real, n_fake = np.bincount(self.labels, minlength=2)[:2].astype(float)
        if not self.sbi:
            return np.array([n_real, n_fake])
        return np.array([n_real * (1 - self.sbi), n_fake + n_real * self.sbi])


class EpochSampler:
    """Yields ``(index, epoch)``: a shuffle (or class-balanced draw) seeded by (seed, epoch).

    Passing the epoch with each index lets persistent workers augment with the right
    epoch's randomness without being told; Accelerate calls ``set_epoch``.
    ``balanced=True`` draws with replacement so each class is half of every epoch.
    """

    def __init__(self, labels: np.ndarray, seed: int = 0, shuffle: bool = True, balanced: bool = False,
                 sbi: float = 0.0):
        self.labels = np.asarray(labels)
        self.seed, self.shuffle, self.balanced = int(seed), shuffle, balanced
        self.sbi = float(sbi)  # share of drawn reals that become pseudo-fakes; the balance accounts for it
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def indices(self) -> np.ndarray:
        n = len(self.labels)
        rng = np.random.default_rng((self.seed, self.epoch, 7919))
        if self.balanced:
            counts = np.bincount(self.labels, minlength=2).astype(float)
            w = 1.0 / counts[self.labels]
            if self.sbi:
                # draw reals more often so that, after a share sbi of them turns fake, each class is half
                w[self.labels == 0] /= 1 - 2 * self.sbi
            return rng.choice(n, size=n, replace=True, p=w / w.sum())
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def __iter__(self):
        e = self.epoch
        return iter([(int(i), e) for i in self.indices()])


def collate(samples: list[dict]) -> dict:
    """uint8 NHWC images and int64 labels/indices; ``valid`` marks readable samples."""
    import torch

    return {
        "pixels": torch.from_numpy(np.stack([s["image"] for s in samples])),
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
        "valid": torch.tensor([s["valid"] for s in samples], dtype=torch.bool),
    }


class Normalize:
    """uint8 NHWC batch -> float NCHW model input, ``(x * rescale - mean) / std``, on the batch's device."""

    def __init__(self, spec: InputSpec):
        import torch

        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = spec.rescale / std
        self.shift = -mean / std
        self._cache: dict = {}

    def __call__(self, pixels):
        import torch

        dev = pixels.device
        if dev not in self._cache:
            self._cache[dev] = (self.scale.to(dev), self.shift.to(dev))
        scale, shift = self._cache[dev]
        x = pixels.permute(0, 3, 1, 2).float()
        return torch.addcmul(shift, x, scale).contiguous()


def make_loader(dataset: CropDataset, batch_size: int, sampler=None, num_workers: int = 0, pin_memory: bool = False,
                drop_last: bool = False):
    """A DataLoader with the settings that keep the accelerator fed."""
    from torch.utils.data import DataLoader

    workers = max(0, min(int(num_workers), os.cpu_count() or 1))
    kw = {}
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory, drop_last=drop_last, **kw)


def _worker_init(_worker_id: int) -> None:
    """Workers decode and augment with numpy/PIL only and need no threads of their own."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(0)  # OpenCV (used by --sbi) runs inline: no thread pool inherited across fork


def class_weights(counts: Sequence[int]) -> np.ndarray:
    """Inverse-frequency weights, mean 1 over samples: 1 real : 4 fake -> 2.5 and 0.625 (the guide's 4:1)."""
    c = np.asarray(counts, dtype=np.float64)
    if (c == 0).any():
        return np.ones_like(c)
    return c.sum() / (len(c) * c)


def check_files(location, rows: Sequence[Row]) -> tuple[list[Row], list[str]]:
    """Drop rows whose file is missing or empty up front; return (kept, problems)."""
    kept, bad = [], []
    for r in rows:
        p = Path(image_path(location, r))
        try:
            ok = p.stat().st_size > 0
        except OSError:
            ok = False
        if ok:
            kept.append(r)
        else:
            bad.append(f"{p}: missing or empty")
    return kept, bad
