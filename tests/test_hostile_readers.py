"""Hostile dataset files, round two: crafted CIFAR pickles, IDX gzip bombs, swapped downloads,
files that vanish or point outside the tree. Each case is refused with the dataset error,
fast and without the memory its declared sizes ask for."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import resource
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from cvpipe.data import cifar_pickle, load_cifar10
from cvpipe.errors import DataError
from tests import synthetic

# ----------------------------------------------------------------------------- crafted pickles


class _Global:
    """A global written by name into the stream (the real object is never imported)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # the pure-Python pickler asks reduce functions to be callable
        raise AssertionError("never called")


class _Reduce:
    """``func(*args)``, then ``BUILD state``, in the stream."""

    def __init__(self, func, args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class _Pickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_named(self, obj) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_named


def crafted(obj) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


NDARRAY = _Global("numpy", "ndarray")
RECONSTRUCT = _Global("numpy.core.multiarray", "_reconstruct")


def dtype(code: str, flags: int = 0):
    return _Reduce(_Global("numpy", "dtype"), (code, False, True), (3, "|", None, None, None, -1, -1, flags))


def array(shape, raw: bytes | None, code: str = "u1", flags: int = 0):
    state = None if raw is None else (1, shape, dtype(code, flags), False, raw)
    return _Reduce(RECONSTRUCT, (NDARRAY, (0,), b"b"), state)


def good_rows(n: int = 4) -> np.ndarray:
    return np.arange(n * 3072, dtype=np.uint64).astype(np.uint8).reshape(n, 3072)


def test_the_stand_ins_read_what_numpy_writes():
    rows = good_rows()
    batch = cifar_pickle.load_batch(pickle.dumps({"data": rows, "labels": [1, 2, 3, 0]}, protocol=2), "b")
    images, labels = cifar_pickle.batch_arrays(batch, "b", "labels", 10)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8 and labels.tolist() == [1, 2, 3, 0]
    np.testing.assert_array_equal(images, rows.reshape(4, 3, 32, 32).transpose(0, 2, 3, 1))
    # the crafted writer gives the same bytes' meaning as numpy's own
    stream = crafted({b"data": array((4, 3072), rows.tobytes()), b"labels": [1, 2, 3, 0]})
    again = cifar_pickle.load_batch(stream, "c")
    np.testing.assert_array_equal(again["data"], rows)


HOSTILE = {
    # an object dtype over raw bytes: numpy's own reconstructor would make pointers of them
    "object dtype": ({"data": array((4, 3072), good_rows().tobytes()),
                      "labels": array((4,), b"\x41" * 32, code="O8")}, "dtype"),
    "object flags on uint8": ({"data": array((4, 3072), good_rows().tobytes(), flags=63),
                               "labels": [0, 1, 2, 3]}, "flags"),
    "field dtype": ({"data": array((4, 3072), good_rows().tobytes(), code="V8")}, "dtype"),
    # a declared (N, 3072) array with no bytes: 100,000 blank images from 230 bytes
    "uninitialised array": ({"data": array((20_000, 3072), None), "labels": [0] * 4}, "without its data"),
    "short data": ({"data": array((20_000, 3072), b"\x00" * 10), "labels": [0]}, "bytes"),
    "huge declared shape": ({"data": array((10 ** 9, 3072), b"\x00"), "labels": []}, "values"),
    "3-d array": ({"data": array((4, 32, 96), good_rows().tobytes()), "labels": [0] * 4}, "shape"),
    "labels not ints": ({"data": array((4, 3072), good_rows().tobytes()), "labels": [0, 1, 2.5, 3]},
                        "labels do not match"),
    "label out of range": ({"data": array((4, 3072), good_rows().tobytes()),
                            "labels": [0, 1, 2, 10 ** 30]}, "labels do not match"),
    "too few labels": ({"data": array((4, 3072), good_rows().tobytes()), "labels": [0, 1]},
                       "one label per image"),
    "foreign global": ({"data": _Reduce(_Global("os", "system"), ("true",))}, "refusing to load global"),
    "codecs to another codec": ({"data": _Reduce(_Global("_codecs", "encode"), ("x", "rot13"))},
                                "latin-1"),
    "not a dict": ([1, 2, 3], "not a dict"),
}


def _nested(depth: int) -> list:
    """A list that holds the same list twice, ``depth`` times over: a few hundred bytes of
    pickle (the memo shares them) that expand to 2 ** depth elements when flattened."""
    inner: list = [0]
    for _ in range(depth):
        inner = [inner, inner]
    return inner


def _folder_with(tmp_path: Path, name: str, data: bytes) -> Path:
    folder, _, _ = synthetic.write_official_archive(tmp_path, folder_only=True)
    (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_crafted_cifar_batches_are_refused_through_load_dataset(case, tmp_path):
    obj, message = HOSTILE[case]
    folder = _folder_with(tmp_path, "data_batch_2", crafted(obj))
    with pytest.raises(DataError, match=message):
        load_cifar10(folder, tmp_path / "root")


def test_self_sharing_labels_are_refused_fast_and_small(tmp_path):
    rows = array((2, 3072), good_rows(2).tobytes())  # two images, two (nested) labels
    data = crafted({"data": rows, "labels": _nested(40)})
    plain = crafted({"data": rows, "labels": [0, 0]})
    assert len(data) - len(plain) < 1000  # 2 ** 40 labels in under 1 KB
    folder = _folder_with(tmp_path, "test_batch", data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(DataError, match="labels do not match"):
        load_cifar10(folder, tmp_path / "root")
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # kB


def test_crafted_archive_with_a_checksum_is_refused(tmp_path):
    archive, _, _ = synthetic.write_official_archive(tmp_path / "cifar-10-python.tar.gz")
    hostile = tmp_path / "hostile.tar.gz"
    evil = crafted({"data": array((4, 3072), good_rows().tobytes()),
                    "labels": array((4,), b"\x41" * 32, code="O8")})
    with tarfile.open(archive) as src, tarfile.open(hostile, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("data_batch_3"):
                data = evil
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    digest = hashlib.sha256(hostile.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="dtype"):
        load_cifar10(hostile, tmp_path / "root", checksum=f"sha256:{digest}")


def test_cifar100_batches_take_the_same_checks(tmp_path):
    from cvpipe.data.readers.cifar import _cifar100_to_arrays

    meta = pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)],
                         "coarse_label_names": [f"s{i}" for i in range(20)]}, protocol=2)
    good = pickle.dumps({"data": good_rows(), "fine_labels": [5, 6, 7, 99], "coarse_labels": [0] * 4},
                        protocol=2)
    ds = _cifar100_to_arrays({"meta": meta, "train": good, "test": good}, "fine")
    assert ds.labels["train"].tolist() == [5, 6, 7, 99] and len(ds.classes) == 100
    evil = crafted({"data": array((4, 3072), good_rows().tobytes()),
                    "fine_labels": array((4,), b"\x41" * 32, code="O8")})
    with pytest.raises(DataError, match="dtype"):
        _cifar100_to_arrays({"meta": meta, "train": good, "test": evil}, "fine")
    twice = pickle.dumps({"fine_label_names": ["a", "a"]}, protocol=2)
    with pytest.raises(DataError, match="twice"):
        _cifar100_to_arrays({"meta": twice, "train": good, "test": good}, "fine")


