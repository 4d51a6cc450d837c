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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dftune.portable import Preprocess, normalise, resize_crop_uint8
from dftune.prepared import Row, image_paths

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- preprocessing

# The model's input is :class:`dftune.portable.Preprocess` (read once from its image processor):
# the same resize rule, centre crop, rescale and normalisation as inference and the submission script.


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
    def from_config(cls, cfg) -> AugSettings | None:
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


def make_transform(spec: Preprocess, aug: AugSettings | None):
    """The per-image pipeline, uint8 RGB in and out: ``fn(img, rng_or_None) -> img``.

    Order: random resized crop, the model's resize + centre crop (exactly as inference),
    flip, colour, then the degradations the test data may carry (blur, noise, JPEG).
    With ``aug=None`` or ``rng=None`` it is the evaluation pipeline: the processor's framing only.
    """

    def evaluate(img):
        return resize_crop_uint8(img, spec)

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
        self.paths = [str(p) for p in image_paths(location, self.rows)]
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

    def class_counts(self, weights=None) -> np.ndarray:
        """Expected real/fake counts of an epoch (for class weights): pseudo-fakes count as fake; ``weights``: the
        sampler's per-row draw weights (``--data-weight``), the epoch as drawn (len(rows) draws)."""
        return epoch_counts(self.labels, self.sbi, weights)


def epoch_counts(labels, sbi: float = 0.0, weights=None) -> np.ndarray:
    """Expected (real, fake) counts of an epoch of ``len(labels)`` samples: each row drawn in proportion to
    ``weights`` (None: each once), a share ``sbi`` of the reals drawn turned into pseudo-fakes."""
    labels = np.asarray(labels)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    drawn = np.array([w[labels == c].sum() for c in (0, 1)])
    if weights is not None and w.sum() > 0:
        drawn = drawn * len(labels) / w.sum()
    return np.array([drawn[0] * (1 - sbi), drawn[1] + drawn[0] * sbi])


class EpochSampler:
    """Yields ``(index, epoch)``: a shuffle (or class-balanced draw) seeded by (seed, epoch).

    Passing the epoch with each index lets persistent workers augment with the right
    epoch's randomness without being told; Accelerate calls ``set_epoch``.
    ``balanced=True`` draws with replacement so each class is half of every epoch.
    """

    def __init__(self, labels: np.ndarray, seed: int = 0, shuffle: bool = True, balanced: bool = False,
                 sbi: float = 0.0, weights=None):
        self.labels = np.asarray(labels)
        # per-row draw weights (``train --data-weight``: each dataset's share of an epoch): drawn with replacement
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
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
        if self.balanced or self.weights is not None:
            base = self.weights if self.weights is not None else np.ones(n)
            if not self.balanced:
                return rng.choice(n, size=n, replace=True, p=base / base.sum())
            counts = np.array([base[self.labels == c].sum() for c in (0, 1)])
            w = base / counts[self.labels]
            if self.sbi:
                # draw reals more often so that, after a share sbi of them turns fake, each class is half
                w[self.labels == 0] /= 1 - 2 * self.sbi
            return rng.choice(n, size=n, replace=True, p=w / w.sum())
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def __iter__(self):
        e = self.epoch
        return iter([(int(i), e) for i in self.indices()])


def pair_key(row) -> tuple | None:
    """The (identity, frame) a row shows: a real video's own id (its ``target_id``, else ``video_id``), a fake's
    target (FF++ names fakes TARGET_SOURCE: the target's face and frames with the source's identity swapped
    in), with the frame index. A fake and the real frame with the same key come from the same source frame."""
    ident = (row.target_id or (row.video_id if int(row.label) == 0 else "")).strip()
    return (row.dataset, ident, int(row.frame_index)) if ident else None  # a mix's datasets never pair across


def pair_groups(rows) -> list[list[int]]:
    """Groups of row indices: a real frame followed by the fakes made from it (see :func:`pair_key`); every row
    without a partner is a group of its own. Row order inside a group follows the rows."""
    reals: dict[tuple, int] = {}
    for i, r in enumerate(rows):
        k = pair_key(r)
        if int(r.label) == 0 and k is not None and k not in reals:
            reals[k] = i
    fakes: dict[int, list[int]] = {}
    alone: list[int] = []
    for i, r in enumerate(rows):
        if int(r.label) == 0:
            continue
        k = pair_key(r)
        if k is not None and k in reals:
            fakes.setdefault(reals[k], []).append(i)
        else:
            alone.append(i)
    groups = []
    for i, r in enumerate(rows):
        if int(r.label) == 0:
            groups.append([i] + fakes.get(i, []) if reals.get(pair_key(r)) == i else [i])
    return groups + [[i] for i in alone]


class PairedSampler(EpochSampler):
    """Yields ``(index, epoch)`` like :class:`EpochSampler`, ordered so that each loader batch of ``batch_size``
    holds whole groups: a real frame together with the fakes made from the same source video and frame
    (``dftune train --paired``; see :func:`pair_groups`). The model then sees what a manipulation changed
    with everything else equal.

    Per epoch (seeded by (seed, epoch)): the groups are shuffled, and so are the fakes inside a group; a group
    larger than a batch keeps its real with the first ``batch_size - 1`` fakes and its other fakes go on
    alone. Batches are filled with whole groups in that order; when the next group does not fit in what is
    left of a batch, rows without a partner fill the gap, and only when none is left is a group split across
    two batches. Rows without a partner (a fake whose real frame is not in the split, a real without fakes)
    are sampled all the same: every row appears exactly once per epoch.
    """

    def __init__(self, rows, batch_size: int, seed: int = 0):
        labels = np.array([int(r.label) for r in rows], dtype=np.int64)
        super().__init__(labels, seed, shuffle=True)
        self.batch_size = int(batch_size)
        self.groups = pair_groups(rows)

    def indices(self) -> np.ndarray:
        rng = np.random.default_rng((self.seed, self.epoch, 104729))
        b = self.batch_size
        units, singles = [], []
        for k in rng.permutation(len(self.groups)):
            g = self.groups[int(k)]
            if len(g) == 1:
                singles.append(g[0])
                continue
            fakes = [g[1:][int(j)] for j in rng.permutation(len(g) - 1)]
            units.append([g[0]] + fakes[:b - 1])
            singles.extend(fakes[b - 1:])
        if len(units) > 0 and len(singles) > 1:
            singles = [singles[int(j)] for j in rng.permutation(len(singles))]
        out: list[int] = []
        for u in units:
            room = b - len(out) % b
            if len(u) > room and singles:
                take = min(room, len(singles))
                out.extend(singles[:take])
                singles = singles[take:]
            out.extend(u)  # fits, or no singles left to fill the gap: it is split across two batches
        out.extend(singles)
        return np.asarray(out, dtype=np.int64)


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
    """uint8 NHWC batch -> the model's float NCHW input on the batch's device
    (:func:`dftune.portable.normalise`, the formula inference uses)."""

    def __init__(self, spec: Preprocess):
        self.spec = spec

    def __call__(self, pixels):
        return normalise(pixels, self.spec, pixels.device)


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
    for r, p in zip(rows, image_paths(location, rows), strict=False):
        try:
            ok = p.stat().st_size > 0
        except OSError:
            ok = False
        if ok:
            kept.append(r)
        else:
            bad.append(f"{p}: missing or empty")
    return kept, bad
