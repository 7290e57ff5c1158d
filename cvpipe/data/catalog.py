"""The standard datasets cvpipe knows by name: where their official files are published, their
checksums, their format and their classes.

``--dataset <name>`` reads them from ``--source`` or ``$CVPIPE_<NAME>_SOURCE`` (a local copy:
the archive, the folder of files, or any image folder of the same data) or else downloads the
official files, each checked against its published MD5.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvpipe.errors import DataError


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its URL and the MD5 its publisher gives."""

    url: str
    md5: str

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class CatalogEntry:
    """A dataset known by name."""

    name: str
    title: str
    format: str  # a cvpipe.data.readers.FORMATS entry
    files: tuple[RemoteFile, ...]
    env: str  # environment variable naming a local copy
    labels: str = "fine"  # CIFAR-100: "fine" (100 classes) or "coarse" (20)
    classes: tuple[str, ...] | None = None  # IDX files carry no class names


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR100 = RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       "eb9058c3a382ffc7106e4002c42a8d85")


def _idx(base: str, md5s: tuple[str, str, str, str]) -> tuple[RemoteFile, ...]:
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return tuple(RemoteFile(base + n, m) for n, m in zip(names, md5s, strict=True))


CATALOG: dict[str, CatalogEntry] = {e.name: e for e in (
    CatalogEntry("cifar10", "CIFAR-10", "cifar10", (RemoteFile(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a"),), "CVPIPE_CIFAR10_SOURCE"),
    CatalogEntry("cifar100", "CIFAR-100 (100 fine classes)", "cifar100", (_CIFAR100,),
                 "CVPIPE_CIFAR100_SOURCE", labels="fine"),
    CatalogEntry("cifar100-coarse", "CIFAR-100 (20 coarse classes)", "cifar100", (_CIFAR100,),
                 "CVPIPE_CIFAR100_SOURCE", labels="coarse"),
    CatalogEntry("mnist", "MNIST", "idx", _idx(_MNIST, (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
        "CVPIPE_MNIST_SOURCE", classes=tuple("0123456789")),
    CatalogEntry("fashion-mnist", "Fashion-MNIST", "idx", _idx(_FASHION, (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
        "CVPIPE_FASHION_MNIST_SOURCE", classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
            "Sneaker", "Bag", "Ankle boot")),
)}


def lookup(name: str) -> CatalogEntry:
    """The catalogued dataset called ``name`` (case-insensitive; ``_`` for ``-`` accepted)."""
    key = name.lower().replace("_", "-")
    if key not in CATALOG:
        raise DataError(f"unknown dataset {name!r}: give a path or URL, or one of "
                        f"{', '.join(CATALOG)}")
    return CATALOG[key]


def is_catalogued(name: str) -> bool:
    return name.lower().replace("_", "-") in CATALOG


def identify_idx(md5s: set[str]) -> CatalogEntry | None:
    """The catalogued IDX dataset one of whose published files has one of these MD5s."""
    for entry in CATALOG.values():
        if entry.format == "idx" and md5s & {f.md5 for f in entry.files}:
            return entry
    return None
