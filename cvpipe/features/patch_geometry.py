"""Patch geometry of the learned patch features: the patches of an image, their brightness
and contrast normalisation, the pooling grids' cells and the left-right mirror of a patch."""

from __future__ import annotations

from typing import Any

import numpy as np

from cvpipe.errors import ConfigError
from cvpipe.features._common import as_pair

#: Pooling grids, (rows, cols) each.
Grids = tuple[tuple[int, int], ...]


def extract_patches(images: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Every ``size`` x ``size`` patch at ``stride`` of uint8/float (N, H, W, C) images.

    Returns
    -------
    (N, oh, ow, size * size * C) ndarray of float32
        Patches in row-major order of their top-left corner, each flattened as (row, col,
        channel).
    """
    windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))
    windows = windows[:, ::stride, ::stride]  # (N, oh, ow, C, size, size)
    n, oh, ow, c = windows.shape[:4]
    # a copy (a contiguous window view would come back read-only); float32 for the products
    return np.array(windows.transpose(0, 1, 2, 4, 5, 3), dtype=np.float32, order="C").reshape(
        n, oh, ow, size * size * c)


def block_means(images: Any, factor: int) -> Any:
    """The means of ``factor`` x ``factor`` pixel blocks of (N, H, W, C) images (uint8 or
    float, NumPy or torch; H and W multiples of ``factor``): (N, H / factor, W / factor, C)
    float32, the images at a coarser scale."""
    n, h, w, c = images.shape
    if isinstance(images, np.ndarray):
        blocks = np.asarray(images, np.float32).reshape(n, h // factor, factor, w // factor, factor, c)
        return blocks.mean((2, 4), dtype=np.float32)
    return images.float().reshape(n, h // factor, factor, w // factor, factor, c).mean((2, 4))


def pooling_grids(pooling: Any) -> Grids:
    """The pooling grids ``((rows, cols), ...)`` of a ``pooling`` parameter: an int or a pair
    (one grid), or a list of pairs (a pyramid, ``[[1, 1], [2, 2]]``)."""
    if isinstance(pooling, (int, np.integer)) or (
            len(pooling) == 2 and all(isinstance(v, (int, np.integer)) for v in pooling)):
        return (as_pair(pooling, "pooling"),)
    if not len(pooling) or any(isinstance(g, (int, np.integer)) for g in pooling):
        raise ConfigError(f"pooling must be an int, a pair of ints or a list of pairs "
                          f"(a pyramid: [[1, 1], [2, 2]]), not {pooling!r}")
    return tuple(as_pair(grid, "pooling") for grid in pooling)


def _normalise(patches: Any, eps: float) -> Any:
    """Brightness and contrast normalisation of rows (numpy or torch; in place where possible)."""
    patches -= patches.mean(-1, keepdims=True)
    var = (patches * patches).mean(-1, keepdims=True)  # mean is 0 now
    patches /= (var + eps) ** 0.5
    return patches


def _cells(n: int, cells: int) -> list[tuple[int, int]]:
    """``cells`` near-equal runs [start, stop) of ``n`` positions (halves rounded up, as the
    paper's quadrants: 27 positions -> [0, 14) and [14, 27))."""
    edges = [int(np.floor(i * n / cells + 0.5)) for i in range(cells + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _mirror_cells(n: int, cells: int) -> list[tuple[int, int]]:
    """``cells`` runs [start, stop) of ``n`` positions, cell j the mirror image of cell
    ``cells - 1 - j`` (27 positions in 2 cells -> [0, 14) and [13, 27): the middle in both)."""
    starts = [int(np.floor(j * n / cells)) for j in range(cells)]
    return [(starts[j], n - starts[cells - 1 - j]) for j in range(cells)]


def mirror_index(patch_size: int, channels: int) -> np.ndarray:
    """Permutation of a flattened (row, col, channel) patch that mirrors it left-right."""
    grid = np.arange(patch_size * patch_size * channels).reshape(patch_size, patch_size, channels)
    return np.ascontiguousarray(grid[:, ::-1, :].ravel())
