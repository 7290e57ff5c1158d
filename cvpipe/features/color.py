"""Colour histograms of batches of images: RGB, HSV, Lab or gray, joint or per channel,
over an optional spatial grid, on the CPU or a CUDA GPU.

Colour conversions follow OpenCV's 8-bit conventions exactly, so a histogram here equals
``cv2.calcHist`` (and ``np.histogramdd``) of ``cv2.cvtColor``'s output for the same bins and
ranges:

======  ====================================  ==========================================
space   channels (uint8)                      definition
======  ====================================  ==========================================
rgb     R, G, B in [0, 255]                   the input
hsv     H in [0, 180), S, V in [0, 255]       ``cv2.COLOR_RGB2HSV``: H is hue in degrees
                                              / 2, S = 255 (max - min) / max, V = max
lab     L, a, b in [0, 255]                   ``cv2.COLOR_RGB2Lab`` (sRGB, D65):
                                              L * 255 / 100, a + 128, b + 128
gray    Y in [0, 255]                         ``cv2.COLOR_RGB2GRAY``:
                                              0.299 R + 0.587 G + 0.114 B (fixed point)
======  ====================================  ==========================================

Float images are taken to lie in [0, 1] and are quantised to 8 bits first
(``round(255 * clip(x, 0, 1))``, like OpenCV's saturating conversion).
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvpipe.errors import ConfigError
from cvpipe.features._common import (
    as_pair,
    check_images,
    check_out,
    default_chunk,
    is_tensor,
    resolve_backend,
    run_chunked,
    to_device_tensor,
    torch_module,
)

log = logging.getLogger(__name__)

SPACES = ("rgb", "hsv", "lab", "gray")
NORMS = ("l1", "l2", None)
#: Default value range [lo, hi) of each channel of each space.
DEFAULT_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "rgb": ((0, 256), (0, 256), (0, 256)),
    "hsv": ((0, 180), (0, 256), (0, 256)),
    "lab": ((0, 256), (0, 256), (0, 256)),
    "gray": ((0, 256),),
}
CHANNEL_NAMES = {
    "rgb": ("R", "G", "B"),
    "hsv": ("H", "S", "V"),
    "lab": ("L", "a", "b"),
    "gray": ("Y",),
}
_CV2_CODES = {"hsv": "COLOR_RGB2HSV", "lab": "COLOR_RGB2Lab", "gray": "COLOR_RGB2GRAY"}
_OUT = 1 << 28  # table value of an out-of-range channel value (3 of them fit in int32)
MAX_BINS = 1 << 24  # bins of one cell histogram
MAX_GRID = 64  # cells a side of the spatial grid


@dataclass(frozen=True)
class ColorHistParams:
    """Validated colour-histogram parameters (see :func:`color_histogram`)."""

    space: str = "hsv"
    bins: tuple[int, ...] = (8, 4, 4)
    joint: bool = True
    grid: tuple[int, int] = (1, 1)
    norm: str | None = "l1"
    ranges: tuple[tuple[float, float], ...] = DEFAULT_RANGES["hsv"]

    @classmethod
    def make(
        cls,
        space: Any = "hsv",
        bins: Any = (8, 4, 4),
        joint: Any = True,
        grid: Any = (1, 1),
        norm: Any = "l1",
        ranges: Any = None,
    ) -> ColorHistParams:
        """Check and normalise raw parameter values; raise :class:`ConfigError` if invalid."""
        if not isinstance(space, str) or space.lower() not in SPACES:
            raise ConfigError(f"unknown colour space {space!r}; choose from {', '.join(SPACES)}")
        space = space.lower()
        nch = len(DEFAULT_RANGES[space])
        if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
            bins = (bins,) * nch
        try:
            bins = tuple(bins)
        except TypeError:
            raise ConfigError(f"bins must be an int or one int per channel, not {bins!r}") from None
        if len(bins) != nch:
            raise ConfigError(
                f"bins {bins!r}: the {space} space has {nch} channel(s), so give {nch} value(s)"
            )
        for b in bins:
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
                raise ConfigError(f"bins must be positive integers, not {bins!r}")
            if b > 256:
                raise ConfigError(f"bins {bins!r}: at most 256 per channel (8-bit channels have "
                                  "256 values)")
        bins = tuple(int(b) for b in bins)
        if not isinstance(joint, (bool, np.bool_)):
            raise ConfigError(f"joint must be True or False, not {joint!r}")
        grid = as_pair(grid, "grid")
        if max(grid) > MAX_GRID:
            raise ConfigError(f"grid {grid!r}: at most {MAX_GRID} cells a side")
        if isinstance(norm, str):
            norm = norm.lower()
            if norm == "none":
                norm = None
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose from 'l1', 'l2' or None")
        if ranges is None:
            ranges = DEFAULT_RANGES[space]
        try:
            ranges = tuple((float(lo), float(hi)) for lo, hi in ranges)
        except (TypeError, ValueError):
            raise ConfigError(
                f"ranges must be one (low, high) pair per channel, not {ranges!r}"
            ) from None
        if len(ranges) != nch or any(not lo < hi for lo, hi in ranges):
            raise ConfigError(
                f"ranges must be {nch} (low, high) pair(s) with low < high, not {ranges!r}"
            )
        return cls(space, bins, bool(joint), grid, norm, ranges)

    def __post_init__(self) -> None:
        if self.n_bins > MAX_BINS:
            raise ConfigError(
                f"bins {self.bins} make {self.n_bins} bins per histogram; at most {MAX_BINS}"
            )

    @property
    def n_bins(self) -> int:
        """Bins of one cell's histogram (all channels)."""
        return int(np.prod(self.bins)) if self.joint else int(sum(self.bins))

    def n_features(self) -> int:
        """Length of the feature vector of one image."""
        return self.grid[0] * self.grid[1] * self.n_bins

    def for_channels(self, channels: int) -> ColorHistParams:
        """The parameters for images of ``channels`` channels: single-channel (gray) images
        have no colour, so any space becomes an intensity histogram (the gray space) with as
        many bins as one cell's histogram here (at most 256); same grid and norm."""
        if channels != 1 or self.space == "gray":
            return self
        return ColorHistParams.make("gray", min(256, self.n_bins), True, self.grid, self.norm)

    def check_size(self, height: int, width: int) -> None:
        if self.grid[0] > height or self.grid[1] > width:
            raise ConfigError(
                f"grid {self.grid} has more cells than the {height}x{width} image has pixels"
            )


