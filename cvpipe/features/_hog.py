"""Histogram of Oriented Gradients (HOG) for batches of images, on the CPU or a CUDA GPU.

:func:`hog` reproduces :func:`skimage.feature.hog` (same parameters, same numbers within
float rounding) for a whole ``(N, H, W[, C])`` batch at once, vectorised over the batch
instead of looping over images in Python.

Two implementations share the algorithm:

* 8-bit images (the common case, CIFAR-10) without ``transform_sqrt``: every gradient is a
  pair of integers ``(g_row, g_col)`` in ``[-255, 255]``, so its magnitude, orientation bin
  and rank for the strongest-channel choice come from one precomputed table of
  ``511 * 511`` entries, built with the very float64 expressions scikit-image evaluates.
  The orientation binning is therefore bit-identical to scikit-image's, edge cases included.
* Everything else (float images, ``transform_sqrt``): the gradients are computed in the
  image's float type and the angles in float64, as scikit-image does.

Reference: N. Dalal and B. Triggs, "Histograms of Oriented Gradients for Human Detection",
CVPR 2005, :doi:`10.1109/CVPR.2005.177`.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvpipe.errors import ConfigError
from cvpipe.features._common import (
    BoundedCache,
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

#: Tables kept between calls (gradient lookup tables, block indices, their copies on a
#: device), 64 MiB at most whatever parameters are asked for.
_CACHE = BoundedCache(64 << 20)

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
#: The small constant of scikit-image's block normalisation.
EPS = 1e-5
#: Luminance weights of :func:`skimage.color.rgb2gray` (ITU-R BT.709).
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)

_G = 255  # largest |gradient| of an 8-bit image
_SIDE = 2 * _G + 1  # 511 gradient values per axis
_LUT_SIZE = _SIDE * _SIDE
_K0 = _G * _SIDE + _G  # key of the zero gradient


#: Most orientation bins (half a degree each): beyond, bins hold single gradients.
MAX_ORIENTATIONS = 360

@dataclass(frozen=True)
class HOGParams:
    """Validated HOG parameters (see :func:`hog`)."""

    orientations: int = 9
    pixels_per_cell: tuple[int, int] = (8, 8)
    cells_per_block: tuple[int, int] = (2, 2)
    block_norm: str = "L2-Hys"
    transform_sqrt: bool = False
    channel_axis: int | None = -1

    @classmethod
    def make(
        cls,
        orientations: Any = 9,
        pixels_per_cell: Any = (8, 8),
        cells_per_block: Any = (2, 2),
        block_norm: Any = "L2-Hys",
        transform_sqrt: Any = False,
        channel_axis: Any = -1,
    ) -> HOGParams:
        """Check and normalise raw parameter values; raise :class:`ConfigError` if invalid."""
        if (
            isinstance(orientations, bool)
            or not isinstance(orientations, (int, np.integer))
            or not 1 <= orientations <= MAX_ORIENTATIONS
        ):
            raise ConfigError(f"orientations must be an integer from 1 to {MAX_ORIENTATIONS}, "
                              f"not {orientations!r}")
        ppc = as_pair(pixels_per_cell, "pixels_per_cell")
        cpb = as_pair(cells_per_block, "cells_per_block")
        if block_norm not in BLOCK_NORMS:
            raise ConfigError(
                f"unknown block_norm {block_norm!r}; choose from {', '.join(BLOCK_NORMS)}"
            )
        if not isinstance(transform_sqrt, (bool, np.bool_)):
            raise ConfigError(f"transform_sqrt must be True or False, not {transform_sqrt!r}")
        if channel_axis is not None and channel_axis not in (-1, 2):
            raise ConfigError(
                f"channel_axis must be -1 (channels last) or None (grayscale), "
                f"not {channel_axis!r}"
            )
        return cls(
            int(orientations),
            ppc,
            cpb,
            str(block_norm),
            bool(transform_sqrt),
            None if channel_axis is None else -1,
        )

    def layout(self, height: int, width: int) -> tuple[int, int, int, int, int]:
        """``(n_cells_row, n_cells_col, n_blocks_row, n_blocks_col, n_features)`` for an image
        of ``height`` x ``width`` pixels; :class:`ConfigError` if the image is too small."""
        (cr, cc), (br, bc) = self.pixels_per_cell, self.cells_per_block
        ncr, ncc = height // cr, width // cc
        nbr, nbc = ncr - br + 1, ncc - bc + 1
        if nbr <= 0 or nbc <= 0:
            raise ConfigError(
                f"images of {height}x{width} pixels are too small for HOG with "
                f"pixels_per_cell={self.pixels_per_cell} and cells_per_block="
                f"{self.cells_per_block}: they need at least {br * cr}x{bc * cc} pixels"
            )
        return ncr, ncc, nbr, nbc, nbr * nbc * br * bc * self.orientations


def hog_feature_count(image_shape: tuple[int, ...], **params: Any) -> int:
    """Length of the HOG vector of one image of shape ``(H, W[, C])`` for ``params``."""
    p = HOGParams.make(**params)
    return p.layout(int(image_shape[0]), int(image_shape[1]))[4]


def hog(
    images: Any,
    orientations: int = 9,
    pixels_per_cell: tuple[int, int] | int = (8, 8),
    cells_per_block: tuple[int, int] | int = (2, 2),
    block_norm: str = "L2-Hys",
    transform_sqrt: bool = False,
    channel_axis: int | None = -1,
    *,
    device: Any = None,
    backend: str | None = None,
    n_jobs: int | None = -1,
    chunk_size: int | None = None,
    out: np.ndarray | None = None,
) -> Any:
    """Histogram of Oriented Gradients of every image of a batch.

    The descriptor of Dalal & Triggs [1]_, computed exactly as :func:`skimage.feature.hog`
    computes it for one image, in these stages:

    1. (optional) power-law compression: the square root of every pixel value
       (``transform_sqrt``);
    2. gradients along rows and columns with the centred difference ``[-1, 0, 1]`` and a zero
       gradient on the image border; for colour images, each pixel keeps the gradient of the
       channel with the largest magnitude (the first such channel on a tie);
    3. orientation histograms per cell: the unsigned orientation ``atan2(g_row, g_col)`` in
       degrees modulo 180 votes its magnitude into one of ``orientations`` equal bins over
       ``[0, 180)`` (hard binning, no interpolation); each cell's votes are summed and divided
       by the cell's pixel count. Cells tile the image from the top-left corner; the last
       ``H % cell_rows`` rows and ``W % cell_cols`` columns belong to no cell;
    4. block normalisation: every window of ``cells_per_block`` cells (stride one cell) is
       normalised with ``block_norm`` and ``eps = 1e-5``:
       ``L1`` ``v / (sum|v| + eps)``; ``L1-sqrt`` ``sqrt(v / (sum|v| + eps))``;
       ``L2`` ``v / sqrt(sum v^2 + eps^2)``; ``L2-Hys`` L2, then clipped at 0.2, then L2
       again;
    5. the blocks are concatenated in the order (block row, block column, cell row in block,
       cell column in block, orientation).

    Parameters
    ----------
    images : (N, H, W) or (N, H, W, C) array_like or torch.Tensor
        Batch of images, channels last. Any real dtype: ``uint8`` images take the exact
        table-driven fast path; other dtypes are processed like scikit-image does (``float32``
        and ``float16`` in float32, everything else in float64).
    orientations : int, optional
        Number of orientation bins over [0, 180) degrees.
    pixels_per_cell : int or (int, int), optional
        Cell size (rows, columns) in pixels.
    cells_per_block : int or (int, int), optional
        Block size (rows, columns) in cells. The default (2, 2) is Dalal & Triggs';
        scikit-image defaults to (3, 3).
    block_norm : {'L1', 'L1-sqrt', 'L2', 'L2-Hys'}, optional
        Block normalisation method (see stage 4).
    transform_sqrt : bool, optional
        Apply stage 1. Images must not hold negative values.
    channel_axis : -1 or None, optional
        -1: images are channels-last, each pixel uses its strongest channel (stage 2); a batch
        of shape (N, H, W) is one channel. None: grayscale; (N, H, W) or (N, H, W, 1) batches
        are used as they are and (N, H, W, 3) RGB batches are first converted to luminance
        exactly like :func:`skimage.color.rgb2gray` (float in [0, 1] for integer images).
    device : str, torch.device or None, optional
        Where to compute: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... None picks the device of a
        tensor input, else CUDA when available, else the CPU.
    backend : {'numpy', 'torch'} or None, optional
        ``"numpy"`` (NumPy + OpenCV on the host) or ``"torch"`` (any torch device). None
        chooses ``"torch"`` for tensor inputs and non-CPU devices, else ``"numpy"``.
    n_jobs : int or None, optional
        Threads of the numpy backend (-1: all cores). The torch backend uses torch's threads.
    chunk_size : int or None, optional
        Images per chunk; None picks a cache-friendly size (numpy) or a memory-bounded one
        (torch).
    out : (N, D) ndarray of float32, optional
        Write the features here (it may be a column slice of a wider array) and return it.

    Returns
    -------
    features : (N, D) ndarray or torch.Tensor of float32
        One row per image, ``D = n_blocks_row * n_blocks_col * b_row * b_col *
        orientations``. A tensor (on the computing device) for tensor input, else an ndarray.

    Raises
    ------
    ConfigError
        Invalid parameter, malformed batch, images smaller than one block, or negative
        values with ``transform_sqrt``.

    References
    ----------
    .. [1] N. Dalal and B. Triggs, "Histograms of Oriented Gradients for Human Detection",
           IEEE CVPR 2005, :doi:`10.1109/CVPR.2005.177`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    >>> hog(x, backend="numpy").shape
    (10, 324)
    """
    p = HOGParams.make(
        orientations, pixels_per_cell, cells_per_block, block_norm, transform_sqrt, channel_axis
    )
    return _hog_dispatch(images, p, device, backend, n_jobs, chunk_size, cells_only=False,
                         out=out)


def hog_cells(
    images: Any,
    orientations: int = 9,
    pixels_per_cell: tuple[int, int] | int = (8, 8),
    transform_sqrt: bool = False,
    channel_axis: int | None = -1,
    *,
    n_jobs: int | None = -1,
) -> np.ndarray:
    """Cell orientation histograms (stages 1-3 of :func:`hog`), before block normalisation.

    Returns
    -------
    cells : (N, n_cells_row, n_cells_col, orientations) ndarray of float64
        Mean gradient magnitude voted into each orientation bin of each cell.
    """
    p = HOGParams.make(orientations, pixels_per_cell, (1, 1), "L2", transform_sqrt, channel_axis)
    return _hog_dispatch(images, p, "cpu", "numpy", n_jobs, None, cells_only=True)


# --------------------------------------------------------------------------------------------
# shared preparation


def _prepare(images: Any, p: HOGParams) -> tuple[Any, str]:
    """Checked (N, H, W, C) batch and its processing mode: "lut" (exact 8-bit tables) or
    "float"."""
    x = check_images(images, channels=None)
    tensor = is_tensor(x)
    channels = x.shape[-1]
    if p.channel_axis is None and channels != 1:
        if channels != 3:
            raise ConfigError(
                f"grayscale HOG (channel_axis=None) needs (N, H, W), (N, H, W, 1) or RGB "
                f"(N, H, W, 3) images, not shape {tuple(x.shape)}"
            )
        x = _rgb2gray(x)
    if str(x.dtype) in ("uint8", "torch.uint8") and not p.transform_sqrt:
        return x, "lut"
    unsigned = str(x.dtype) in ("uint8", "uint16", "uint32", "uint64", "bool", "torch.uint8",
                                "torch.bool")
    size = x.numel() if tensor else x.size
    if p.transform_sqrt and not unsigned and size:
        if float(x.min()) < 0:
            raise ConfigError("transform_sqrt needs images without negative values")
    if tensor and x.dtype.is_floating_point and x.dtype.itemsize < 4:
        x = x.float()
    return x, "float"


def _rgb2gray(x: Any) -> Any:
    """Luminance of an RGB batch as :func:`skimage.color.rgb2gray` computes it (integer
    images are scaled to [0, 1] first); (N, H, W, 1)."""
    if is_tensor(x):
        torch = torch_module()
        if x.dtype == torch.uint8:
            x = x.double() / 255.0
        elif not x.dtype.is_floating_point:
            x = x.double()
        elif x.dtype.itemsize < 4:
            x = x.float()
        w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device)
        return (x @ w)[..., None]
    from skimage.color import rgb2gray

    return rgb2gray(x, channel_axis=-1)[..., None]


def _work_dtype(dtype: Any) -> Any:
    """scikit-image's float type for an input dtype: float32 for float16/32, else float64."""
    if np.dtype(dtype) in (np.float16, np.float32):
        return np.float32
    return np.float64


