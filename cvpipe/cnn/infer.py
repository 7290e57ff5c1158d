"""Batched evaluation of a trained network: logits, loss and accuracy, optional flip TTA."""

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
           *, batch_size: int = 1024, tta: bool = False, amp: bool = False,
           channels_last: bool = False) -> torch.Tensor:
    """float32 (N, n_classes) logits of uint8 images, on the model's device.

    ``images`` is uint8 (N, 3, H, W) already on the device, or a numpy (N, H, W, 3) array,
    moved one batch at a time. With ``tta`` the logits of the image and its mirror image
    are averaged. The model is put in eval mode and left there.
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
            z = model(x).float()
            if tta:
                z = (z + model(x.flip(3)).float()) / 2
        out.append(z)
    if not out:
        return torch.zeros(0, model.cfg.n_classes, device=device)
    return torch.cat(out)


def loss_and_accuracy(z: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy of logits ``z``."""
    labels = labels.to(z.device)
    loss = F.cross_entropy(z, labels).item()
    accuracy = (z.argmax(1) == labels).float().mean().item()
    return loss, accuracy
