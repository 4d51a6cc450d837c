"""A small FF++-shaped data set that dftune makes itself, for the demo and the tests.

Faces come from photos that ship inside installed PyPI packages (matplotlib's
``grace_hopper.jpg``, scikit-image's ``astronaut``); each identity is one of them
with its own tint, mirror and scale. A "video" animates the portrait over a
background (pose drift, zoom, lighting). Fakes follow FF++: ``TARGET_SOURCE`` is the
target's video with its face manipulated, one manipulation per method folder:

- Deepfakes       the source identity's face blended in through a soft mask, colour-matched
- Face2Face       the target's own face warped (expression-like displacement of the lower face)
- FaceSwap        the source's face pasted through a harder mask, no colour correction
- NeuralTextures  the lower face re-textured (smoothed, with a fine periodic pattern)

Three more kinds, never in the defaults (name them in ``methods``), for benchmarks that need
manipulations a model has not seen (``EXTRA_METHODS``):

- FaceShifter     the source's face, colour-matched, at a third to a quarter of the resolution
                  (blocky nearest-neighbour upsampling), blended through a medium mask
- FaceEdit        an attribute edit of the target's own face: skin hue turned, saturation raised
                  and the face over-sharpened (unsharp mask), through a medium mask
- LipSync         the target's own mouth re-rendered: the mouth region stretched open and
                  regenerated at half resolution (blurry), blended through a soft mask

A data set can also have its own ``look`` (:class:`Look`: a colour tint, blur, sensor noise, JPEG
quality) applied to every crop, real and fake alike, as a camera/platform/compression shift between
data sets; ``first_id`` gives a data set identities of its own.

Two entry points: :func:`build_ffpp_tree` writes H.264 videos in FF++'s layout with a
split folder in the official format; :func:`make_crops` skips video and detection and
writes face crops plus a manifest directly (fast data for training/evaluation tests).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from dftune.portable import MARGIN, crop_square, guide_square
from dftune.prepared import Row, write_manifest

METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
EXTRA_METHODS = ("FaceShifter", "FaceEdit", "LipSync")  # never in the defaults; see the module's docstring
PORTRAIT = 192  # portrait side in pixels before animation zoom


@dataclass(frozen=True)
class _Photo:
    rgb: np.ndarray  # square portrait, PORTRAIT x PORTRAIT
    face: tuple[int, int, int, int]  # x1, y1, x2, y2 in portrait pixels


def _photo_files() -> list[tuple[str, np.ndarray, tuple[int, int, int, int]]]:
    """Face photos shipped in PyPI packages, with a face box measured once on each."""
    import cv2

    out = []
    import matplotlib

    gh = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if gh.exists():
        rgb = cv2.cvtColor(cv2.imread(str(gh)), cv2.COLOR_BGR2RGB)
        out.append(("grace_hopper", rgb, (180, 139, 366, 325)))
    try:
        from skimage import data as skdata

        out.append(("astronaut", skdata.astronaut(), (175, 70, 268, 170)))
    except Exception:  # scikit-image missing: one photo still makes identities
        pass
    if not out:
        raise RuntimeError("no face photo found: install matplotlib (and scikit-image) to build the demo data")
    return out


@cache
def _base_photos() -> tuple[_Photo, ...]:
    """Square portraits around each photo's face, the face taking ~45% of the side."""
    import cv2

    photos = []
    for _, rgb, (x1, y1, x2, y2) in _photo_files():
        cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
        side = int(s * 2.2)
        x0, y0 = int(cx - side / 2), int(cy - side / 2 + 0.1 * s)
        pad = side
        padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        crop = padded[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
        k = PORTRAIT / side
        crop = cv2.resize(crop, (PORTRAIT, PORTRAIT), interpolation=cv2.INTER_AREA)
        face = (int((x1 - x0) * k), int((y1 - y0) * k), int((x2 - x0) * k), int((y2 - y0) * k))
        photos.append(_Photo(crop, face))
    return tuple(photos)


def identity(idx: int) -> _Photo:
    """Identity ``idx``: a base photo with its own mirror, tint and contrast."""
    photos = _base_photos()
    base = photos[idx % len(photos)]
    rng = np.random.default_rng(1000 + idx)
    img = base.rgb.astype(np.float32)
    x1, y1, x2, y2 = base.face
    if (idx // len(photos)) % 2:
        img = img[:, ::-1]
        x1, x2 = PORTRAIT - x2, PORTRAIT - x1
    tint = 1.0 + rng.uniform(-0.18, 0.18, size=3)
    img = np.clip((img - 128) * rng.uniform(0.85, 1.15) + 128, 0, 255) * tint
    return _Photo(np.clip(img, 0, 255).astype(np.uint8), (x1, y1, x2, y2))


def _ellipse_mask(shape: tuple[int, int], box: tuple[int, int, int, int], soft: float) -> np.ndarray:
    import cv2

    h, w = shape
    m = np.zeros((h, w), np.float32)
    x1, y1, x2, y2 = box
    cv2.ellipse(m, ((x1 + x2) // 2, (y1 + y2) // 2 + (y2 - y1) // 12),
                (int((x2 - x1) * 0.42), int((y2 - y1) * 0.52)), 0, 0, 360, 1.0, -1)
    if soft > 0:
        k = int(soft) | 1
        m = cv2.GaussianBlur(m, (k, k), 0)
    return m[..., None]


def manipulate(method: str, target: _Photo, source: _Photo, seed: int = 0) -> np.ndarray:
    """The target portrait with its face manipulated the way ``method`` stands for."""
    import cv2

    t = target.rgb.astype(np.float32)
    box = target.face
    rng = np.random.default_rng(seed)
    if method in ("Deepfakes", "FaceSwap"):
        sx1, sy1, sx2, sy2 = source.face
        tx1, ty1, tx2, ty2 = box
        src = cv2.resize(source.rgb[sy1:sy2, sx1:sx2], (tx2 - tx1, ty2 - ty1)).astype(np.float32)
        canvas = t.copy()
        canvas[ty1:ty2, tx1:tx2] = src
        if method == "Deepfakes":
            # colour-match the pasted face to the target's, then blend softly; a slight blur (GAN-like)
            region = t[ty1:ty2, tx1:tx2]
            canvas[ty1:ty2, tx1:tx2] = (src - src.mean((0, 1))) / (src.std((0, 1)) + 1e-3) * region.std((0, 1)) \
                + region.mean((0, 1))
            canvas = cv2.GaussianBlur(canvas, (5, 5), 0)
            mask = _ellipse_mask(t.shape[:2], box, soft=25)
        else:
            mask = _ellipse_mask(t.shape[:2], box, soft=5)
        out = canvas * mask + t * (1 - mask)
    elif method == "Face2Face":
        h, w = t.shape[:2]
        x1, y1, x2, y2 = box
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = y1 + 0.72 * (y2 - y1), (x1 + x2) / 2
        r = 0.35 * (x2 - x1)
        g = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
        amp = 0.12 * (y2 - y1) * (1 + 0.3 * rng.standard_normal())
        map_y = yy - amp * g
        map_x = xx + 0.06 * (x2 - x1) * g * np.sign(xx - cx)
        out = cv2.remap(t, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    elif method == "FaceShifter":
        # the source's face, colour-matched, rebuilt at a third to a quarter of the resolution (blocky upsampling)
        sx1, sy1, sx2, sy2 = source.face
        tx1, ty1, tx2, ty2 = box
        fw, fh = tx2 - tx1, ty2 - ty1
        src = cv2.resize(source.rgb[sy1:sy2, sx1:sx2], (fw, fh)).astype(np.float32)
        region = t[ty1:ty2, tx1:tx2]
        src = (src - src.mean((0, 1))) / (src.std((0, 1)) + 1e-3) * region.std((0, 1)) + region.mean((0, 1))
        f = 3 + int(rng.integers(0, 2))
        small = cv2.resize(src, (max(1, fw // f), max(1, fh // f)), interpolation=cv2.INTER_AREA)
        canvas = t.copy()
        canvas[ty1:ty2, tx1:tx2] = cv2.resize(small, (fw, fh), interpolation=cv2.INTER_NEAREST)
        mask = _ellipse_mask(t.shape[:2], box, soft=13)
        out = canvas * mask + t * (1 - mask)
    elif method == "FaceEdit":
        # an attribute edit of the target's own face: hue turned, saturation up, over-sharpened
        hsv = cv2.cvtColor(np.clip(t, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + 7 + 2 * rng.standard_normal()) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * 1.3, 0, 255)
        edited = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
        edited = edited + 1.5 * (edited - cv2.GaussianBlur(edited, (0, 0), 2.0))
        mask = _ellipse_mask(t.shape[:2], box, soft=15)
        out = edited * mask + t * (1 - mask)
    elif method == "LipSync":
        # the target's own mouth, opened (stretched down) and regenerated at half resolution, softly blended
        x1, y1, x2, y2 = box
        fw, fh = x2 - x1, y2 - y1
        mx1, mx2 = int(x1 + 0.2 * fw), int(x2 - 0.2 * fw)
        my1, my2 = int(y1 + 0.55 * fh), min(t.shape[0], int(y1 + 1.0 * fh))
        region = t[my1:my2, mx1:mx2]
        rh, rw = region.shape[:2]
        s_ = 1.15 + 0.05 * rng.standard_normal()
        opened = cv2.resize(region, (rw, int(rh * s_)))[:rh]
        small = cv2.resize(opened, (max(1, rw // 2), max(1, rh // 2)), interpolation=cv2.INTER_AREA)
        canvas = t.copy()
        canvas[my1:my2, mx1:mx2] = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_LINEAR)
        mask = _ellipse_mask(t.shape[:2], (mx1, my1 - (my2 - my1) // 6, mx2, my2), soft=9)
        out = canvas * mask + t * (1 - mask)
    elif method == "NeuralTextures":
        x1, y1, x2, y2 = box
        smooth = cv2.bilateralFilter(t, 9, 60, 9)
        yy, xx = np.mgrid[0:t.shape[0], 0:t.shape[1]].astype(np.float32)
        pattern = 10.0 * np.sin(xx * 1.7) * np.sin(yy * 1.7)
        smooth = smooth + pattern[..., None]
        lower = (x1, int(y1 + 0.45 * (y2 - y1)), x2, y2)
        mask = _ellipse_mask(t.shape[:2], lower, soft=9)
        out = smooth * mask + t * (1 - mask)
    else:
        raise ValueError(f"unknown manipulation method {method!r}; choose from {METHODS + EXTRA_METHODS}")
    return np.clip(out, 0, 255).astype(np.uint8)


def _background(idx: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(5000 + idx)
    c1, c2 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    t = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    bg = c1 * (1 - t) + c2 * t
    bg = np.repeat(bg, height, axis=0)
    bg = bg + rng.normal(0, 6, size=(height, width, 1))
    return np.clip(bg, 0, 255).astype(np.float32)


def render_frame(portrait: np.ndarray, face: tuple[int, int, int, int], bg: np.ndarray, t: float,
                 motion_seed: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One frame at time ``t`` (0..1): the portrait drifting, zooming and lit over ``bg``.

    Returns the RGB frame and the face box in frame pixels.
    """
    import cv2

    h, w = bg.shape[:2]
    rng = np.random.default_rng(motion_seed)
    ph1, ph2, ph3 = rng.uniform(0, 2 * math.pi, 3)
    zoom = (0.95 * h / PORTRAIT) * (1 + 0.06 * math.sin(2 * math.pi * t + ph1))
    side = int(PORTRAIT * zoom)
    cx = w / 2 + 0.12 * w * math.sin(2 * math.pi * t * 0.8 + ph2)
    cy = h / 2 + 0.04 * h * math.sin(2 * math.pi * t * 1.3 + ph3)
    x0, y0 = int(cx - side / 2), int(cy - side / 2)
    light = 1.0 + 0.12 * math.sin(2 * math.pi * t * 0.6 + ph1)
    p = cv2.resize(portrait, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32) * light
    mask = np.zeros((side, side), np.float32)
    cv2.ellipse(mask, (side // 2, side // 2), (int(side * 0.47), int(side * 0.5)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), side * 0.03)[..., None]
    frame = bg.copy()
    # paste the portrait, clipped to the frame
    fx1, fy1 = max(x0, 0), max(y0, 0)
    fx2, fy2 = min(x0 + side, w), min(y0 + side, h)
    if fx2 > fx1 and fy2 > fy1:
        px1, py1 = fx1 - x0, fy1 - y0
        sub = p[py1:py1 + fy2 - fy1, px1:px1 + fx2 - fx1]
        m = mask[py1:py1 + fy2 - fy1, px1:px1 + fx2 - fx1]
        frame[fy1:fy2, fx1:fx2] = sub * m + frame[fy1:fy2, fx1:fx2] * (1 - m)
    k = side / PORTRAIT
    fb = (int(x0 + face[0] * k), int(y0 + face[1] * k), int(x0 + face[2] * k), int(y0 + face[3] * k))
    return np.clip(frame, 0, 255).astype(np.uint8), fb


class _FilledAllocations:
    """While encoding, have glibc fill every new allocation with one byte pattern (``mallopt``'s
    M_PERTURB, what MALLOC_PERTURB_ does at start-up). The encoder reads memory it did not write
    (seen: the same frames gave other bytes after other videos had been encoded in the process,
    and the same bytes every time under MALLOC_PERTURB_), so without this the demo's videos, and
    its numbers, changed from run to run. A no-op where libc has no mallopt."""

    M_PERTURB = -6

    def __init__(self, byte: int = 0xA5):
        self.byte, self._libc = byte, None
        try:
            import ctypes
            import ctypes.util

            self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self._libc.mallopt  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            self._libc = None

    def __enter__(self):
        if self._libc is not None:
            self._libc.mallopt(self.M_PERTURB, self.byte)
        return self

    def __exit__(self, *exc):
        if self._libc is not None:
            self._libc.mallopt(self.M_PERTURB, 0)
        return False


def write_video(path: str | os.PathLike, frames, fps: int = 25, crf: int = 23, rotate: int = 0) -> None:
    """H.264 (libx264, yuv420p) at FF++'s c23-like quality; written atomically.

    ``rotate``: a display rotation (degrees counter-clockwise, as phones tag their videos):
    the frames are stored turned the other way and the container says how to show them, so
    a player — and dftune's decoder — shows exactly ``frames``.
    """
    import av

    from dftune.atomic import atomic_path

    k = int(round(rotate / 90)) % 4
    frames = [np.ascontiguousarray(np.rot90(f, -k)) for f in frames] if k else list(frames)
    h, w = frames[0].shape[:2]
    with atomic_path(path) as tmp, _FilledAllocations():
        with av.open(str(tmp), mode="w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height = w - w % 2, h - h % 2
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            if k:
                stream.set_display_rotation(90 * k)
            for f in frames:
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: stream.height, : stream.width]),
                                                format="rgb24")
                for pkt in stream.encode(vf):
                    out.mux(pkt)
            for pkt in stream.encode():
                out.mux(pkt)


def _pairs(n_ids: int) -> list[tuple[str, str]]:
    return [(f"{i:03d}", f"{i + 1:03d}") for i in range(0, n_ids - n_ids % 2, 2)]


def split_pairs(n_ids: int) -> dict[str, list[tuple[str, str]]]:
    """Id pairs per split, in the official format's shape (roughly 60/20/20, each split non-empty)."""
    pairs = _pairs(n_ids)
    if len(pairs) < 3:
        raise ValueError(f"need at least 6 identities for three splits, got {n_ids}")
    n_val = max(1, round(len(pairs) * 0.2))
    n_test = max(1, round(len(pairs) * 0.2))
    n_train = len(pairs) - n_val - n_test
    return {"train": pairs[:n_train], "val": pairs[n_train:n_train + n_val], "test": pairs[n_train + n_val:]}


def _portrait(method: str, target: int, source: int) -> _Photo:
    t = identity(target)
    if method == "original":
        return t
    return _Photo(manipulate(method, t, identity(source), seed=target * 31 + source), t.face)


def build_ffpp_tree(root: str | os.PathLike, n_ids: int = 10, frames: int = 30, width: int = 320,
                    height: int = 240, methods=METHODS, compression: str = "c23", fps: int = 25,
                    crf: int = 23) -> dict:
    """Write an FF++-shaped tree of H.264 videos under ``root`` plus ``root/splits/*.json``.

    Layout: ``original_sequences/youtube/<c>/videos/NNN.mp4`` and
    ``manipulated_sequences/<Method>/<c>/videos/TARGET_SOURCE.mp4`` (both orders of every pair).
    Existing complete videos are kept (re-runs are cheap). Returns counts.
    """
    root = Path(root)
    splits = split_pairs(n_ids)
    from dftune.atomic import write_json

    for name, pairs in splits.items():
        write_json(root / "splits" / f"{name}.json", [list(p) for p in pairs])
    jobs = []
    for i in range(n_ids - n_ids % 2):
        jobs.append(("original", i, i,
                     root / "original_sequences" / "youtube" / compression / "videos" / f"{i:03d}.mp4"))
    for m in methods:
        for a, b in _pairs(n_ids):
            for t, s in ((a, b), (b, a)):
                jobs.append((m, int(t), int(s),
                             root / "manipulated_sequences" / m / compression / "videos" / f"{t}_{s}.mp4"))
    written = 0
    for method, t, s, path in jobs:
        if path.exists() and path.stat().st_size > 0:
            continue
        ph = _portrait(method, t, s)
        bg = _background(t, width, height)
        seq = [render_frame(ph.rgb, ph.face, bg, k / max(frames - 1, 1), motion_seed=t)[0] for k in range(frames)]
        write_video(path, seq, fps=fps, crf=crf)
        written += 1
    return {"root": str(root), "videos": len(jobs), "written": written, "splits": str(root / "splits"),
            "pairs": {k: len(v) for k, v in splits.items()}}


@dataclass(frozen=True)
class Look:
    """A data set's look, applied to every crop it writes (real and fake alike), in this order:
    a per-channel colour ``tint`` (RGB multipliers), a Gaussian ``blur`` (sigma in crop pixels, 0 = off),
    Gaussian sensor ``noise`` (sd in grey levels, 0 = off), then JPEG at ``jpeg`` quality."""

    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur: float = 0.0
    noise: float = 0.0
    jpeg: int = 95

    def apply(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        img = crop.astype(np.float32) * np.asarray(self.tint, np.float32)
        if self.blur > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.blur)
        if self.noise > 0:
            img = img + rng.normal(0, self.noise, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)


# named looks for make_crops(look=...): shifts between data sets a detector meets
LOOKS = {
    "warm-jpeg": Look(tint=(1.10, 1.0, 0.86), jpeg=60),  # a warm colour cast, harder compression
    "cool-soft": Look(tint=(0.88, 0.98, 1.12), blur=0.7, noise=3.0, jpeg=75),  # cool cast, soft, noisy
}


def make_crops(out_dir: str | os.PathLike, n_videos: int = 8, frames: int = 4, size: int = 64, seed: int = 0,
               methods=METHODS, margin: float = MARGIN, look: Look | str | None = None, first_id: int = 0) -> Path:
    """Face crops and a manifest, straight from the renderer (no video, no detector): fast test data.

    ``n_videos`` identities in train, half as many (at least 2) in val and test; every real
    video has one fake per method with it as target (FF++'s 1 real : 4 fake). Crops are
    the guide's square around the known face box; returns the manifest path.

    ``methods`` may name :data:`EXTRA_METHODS` too. ``look`` (a :class:`Look` or a name in
    :data:`LOOKS`) gives every crop a data set's look; ``first_id`` is the first identity's index
    (another value gives a data set identities, backgrounds and video ids of its own). The defaults
    (no look, identities from 0) write what this function always wrote, byte for byte.
    """
    import cv2

    if isinstance(look, str):
        if look not in LOOKS:
            raise ValueError(f"unknown look {look!r}; choose from {', '.join(LOOKS)} or pass a Look")
        look = LOOKS[look]
    out = Path(out_dir)
    per_split = {"train": n_videos, "val": max(2, n_videos // 2), "test": max(2, n_videos // 2)}
    rows: list[Row] = []
    ident = int(first_id)
    w, h = 160, 120
    for split, n in per_split.items():
        ids = list(range(ident, ident + n))
        ident += n
        for t in ids:
            s = ids[(ids.index(t) + 1) % len(ids)]
            for method in ("original",) + tuple(methods):
                ph = _portrait(method, t, s)
                bg = _background(t, w, h)
                vid = f"{t:03d}" if method == "original" else f"{t:03d}_{s:03d}"
                label = 0 if method == "original" else 1
                for k in range(frames):
                    fi = k * 7
                    frame, (x1, y1, x2, y2) = render_frame(ph.rgb, ph.face, bg, (fi + seed) / 40.0, motion_seed=t)
                    box = guide_square(x1, y1, x2, y2, w, h, margin)
                    crop = crop_square(frame, box, size)
                    quality = 95
                    if look is not None:  # its own random stream per crop: the crops without a look are untouched
                        rng = np.random.default_rng([7000 + t, fi, zlib.crc32(method.encode()), seed])
                        crop = look.apply(crop, rng)
                        quality = int(look.jpeg)
                    rel = f"{split}/{'fake' if label else 'real'}/{method}_{vid}_f{fi:05d}.jpg"
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(out / rel), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, quality])
                    rows.append(Row(path=rel, label=label, method=method, video=f"{method}/{vid}", video_id=vid,
                                    target_id=f"{t:03d}", source_id="" if label == 0 else f"{s:03d}",
                                    frame_index=fi, split=split, box_x=box[0], box_y=box[1], box_size=box[2],
                                    frame_width=w, frame_height=h, detector="none", score=1.0))
    from dftune.atomic import write_json

    # the boxes are the renderer's own (rows say detector "none"); settings name the detector a
    # model trained on these crops should use on new media, which `train` copies into dftune.json
    settings = {"detector": "retinaface", "margin": margin, "size": size, "frames": frames,
                "every": 0, "source": "dftune.synthetic.make_crops",
                "boxes": "rendered face boxes, no detector"}
    if look is not None:
        settings["look"] = {"tint": list(look.tint), "blur": look.blur, "noise": look.noise, "jpeg": look.jpeg}
    write_json(out / "settings.json", settings)
    return write_manifest(out / "manifest.csv", rows)


if __name__ == "__main__":  # pragma: no cover - manual look at the data
    import sys

    print(json.dumps(build_ffpp_tree(sys.argv[1] if len(sys.argv) > 1 else "demo-ffpp"), indent=2))
