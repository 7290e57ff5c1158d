"""Batched evaluation of a trained network: logits, loss and accuracy, optional test-time augmentation."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvpipe.cnn.data import normalise, to_device


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled``, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def logits(model: nn.Module, images: torch.Tensor | np.ndarray, mean: torch.Tensor, std: torch.Tensor,
           *, batch_size: int = 1024, tta: int | bool = False, amp: bool = False,
           channels_last: bool = False) -> torch.Tensor:
    """float32 (N, n_classes) logits of uint8 images, on the model's device.

    ``images`` is uint8 (N, 3, H, W) already on the device, or a numpy (N, H, W, 3) array,
    moved one batch at a time. ``tta``: 0/False the image alone; 1/True the mean of the
    logits of the image and its mirror image; 2 half that, plus a quarter each of the same
    pair shifted one pixel up-left and one down-right (reflect padding). The model is put in
    eval mode and left there.
    """
    device = next(model.parameters()).device
    mean, std = mean.to(device), std.to(device)
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        batch = to_device(batch, device) if isinstance(batch, np.ndarray) else batch.to(device)
        x = normalise(batch, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            z = _mirrored(model, x, tta)
            if tta >= 2:
                h, w = x.shape[2:]
                padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
                shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]
                z = 0.5 * z + 0.25 * sum(_mirrored(model, s, tta) for s in shifted)
        out.append(z)
    if not out:
        return torch.zeros(0, model.cfg.n_classes, device=device)
    return torch.cat(out)


def _mirrored(model: nn.Module, x: torch.Tensor, tta: int | bool) -> torch.Tensor:
    z = model(x).float()
    return (z + model(x.flip(3)).float()) / 2 if tta else z


def loss_and_accuracy(z: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy of logits ``z``."""
    labels = labels.to(z.device)
    loss = F.cross_entropy(z, labels).item()
    accuracy = (z.argmax(1) == labels).float().mean().item()
    return loss, accuracy
