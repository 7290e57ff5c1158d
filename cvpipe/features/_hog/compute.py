"""HOG of a batch: the entry points, the input's preparation and the choice of backend."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cvpipe.errors import ConfigError
from cvpipe.features._common import (
    check_images,
    check_out,
    is_tensor,
    resolve_backend,
    to_device_tensor,
    torch_module,
)
from cvpipe.features._hog.numpy_backend import _hog_numpy
from cvpipe.features._hog.params import GRAY_WEIGHTS, HOGParams
from cvpipe.features._hog.torch_backend import _hog_torch

log = logging.getLogger(__name__)

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
    return hog_checked(check_images(images, channels=None), p, device=device, backend=backend,
                       n_jobs=n_jobs, chunk_size=chunk_size, out=out)


def hog_checked(images: Any, params: HOGParams, *, device: Any = None, backend: str | None = None,
                n_jobs: int | None = -1, chunk_size: int | None = None,
                out: np.ndarray | None = None) -> Any:
    """:func:`hog` of a batch that :func:`~cvpipe.features._common.check_images` returned,
    with validated parameters: what the transformers call, so nothing is checked twice.

    Parameters
    ----------
    images : (N, H, W, C) ndarray or torch.Tensor
    params : HOGParams
    device, backend, n_jobs, chunk_size, out
        As in :func:`hog`.

    Returns
    -------
    features : (N, D) ndarray or torch.Tensor of float32
    """
    return _hog_dispatch(images, params, device, backend, n_jobs, chunk_size, cells_only=False,
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
    return _hog_dispatch(check_images(images, channels=None), p, "cpu", "numpy", n_jobs, None,
                         cells_only=True)


def _prepare(x: Any, p: HOGParams) -> tuple[Any, str]:
    """The checked (N, H, W, C) batch as the algorithm takes it (grayscale converted) and its
    processing mode: "lut" (exact 8-bit tables) or "float"."""
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