# ----------------------------------------------------------------------------- IDX


def test_idx_gzip_bomb_is_refused_from_its_header(tmp_path):
    from cvpipe.data.readers.idx import _parse_idx

    # a header declaring 10 images of 28 x 28, then 400 MB of zeros: 400 KB compressed
    header = b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    bomb = gzip.compress(header + bytes(400 << 20), compresslevel=9)
    assert len(bomb) < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="declares"):
        _parse_idx(bomb, "train-images-idx3-ubyte.gz", 3)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # kB
    # the same header with its 7,840 values reads
    good = gzip.compress(header + bytes(range(256)) * 30 + bytes(160))
    assert _parse_idx(good, "train-images-idx3-ubyte.gz", 3).shape == (10, 28, 28)
    with pytest.raises(DataError, match="declares"):  # fewer values than declared
        _parse_idx(gzip.compress(header + bytes(100)), "x.gz", 3)
    huge = b"\x00\x00\x08\x03" + (2 ** 31).to_bytes(4, "big") + (2 ** 16).to_bytes(4, "big") * 2
    with pytest.raises(DataError, match="at most"):
        _parse_idx(gzip.compress(huge), "x.gz", 3)


# ----------------------------------------------------------------------------- image folders


def test_an_image_gone_between_listing_and_decoding_is_an_error_not_a_blank(tmp_path, monkeypatch):
    from cvpipe.data import readers

    synthetic.write_image_folder(tmp_path / "src", n_train=3, n_test=2)
    listed = readers.folders._ImageSource.entries

    def list_then_lose_one(self):
        entries = listed(self)
        Path(entries[4].name).unlink()  # deleted after the listing pass, before decoding
        return entries

    monkeypatch.setattr(readers.folders._ImageSource, "entries", list_then_lose_one)
    with pytest.raises(DataError, match="gone"):
        readers.read_image_folder(tmp_path / "src")