def color_histogram_size(
    space: str = "hsv",
    bins: Any = (8, 4, 4),
    joint: bool = True,
    grid: Any = (1, 1),
) -> int:
    """Length of the colour-histogram vector of one image for these parameters."""
    return ColorHistParams.make(space, bins, joint, grid).n_features()


# --------------------------------------------------------------------------------------------
# input and conversion


def _to_uint8(x: Any) -> Any:
    """8-bit version of an (N, H, W, C) batch: uint8 as is, floats as [0, 1] quantised,
    other integers checked to lie in [0, 255]."""
    if is_tensor(x):
        torch = torch_module()
        if x.dtype == torch.uint8:
            return x
        if x.dtype.is_floating_point:
            return torch.round(x.double().clamp(0, 1) * 255).to(torch.uint8)
        if x.dtype == torch.bool:
            return x.to(torch.uint8) * 255
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > 255):
            raise ConfigError("integer images must hold 8-bit values in [0, 255]")
        return x.to(torch.uint8)
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        out = np.clip(x, 0, 1, dtype=np.float64) * 255.0
        return np.rint(out, out=out).astype(np.uint8)
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * np.uint8(255)
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ConfigError("integer images must hold 8-bit values in [0, 255]")
    return x.astype(np.uint8)


def _check_input(images: Any, space: str) -> Any:
    x = check_images(images, channels=None)
    c = x.shape[-1]
    if space == "gray":
        if c not in (1, 3):
            raise ConfigError(
                f"the gray space needs RGB (N, H, W, 3) or single-channel images, "
                f"not shape {tuple(x.shape)}"
            )
    elif c != 3:
        raise ConfigError(
            f"the {space} space needs RGB images of shape (N, H, W, 3), not {tuple(x.shape)}"
        )
    return x