def _hog_dispatch(
    images: Any,
    p: HOGParams,
    device: Any,
    backend: str | None,
    n_jobs: int | None,
    chunk_size: int | None,
    *,
    cells_only: bool,
    out: np.ndarray | None = None,
) -> Any:
    kind, dev = resolve_backend(images, device, backend)
    x, mode = _prepare(images, p)
    n, h, w, c = (int(s) for s in x.shape)
    layout = p.layout(h, w) if not cells_only else None
    if layout is not None:
        check_out(out, n, layout[4], is_tensor(images))
    if cells_only:
        ncr, ncc = h // p.pixels_per_cell[0], w // p.pixels_per_cell[1]
        if ncr == 0 or ncc == 0:
            p.layout(h, w)  # raises the "too small" error
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ConfigError(f"chunk_size must be a positive integer, not {chunk_size!r}")
    log.debug("hog of %d images %dx%dx%d: backend %s, mode %s", n, h, w, c, kind, mode)
    if kind == "numpy":
        arr = x.detach().cpu().numpy() if is_tensor(x) else x
        res = _hog_numpy(arr, p, mode, layout, n_jobs, chunk_size, cells_only, out)
        if is_tensor(images):
            return torch_module().from_numpy(res).to(images.device)
        return res
    t = to_device_tensor(x, dev)
    out_t = _hog_torch(t, p, mode, layout, chunk_size)
    if is_tensor(images):
        return out_t
    if out is not None:
        out[...] = out_t.cpu().numpy()
        return out
    return out_t.cpu().numpy()


