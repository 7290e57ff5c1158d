"""Decoding image files into model input: the one path every image takes.

Dataset images, ``cvpipe predict``, the REST API and ``cvpipe extract`` all decode with
:func:`decode`, so one file gives a model the same pixels in training and in serving:

1. only the formats of :data:`IMAGE_FORMATS` are opened (no Ghostscript EPS, no exotic
   plug-ins), with the pixel count checked before any pixel is decoded;
2. EXIF orientation is applied;
3. every mode becomes 8-bit RGB, or 8-bit gray when one channel is asked for (or, with
   ``channels=None``, when the file is grayscale): palette expanded, alpha composited on
   white, 16-bit and float grayscale scaled to 8 bits, grayscale replicated to RGB and RGB
   reduced to luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B) where needed;
4. the image is brought to a size when one is asked for, by one of :data:`FIT_POLICIES`:
   ``"crop"`` (keep the aspect ratio, scale to cover, cut the centre), ``"pad"`` (keep the
   aspect ratio, scale to fit, centre on black) or ``"stretch"`` (scale each side); bicubic,
   antialiased.

Arrays are uint8 ``(H, W, C)``, channels last, ``C`` 3 (RGB) or 1 (gray).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cvpipe.errors import CvpipeError

#: Refuse images with more pixels than this (decompression bombs); about 40 megapixels.
MAX_PIXELS = 40_000_000
#: Pillow formats cvpipe decodes; anything else is refused.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
#: How an image is brought to another size (see the module docstring).
FIT_POLICIES = ("crop", "pad", "stretch")
#: The policy wherever none is named: datasets, the models trained on them, uploads.
DEFAULT_FIT = "crop"
#: Pillow modes of single-channel images (kept gray when ``channels=None``).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
#: File name endings of those formats (image folders and lists keep only these files).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".pnm")


class ImageError(CvpipeError):
    """An input is not a decodable image of an accepted format, or is too large."""


class UnsupportedFormat(ImageError):
    """An image in a format Pillow knows but cvpipe does not accept (EPS, ICO, PSD, ...)."""


def identify(data: bytes) -> str | None:
    """The format Pillow recognises in ``data``'s header (nothing is decoded), or None."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format
    except Exception:  # noqa: BLE001 - not recognised at all
        return None


