"""Decoding user images of any common format, mode and size into model input."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cvpipe.errors import CvpipeError

#: Refuse images with more pixels than this (decompression bombs); about 40 megapixels.
MAX_PIXELS = 40_000_000


class ImageError(CvpipeError):
    """An input is not a decodable image, or is too large."""


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB view of any Pillow mode: EXIF orientation applied, alpha composited on white,
    palette expanded, 16-bit and float grayscale scaled to 8 bits."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if im.mode == "F":
            hi = max(float(arr.max()), 1.0) if arr.max() > 1.0 else 1.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB")


def decode(data: bytes, name: str = "image", size: tuple[int, int] | None = None,
           max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded bytes to uint8 (H, W, 3) RGB, resized to ``size`` (H, W) if given.

    Raises :class:`ImageError` (naming ``name``) for empty, foreign, truncated or oversized
    input; Pillow's own decompression-bomb guard is replaced by the ``max_pixels`` check made
    before any pixel is decoded.
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels is over the limit of {max_pixels}")
            im.load()  # decode now, so a truncated file fails here
            rgb = to_rgb(im)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: not a recognised image ({type(exc).__name__})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: truncated or corrupt image ({exc})") from exc
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def load_images(paths: list[str | os.PathLike[str]], size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) batch of image files, each resized to ``size``."""
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            data = Path(p).read_bytes()
        except OSError as exc:
            raise ImageError(f"{p}: cannot read ({exc.strerror})") from exc
        out[i] = decode(data, str(p), size)
    return out
