"""Images as device tensors, normalisation and batched augmentation on the device.

The whole split lives on the device as uint8 (N, 3, H, W); a batch is gathered, made
float and normalised, then augmented there: no data loader, no worker processes. Every
random draw comes from an explicit ``torch.Generator`` so a seed repeats a run.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, C) images -> uint8 (N, C, H, W) tensor on ``device`` (C: 3 RGB, 1 gray)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, H, W, 3) RGB or (N, H, W, 1) gray images, got "
                         f"{images.dtype} {images.shape}")
    images = np.require(images, requirements=["C", "W"])  # a read-only memory map is copied
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()


def channel_stats(images: np.ndarray, chunk: int = 5000) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (0-255 scale) of uint8 (N, H, W, C) images."""
    channels = images.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk], dtype=np.float64).reshape(-1, channels)
        total += block.sum(0)
        total_sq += (block**2).sum(0)
    n = len(images) * images.shape[1] * images.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 ``(x - mean) / std``; mean and std are (1, C, 1, 1)."""
    return (images.float() - mean) / std


def random_translate(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels each way: a random crop of the reflect-padded image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def alternating_flip(x: torch.Tensor, flip_bits: torch.Tensor, epoch: int) -> torch.Tensor:
    """Mirror the images whose bit is set in even epochs and the others in odd ones.

    ``flip_bits`` (bool, one per image of the batch) is drawn once per run, so every image is
    seen both ways in any two consecutive epochs (airbench's derandomised flip).
    """
    return torch.where((flip_bits ^ bool(epoch % 2))[:, None, None, None], x.flip(3), x)


def random_cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero (the mean, after normalisation) a random ``size`` x ``size`` square inside each image."""
    n, _, h, w = x.shape
    y0, x0 = torch.randint(0, min(h, w) - size + 1, (2, n, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= y0) & (rows < y0 + size)  # (n, h)
    in_cols = (cols >= x0) & (cols < x0 + size)  # (n, w)
    return x.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0)


def augment(x: torch.Tensor, generator: torch.Generator, translate: int = 2, flip: bool = True,
            cutout: int = 0) -> torch.Tensor:
    """The training augmentation of a normalised float batch; keeps shape, dtype and device."""
    if translate:
        x = random_translate(x, translate, generator)
    if flip:
        x = random_flip(x, generator)
    if cutout:
        x = random_cutout(x, cutout, generator)
    return x
