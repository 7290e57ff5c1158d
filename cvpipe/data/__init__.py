"""Data layer: datasets by name or path, decoding cache, validation split."""

from cvpipe.data.catalog import CATALOG
from cvpipe.data.dataset import (
    CIFAR10_MD5,
    CIFAR10_URL,
    SPLIT_NAMES,
    Dataset,
    load_cifar10,
    load_dataset,
    parse_size,
    resolve_source,
)
from cvpipe.data.readers import CIFAR10_CLASSES, decode_image
from cvpipe.data.splits import stratified_split

__all__ = [
    "CATALOG",
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "SPLIT_NAMES",
    "Dataset",
    "decode_image",
    "load_cifar10",
    "load_dataset",
    "parse_size",
    "resolve_source",
    "stratified_split",
]