# --------------------------------------------------------------------------------------------
# 8-bit tables


@dataclass(frozen=True)
class _Tables:
    """Per-gradient lookup table for 8-bit images.

    ``packed[key]`` for ``key = (g_row + 255) * 511 + (g_col + 255)`` holds
    ``rank << rank_shift | bin``: ``rank`` orders the float64 ``hypot(g_row, g_col)`` values
    (equal rank = equal magnitude) and ``bin`` is the orientation bin (``orientations`` when
    scikit-image's comparisons put the angle in no bin). Adding ``prio[c] = (C - 1 - c) <<
    bin_bits`` to channel ``c``'s values before taking the maximum over channels makes the
    first channel win ties, as ``argmax`` does. ``magnitude[rank]`` is the float64 magnitude.
    """

    packed: np.ndarray  # (511*511,) int32
    prio: tuple[int, ...]
    magnitude: np.ndarray  # (n_ranks,) float64
    bin_mask: int
    rank_shift: int
    n_slots: int  # orientations, plus one drop slot if some angle falls in no bin


_TABLE_LOCK = threading.Lock()


def _base_tables(orientations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank, bin, magnitude) for every 8-bit gradient pair, by ``key = (g_row + 255) * 511 +
    (g_col + 255)``."""
    return _CACHE.get(("base", orientations), lambda: _make_base_tables(orientations))


def _make_base_tables(orientations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.arange(-_G, _G + 1, dtype=np.float64)
    g_row, g_col = np.meshgrid(g, g, indexing="ij")
    # exactly the float64 expressions of skimage.feature._hoghistogram.hog_histograms
    magnitude = np.hypot(g_col, g_row)
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    step = 180.0 / orientations
    edges = step * np.arange(orientations + 1, dtype=np.float64)
    # bin i holds edges[i] <= angle < edges[i+1]; orientations = no bin
    bins = np.searchsorted(edges, orientation.ravel(), side="right") - 1
    bins = np.minimum(bins, orientations)
    uniq, rank = np.unique(magnitude.ravel(), return_inverse=True)
    return rank.ravel().astype(np.int64), bins.astype(np.int64), uniq


def _tables(orientations: int, channels: int) -> _Tables | None:
    """Packed table, or None when the packed value would not fit in 31 bits."""
    return _CACHE.get(("tables", orientations, channels), lambda: _make_tables(orientations, channels))


def _make_tables(orientations: int, channels: int) -> _Tables | None:
    with _TABLE_LOCK:
        rank, bins, magnitude = _base_tables(orientations)
    bin_bits = max(1, int(orientations).bit_length())
    prio_bits = max(0, int(channels - 1).bit_length())
    rank_bits = max(1, int(len(magnitude) - 1).bit_length())
    if rank_bits + prio_bits + bin_bits > 31:
        return None
    rank_shift = bin_bits + prio_bits
    packed = ((rank << rank_shift) | bins).astype(np.int32)
    prio = tuple((channels - 1 - c) << bin_bits for c in range(channels))
    n_slots = orientations + int((bins == orientations).any())
    return _Tables(packed, prio, magnitude, (1 << bin_bits) - 1, rank_shift, n_slots)


# --------------------------------------------------------------------------------------------
# numpy backend


def _block_index(ncr: int, ncc: int, n: int, br: int, bc: int) -> np.ndarray:
    """Indices into one image's flattened (ncr, ncc, n) cell histograms that list its blocks
    in output order (block row, block col, cell row, cell col, orientation)."""
    return _CACHE.get(("blocks", ncr, ncc, n, br, bc), lambda: _make_block_index(ncr, ncc, n, br, bc))


def _make_block_index(ncr: int, ncc: int, n: int, br: int, bc: int) -> np.ndarray:
    nbr, nbc = ncr - br + 1, ncc - bc + 1
    cells = np.arange(ncr * ncc * n).reshape(ncr, ncc, n)
    r = np.arange(nbr)[:, None, None, None] + np.arange(br)[None, None, :, None]
    c = np.arange(nbc)[None, :, None, None] + np.arange(bc)[None, None, None, :]
    return cells[r, c].reshape(-1)  # (nbr, nbc, br, bc, n) flattened


def _normalize_blocks_np(hist: np.ndarray, p: HOGParams, out: np.ndarray) -> None:
    """Stage 4-5 for a chunk: ``hist`` (B, ncr, ncc, n) float64 -> ``out`` (B, D) float32."""
    b, ncr, ncc, n = hist.shape
    br, bc = p.cells_per_block
    flat = np.ascontiguousarray(hist).reshape(b, -1)
    blocks = flat.take(_block_index(ncr, ncc, n, br, bc), axis=1)
    f = blocks.reshape(-1, br * bc * n)
    method = p.block_norm
    if method in ("L1", "L1-sqrt"):
        f *= (1.0 / (np.abs(f).sum(axis=1) + EPS))[:, None]
        if method == "L1-sqrt":
            np.sqrt(f, out=f)
    else:
        f /= np.sqrt(np.einsum("ij,ij->i", f, f) + EPS**2)[:, None]
        if method == "L2-Hys":
            np.minimum(f, 0.2, out=f)
            f /= np.sqrt(np.einsum("ij,ij->i", f, f) + EPS**2)[:, None]
    out[...] = blocks


def _cell_index(b: int, h: int, w: int, p: HOGParams, n_slots: int) -> np.ndarray:
    """(b, Hc, Wc) int64: first histogram slot of each pixel's cell, over a chunk."""
    cr, cc = p.pixels_per_cell
    ncr, ncc = h // cr, w // cc
    rows = np.repeat(np.arange(ncr), cr)
    cols = np.repeat(np.arange(ncc), cc)
    cell = rows[:, None] * ncc + cols[None, :]
    img = np.arange(b, dtype=np.int64)[:, None, None] * (ncr * ncc)
    return (img + cell[None]) * n_slots