def convert_color(
    images: Any, space: str = "hsv", *, device: Any = None, backend: str | None = None
) -> Any:
    """Convert a batch of RGB images to an 8-bit colour space, as OpenCV does.

    Parameters
    ----------
    images : (N, H, W, 3) array_like or torch.Tensor
        RGB images, uint8 or float in [0, 1]. For ``space="gray"`` single-channel
        (N, H, W[, 1]) images are also accepted and returned unchanged.
    space : {'rgb', 'hsv', 'lab', 'gray'}
        Target space (see the module docstring for the exact conventions).
    device, backend
        As in :func:`color_histogram`.

    Returns
    -------
    (N, H, W, C) ndarray or torch.Tensor of uint8
        ``C`` is 3, or 1 for gray.
    """
    p = ColorHistParams.make(space, bins=1)
    kind, dev = resolve_backend(images, device, backend)
    x = _to_uint8(_check_input(images, p.space))
    if kind == "numpy":
        arr = x.detach().cpu().numpy() if is_tensor(x) else np.asarray(x)
        out = _convert_np(arr, p.space)
        return torch_module().from_numpy(out).to(images.device) if is_tensor(images) else out
    out_t = _convert_torch(to_device_tensor(x, dev), p.space)
    return out_t if is_tensor(images) else out_t.cpu().numpy()


def _rows(b: int, h: int, w: int) -> int:
    # conversions are per pixel, so any 2-D arrangement of the batch will do; OpenCV
    # vectorises along rows, so long rows (one per image, or one for tiny images) are fastest
    return b if h * w >= 256 else 1


def _convert_np(x: np.ndarray, space: str, dst: np.ndarray | None = None) -> np.ndarray:
    """(B, H, W, C) uint8 -> (B, H, W, C') uint8 with one OpenCV call for the whole batch
    (into ``dst``, a (B * H * W * C',) uint8 buffer, when given)."""
    if space == "rgb" or (space == "gray" and x.shape[-1] == 1):
        return x
    import cv2

    b, h, w, _ = x.shape
    cout = 1 if space == "gray" else 3
    if b == 0:
        return np.empty((0, h, w, cout), np.uint8)
    rows = _rows(b, h, w)
    flat = np.ascontiguousarray(x).reshape(rows, -1, 3)
    if dst is not None:
        d = dst[: b * h * w * cout].reshape((rows, -1) if cout == 1 else (rows, -1, 3))
        out = cv2.cvtColor(flat, getattr(cv2, _CV2_CODES[space]), dst=d)
    else:
        out = cv2.cvtColor(flat, getattr(cv2, _CV2_CODES[space]))
    return out.reshape(b, h, w, cout)


def _planes_np(
    x: np.ndarray, space: str, bufs: tuple[np.ndarray, list[np.ndarray]] | None = None
) -> list[np.ndarray]:
    """Converted channels of a (B, H, W, C) uint8 batch as contiguous (B, H, W) planes.

    ``bufs``: a (chunk * H * W * 3,) uint8 buffer and three (chunk * H * W,) uint8 buffers
    to reuse (fresh memory per chunk costs page faults).
    """
    b, h, w, _ = x.shape
    conv = _convert_np(x, space, None if bufs is None else bufs[0])
    if conv.shape[-1] == 1:
        return [conv[..., 0]]
    import cv2

    rows = _rows(b, h, w)
    src = np.ascontiguousarray(conv).reshape(rows, -1, 3)
    if bufs is None:
        planes = cv2.split(src)
    else:
        planes = cv2.split(src, [pb[: b * h * w].reshape(rows, -1) for pb in bufs[1]])
    return [pl.reshape(b, h, w) for pl in planes]


# --------------------------------------------------------------------------------------------
# histogram tables


@functools.lru_cache(maxsize=64)
def _bin_tables(p: ColorHistParams) -> tuple[np.ndarray, bool]:
    """Per channel, the int32 table ``value -> slot offset`` of a cell histogram (``_OUT``
    for values outside the range), and whether any value is out of range.

    The bin of value ``v`` is ``floor(v * t - t * lo)`` with ``t = bins / (hi - lo)``, clamped
    to the bins, for ``lo <= v < hi`` -- the lookup table ``cv2.calcHist`` builds for 8-bit
    images (it takes the ranges as float32).
    """
    v = np.arange(256, dtype=np.float64)
    tables = []
    offset = 0
    stride = [int(np.prod(p.bins[i + 1 :])) for i in range(len(p.bins))]
    out_any = False
    for i, (nb, (lo, hi)) in enumerate(zip(p.bins, p.ranges, strict=True)):
        lo32, hi32 = float(np.float32(lo)), float(np.float32(hi))
        t = nb / (hi32 - lo32)
        idx = np.floor(v * t + (-t * lo32)).astype(np.int64)
        inside = (v >= lo32) & (v < hi32)
        idx = np.clip(idx, 0, nb - 1)
        slot = idx * stride[i] if p.joint else idx + offset
        offset += nb
        tables.append(np.where(inside, slot, _OUT).astype(np.int32))
        out_any |= not inside.all()
    return np.stack(tables), out_any


