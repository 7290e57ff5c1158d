"""What every reader returns, and the names common to the formats."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "test")
#: Formats a source may hold (see the module docstring).
FORMATS = ("cifar10", "cifar100", "idx", "image-folder")


@dataclass
class DecodedDataset:
    """What a reader returns: per split, uint8 (N, H, W, C) images and int64 (N,) labels;
    ``notes`` go into the cache's manifest (how a test split was drawn, how images were
    resized)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: tuple[str, ...]
    notes: dict = field(default_factory=dict)
