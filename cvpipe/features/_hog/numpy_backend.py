"""The NumPy (and OpenCV) backend of HOG: chunks of images on every CPU core."""

from __future__ import annotations

from typing import Any

import numpy as np

from cvpipe.features._common import (
    TABLES,
    default_chunk,
    run_chunked,
)
from cvpipe.features._hog.params import EPS, HOGParams
from cvpipe.features._hog.tables import _K0, _SIDE, _tables


def _work_dtype(dtype: Any) -> Any:
    """scikit-image's float type for an input dtype: float32 for float16/32, else float64."""
    if np.dtype(dtype) in (np.float16, np.float32):
        return np.float32
    return np.float64


def _block_index(ncr: int, ncc: int, n: int, br: int, bc: int) -> np.ndarray:
    """Indices into one image's flattened (ncr, ncc, n) cell histograms that list its blocks
    in output order (block row, block col, cell row, cell col, orientation)."""
    return TABLES.get(("blocks", ncr, ncc, n, br, bc), lambda: _make_block_index(ncr, ncc, n, br, bc))


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