@functools.lru_cache(maxsize=64)
def _pair_table(p: ColorHistParams) -> np.ndarray:
    """Joint slot offset of the first two channels, indexed by ``c0 << 8 | c1``; int32."""
    t = _bin_tables(p)[0]
    return (t[0][:, None] + t[1][None, :]).astype(np.int32).ravel()


def _grid_cells(h: int, w: int, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) int64: row-major grid cell of each pixel; cell edges at ``floor(i * H / gy)``."""
    gy, gx = grid
    rows = np.searchsorted((np.arange(1, gy) * h) // gy, np.arange(h), side="right")
    cols = np.searchsorted((np.arange(1, gx) * w) // gx, np.arange(w), side="right")
    return (rows[:, None] * gx + cols[None, :]).astype(np.int64)


def _normalize_np(hist: np.ndarray, p: ColorHistParams) -> np.ndarray:
    """(B, cells, n_bins) counts -> float32, each histogram scaled to unit L1/L2 norm."""
    h = hist.astype(np.float32)
    if p.norm is None:
        return h
    segments = [h] if p.joint else np.split(h, np.cumsum(p.bins)[:-1], axis=-1)
    for seg in segments:
        if p.norm == "l1":
            n = seg.sum(axis=-1, keepdims=True)
        else:
            n = np.sqrt(np.einsum("...i,...i->...", seg, seg))[..., None]
        np.divide(seg, n, out=seg, where=n > 0)
    return h if p.joint else np.concatenate(segments, axis=-1)


# --------------------------------------------------------------------------------------------
# public function


def color_histogram(
    images: Any,
    space: str = "hsv",
    bins: int | tuple[int, ...] = (8, 4, 4),
    joint: bool = True,
    grid: int | tuple[int, int] = (1, 1),
    norm: str | None = "l1",
    ranges: tuple[tuple[float, float], ...] | None = None,
    *,
    device: Any = None,
    backend: str | None = None,
    n_jobs: int | None = -1,
    chunk_size: int | None = None,
    out: np.ndarray | None = None,
) -> Any:
    """Colour histogram of every image of a batch.

    Each image is converted to ``space`` (OpenCV's 8-bit conventions, see the module
    docstring), cut into a ``grid`` of cells, and each cell's pixels are counted in uniform
    bins over ``ranges`` -- one n-D histogram of all channels (``joint=True``) or one
    histogram per channel, concatenated. Bins are half-open ``[lo, hi)``; values outside
    the range are not counted, exactly as ``cv2.calcHist`` does.

    Parameters
    ----------
    images : (N, H, W, 3) array_like or torch.Tensor
        RGB images, uint8 or float in [0, 1] (quantised to 8 bits). ``space="gray"`` also
        accepts single-channel (N, H, W) or (N, H, W, 1) images, used as intensities.
    space : {'rgb', 'hsv', 'lab', 'gray'}, optional
        Colour space of the histogram.
    bins : int or tuple of int, optional
        Bins per channel (one int for all channels, or one per channel).
    joint : bool, optional
        One joint n-D histogram (``prod(bins)`` values, the first channel varying slowest, as
        ``np.histogramdd(...).ravel()``) or per-channel histograms (``sum(bins)`` values).
    grid : int or (int, int), optional
        Cells (rows, columns) of the spatial grid; row-major order in the output. Cell edges
        are at ``floor(i * H / rows)`` and ``floor(j * W / cols)``.
    norm : {'l1', 'l2', None}, optional
        Scale each histogram (one per cell, and per channel when ``joint=False``) to unit L1
        or L2 norm; None keeps the raw pixel counts. An empty histogram stays zero.
    ranges : sequence of (float, float), optional
        ``[lo, hi)`` per channel. Default: [0, 180) for hue, [0, 256) otherwise.
    device, backend, n_jobs, chunk_size, out
        As in :func:`cvpipe.features.hog`.

    Returns
    -------
    features : (N, D) ndarray or torch.Tensor of float32
        ``D = grid rows * grid cols * (prod(bins) if joint else sum(bins))``.

    Raises
    ------
    ConfigError
        Unknown space or norm, zero bins, bad ranges, a grid with more cells than pixels, or
        a malformed batch.
    """
    p = ColorHistParams.make(space, bins, joint, grid, norm, ranges)
    kind, dev = resolve_backend(images, device, backend)
    x = _check_input(images, p.space)
    n, h, w, _ = (int(s) for s in x.shape)
    p.check_size(h, w)
    check_out(out, n, p.n_features(), is_tensor(images))
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ConfigError(f"chunk_size must be a positive integer, not {chunk_size!r}")
    log.debug("colour histogram of %d images %dx%d: backend %s", n, h, w, kind)
    if kind == "numpy":
        arr = x.detach().cpu().numpy() if is_tensor(x) else x
        res = _hist_numpy(arr, p, n_jobs, chunk_size, out)
        return torch_module().from_numpy(res).to(images.device) if is_tensor(images) else res
    out_t = _hist_torch(to_device_tensor(x, dev), p, chunk_size)
    if is_tensor(images):
        return out_t
    if out is not None:
        out[...] = out_t.cpu().numpy()
        return out
    return out_t.cpu().numpy()


def _hist_numpy(
    x: np.ndarray,
    p: ColorHistParams,
    n_jobs: int | None,
    chunk_size: int | None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    n, h, w, _ = x.shape
    tables, out_any = _bin_tables(p)
    nb = p.n_bins
    slots = nb + 1  # one drop slot per cell for out-of-range values
    ncells = p.grid[0] * p.grid[1]
    # 64 images of 32x32: cache-sized, and small enough that OpenCV does not split its own
    # calls across threads under ours
    chunk = min(int(chunk_size or default_chunk(h * w, 1 << 16)), max(n, 1))
    cell = _grid_cells(h, w, p.grid) * slots
    base = (np.arange(chunk, dtype=np.int64)[:, None, None] * (ncells * slots)) + cell[None]
    if out is None:
        out = np.empty((n, p.n_features()), dtype=np.float32)
    nch = tables.shape[0]

    pair = _pair_table(p) if p.joint and nch == 3 else None

    def make_worker():
        local = np.empty((chunk, h, w), dtype=np.int32)
        tmp = np.empty((chunk, h, w), dtype=np.int32)
        key = np.empty((chunk, h, w), dtype=np.uint16)
        idx = np.empty((chunk, h, w) if p.joint else (chunk, h, w, nch), dtype=np.int64)
        bufs = (
            np.empty(chunk * h * w * 3, np.uint8),
            [np.empty(chunk * h * w, np.uint8) for _ in range(3)],
        )

        def work(s: int, e: int) -> None:
            b = e - s
            planes = _planes_np(_to_uint8(x[s:e]), p.space, bufs)
            lb, tb, ib = local[:b], tmp[:b], idx[:b]
            if p.joint:
                if pair is not None:  # one lookup for the first two channels
                    kb = key[:b]
                    np.left_shift(planes[0], 8, out=kb, dtype=np.uint16)
                    np.bitwise_or(kb, planes[1], out=kb)
                    pair.take(kb, out=lb, mode="clip")
                    first = 2
                else:
                    tables[0].take(planes[0], out=lb, mode="clip")
                    first = 1
                for ch in range(first, nch):
                    tables[ch].take(planes[ch], out=tb, mode="clip")
                    lb += tb
                if out_any:
                    np.minimum(lb, nb, out=lb)
                np.add(lb, base[:b], out=ib)
            else:
                for ch in range(nch):
                    tables[ch].take(planes[ch], out=tb, mode="clip")
                    if out_any:
                        np.minimum(tb, nb, out=tb)
                    np.add(tb, base[:b], out=ib[..., ch])
            counts = np.bincount(ib.ravel(), minlength=b * ncells * slots)
            hist = counts.reshape(b, ncells, slots)[..., :nb]
            out[s:e] = _normalize_np(hist, p).reshape(b, -1)

        return work

    run_chunked(n, chunk, n_jobs, make_worker)
    return out


# --------------------------------------------------------------------------------------------
# torch backend

_TORCH_CACHE: dict[tuple[str, str], Any] = {}
_CACHE_LOCK = threading.Lock()


def _cached(name: str, device: Any, build: Any) -> Any:
    key = (name, str(device))
    with _CACHE_LOCK:
        if key not in _TORCH_CACHE:
            _TORCH_CACHE[key] = build()
    return _TORCH_CACHE[key]


def _hsv_div_tables() -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's fixed-point reciprocal tables of RGB2HSV (8-bit, hue range 180)."""
    i = np.arange(1, 256, dtype=np.float64)
    sdiv = np.zeros(256, np.int64)
    hdiv = np.zeros(256, np.int64)
    sdiv[1:] = np.rint((255 << 12) / i)
    hdiv[1:] = np.rint((180 << 12) / (6.0 * i))
    return sdiv, hdiv


