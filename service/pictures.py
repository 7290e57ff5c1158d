"""What a hand-made pipeline sees of one image, as pictures for the browser page.

For a served model and one decoded image (already at the model's input size and channels):

1. the image as the model receives it, enlarged without smoothing (nearest neighbour);
2. its HOG glyphs (:func:`cvpipe.features.hog_glyphs`), with the model's HOG parameters when
   its features have a HOG component, else the defaults;
3. its colour histogram (:func:`cvpipe.features.plot_color_histogram`; an intensity histogram
   for a gray model), with the model's colour parameters when it has a colour component.

Each picture is a PNG data URI, so the page shows it without another request.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

#: Longest side of the enlarged input picture, in pixels.
SHOWN_SIDE = 256
_HOG_KEYS = ("orientations", "pixels_per_cell", "transform_sqrt", "channel_axis")
_COLOR_KEYS = ("space", "bins", "joint", "norm", "ranges")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _components(features: Any) -> dict[str, dict[str, Any]]:
    """Parameters of the model's first ``hog`` and ``color`` components, by name."""
    if not isinstance(features, dict):
        return {}
    parts = features.get("components") or [features]
    found: dict[str, dict[str, Any]] = {}
    for part in parts:
        name = part.get("name") if isinstance(part, dict) else None
        if name in ("hog", "color") and name not in found:
            found[name] = dict(part.get("params") or {})
    return found


def input_picture(image: np.ndarray) -> bytes:
    """uint8 (H, W, C) image enlarged by a whole factor (nearest neighbour) as PNG."""
    h, w = image.shape[:2]
    factor = max(1, SHOWN_SIDE // max(h, w))
    plane = image[..., 0] if image.shape[-1] == 1 else image
    return _png(Image.fromarray(plane).resize((w * factor, h * factor), Image.Resampling.NEAREST))


def hog_picture(image: np.ndarray, params: dict[str, Any]) -> bytes:
    """The HOG glyphs of ``image`` (white on black) as PNG."""
    from cvpipe.features import hog_glyphs

    kwargs = {k: params[k] for k in _HOG_KEYS if k in params}
    h, w = image.shape[:2]
    scale = max(1, SHOWN_SIDE // max(h, w))
    glyphs = hog_glyphs(image, scale=scale, **kwargs)
    drawn = glyphs[glyphs > 0]
    # scaled to the 99th percentile, then a square root: one strong edge would otherwise leave
    # every other glyph too faint to see
    top = float(np.percentile(drawn, 99)) if drawn.size else 0.0
    pixels = np.zeros(glyphs.shape, np.uint8) if top <= 0 else (
        np.sqrt(np.clip(glyphs / top, 0, 1)) * 255).astype(np.uint8)
    return _png(Image.fromarray(pixels))


def histogram_picture(image: np.ndarray, params: dict[str, Any]) -> bytes:
    """The colour (gray: intensity) histogram of ``image`` as a bar chart, PNG."""
    from cvpipe.features import plot_color_histogram

    kwargs = {k: params[k] for k in _COLOR_KEYS if k in params}
    kwargs.setdefault("joint", True)
    fig = plot_color_histogram(image, **kwargs)
    fig.set_size_inches(6.4, 2.6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def pictures(image: np.ndarray, features: Any) -> dict[str, str]:
    """``input``, ``hog`` and ``histogram`` data URIs of one uint8 (H, W, C) image for a model
    whose feature configuration is ``features`` (None for a CNN: its defaults are drawn)."""
    parts = _components(features)
    return {"input": data_uri(input_picture(image)),
            "hog": data_uri(hog_picture(image, parts.get("hog", {}))),
            "histogram": data_uri(histogram_picture(image, parts.get("color", {})))}
