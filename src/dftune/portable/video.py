"""Reading videos with PyAV: the guide's frame sampling, display rotation, lazy YUV frames, decoding that skips
segments nothing wants.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from .images import VideoError

_log = logging.getLogger("dftune.portable")


DETECT_WIDTH = 640
FRAMES = 10  # frames sampled per video: the guide's linspace(0, n - 1, 10)


def sample_indices(n: int, frames: int = FRAMES, every: int = 0) -> list[int]:
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
    for k, (src, dst) in enumerate(zip(frame.planes, sub.planes, strict=False)):
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
        held = discarded = 0
        try:
            for p in container.demux(stream):
                if p.size:
                    if getattr(p, "is_discard", False):
                        discarded += 1  # decoded as a reference, never shown: not numbered
                    elif p.pts is None:
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
        if discarded:  # an edit list trims the start: the container's count includes frames never shown
            declared = len(pts) if pts is not None else 0
        if pts is not None and not _pts_are_presentation(stream, pts):
            pts = packets = None  # the pts cannot number frames: decode sequentially
        if pts is not None and packets is not None:
            pts.container, pts.packets, keep = container, packets, True
        return declared, pts
    finally:
        if not keep:
            container.close()


def _pts_are_presentation(stream, pts: Sequence[int]) -> bool:
    """Whether the packets' pts give each frame's place in presentation order. Not so when they rise in decode
    order while the codec reorders frames (B-frames): AVI stores H.264 that way, and its pts number the packets
    as stored, so a frame's rank among them is not where a player (or the guide's OpenCV reader) shows it."""
    reorders = bool(getattr(stream.codec_context, "has_b_frames", 0))
    return not (reorders and len(pts) > 1 and all(a < b for a, b in zip(pts, pts[1:], strict=False)))


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
    for a, b in zip(starts, [*starts[1:], len(packets)], strict=False):
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
            for packet, needed in zip(packets, keep, strict=False):
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


def sample_frames(path, frames: int = FRAMES, every: int = 0, threads: int = 0, *, lazy: bool = False
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