def _lab_table() -> np.ndarray:
    """OpenCV's RGB2Lab of all 2**24 colours, (2**24, 3) uint8, indexed by R << 16 | G << 8 | B
    (OpenCV's 8-bit Lab uses interpolated tables that are impractical to restate)."""
    import cv2

    allc = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([(allc >> 16) & 255, (allc >> 8) & 255, allc & 255], axis=-1)
    rgb = rgb.astype(np.uint8).reshape(4096, 4096, 3)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def _convert_torch(x: Any, space: str) -> Any:
    """(B, H, W, C) uint8 tensor -> converted uint8 tensor, bit-exact with OpenCV."""
    torch = torch_module()
    if space == "rgb" or (space == "gray" and x.shape[-1] == 1):
        return x
    dev = x.device
    xi = x.to(torch.int32)
    r, g, b = xi[..., 0], xi[..., 1], xi[..., 2]
    if space == "gray":
        y = (r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15
        return y.to(torch.uint8)[..., None]
    if space == "hsv":
        sdiv, hdiv = _cached(
            "hsv", dev, lambda: tuple(torch.from_numpy(t).to(dev) for t in _hsv_div_tables())
        )
        v = torch.maximum(torch.maximum(r, g), b)
        vmin = torch.minimum(torch.minimum(r, g), b)
        diff = v - vmin
        s = (diff * sdiv[v.long()] + (1 << 11)) >> 12
        hue = torch.where(
            v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff)
        )
        hue = (hue * hdiv[diff.long()] + (1 << 11)) >> 12
        hue = hue + (hue < 0).to(hue.dtype) * 180
        return torch.stack([hue, s, v], dim=-1).to(torch.uint8)
    lab = _cached("lab", dev, lambda: torch.from_numpy(_lab_table()).to(dev))
    key = (r.long() << 16) | (g.long() << 8) | b.long()
    return lab[key]


