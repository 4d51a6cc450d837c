"""Frame sampling and decoding (PyAV).

Frames are decoded in order and the wanted ones kept, instead of seeking to each
index as the guide does: with H.264's long groups of pictures a seek decodes from
the previous keyframe anyway, so sequential decoding does less work for 10 frames
spread over a video; frames nothing references are skipped unless wanted
(measured in benchmarks/bench_prepare.py and docs/design.md).
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoError(Exception):
    """A video that cannot be used; the message names the file and says why."""


def sample_indices(n: int, frames: int = 10, every: int = 0) -> list[int]:
    """Frame numbers to keep from a video of ``n`` frames.

    ``every > 0``: every k-th frame. Otherwise the guide's ``linspace(0, n - 1, frames)``
    truncated to integers (duplicates dropped for very short videos).
    """
    if n <= 0:
        return []
    if every and every > 0:
        return list(range(0, n, every))
    return sorted(set(np.linspace(0, n - 1, frames).astype(int).tolist()))


def _open(path: str | os.PathLike):
    import av

    try:
        return av.open(os.fspath(path))
    except FileNotFoundError:
        raise VideoError(f"{path}: file not found") from None
    except Exception as e:  # av.error.InvalidDataError and friends
        raise VideoError(f"{path}: cannot open as a video ({type(e).__name__}: {e})") from None


def _packet_pts(path: str | os.PathLike) -> tuple[int, list | None]:
    """The container's frame count and the video packets' pts in decode order (None if any lacks one).

    Demuxing reads the file without decoding it: cheap next to decoding.
    """
    container = _open(path)
    try:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        declared = int(stream.frames or 0)
        pts: list | None = []
        try:
            for p in container.demux(stream):
                if p.size:
                    if p.pts is None:
                        pts = None
                    elif pts is not None:
                        pts.append(p.pts)
        except Exception as e:
            raise VideoError(f"{path}: unreadable while reading its packets ({type(e).__name__}: {e})") from None
        return declared, pts
    finally:
        container.close()


def frame_count(path: str | os.PathLike) -> int:
    """The container's frame count, or a count of the video packets when it has none."""
    declared, pts = _packet_pts(path)
    if declared > 0:
        return declared
    return len(pts) if pts is not None else sum(1 for _ in _iter_all(path))


def decode_frames(path: str | os.PathLike, indices: list[int], threads: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for the wanted frame numbers, decoding sequentially.

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
                    yield i, frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        except Exception as e:
            raise VideoError(f"{path}: decoding failed after frame {i} ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def decode_frames_skipping(path: str | os.PathLike, indices: list[int],
                           pts: list) -> Iterator[tuple[int, np.ndarray]]:
    """Like :func:`decode_frames`, but frames that no other frame references are not
    decoded unless wanted (FFmpeg's ``skip_frame=NONREF``, set per packet).

    A frame's number is its rank in presentation order, from the packets' pts. Skipped
    frames are never references, so every decoded frame is bit-identical to a full
    decode (a test checks it); with x264's default B-frames this halves the work.
    Single-threaded so the per-packet setting applies to that packet.
    """
    wanted = set(indices)
    if not wanted:
        return
    order = {v: i for i, v in enumerate(sorted(pts))}
    container = _open(path)
    found = 0
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    ctx.skip_frame = "DEFAULT" if order.get(packet.pts) in wanted else "NONREF"
                for frame in ctx.decode(packet):
                    i = order.get(frame.pts)
                    if i in wanted:
                        found += 1
                        yield i, frame.to_ndarray(format="rgb24")
                if found == len(wanted):
                    break
        except Exception as e:
            raise VideoError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def sample_frames(path: str | os.PathLike, frames: int = 10, every: int = 0,
                  threads: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """The guide's sampling: ``frames`` evenly spaced frames (or every k-th), as RGB.

    The count comes from the container (as OpenCV's CAP_PROP_FRAME_COUNT does for the
    guide); when it is missing the packets are counted. When the stream ends early
    the indices are recomputed from the frames really decoded, and the missing ones read.
    """
    declared, pts = _packet_pts(path)
    n = declared if declared > 0 else len(pts or [])
    if n <= 0 and pts is None:
        n = sum(1 for _ in _iter_all(path))
    if n <= 0:
        raise VideoError(f"{path}: the video has no frames")
    idx = sample_indices(n, frames, every)
    got = set()
    if pts is not None and len(set(pts)) == len(pts):
        frames_iter = decode_frames_skipping(path, idx, pts)
    else:
        frames_iter = decode_frames(path, idx, threads)
    for i, rgb in frames_iter:
        got.add(i)
        yield i, rgb
    if len(got) < len(idx):
        # container over-reported its length: count for real and fetch what is still wanted
        real_n = sum(1 for _ in _iter_all(path))
        if real_n <= 0:
            raise VideoError(f"{path}: no decodable frames")
        new = [i for i in sample_indices(real_n, frames, every) if i not in got]
        for i, rgb in decode_frames(path, new, threads):
            yield i, rgb


def _iter_all(path):
    container = _open(path)
    try:
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                yield frame
        except Exception:
            return
    finally:
        container.close()


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image as RGB uint8, whatever its mode (grayscale, alpha, CMYK, palette)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGB", im.size, (255, 255, 255))
                bg.paste(im, mask=im.getchannel("A"))
                im = bg
            else:
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VideoError(f"{path}: cannot read as an image ({e})") from None
