"""Locations and defaults, read from the environment so every entry point agrees."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variables understood by cvpipe (documented in the README).
ENV_DATA_ROOT = "CVPIPE_DATA_ROOT"
ENV_CIFAR10_SOURCE = "CVPIPE_CIFAR10_SOURCE"
ENV_CIFAR10_CHECKSUM = "CVPIPE_CIFAR10_CHECKSUM"
ENV_MODELS_DIR = "CVPIPE_MODELS_DIR"
#: Where saved models are, as every command's --models-dir help says it (see models_dir).
MODELS_DIR_DEFAULT = f"${ENV_MODELS_DIR} or ./models"


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Directory for downloads and decoded caches: ``root``, ``$CVPIPE_DATA_ROOT`` or ``./data``."""
    return Path(root or os.environ.get(ENV_DATA_ROOT) or "data")


def models_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Directory of saved models: ``path``, ``$CVPIPE_MODELS_DIR`` or ``./models``."""
    return Path(path or os.environ.get(ENV_MODELS_DIR) or "models")