def _hist_torch(x: Any, p: ColorHistParams, chunk_size: int | None) -> Any:
    torch = torch_module()
    n, h, w, _ = (int(s) for s in x.shape)
    dev = x.device
    tables_np, out_any = _bin_tables(p)
    tables = torch.from_numpy(tables_np.astype(np.int64)).to(dev)
    nb = p.n_bins
    slots = nb + 1
    ncells = p.grid[0] * p.grid[1]
    cell = torch.from_numpy(_grid_cells(h, w, p.grid) * slots).to(dev)
    budget = (1 << 26) if dev.type == "cuda" else (1 << 22)
    chunk = int(chunk_size or default_chunk(h * w, budget))
    out = torch.empty((n, p.n_features()), dtype=torch.float32, device=dev)
    nch = tables.shape[0]
    for s in range(0, n, chunk):
        conv = _convert_torch(_to_uint8(x[s : s + chunk]), p.space).long()
        b = conv.shape[0]
        img = torch.arange(b, device=dev, dtype=torch.int64)[:, None, None] * (ncells * slots)
        base = img + cell
        if p.joint:
            local = tables[0][conv[..., 0]]
            for ch in range(1, nch):
                local = local + tables[ch][conv[..., ch]]
            if out_any:
                local = local.clamp(max=nb)
            idx = local + base
        else:
            parts = [tables[ch][conv[..., ch]] for ch in range(nch)]
            local = torch.stack(parts, dim=-1)
            if out_any:
                local = local.clamp(max=nb)
            idx = local + base[..., None]
        counts = torch.bincount(idx.reshape(-1), minlength=b * ncells * slots)
        hist = counts.view(b, ncells, slots)[..., :nb].to(torch.float32)
        out[s : s + b] = _normalize_torch(hist, p).reshape(b, -1)
    return out


def _normalize_torch(hist: Any, p: ColorHistParams) -> Any:
    torch = torch_module()
    if p.norm is None:
        return hist
    segments = [hist] if p.joint else list(torch.split(hist, list(p.bins), dim=-1))
    done = []
    for seg in segments:
        if p.norm == "l1":
            n = seg.sum(dim=-1, keepdim=True)
        else:
            n = torch.sqrt((seg * seg).sum(dim=-1, keepdim=True))
        done.append(torch.where(n > 0, seg / torch.where(n > 0, n, torch.ones_like(n)), seg))
    return done[0] if p.joint else torch.cat(done, dim=-1)
