"""MNIST's IDX files (and Fashion-MNIST's), gzip-compressed or not, streamed and checked."""

from __future__ import annotations

import gzip
import io
import math
import zlib

import numpy as np

from cvpipe.data.readers.decoded import DecodedDataset
from cvpipe.errors import DataError

#: Most values an IDX file may declare (MNIST's train images hold 47 million).
MAX_IDX_VALUES = 256 << 20
#: MNIST's IDX file stems per split (each may end in ``.gz``).
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes (magic ``0x0000 08 <ndim>``), big-endian sizes.

    A gzipped file is decompressed as a stream: the header first, then exactly the values it
    declares (at most :data:`MAX_IDX_VALUES`) -- a small file that inflates to far more than
    its header says is refused after one value too many, not after inflating all of it.
    """
    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == b"\x1f\x8b" else io.BytesIO(data)
    try:
        header = stream.read(4 + 4 * ndim)
        if len(header) < 4 + 4 * ndim or header[:3] != b"\x00\x00\x08" or header[3] != ndim:
            raise DataError(f"{name}: not an IDX file of unsigned bytes with {ndim} dimension(s)")
        shape = tuple(int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        size = math.prod(shape)
        if size > MAX_IDX_VALUES:
            raise DataError(f"{name}: its header declares {shape}, {size:,} values (at most "
                            f"{MAX_IDX_VALUES:,})")
        body = stream.read(size + 1)  # one more: is there more than declared?
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: not a readable gzip file ({exc})") from exc
    if len(body) != size:
        held = "more than" if len(body) > size else f"only {len(body):,} of"
        raise DataError(f"{name}: holds {held} the {size:,} values its header declares {shape}")
    return np.frombuffer(body, np.uint8).reshape(shape)


def _idx_to_arrays(files: dict[str, bytes], classes: tuple[str, ...] | None) -> DecodedDataset:
    images, labels = {}, {}
    for split, (image_stem, label_stem) in IDX_FILES.items():
        for stem in (image_stem, label_stem):
            if stem not in files:
                raise DataError(f"IDX dataset is missing {stem}[.gz]")
        x = _parse_idx(files[image_stem], image_stem, 3)
        y = _parse_idx(files[label_stem], label_stem, 1).astype(np.int64)
        if len(x) != len(y):
            raise DataError(f"{image_stem}: {len(x)} images but {len(y)} labels")
        images[split], labels[split] = np.ascontiguousarray(x[..., None]), y
    n_classes = int(max(labels["train"].max(initial=0), labels["test"].max(initial=0))) + 1
    classes = classes or tuple(str(i) for i in range(n_classes))
    if n_classes > len(classes):
        raise DataError(f"IDX labels go up to {n_classes - 1}, but {len(classes)} classes are known")
    return DecodedDataset(images, labels, tuple(classes))


def _idx_stem(name: str) -> str:
    return name[:-3] if name.endswith(".gz") else name