def test_a_link_out_of_the_dataset_folder_is_not_followed(tmp_path):
    from cvpipe.data import readers

    synthetic.write_image_folder(tmp_path / "src", n_train=3, n_test=2)
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    victim = next((tmp_path / "src" / "train").rglob("*.png"))
    secret.write_bytes(victim.read_bytes())
    victim.unlink()
    victim.symlink_to(secret)
    with pytest.raises(DataError, match="outside the dataset's folder"):
        readers.read_image_folder(tmp_path / "src")
    # a whole class folder linked from elsewhere is not walked into
    victim.unlink()
    victim.write_bytes(secret.read_bytes())
    (tmp_path / "src" / "test" / "linked").symlink_to(secret.parent, target_is_directory=True)
    assert "linked" not in readers.read_image_folder(tmp_path / "src").classes


def test_class_folder_names_that_look_like_digits(tmp_path):
    from cvpipe.data import readers

    synthetic.write_image_folder(tmp_path / "src", n_train=3, n_test=2, classes=("²", "1"))
    ds = readers.read_image_folder(tmp_path / "src")
    assert ds.classes == ("1", "²")
    synthetic.write_image_folder(tmp_path / "num", n_train=3, n_test=2, classes=("10", "9"))
    assert readers.read_image_folder(tmp_path / "num").classes == ("9", "10")


def test_an_archive_swapped_after_its_checksum_is_refused(tmp_path, monkeypatch):
    from cvpipe.data import dataset as dataset_mod
    from cvpipe.data import load_dataset

    for name, classes in (("a", ("cat", "dog")), ("b", ("car", "plane", "ship"))):
        synthetic.write_image_folder(tmp_path / name, n_train=3, n_test=2, classes=classes)
        synthetic.tar_folder(tmp_path / name, tmp_path / f"{name}.tar")
    archive = tmp_path / "images.tar"
    archive.write_bytes((tmp_path / "a.tar").read_bytes())
    digests = dataset_mod.memo_digests

    def checked_then_swapped(path, *args, **kwargs):
        out = digests(path, *args, **kwargs)
        archive.write_bytes((tmp_path / "b.tar").read_bytes())  # after the checksum, before reading
        return out

    monkeypatch.setattr(dataset_mod, "memo_digests", checked_then_swapped)
    with pytest.raises(DataError, match="changed while it was read"):
        load_dataset(str(archive), tmp_path / "root")
    monkeypatch.undo()
    assert load_dataset(str(archive), tmp_path / "root2").classes == ("car", "plane", "ship")


@pytest.mark.parametrize(("case", "data"), [
    # an empty list put in memo slot 16,777,215: the C unpickler zero-fills a memo that large
    ("memo slot far ahead", b"\x80\x02]r\xff\xff\xff\x00."),
    # BINSTRING declaring 2 GB, then 3 bytes
    ("counted string of 2 GB", b"\x80\x02T" + (2 ** 31 - 1).to_bytes(4, "little") + b"abc"),
])
def test_pickles_declaring_huge_sizes_are_refused_before_allocating(case, data):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(DataError, match="not a readable CIFAR batch"):
        cifar_pickle.load_batch(data, "data_batch_1")
    assert time.perf_counter() - start < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # kB
