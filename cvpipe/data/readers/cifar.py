"""The official CIFAR-10 and CIFAR-100 python releases: batches unpickled without code
(:mod:`cvpipe.data.cifar_pickle`), checked, as arrays."""

from __future__ import annotations

import numpy as np

from cvpipe.data import cifar_pickle
from cvpipe.data.readers.decoded import CIFAR10_CLASSES, SPLITS, DecodedDataset
from cvpipe.errors import DataError

_OFFICIAL_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _batches_to_arrays(files: dict[str, bytes]) -> DecodedDataset:
    missing = [n for names in _OFFICIAL_BATCHES.values() for n in names if n not in files]
    if missing:
        raise DataError(f"official CIFAR-10 release is missing {', '.join(missing)}")
    classes = CIFAR10_CLASSES
    if "batches.meta" in files:
        classes = cifar_pickle.class_names(cifar_pickle.load_batch(files["batches.meta"], "batches.meta"),
                                           "label_names", "batches.meta")
    images, labels = {}, {}
    for split, names in _OFFICIAL_BATCHES.items():
        parts = [cifar_pickle.batch_arrays(cifar_pickle.load_batch(files[name], name), name, "labels",
                                           len(classes)) for name in names]
        images[split] = np.concatenate([x for x, _ in parts])
        labels[split] = np.concatenate([y for _, y in parts])
    return DecodedDataset(images, labels, classes)


def _cifar100_to_arrays(files: dict[str, bytes], labels: str) -> DecodedDataset:
    missing = [n for n in ("train", "test", "meta") if n not in files]
    if missing:
        raise DataError(f"official CIFAR-100 release is missing {', '.join(missing)}")
    classes = cifar_pickle.class_names(cifar_pickle.load_batch(files["meta"], "meta"),
                                       f"{labels}_label_names", "meta")
    images, out_labels = {}, {}
    for split in SPLITS:
        images[split], out_labels[split] = cifar_pickle.batch_arrays(
            cifar_pickle.load_batch(files[split], split), split, f"{labels}_labels", len(classes))
    return DecodedDataset(images, out_labels, classes, {"labels": labels})
