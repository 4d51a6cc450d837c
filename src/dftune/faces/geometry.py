"""Pure box math: the guide's square crop (FF++'s ``get_boundingbox`` semantics).

No I/O here, so every rule is testable with numbers alone.
"""

from __future__ import annotations

import numpy as np


def guide_square(x1: int, y1: int, x2: int, y2: int, width: int, height: int,
                 margin: float = 1.3) -> tuple[int, int, int]:
    """Square crop ``(x, y, side)`` around the face box ``(x1, y1)-(x2, y2)``.

    side = int(max(w, h) * margin); centre = integer midpoint; top-left clamped at 0;
    then the side is clipped so the square stays inside the ``width`` x ``height`` frame.
    """
    side = int(max(x2 - x1, y2 - y1) * margin)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    x = max(int(cx - side // 2), 0)
    y = max(int(cy - side // 2), 0)
    side = min(width - x, side)
    side = min(height - y, side)
    return x, y, side


def crop_square(image: np.ndarray, box: tuple[int, int, int], size: int | None = 224) -> np.ndarray:
    """Crop the square ``(x, y, side)`` and resize to ``size`` with bicubic (the guide's)."""
    import cv2

    x, y, side = box
    if side <= 0:
        raise ValueError(f"empty crop box {box}")
    crop = image[y:y + side, x:x + side]
    if size is None or crop.shape[0] == size and crop.shape[1] == size:
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)


def scale_box(box: tuple[float, float, float, float], factor: float) -> tuple[int, int, int, int]:
    """Scale a detection made on a resized frame back to the original frame (truncating)."""
    return tuple(int(v * factor) for v in box)  # type: ignore[return-value]


def square_iou(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Intersection over union of two squares ``(x, y, side)``."""
    ax, ay, asz = a
    bx, by, bsz = b
    iw = max(0, min(ax + asz, bx + bsz) - max(ax, bx))
    ih = max(0, min(ay + asz, by + bsz) - max(ay, by))
    inter = iw * ih
    union = asz * asz + bsz * bsz - inter
    return inter / union if union > 0 else 0.0


def points_to_crop(points, box: tuple[int, int, int], size: int) -> list[list[float]]:
    """Map frame-pixel points into the resized crop's pixels."""
    x, y, side = box
    s = size / side if side else 1.0
    return [[round((px - x) * s, 1), round((py - y) * s, 1)] for px, py in points]


def whole_image_box(width: int, height: int) -> tuple[int, int, int]:
    """The centred largest square, for images with no face (``predict``'s fallback)."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side
