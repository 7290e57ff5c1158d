"""8-bit lookup tables: magnitude, orientation bin and strongest-channel rank of every
integer gradient, built with scikit-image's own float64 expressions; and the package's
cache of tables."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from cvpipe.features._common import (
    TABLES,
)

_G = 255  # largest |gradient| of an 8-bit image
_SIDE = 2 * _G + 1  # 511 gradient values per axis
_LUT_SIZE = _SIDE * _SIDE
_K0 = _G * _SIDE + _G  # key of the zero gradient


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
    return TABLES.get(("base", orientations), lambda: _make_base_tables(orientations))


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
    return TABLES.get(("tables", orientations, channels), lambda: _make_tables(orientations, channels))


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
