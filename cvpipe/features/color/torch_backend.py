"""The PyTorch backend of the colour histograms: OpenCV's conversions restated bit-exactly,
on a CUDA GPU (or the CPU, for tests)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cvpipe.features._common import (
    TABLES,
    default_chunk,
    torch_module,
)
from cvpipe.features.color.params import ColorHistParams, _to_uint8
from cvpipe.features.color.tables import _bin_tables, _grid_cells


def _cached(name: str, device: Any, build: Any) -> Any:
    """A conversion table on ``device``, kept in the features' table cache."""
    return TABLES.get(("color", name, str(device)), build)


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
