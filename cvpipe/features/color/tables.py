"""Histogram tables: the bin of every 8-bit channel value (``cv2.calcHist``'s own rule) and
the spatial grid's cells, kept in the features' table cache."""

from __future__ import annotations

import numpy as np

from cvpipe.features._common import (
    TABLES,
)
from cvpipe.features.color.params import ColorHistParams

_OUT = 1 << 28  # table value of an out-of-range channel value (3 of them fit in int32)


def _bin_tables(p: ColorHistParams) -> tuple[np.ndarray, bool]:
    """:func:`_make_bin_tables` of ``p``, kept in the features' table cache."""
    return TABLES.get(("color-bins", p), lambda: _make_bin_tables(p))


def _make_bin_tables(p: ColorHistParams) -> tuple[np.ndarray, bool]:
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


def _pair_table(p: ColorHistParams) -> np.ndarray:
    """Joint slot offset of the first two channels, indexed by ``c0 << 8 | c1``; int32."""
    def make() -> np.ndarray:
        t = _bin_tables(p)[0]
        return (t[0][:, None] + t[1][None, :]).astype(np.int32).ravel()

    return TABLES.get(("color-pairs", p), make)


def _grid_cells(h: int, w: int, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) int64: row-major grid cell of each pixel; cell edges at ``floor(i * H / gy)``."""
    gy, gx = grid
    rows = np.searchsorted((np.arange(1, gy) * h) // gy, np.arange(h), side="right")
    cols = np.searchsorted((np.arange(1, gx) * w) // gx, np.arange(w), side="right")
    return (rows[:, None] * gx + cols[None, :]).astype(np.int64)
