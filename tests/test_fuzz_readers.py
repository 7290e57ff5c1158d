"""Fuzzing the parsers of untrusted bytes: CIFAR-10 and CIFAR-100 python batches, IDX files
(raw and gzipped), image-folder tar archives and the API's multipart parser.

Each reader gets valid input mutated by Hypothesis (bytes overwritten, cut, inserted, dropped).
Every mutated input must either be read into well-formed arrays (the right dtype and shape,
one label per image, labels within the class list) or be refused with the reader's own error
(:class:`~cvpipe.errors.DataError`, :class:`~service.multipart.MultipartError`): anything
else -- another exception, a crash, an input taking over the deadline -- fails.

``CVPIPE_FUZZ_EXAMPLES`` sets the mutated inputs per reader (default 150, for ``make test``;
the closing notes give the figures of longer runs).
"""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvpipe.data import cifar_pickle, readers
from cvpipe.errors import DataError
from service import multipart
from tests import synthetic

EXAMPLES = int(os.environ.get("CVPIPE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """``seed`` with 1 to 8 edits: a byte overwritten, bytes inserted or dropped, or the end cut."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["set", "insert", "drop", "cut", "interesting"]))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "drop":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "cut":
            del data[at:]
        else:  # values parsers trip on: sizes, signs, opcodes
            data[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                                    b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"N",
                                                    b"(", b"]", b"}", b".", b"q\x00"]))
    return bytes(data)


def _well_formed(images: np.ndarray, labels: np.ndarray, n_classes: int, shape: tuple[int, ...]) -> None:
    assert images.dtype == np.uint8 and images.shape[1:] == shape
    assert labels.dtype == np.int64 and labels.shape == (len(images),)
    assert len(labels) == 0 or (labels.min() >= 0 and labels.max() < n_classes)


# ----------------------------------------------------------------------------- CIFAR batches

_ROWS = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
CIFAR10_BATCH = pickle.dumps({"batch_label": "fuzz", "labels": [0, 9, 4], "data": _ROWS,
                              "filenames": ["a.png", "b.png", "c.png"]}, protocol=2)
CIFAR100_META = pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)],
                              "coarse_label_names": [f"c{i}" for i in range(20)]}, protocol=2)
CIFAR100_BATCH = pickle.dumps({"data": _ROWS, "fine_labels": [1, 99, 50], "coarse_labels": [0, 19, 3],
                               "filenames": [b"a", b"b", b"c"]}, protocol=2)


@FUZZ
@given(data=mutated(CIFAR10_BATCH))
def test_fuzz_cifar10_batch(data):
    try:
        images, labels = cifar_pickle.batch_arrays(cifar_pickle.load_batch(data, "b"), "b", "labels", 10)
    except DataError:
        return
    _well_formed(images, labels, 10, (32, 32, 3))


@FUZZ
@given(meta=mutated(CIFAR100_META), batch=mutated(CIFAR100_BATCH))
def test_fuzz_cifar100_release(meta, batch):
    try:
        ds = readers.cifar._cifar100_to_arrays({"meta": meta, "train": batch, "test": CIFAR100_BATCH}, "fine")
    except DataError:
        return
    for split in ("train", "test"):
        _well_formed(ds.images[split], ds.labels[split], len(ds.classes), (32, 32, 3))


# ----------------------------------------------------------------------------- IDX


def _idx(values: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([values.ndim]) + b"".join(n.to_bytes(4, "big") for n in values.shape)
    return header + values.tobytes()


IDX_IMAGES = _idx(np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8))


@FUZZ
@given(data=st.one_of(mutated(IDX_IMAGES), mutated(gzip.compress(IDX_IMAGES))))
def test_fuzz_idx(data):
    try:
        array = readers.idx._parse_idx(data, "train-images-idx3-ubyte", 3)
    except DataError:
        return
    assert array.dtype == np.uint8 and array.ndim == 3 and array.size <= readers.MAX_IDX_VALUES


# ----------------------------------------------------------------------------- image-folder tar


@pytest.fixture(scope="module")
def folder_tar(tmp_path_factory) -> bytes:
    root = tmp_path_factory.mktemp("fuzz-tar")
    synthetic.write_image_folder(root / "src", n_train=2, n_test=1, classes=("cat", "dog"))
    return synthetic.tar_folder(root / "src", root / "images.tar").read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzz_image_folder_tar(folder_tar, tmp_path_factory, data):
    mutant = data.draw(mutated(folder_tar))
    path = tmp_path_factory.mktemp("tar") / "images.tar"
    path.write_bytes(mutant)
    try:
        ds = readers.read_image_folder(path, workers=1)
    except DataError:
        return
    for split in ("train", "test"):
        images = ds.images[split]
        _well_formed(images, ds.labels[split], len(ds.classes), images.shape[1:])
        assert images.shape[1:3] == (32, 32)


# ----------------------------------------------------------------------------- multipart


BOUNDARY = "fuzzBoundary123"
MULTIPART = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
             f"Content-Type: image/png\r\n\r\n").encode() + bytes(range(64)) + (
    f"\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n3\r\n--{BOUNDARY}--\r\n"
).encode()


@FUZZ
@given(data=mutated(MULTIPART))
def test_fuzz_multipart(data):
    try:
        parts = multipart.parse(data, BOUNDARY, max_parts=8)
    except multipart.MultipartError:
        return
    assert len(parts) <= 8
    for part in parts:
        assert isinstance(part.name, str) and isinstance(part.data, bytes)
        assert len(part.data) <= len(data)


def test_the_seeds_are_read(folder_tar, tmp_path):
    """The unmutated inputs read: the fuzzing starts from valid files."""
    images, labels = cifar_pickle.batch_arrays(cifar_pickle.load_batch(CIFAR10_BATCH, "b"), "b", "labels", 10)
    assert labels.tolist() == [0, 9, 4] and images.shape == (3, 32, 32, 3)
    ds = readers.cifar._cifar100_to_arrays({"meta": CIFAR100_META, "train": CIFAR100_BATCH,
                                      "test": CIFAR100_BATCH}, "fine")
    assert ds.labels["train"].tolist() == [1, 99, 50]
    assert readers.idx._parse_idx(gzip.compress(IDX_IMAGES), "x.gz", 3).shape == (4, 28, 28)
    (tmp_path / "images.tar").write_bytes(folder_tar)
    assert readers.read_image_folder(tmp_path / "images.tar", workers=1).classes == ("cat", "dog")
    assert [p.name for p in multipart.parse(MULTIPART, BOUNDARY, 8)] == ["images", "top_k"]
