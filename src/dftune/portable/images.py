"""Reading still images: EXIF orientation, alpha, palette, 16-bit, a GIF's first frame."""

from __future__ import annotations

import numpy as np


class VideoError(Exception):
    """A file that cannot be used; the message names the file and says why."""


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


# An image over Pillow's decompression-bomb limit is read at a reduced size (JPEG's DCT scaling via
# ``draft``, else ``reduce``) to at most this many pixels: a face crop is 224 px, and the face of
# such a photo is still hundreds of pixels. Beyond LARGEST_PIXELS it is refused (memory).
READ_PIXELS = 24_000_000
LARGEST_PIXELS = 1_000_000_000


def _open_large(Image, path):
    """``Image.open`` without Pillow's decompression-bomb refusal (its limit lifted for this open)."""
    import warnings

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def load_image(path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3): EXIF orientation applied, alpha over white,
    grayscale/CMYK/palette converted, 16-bit scaled to 8 bits, the first frame of a GIF.
    An image over Pillow's decompression-bomb limit is read downscaled (:data:`READ_PIXELS`)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if str(path).lower().endswith((".heic", ".heif")):
        try:  # Pillow reads HEIC only through this plugin, when installed
            from pillow_heif import register_heif_opener

            register_heif_opener()
        except ImportError:
            pass
    try:
        try:
            im = Image.open(path)
        except Image.DecompressionBombError:
            im = _open_large(Image, path)
        with im:
            im.seek(0)
            w, h = im.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit and w * h > limit:
                if w * h > LARGEST_PIXELS:
                    raise VideoError(f"{path}: {w}x{h} is too large to read ({w * h} pixels, at most "
                                     f"{LARGEST_PIXELS})")
                target = min(READ_PIXELS, limit)
                f = 1
                while w * h / (f * f) > target:
                    f += 1
                if im.format == "JPEG":
                    im.draft(im.mode, (-(-w // f), -(-h // f)))  # decodes at 1/2, 1/4 or 1/8: never the full size
                with _lifted(Image):
                    im.load()
                    k = 1
                    while im.size[0] * im.size[1] / (k * k) > target:
                        k += 1
                    if k > 1:
                        im = im.reduce(k)
            im = ImageOps.exif_transpose(im)
            return _to_uint8_rgb(im)
    except FileNotFoundError:
        raise VideoError(f"{path}: file not found") from None
    except Image.DecompressionBombError as e:
        raise VideoError(f"{path}: too large to read ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, EOFError) as e:
        hint = ""
        if str(path).lower().endswith((".heic", ".heif")):
            hint = "; HEIC needs the pillow-heif package (pip install pillow-heif)"
        raise VideoError(f"{path}: cannot read as an image ({e}){hint}") from None


class _lifted:
    """Pillow's decompression-bomb limit lifted while a large image known to be read reduced loads."""

    def __init__(self, Image):
        self.Image = Image

    def __enter__(self):
        self.old, self.Image.MAX_IMAGE_PIXELS = self.Image.MAX_IMAGE_PIXELS, None

    def __exit__(self, *exc):
        self.Image.MAX_IMAGE_PIXELS = self.old
