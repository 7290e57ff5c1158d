"""The NumPy and OpenCV backend of the colour histograms: chunks of images on every CPU core."""

from __future__ import annotations

import numpy as np

from cvpipe.features._common import (
    default_chunk,
    run_chunked,
)
from cvpipe.features.color.params import ColorHistParams, _to_uint8
from cvpipe.features.color.tables import _bin_tables, _grid_cells, _pair_table

_CV2_CODES = {"hsv": "COLOR_RGB2HSV", "lab": "COLOR_RGB2Lab", "gray": "COLOR_RGB2GRAY"}


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
