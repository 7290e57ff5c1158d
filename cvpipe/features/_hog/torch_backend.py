"""The PyTorch backend of HOG: the same stages on a CUDA GPU (or the CPU, for tests)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cvpipe.features._common import (
    TABLES,
    default_chunk,
    torch_module,
)
from cvpipe.features._hog.numpy_backend import _select_and_bin_np
from cvpipe.features._hog.params import EPS, HOGParams
from cvpipe.features._hog.tables import _K0, _SIDE, _tables


def _torch_tables(orientations: int, channels: int, device: Any) -> tuple[Any, Any, Any] | None:
    torch = torch_module()
    t = _tables(orientations, channels)
    if t is None:
        return None
    return TABLES.get(("torch", orientations, channels, str(device)), lambda: (
        torch.from_numpy(t.packed).to(device),
        torch.tensor(t.prio, dtype=torch.int32, device=device),
        torch.from_numpy(t.magnitude.astype(np.float32)).to(device),
    ))


def _sqrt_table_u8(device: Any) -> Any:
    return TABLES.get(("sqrt", str(device)), lambda: torch_module().from_numpy(
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