#: Bytes per pixel of the decoded array of a Pillow mode (bands x 8 bits unless listed).
_MODE_BYTES = {"1": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}
#: PNG colour type -> (channels, gray).
_PNG_COLOUR = {0: (1, True), 2: (3, False), 3: (1, False), 4: (2, True), 6: (4, False)}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, before any pixel is decoded."""

    height: int  # after EXIF orientation
    width: int
    bytes_per_pixel: int  # of the array decoded in the file's own mode
    gray: bool  # single-channel (a mode of GRAY_MODES)

    @property
    def pixels(self) -> int:
        return self.height * self.width


def _png_header(data: bytes) -> ImageHeader | None:
    """A PNG's header read straight from its IHDR chunk, or None when it is not a plain PNG
    (an eXIf chunk before the pixels may rotate it: Pillow reads those)."""
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    pos = 33  # the chunk after IHDR
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"eXIf":
            return None
        if kind == b"IDAT":
            break
        pos += 12 + length
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    channels, gray = _PNG_COLOUR.get(data[25], (4, False))
    return ImageHeader(h, w, channels * max(1, data[24] // 8), gray)


def peek(data: bytes) -> ImageHeader:
    """The header of an encoded image of one of :data:`IMAGE_FORMATS`, decoding nothing: PNG
    read directly, others by Pillow's lazy open.

    Raises
    ------
    PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError
        Not an image of an accepted format, or a malformed header.
    PIL.Image.DecompressionBombError
        More pixels than Pillow's own limit.
    """
    header = _png_header(data)
    if header is not None:
        return header
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
        w, h = im.size
        if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated a quarter turn
            w, h = h, w
        return ImageHeader(h, w, _MODE_BYTES.get(im.mode) or len(im.getbands()),
                           im.mode in GRAY_MODES)


def is_image_name(name: str) -> bool:
    """True for a visible file whose name ends in one of :data:`IMAGE_EXTENSIONS`."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """uint8 image of a 16-bit, 32-bit or float grayscale one, scaled to its range, converted
    a million pixels at a time so the temporaries stay small whatever the image's size."""
    top = float(arr.max()) if arr.size else 0.0
    hi = 65535.0 if mode.startswith("I;16") or top > 255 else 255.0
    if mode == "F":
        hi = max(top, 1.0)
    scale = np.float32(255.0 / hi)
    out = np.empty(arr.shape, np.uint8)
    rows = max(1, (1 << 20) // max(1, arr.shape[1] if arr.ndim > 1 else 1))
    for r in range(0, arr.shape[0], rows):
        block = arr[r: r + rows].astype(np.float32)
        block *= scale
        block += np.float32(0.5)
        out[r: r + rows] = np.clip(block, 0, 255, out=block)
    return out


def natural_channels(im: Image.Image) -> int:
    """1 for a grayscale Pillow image (by its mode), else 3."""
    return 1 if im.mode in GRAY_MODES else 3


def to_rgb(im: Image.Image, channels: int = 3) -> Image.Image:
    """RGB (``channels=3``) or gray (``channels=1``) view of any Pillow mode: EXIF orientation
    applied, alpha composited on white, palette expanded, 16-bit and float grayscale scaled to
    8 bits."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        im = Image.fromarray(_to_8bit(np.asarray(im), im.mode))
    if im.mode == "1":
        im = im.convert("L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("L" if channels == 1 else "RGB")


def _resample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, C) image scaled to ``size`` (H, W), bicubic, antialiased."""
    plane = image[..., 0] if image.shape[-1] == 1 else image
    out = np.asarray(Image.fromarray(plane).resize((size[1], size[0]), Image.Resampling.BICUBIC),
                     dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def resize(image: np.ndarray, size: tuple[int, int], fit: str = DEFAULT_FIT) -> np.ndarray:
    """uint8 (H, W, C) image brought to ``size`` (H, W) by the ``fit`` policy ("crop", "pad"
    or "stretch", see the module docstring); unchanged if already that size."""
    if fit not in FIT_POLICIES:
        raise ValueError(f"fit must be one of {', '.join(FIT_POLICIES)}, not {fit!r}")
    th, tw = int(size[0]), int(size[1])
    h, w = image.shape[:2]
    if (h, w) == (th, tw):
        return image
    if fit == "stretch":
        return _resample(image, (th, tw))
    # keep the aspect ratio: scale so the image covers (crop) or fits in (pad) the target
    scale = max(th / h, tw / w) if fit == "crop" else min(th / h, tw / w)
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    scaled = _resample(image, (sh, sw))
    if fit == "crop":
        top, left = (sh - th) // 2, (sw - tw) // 2
        return np.ascontiguousarray(scaled[top: top + th, left: left + tw])
    out = np.zeros((th, tw, image.shape[-1]), np.uint8)
    top, left = (th - sh) // 2, (tw - sw) // 2
    out[top: top + sh, left: left + sw] = scaled
    return out


def decode(data: bytes, name: str = "image", size: tuple[int, int] | None = None,
           max_pixels: int = MAX_PIXELS, channels: int | None = 3,
           fit: str = DEFAULT_FIT) -> np.ndarray:
    """Decode encoded bytes to uint8 (H, W, C), brought to ``size`` (H, W) by ``fit`` if given.

    ``channels`` is 3 (RGB), 1 (gray) or None (the file's own: 1 for grayscale files).

    Raises :class:`ImageError` (naming ``name``) for empty, foreign, truncated or oversized
    input; Pillow's own decompression-bomb guard is replaced by the ``max_pixels`` check made
    before any pixel is decoded.
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels is over the limit of {max_pixels} pixels")
            im.load()  # decode now, so a truncated file fails here
            if channels not in (None, 1, 3):
                raise ValueError(f"channels must be 1, 3 or None, not {channels!r}")
            want = natural_channels(im) if channels is None else channels
            pixels = np.asarray(to_rgb(im, want), dtype=np.uint8)
            if pixels.ndim == 2:
                pixels = pixels[..., None]
    except ImageError:
        raise
    except Image.DecompressionBombError:  # Pillow's guard, at twice its own limit, comes first
        raise ImageError(f"{name}: over the limit of {max_pixels} pixels") from None
    except UnidentifiedImageError as exc:
        known = identify(data)
        if known:
            raise UnsupportedFormat(f"{name}: {known} images are not accepted; send one of "
                                    f"{', '.join(IMAGE_FORMATS)}") from exc
        raise ImageError(f"{name}: not an image of an accepted format "
                         f"({', '.join(IMAGE_FORMATS)})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: truncated or corrupt image ({exc})") from exc
    return resize(pixels, size, fit) if size is not None else pixels


def load_images(paths: list[str | os.PathLike[str]], size: tuple[int, int], channels: int = 3,
                fit: str = DEFAULT_FIT) -> np.ndarray:
    """uint8 (N, H, W, C) batch of image files, each brought to ``size`` by ``fit``."""
    out = np.empty((len(paths), size[0], size[1], channels), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            data = Path(p).read_bytes()
        except OSError as exc:
            raise ImageError(f"{p}: cannot read ({exc.strerror})") from exc
        out[i] = decode(data, str(p), size, channels=channels, fit=fit)
    return out
