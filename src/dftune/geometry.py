"""Pure box math around the face crop: scaling boxes, IoU, landmarks into crop pixels.

The crop itself (the guide's square, the bicubic resize) is :func:`dftune.portable.crop_face`,
which the submission script shares. No I/O here, so every rule is testable with numbers alone.
"""

from __future__ import annotations


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


