"""CIFAR-10 data layer: sources, decoding cache, validation split."""

from cvpipe.data.dataset import (
    CIFAR10_MD5,
    CIFAR10_URL,
    SPLIT_NAMES,
    Dataset,
    load_cifar10,
    resolve_source,
)
from cvpipe.data.readers import CIFAR10_CLASSES, decode_image
from cvpipe.data.splits import stratified_split

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "SPLIT_NAMES",
    "Dataset",
    "decode_image",
    "load_cifar10",
    "resolve_source",
    "stratified_split",
]
