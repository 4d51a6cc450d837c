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
