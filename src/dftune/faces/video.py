"""Frame sampling and decoding (PyAV).

Frames are decoded in order and the wanted ones kept, instead of seeking to each
index as the guide does: with H.264's long groups of pictures a seek decodes from
the previous keyframe anyway, so sequential decoding does less work for 10 frames
spread over a video (measured in benchmarks/bench_prepare.py).
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


def frame_count(path: str | os.PathLike) -> int:
    """The container's frame count, or a count of the video packets when it has none."""
    container = _open(path)
    try:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n > 0:
            return n
        try:
            return sum(1 for p in container.demux(stream) if p.size)
        except Exception as e:
            raise VideoError(f"{path}: unreadable while counting frames ({type(e).__name__}: {e})") from None
    finally:
        container.close()


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
        except VideoError:
            raise
        except Exception as e:
            raise VideoError(f"{path}: decoding failed after frame {i} ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def sample_frames(path: str | os.PathLike, frames: int = 10, every: int = 0,
                  threads: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """The guide's sampling: ``frames`` evenly spaced frames (or every k-th), as RGB.

    The count comes from the container; when it is wrong (the stream ends early) the
    indices are recomputed from the frames really decoded, and the missing ones read.
    """
    n = frame_count(path)
    if n <= 0:
        raise VideoError(f"{path}: the video has no frames")
    idx = sample_indices(n, frames, every)
    got = set()
    decoded_last = -1
    for i, rgb in decode_frames(path, idx, threads):
        got.add(i)
        decoded_last = i
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