def _planar_int32(xb: np.ndarray, out: np.ndarray, planes: list[np.ndarray]) -> None:
    """Copy a (b, H, W, C) uint8 chunk into ``out`` (C, b, H, W) int32.

    ``cv2.split`` into per-channel uint8 planes, then widening, beats NumPy's strided
    transposing copy; non-contiguous input (e.g. a flipped view) takes NumPy's path.
    """
    b, h, w, c = xb.shape
    if 2 <= c <= 4 and xb.flags.c_contiguous and b * h * w < 2**31:
        import cv2

        bufs = [pl[: b * h * w].reshape(b, h * w) for pl in planes]
        cv2.split(xb.reshape(b, h * w, c), bufs)
        for ch in range(c):
            np.copyto(out[ch].reshape(b, h * w), bufs[ch], casting="unsafe")
    else:
        np.copyto(out, xb.transpose(3, 0, 1, 2), casting="unsafe")


def _select_and_bin_np(
    g_row: np.ndarray, g_col: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2 (strongest channel) and the per-pixel part of stage 3, as scikit-image does.

    ``g_row``, ``g_col``: (C, ...) gradients in the working float type. Returns the
    orientation bin (int64, ``len(edges) - 1`` for an angle in no bin) and the float64
    magnitude of each pixel.

    scikit-image picks the channel with the largest ``hypot`` (slow in NumPy) and bins
    ``rad2deg(arctan2(g_row, g_col)) % 180`` (``%`` and a binary search are slow too). Here
    channels are ranked by ``g_row**2 + g_col**2``, which orders them the same way except
    within a few rounding errors, and pixels whose best two channels are that close are
    re-ranked with ``hypot``; the angle and the bin use exact rewrites of ``%`` and of the
    edge comparisons, so every pixel lands in scikit-image's bin.
    """
    n_ch = len(g_row)
    sel_r, sel_c = g_row[0], g_col[0]
    if n_ch > 1:
        energy = [g_row[ch] * g_row[ch] + g_col[ch] * g_col[ch] for ch in range(n_ch)]
        best = energy[0]
        for ch in range(1, n_ch):
            upd = energy[ch] > best  # strict: the first channel wins a tie, as argmax does
            best = np.maximum(best, energy[ch])
            sel_r = np.where(upd, g_row[ch], sel_r)
            sel_c = np.where(upd, g_col[ch], sel_c)
        tol = 1e-5 if best.dtype == np.float32 else 1e-12
        floor = best - tol * best
        close = sum((e >= floor).view(np.int8) for e in energy)
        near = close > 1
        near &= best > 0
        amb = np.nonzero(near)
        if amb[0].size:  # near-ties: rank these pixels exactly as scikit-image does
            gr = np.stack([g[amb] for g in g_row])
            gc = np.stack([g[amb] for g in g_col])
            pick = np.hypot(gr, gc).argmax(axis=0)
            cols = np.arange(pick.size)
            sel_r[amb] = gr[pick, cols]
            sel_c[amb] = gc[pick, cols]
    sr = sel_r.astype(np.float64)
    sc = sel_c.astype(np.float64)
    mag = np.sqrt(sc * sc + sr * sr)  # hypot within an ulp: only summed
    deg = np.arctan2(sr, sc)
    deg *= 180.0 / np.pi  # np.rad2deg
    # deg % 180 for deg in [-180, 180]: NumPy's float remainder adds 180 to negatives
    # (rounding as it does) and maps 180 to 0
    theta = deg + 180.0 * (deg < 0)
    theta = np.where(deg == 180.0, 0.0, theta)
    # bin = number of edges <= theta, minus one; edges[i] = step * i exactly as skimage forms
    # them, so the floor estimate is corrected with the very same products
    n = len(edges) - 1
    step = 180.0 / n
    bins = (theta * (n / 180.0)).astype(np.int64)
    np.minimum(bins, n - 1, out=bins)
    bins -= theta < bins * step
    bins += theta >= (bins + 1) * step
    return bins, mag


def _hog_numpy(
    x: np.ndarray,
    p: HOGParams,
    mode: str,
    layout: tuple[int, ...] | None,
    n_jobs: int | None,
    chunk_size: int | None,
    cells_only: bool,
    out: np.ndarray | None = None,
) -> np.ndarray:
    n, h, w, c = x.shape
    cr, cc = p.pixels_per_cell
    ncr, ncc = h // cr, w // cc
    hc, wc = ncr * cr, ncc * cc
    tables = _tables(p.orientations, c) if mode == "lut" else None
    if mode == "lut" and tables is None:
        mode = "float"
    chunk = int(chunk_size or default_chunk(h * w * c, 3 << 16))  # 64 RGB images of 32x32
    chunk = min(chunk, max(n, 1))
    if cells_only:
        out = np.empty((n, ncr, ncc, p.orientations), dtype=np.float64)
    elif out is None:
        out = np.empty((n, layout[4]), dtype=np.float32)
    n_slots = tables.n_slots if tables is not None else p.orientations + 1
    base = _cell_index(chunk, h, w, p, n_slots)
    area = float(cr * cc)

    def finish(s: int, e: int, idx: np.ndarray, weights: np.ndarray) -> None:
        b = e - s
        hist = np.bincount(idx.ravel(), weights=weights.ravel(), minlength=b * ncr * ncc * n_slots)
        hist = hist.reshape(b, ncr, ncc, n_slots)[..., : p.orientations]
        hist /= area
        if cells_only:
            out[s:e] = hist
        else:
            _normalize_blocks_np(hist, p, out[s:e])

    if mode == "lut":

        def make_worker():
            # flat buffers, viewed as (C, b, ...) per chunk so that views stay contiguous
            xs = np.empty(c * chunk * h * w, dtype=np.int32)
            key = np.empty(c * chunk * h * w, dtype=np.int32)
            v = np.empty(c * chunk * h * w, dtype=np.int32)  # also g_col before the lookup
            idx = np.empty((chunk, hc, wc), dtype=np.int64)
            mag = np.empty((chunk, hc, wc), dtype=np.float64)
            planes = [np.empty(chunk * h * w, dtype=np.uint8) for _ in range(c)]

            def work(s: int, e: int) -> None:
                b = e - s
                xb = xs[: c * b * h * w].reshape(c, b, h, w)
                kb = key[: c * b * h * w].reshape(c, b, h, w)
                tb = v[: c * b * h * w].reshape(c, b, h, w)
                vb = v[: c * b * hc * wc].reshape(c, b, hc, wc)
                _planar_int32(x[s:e], xb, planes)
                # key = g_row * 511 + g_col + _K0, computed on the flattened chunk (long
                # contiguous loops); what crosses a row or image edge is the zero border
                xf, kf, tf = xb.reshape(-1), kb.reshape(-1), tb.reshape(-1)
                if h > 2:
                    np.subtract(xf[2 * w :], xf[: -2 * w], out=kf[w:-w])
                    kf *= _SIDE
                kb[:, :, 0] = 0
                kb[:, :, h - 1] = 0
                if w > 2:
                    np.subtract(xf[2:], xf[:-2], out=tf[1:-1])
                    tb[:, :, :, 0] = 0
                    tb[:, :, :, w - 1] = 0
                    kf += tf
                kf += _K0
                for ch in range(c):
                    tables.packed.take(kb[ch, :, :hc, :wc], mode="clip", out=vb[ch])
                    if tables.prio[ch]:
                        vb[ch] += tables.prio[ch]
                vm = vb[0]
                for ch in range(1, c):
                    np.maximum(vm, vb[ch], out=vm)
                ib, mb = idx[:b], mag[:b]
                np.bitwise_and(vm, tables.bin_mask, out=ib)
                ib += base[:b]
                np.right_shift(vm, tables.rank_shift, out=vm)
                tables.magnitude.take(vm, mode="clip", out=mb)
                finish(s, e, ib, mb)

            return work

    else:
        wdt = _work_dtype(x.dtype)
        step = 180.0 / p.orientations
        edges = step * np.arange(p.orientations + 1, dtype=np.float64)

        def make_worker():
            f = np.empty((c, chunk, h, w), dtype=wdt)
            g_row = np.zeros((c, chunk, h, w), dtype=wdt)
            g_col = np.zeros((c, chunk, h, w), dtype=wdt)

            def work(s: int, e: int) -> None:
                b = e - s
                fb, gr, gc = f[:, :b], g_row[:, :b], g_col[:, :b]
                np.copyto(fb, x[s:e].transpose(3, 0, 1, 2), casting="unsafe")
                if p.transform_sqrt:
                    np.sqrt(fb, out=fb)
                if h > 2:
                    np.subtract(fb[:, :, 2:], fb[:, :, :-2], out=gr[:, :, 1:-1])
                if w > 2:
                    np.subtract(fb[:, :, :, 2:], fb[:, :, :, :-2], out=gc[:, :, :, 1:-1])
                bins, mag = _select_and_bin_np(gr[:, :, :hc, :wc], gc[:, :, :hc, :wc], edges)
                bins += base[:b]
                finish(s, e, bins, mag)

            return work

    run_chunked(n, chunk, n_jobs, make_worker)
    return out


# --------------------------------------------------------------------------------------------
# torch backend


def _torch_tables(orientations: int, channels: int, device: Any) -> tuple[Any, Any, Any] | None:
    torch = torch_module()
    t = _tables(orientations, channels)
    if t is None:
        return None
    return _CACHE.get(("torch", orientations, channels, str(device)), lambda: (
        torch.from_numpy(t.packed).to(device),
        torch.tensor(t.prio, dtype=torch.int32, device=device),
        torch.from_numpy(t.magnitude.astype(np.float32)).to(device),
    ))


def _sqrt_table_u8(device: Any) -> Any:
    return _CACHE.get(("sqrt", str(device)), lambda: torch_module().from_numpy(
        np.sqrt(np.arange(256, dtype=np.float64))).to(device))


def _hog_torch(
    x: Any, p: HOGParams, mode: str, layout: tuple[int, ...], chunk_size: int | None
) -> Any:
    """The torch backend: same stages as the numpy one, device-agnostic torch ops."""
    torch = torch_module()
    n, h, w, c = (int(s) for s in x.shape)
    dev = x.device
    cr, cc = p.pixels_per_cell
    ncr, ncc = h // cr, w // cc
    hc, wc = ncr * cr, ncc * cc
    budget = (1 << 26) if dev.type == "cuda" else (1 << 22)
    chunk = int(chunk_size or default_chunk(h * w * c, budget))
    tables = _tables(p.orientations, c) if mode == "lut" else None
    if mode == "lut" and tables is None:
        mode = "float"
    n_slots = tables.n_slots if tables is not None else p.orientations + 1
    if mode == "lut":
        packed, prio, magnitude = _torch_tables(p.orientations, c, dev)
    else:
        step = 180.0 / p.orientations
        edges = torch.from_numpy(step * np.arange(p.orientations + 1, dtype=np.float64)).to(dev)
    rows = torch.arange(hc, device=dev) // cr
    cols = torch.arange(wc, device=dev) // cc
    cell = (rows[:, None] * ncc + cols[None, :]) * n_slots  # (hc, wc)
    out = torch.empty((n, layout[4]), dtype=torch.float32, device=dev)
    area = float(cr * cc)
    for s in range(0, n, chunk):
        xb = x[s : s + chunk]
        b = xb.shape[0]
        if mode == "lut":
            xi = xb.to(torch.int32)
            key = torch.zeros((b, h, w, c), dtype=torch.int32, device=dev)
            if h > 2:
                key[:, 1:-1] = (xi[:, 2:] - xi[:, :-2]) * _SIDE
            if w > 2:
                key[:, :, 1:-1] += xi[:, :, 2:] - xi[:, :, :-2]
            k = key[:, :hc, :wc].to(torch.int64) + _K0
            v = packed[k] + prio  # (b, hc, wc, c) int32
            vm = v.amax(dim=-1) if c > 1 else v[..., 0]
            bins = (vm & tables.bin_mask).to(torch.int64)
            mag = magnitude[(vm >> tables.rank_shift).to(torch.int64)]
        else:
            fdt = torch.float32 if xb.dtype in (torch.float32, torch.float16) else torch.float64
            if not p.transform_sqrt:
                f = xb.to(fdt)
            elif xb.dtype == torch.uint8:
                # torch's CPU sqrt is not correctly rounded; a table of NumPy's is exact
                f = _sqrt_table_u8(dev)[xb.to(torch.int64)]
            elif fdt == torch.float32:
                # float64 then float32 rounds sqrt of a float32 value correctly
                f = xb.to(torch.float64).sqrt().to(torch.float32)
            else:
                f = xb.to(torch.float64).sqrt()  # may differ from NumPy in the last bit
            g_row = torch.zeros_like(f)
            g_col = torch.zeros_like(f)
            if h > 2:
                g_row[:, 1:-1] = f[:, 2:] - f[:, :-2]
            if w > 2:
                g_col[:, :, 1:-1] = f[:, :, 2:] - f[:, :, :-2]
            bins, mag = _select_and_bin_torch(g_row[:, :hc, :wc], g_col[:, :hc, :wc], edges)
        mag = mag.to(torch.float32)
        if _deterministic(dev):
            # no float atomics: one masked sum per orientation
            hist = torch.stack(
                [
                    torch.where(bins == o, mag, 0.0).reshape(b, ncr, cr, ncc, cc).sum(dim=(2, 4))
                    for o in range(p.orientations)
                ],
                dim=-1,
            )
        else:
            img = torch.arange(b, device=dev, dtype=torch.int64)[:, None, None]
            idx = (bins + cell + img * (ncr * ncc * n_slots)).reshape(-1)
            hist = torch.zeros(b * ncr * ncc * n_slots, dtype=torch.float32, device=dev)
            hist.index_add_(0, idx, mag.reshape(-1))
            hist = hist.view(b, ncr, ncc, n_slots)[..., : p.orientations]
        out[s : s + b] = _normalize_blocks_torch(hist / area, p)
    return out


#: Force the atomics-free cell sums of the torch backend (tests; otherwise they are used
#: only when ``torch.use_deterministic_algorithms(True)`` is in effect on a GPU).
FORCE_DETERMINISTIC = False


def _deterministic(device: Any) -> bool:
    torch = torch_module()
    return FORCE_DETERMINISTIC or (
        device.type != "cpu" and torch.are_deterministic_algorithms_enabled()
    )


def _select_and_bin_torch(g_row: Any, g_col: Any, edges: Any) -> tuple[Any, Any]:
    """Torch twin of :func:`_select_and_bin_np` for (B, H, W, C) gradients.

    torch's ``hypot`` and ``atan2`` may differ from NumPy's in the last bit, which matters
    only where a pixel's angle lies on a bin edge or two channels tie in magnitude (common
    with ``transform_sqrt``: e.g. gradients (-3, -sqrt(3)) are at exactly 60 degrees). Such
    pixels (angle within 1e-9 degree of an edge, magnitudes within a relative 1e-5/1e-12)
    are recomputed with NumPy, so both backends bin every pixel alike.
    """
    torch = torch_module()
    c = g_row.shape[-1]
    if c > 1:
        m = torch.hypot(g_row, g_col)
        sel = m.argmax(dim=-1, keepdim=True)
        sr = g_row.gather(-1, sel)[..., 0]
        sc = g_col.gather(-1, sel)[..., 0]
        top = m.topk(2, dim=-1).values
        tol = 1e-5 if m.dtype == torch.float32 else 1e-12
        tie = (top[..., 0] - top[..., 1]) <= tol * top[..., 0]
    else:
        sr, sc, tie = g_row[..., 0], g_col[..., 0], None
    sr, sc = sr.double(), sc.double()
    mag = torch.hypot(sc, sr)
    theta = torch.remainder(torch.atan2(sr, sc) * (180.0 / math.pi), 180.0)
    n = len(edges) - 1
    bins = (torch.bucketize(theta, edges, right=True) - 1).clamp_(max=n)
    q = theta * (n / 180.0)
    near = (q - q.round()).abs() < 1e-9
    amb = near if tie is None else (near | tie)
    if bool(amb.any()):
        where = amb.nonzero(as_tuple=True)
        gr = g_row[where].cpu().numpy().T  # (C, k)
        gc = g_col[where].cpu().numpy().T
        b_np, m_np = _select_and_bin_np(gr, gc, edges.cpu().numpy())
        bins[where] = torch.from_numpy(b_np).to(bins.device)
        mag[where] = torch.from_numpy(m_np).to(mag.device)
    return bins, mag


def _normalize_blocks_torch(hist: Any, p: HOGParams) -> Any:
    """Stage 4-5 in torch: (B, ncr, ncc, n) -> (B, D) float32."""
    torch = torch_module()
    b, ncr, ncc, n = hist.shape
    br, bc = p.cells_per_block
    nbr, nbc = ncr - br + 1, ncc - bc + 1
    # (b, nbr, nbc, n, br, bc) windows -> (b, nbr, nbc, br, bc, n)
    blocks = hist.unfold(1, br, 1).unfold(2, bc, 1).permute(0, 1, 2, 4, 5, 3)
    f = blocks.reshape(b * nbr * nbc, br * bc * n)
    method = p.block_norm
    if method in ("L1", "L1-sqrt"):
        f = f / (f.abs().sum(dim=1, keepdim=True) + EPS)
        if method == "L1-sqrt":
            f = f.sqrt()
    else:
        f = f / torch.sqrt((f * f).sum(dim=1, keepdim=True) + EPS**2)
        if method == "L2-Hys":
            f = f.clamp(max=0.2)
            f = f / torch.sqrt((f * f).sum(dim=1, keepdim=True) + EPS**2)
    return f.reshape(b, -1)
