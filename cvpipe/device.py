"""Choosing a torch device: CUDA when present, else CPU, always overridable."""

from __future__ import annotations

import torch

from cvpipe.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None picks ``cuda`` when available, else ``cpu``; anything else is checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} asked for, but CUDA is not available here "
                          "(CPU build of torch or no GPU); use device cpu or auto")
    return dev
