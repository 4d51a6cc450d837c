"""Self-blended images (SBI): pseudo-fakes made from one real face crop.

The idea (Shiohara & Yamasaki, CVPR 2022, "Detecting Deepfakes with Self-Blended
Images"): take a real face, make a slightly altered copy of it (colour, sharpness,
a small shift/scale), and blend the copy back onto the original through a soft face
mask. The result carries the traces every face-swap leaves - a blending boundary,
a colour/frequency mismatch between the face and its surroundings, a slight
misalignment - without any identity or method-specific artefact, so a detector
trained on it learns those generic traces.

This module is a pure component (numpy + OpenCV, no files, no torch):

- :func:`self_blend` ``(rgb, landmarks, rng, **settings) -> (pseudo_fake, alpha)``,
  cheap enough for a Dataset's ``__getitem__`` (about a millisecond at 224 px).
- :func:`face_mask` the hard face region: the convex hull of 68 landmarks, an
  ellipse fitted to 5 landmarks (RetinaFace's eyes/nose/mouth corners), or - no
  landmarks - an ellipse in the crop's central face box (the guide's crop is the
  square around the detection box with margin 1.3, so the box is its central 1/1.3).
- :func:`deform_mask` random elastic warp, dilation/erosion and Gaussian blur.

Only the *source* copy is transformed, so a pseudo-fake equals its input exactly
wherever the returned ``alpha`` is 0; everything random comes from the ``rng`` passed
in, so a seeded generator gives the same image every time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from dftune.portable import MARGIN

__all__ = ["SBISettings", "self_blend", "face_mask", "deform_mask", "transform_source", "DEFAULT"]


@dataclass(frozen=True)
class SBISettings:
    """Ranges of every random choice; the defaults follow the SBI paper's spirit at small crops."""

    margin: float = MARGIN  # crop side / face-box side, for the no-landmark mask
    # blend ratio: the mask's peak value is drawn from these (SBI's 0.25..1, weighted to 1)
    blend_ratios: tuple = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
    # mask deformation, as fractions of the face size
    elastic: float = 0.06  # max elastic displacement
    dilate: float = 0.08  # max dilation (>0) or erosion (<0) radius, drawn in [-dilate, dilate]
    blur: tuple = (0.03, 0.09)  # Gaussian blur sigma range of the mask edge
    # source transforms
    hue: float = 6.0  # max hue shift, degrees/2 (OpenCV's 0..180 hue)
    saturation: float = 0.15  # max relative saturation change
    brightness: float = 0.12  # max relative brightness change
    contrast: float = 0.12  # max relative contrast change
    p_blur: float = 0.35  # probability of blurring the source
    p_sharpen: float = 0.35  # probability of sharpening it (exclusive with blur)
    scale: float = 0.04  # max relative scale change of the source
    shift: float = 0.03  # max translation of the source, fraction of the face size

    @classmethod
    def make(cls, **overrides) -> SBISettings:
        """Defaults with ``overrides``; unknown names are an error that lists the known ones."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - names)
        if bad:
            raise ValueError(f"unknown SBI setting(s) {', '.join(bad)}; settings are: {', '.join(sorted(names))}")
        s = replace(cls(), **overrides)
        if s.margin < 1:
            raise ValueError(f"SBI margin must be >= 1 (crop side / face side); got {s.margin}")
        if not s.blend_ratios or not all(0 < r <= 1 for r in s.blend_ratios):
            raise ValueError(f"SBI blend_ratios must be in (0, 1]; got {s.blend_ratios}")
        return s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blend_ratios"], d["blur"] = list(self.blend_ratios), list(self.blur)
        return d


DEFAULT = SBISettings()


# ---------------------------------------------------------------- masks


def _face_geometry(shape: tuple[int, int], landmarks, margin: float) -> tuple[float, float, float]:
    """Face centre (x, y) and size in pixels, from landmarks or the crop geometry."""
    h, w = shape
    pts = _points(landmarks)
    if pts is not None and len(pts) >= 5:
        x1, y1 = pts.min(0)
        x2, y2 = pts.max(0)
        if len(pts) == 5:  # eyes, nose, mouth corners: the face is about 2x their extent
            size = 2.0 * max(x2 - x1, (y2 - y1) * 1.2, 1.0)
        else:
            size = max(x2 - x1, y2 - y1, 1.0)
        return (x1 + x2) / 2, (y1 + y2) / 2, float(size)
    side = min(h, w) / margin
    return w / 2, h / 2, float(side)


def _points(landmarks) -> np.ndarray | None:
    if landmarks is None or len(landmarks) == 0:
        return None
    pts = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)
    if not np.isfinite(pts).all():
        return None
    return pts


def face_mask(shape: tuple[int, int], landmarks=None, margin: float = MARGIN) -> np.ndarray:
    """Hard face mask (float32 0/1, ``shape`` = (H, W)).

    - 68 points (dlib): convex hull of the jaw line and eyebrows (all points).
    - 5 points (RetinaFace: left eye, right eye, nose, left/right mouth corner): an
      ellipse from the eye line and the eye-mouth distance, turned with the eyes,
      covering brows to chin and cheek to cheek.
    - none: an ellipse in the crop's face box (its central 1/``margin``), nudged down
      as faces sit lower in detection boxes than their foreheads.
    """
    import cv2

    h, w = shape
    mask = np.zeros((h, w), np.float32)
    pts = _points(landmarks)
    if pts is not None and len(pts) >= 6:
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1.0, lineType=cv2.LINE_AA)
    elif pts is not None and len(pts) == 5:
        le, re, nose, lm, rm = pts
        eyes, mouth = (le + re) / 2, (lm + rm) / 2
        d_eyes = float(np.linalg.norm(re - le)) or 1.0
        d_em = float(np.linalg.norm(mouth - eyes)) or d_eyes
        angle = math.degrees(math.atan2(float(re[1] - le[1]), float(re[0] - le[0])))
        down = (mouth - eyes) / d_em
        centre = eyes + down * 0.62 * d_em
        axes = (max(1, int(round(1.05 * d_eyes))), max(1, int(round(1.05 * d_em))))
        cv2.ellipse(mask, (int(round(centre[0])), int(round(centre[1]))), axes, angle, 0, 360, 1.0, -1,
                    lineType=cv2.LINE_AA)
    else:
        side = min(h, w) / margin
        cx, cy = w / 2, h / 2 + 0.05 * side
        axes = (max(1, int(round(0.40 * side))), max(1, int(round(0.48 * side))))
        cv2.ellipse(mask, (int(round(cx)), int(round(cy))), axes, 0, 0, 360, 1.0, -1, lineType=cv2.LINE_AA)
    return mask


def deform_mask(mask: np.ndarray, rng: np.random.Generator, face_size: float,
                settings: SBISettings = DEFAULT) -> np.ndarray:
    """Random elastic warp, dilation or erosion, then a Gaussian-blurred edge; float32 in [0, 1]."""
    import cv2

    h, w = mask.shape
    m = mask.astype(np.float32)
    if settings.elastic > 0:
        # a smooth random displacement field: a coarse grid of offsets, upsampled bicubically
        amp = settings.elastic * face_size
        grid = rng.uniform(-amp, amp, size=(2, 4, 4)).astype(np.float32)
        dx = cv2.resize(grid[0], (w, h), interpolation=cv2.INTER_CUBIC)
        dy = cv2.resize(grid[1], (w, h), interpolation=cv2.INTER_CUBIC)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        m = cv2.remap(m, xx + dx, yy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    r = int(round(rng.uniform(-settings.dilate, settings.dilate) * face_size))
    if r != 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(r) + 1, 2 * abs(r) + 1))
        eroded = cv2.erode(m, k) if r < 0 else None
        if r > 0:
            m = cv2.dilate(m, k)
        elif eroded is not None and eroded.max() > 0.5:  # never erode the face away
            m = eroded
    sigma = max(0.5, rng.uniform(*settings.blur) * face_size)
    m = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, sigmaY=sigma)
    peak = float(m.max())
    if peak > 0:
        m = m / peak  # the blend ratio, not the blur, sets the strongest blend
    m[m < 1 / 255] = 0.0  # cut the blur's far tail: below one grey level it changes nothing visible
    return np.clip(m, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- source transforms


def _colour(img: np.ndarray, rng: np.random.Generator, s: SBISettings) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-s.hue, s.hue)) % 180
    hsv[..., 1] *= 1 + rng.uniform(-s.saturation, s.saturation)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    b = 1 + rng.uniform(-s.brightness, s.brightness)
    c = 1 + rng.uniform(-s.contrast, s.contrast)
    mean = out.mean()
    return np.clip((out - mean) * c + mean * b, 0, 255)


def _sharpness(img: np.ndarray, rng: np.random.Generator, s: SBISettings, face_size: float) -> np.ndarray:
    import cv2

    u = rng.random()
    sigma = max(0.4, rng.uniform(0.01, 0.025) * face_size)
    if u < s.p_blur:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    if u < s.p_blur + s.p_sharpen:
        amount = rng.uniform(0.4, 1.2)
        return np.clip(img * (1 + amount) - cv2.GaussianBlur(img, (0, 0), sigma) * amount, 0, 255)
    return img


def _geometry(img: np.ndarray, rng: np.random.Generator, s: SBISettings, centre, face_size: float) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    k = 1 + rng.uniform(-s.scale, s.scale)
    tx, ty = rng.uniform(-s.shift, s.shift, size=2) * face_size
    cx, cy = centre
    mat = np.array([[k, 0, (1 - k) * cx + tx], [0, k, (1 - k) * cy + ty]], np.float32)
    return cv2.warpAffine(img, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def transform_source(rgb: np.ndarray, rng: np.random.Generator, settings: SBISettings = DEFAULT,
                     centre=None, face_size: float | None = None) -> np.ndarray:
    """The altered copy (float32 HxWx3): colour, then sharpness, then a small scale/shift."""
    h, w = rgb.shape[:2]
    face_size = face_size or min(h, w) / settings.margin
    centre = centre if centre is not None else (w / 2, h / 2)
    out = _colour(rgb, rng, settings)
    out = _sharpness(out.astype(np.float32), rng, settings, face_size)
    return _geometry(out.astype(np.float32), rng, settings, centre, face_size)


# ---------------------------------------------------------------- the blend


def self_blend(rgb: np.ndarray, landmarks: Sequence | None = None, rng: np.random.Generator | None = None,
               settings: SBISettings | None = None, **overrides) -> tuple[np.ndarray, np.ndarray]:
    """A pseudo-fake made from the real crop ``rgb`` (uint8 HxWx3).

    ``landmarks``: ``[[x, y], ...]`` in this crop's pixels (68 or 5 points; ``None``
    or empty: the crop geometry gives the face region). ``rng``: the only source of
    randomness (``np.random.default_rng(seed)`` for a reproducible result).
    ``settings``/``overrides``: :class:`SBISettings` fields.

    Returns ``(pseudo_fake uint8 HxWx3, alpha float32 HxW in [0, 1])`` where
    ``pseudo_fake = source * alpha + rgb * (1 - alpha)``: equal to ``rgb`` wherever
    ``alpha`` is 0.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"self_blend needs a uint8 HxWx3 RGB image; got {rgb.dtype} {rgb.shape}")
    if min(rgb.shape[:2]) < 8:
        raise ValueError(f"self_blend needs an image of at least 8x8 pixels; got {rgb.shape[1]}x{rgb.shape[0]}")
    s = settings if settings is not None else (SBISettings.make(**overrides) if overrides else DEFAULT)
    if settings is not None and overrides:
        s = replace(settings, **overrides)
    rng = rng if rng is not None else np.random.default_rng()
    h, w = rgb.shape[:2]
    pts = _points(landmarks)
    if pts is not None and (len(pts) < 5 or (pts[:, 0].max() < 0 or pts[:, 1].max() < 0
                                             or pts[:, 0].min() >= w or pts[:, 1].min() >= h)):
        pts = None  # unusable landmarks: fall back to the crop geometry
    cx, cy, face_size = _face_geometry((h, w), pts, s.margin)
    hard = face_mask((h, w), pts, s.margin)
    if hard.max() <= 0:
        hard = face_mask((h, w), None, s.margin)
    alpha = deform_mask(hard, rng, face_size, s)
    alpha *= float(rng.choice(np.asarray(s.blend_ratios, dtype=np.float32)))
    source = transform_source(rgb, rng, s, centre=(cx, cy), face_size=face_size)
    base = rgb.astype(np.float32)
    a = alpha[..., None]
    out = source * a + base * (1 - a)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    out[alpha <= 0] = rgb[alpha <= 0]  # exact outside the mask, whatever the float rounding
    return out, alpha
