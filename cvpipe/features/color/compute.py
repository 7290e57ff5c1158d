"""Colour histograms of a batch: the entry points, the input's checks and the backend."""

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
from cvpipe.features.color.numpy_backend import _convert_np, _hist_numpy
from cvpipe.features.color.params import ColorHistParams, _to_uint8
from cvpipe.features.color.torch_backend import _convert_torch, _hist_torch

log = logging.getLogger(__name__)


def _check_channels(x: Any, space: str) -> Any:
    """The checked (N, H, W, C) batch ``x`` if ``space`` can describe its channels."""
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
    x = _to_uint8(_check_channels(check_images(images, channels=None), p.space))
    if kind == "numpy":
        arr = x.detach().cpu().numpy() if is_tensor(x) else np.asarray(x)
        out = _convert_np(arr, p.space)
        return torch_module().from_numpy(out).to(images.device) if is_tensor(images) else out
    out_t = _convert_torch(to_device_tensor(x, dev), p.space)
    return out_t if is_tensor(images) else out_t.cpu().numpy()


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
    return histogram_checked(check_images(images, channels=None), p, device=device,
                             backend=backend, n_jobs=n_jobs, chunk_size=chunk_size, out=out)


def histogram_checked(images: Any, params: ColorHistParams, *, device: Any = None,
                      backend: str | None = None, n_jobs: int | None = -1,
                      chunk_size: int | None = None, out: np.ndarray | None = None) -> Any:
    """:func:`color_histogram` of a batch that
    :func:`~cvpipe.features._common.check_images` returned, with validated parameters: what
    the transformers call, so nothing is checked twice.

    Parameters
    ----------
    images : (N, H, W, C) ndarray or torch.Tensor
    params : ColorHistParams
    device, backend, n_jobs, chunk_size, out
        As in :func:`color_histogram`.

    Returns
    -------
    features : (N, D) ndarray or torch.Tensor of float32
    """
    kind, dev = resolve_backend(images, device, backend)
    x = _check_channels(images, params.space)
    n, h, w, _ = (int(s) for s in x.shape)
    params.check_size(h, w)
    check_out(out, n, params.n_features(), is_tensor(images))
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ConfigError(f"chunk_size must be a positive integer, not {chunk_size!r}")
    log.debug("colour histogram of %d images %dx%d: backend %s", n, h, w, kind)
    if kind == "numpy":
        arr = x.detach().cpu().numpy() if is_tensor(x) else x
        res = _hist_numpy(arr, params, n_jobs, chunk_size, out)
        return torch_module().from_numpy(res).to(images.device) if is_tensor(images) else res
    out_t = _hist_torch(to_device_tensor(x, dev), params, chunk_size)
    if is_tensor(images):
        return out_t
    if out is not None:
        out[...] = out_t.cpu().numpy()
        return out
    return out_t.cpu().numpy()
