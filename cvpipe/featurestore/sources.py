"""Inputs of a feature extraction: a prepared dataset split, or image files read through fsspec.

A source is cut into row ranges; :meth:`ImageSource.chunk` returns a small, picklable
:class:`ChunkInput` that reads its own rows wherever it runs (this process or a Dask
worker), so whoever plans the work never holds the images:

* :class:`DatasetSource` rows come from the dataset cache's ``.npy`` files, memory-mapped
  by path; a chunk carries the path and its row numbers.
* :class:`FileSource` rows are image files (a folder, or a text file listing paths or URLs,
  one a line), each decoded with :func:`cvpipe.images.decode` and resized; a chunk carries
  its own paths.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cvpipe.errors import ConfigError, DataError
from cvpipe.images import DEFAULT_FIT, IMAGE_EXTENSIONS, ImageError, decode, is_image_name

log = logging.getLogger(__name__)


class ChunkInput(Protocol):
    """The rows of one chunk; picklable and cheap to send."""

    def read(self, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (n, H, W, 3), labels int64 (n,)) of the chunk's rows, in order;
        ``threads`` may decode files in parallel."""
        ...  # pragma: no cover


class ImageSource(Protocol):
    """What an extraction reads: ``n`` images of one shape, in a fixed order."""

    n: int

    @property
    def image_shape(self) -> tuple[int, int, int]: ...  # pragma: no cover

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of the rows (content and order): part of the output key."""
        ...  # pragma: no cover

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the manifest."""
        ...  # pragma: no cover

    def classes(self) -> list[str] | None: ...  # pragma: no cover

    def chunk(self, start: int, stop: int) -> ChunkInput: ...  # pragma: no cover


# --------------------------------------------------------------------------------------------
# a prepared dataset


@dataclass(frozen=True)
class ArrayChunk:
    """Rows of memory-mapped ``.npy`` image and label arrays: ``rows`` is ``(start, stop)`` or
    an index array; ``flip``: the images mirrored left-right; ``shift``: then moved by (rows
    down, columns right) pixels, edges reflected (:func:`augment`)."""

    images_path: str
    labels_path: str
    rows: tuple[int, int] | np.ndarray
    flip: bool = False
    shift: tuple[int, int] = (0, 0)

    def read(self, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        try:
            images = np.load(self.images_path, mmap_mode="r")
            labels = np.load(self.labels_path, mmap_mode="r")
        except FileNotFoundError as exc:
            raise DataError(
                f"{exc.filename}: not found where this chunk runs (a Dask worker on another "
                "machine needs the data root on a shared filesystem at the same path)"
            ) from None
        if isinstance(self.rows, tuple):
            start, stop = self.rows
            out, y = np.array(images[start:stop]), np.array(labels[start:stop], dtype=np.int64)
        else:
            # rows in increasing order read the memory map front to back
            order = np.argsort(self.rows, kind="stable")
            out = np.empty((len(self.rows), *images.shape[1:]), images.dtype)
            out[order] = images[self.rows[order]]
            y = np.asarray(labels[self.rows], dtype=np.int64)
        if self.flip or any(self.shift):
            out = augment(out, (self.flip, *self.shift))
        return out, y


class DatasetSource:
    """One split of a prepared dataset (see :func:`cvpipe.data.load_cifar10`).

    Parameters
    ----------
    dataset : cvpipe.data.dataset.Dataset
        The loaded dataset; only its cache paths, manifest and split indices are used.
    split : {"train", "val", "train_full", "test"}
        Rows in the order of ``dataset.split(split)``.
    order_seed : int, optional
        Rows in a random order drawn from this seed instead (what stochastic training reads
        a block at a time: a dataset sorted by class would give blocks of one class).
    flip : bool
        The images mirrored left-right (a training set augmented with its mirror images).
    shift : (int, int)
        The (mirrored) images moved by (rows down, columns right) pixels, edges reflected.
    """

    def __init__(self, dataset: Any, split: str, order_seed: int | None = None, flip: bool = False,
                 shift: tuple[int, int] = (0, 0)):
        from cvpipe.data.dataset import SPLIT_NAMES

        if split not in SPLIT_NAMES:
            raise ConfigError(f"unknown split {split!r}; choose from {', '.join(SPLIT_NAMES)}")
        self.dataset = dataset
        self.split = split
        official = "test" if split == "test" else "train"
        self._images_path = str(Path(dataset.cache_dir, f"{official}_images.npy").resolve())
        self._labels_path = str(Path(dataset.cache_dir, f"{official}_labels.npy").resolve())
        self._shape = tuple(int(s) for s in dataset.images(official).shape)
        if split in ("train", "val"):
            self._index: np.ndarray | None = dataset.split_indices()[0 if split == "train" else 1]
            self.n = len(self._index)
        else:
            self._index = None
            self.n = self._shape[0]
        self.order_seed, self.flip = order_seed, bool(flip)
        self.shift = (int(shift[0]), int(shift[1]))
        if order_seed is not None:
            rows = self._index if self._index is not None else np.arange(self.n)
            self._index = rows[np.random.default_rng(order_seed).permutation(len(rows))]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self._shape[1:]
        return h, w, c

    def fingerprint(self) -> dict[str, Any]:
        fp: dict[str, Any] = {"kind": "dataset", "checksum": self.dataset.checksum,
                              "options": self.dataset.manifest.get("options", {}),
                              "split": self.split}
        if self.split in ("train", "val"):
            fp["validation"] = {"fraction": self.dataset.val_fraction, "seed": self.dataset.seed}
        if self.order_seed is not None:
            fp["order"] = {"shuffled": self.order_seed}
        if self.flip:
            fp["flip"] = True
        if any(self.shift):
            fp["shift"] = list(self.shift)
        return fp

    def describe(self) -> dict[str, Any]:
        return {**self.fingerprint(), "source": self.dataset.manifest.get("source"),
                "cache_dir": str(self.dataset.cache_dir), "n": self.n}

    def classes(self) -> list[str] | None:
        return list(self.dataset.classes)

    def chunk(self, start: int, stop: int) -> ArrayChunk:
        rows: tuple[int, int] | np.ndarray
        rows = (start, stop) if self._index is None else np.ascontiguousarray(self._index[start:stop])
        return ArrayChunk(self._images_path, self._labels_path, rows, self.flip, self.shift)


# --------------------------------------------------------------------------------------------
# image files through fsspec


@dataclass(frozen=True)
class FileChunk:
    """Image files read through fsspec, decoded and brought to ``size`` (H, W) by ``fit``, with
    ``channels`` (3 RGB, 1 gray)."""

    paths: tuple[str, ...]
    labels: np.ndarray
    size: tuple[int, int]
    channels: int = 3
    fit: str = DEFAULT_FIT

    def read(self, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(self.paths), self.size[0], self.size[1], self.channels), dtype=np.uint8)

        def load(i: int) -> None:
            out[i] = _read_image(self.paths[i], self.size, self.channels, self.fit)

        if threads > 1 and len(self.paths) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads, thread_name_prefix="cvpipe-decode") as ex:
                list(ex.map(load, range(len(self.paths))))
        else:
            for i in range(len(self.paths)):
                load(i)
        return out, np.asarray(self.labels, dtype=np.int64)


#: fsspec protocols an input may name ("file" for plain paths); chained URLs ("a::b") are refused.
ALLOWED_PROTOCOLS = ("file", "local", "http", "https", "s3", "gs", "gcs", "az", "abfs", "memory")
#: Most bytes read from one image file, and from one list of images.
MAX_FILE_BYTES = 64 << 20
MAX_LIST_BYTES = 64 << 20


def check_location(url: str) -> str:
    """``url`` if its protocol is one of :data:`ALLOWED_PROTOCOLS`, else :class:`DataError`."""
    if "::" in url:
        raise DataError(f"{url}: chained URLs are not accepted")
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol not in ALLOWED_PROTOCOLS:
        raise DataError(f"{url}: the protocol {protocol!r} is not accepted; use one of "
                        f"{', '.join(ALLOWED_PROTOCOLS)}")
    return url


def _read_capped(url: str, limit: int, mode: str = "rb") -> Any:
    """The content of ``url`` (bytes, or text with ``mode="rt"``), refused beyond ``limit`` bytes."""
    import fsspec

    with fsspec.open(check_location(url), mode) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"{url}: larger than the limit of {limit:,} bytes")
    return data


def _read_image(path: str, size: tuple[int, int], channels: int = 3,
                fit: str = DEFAULT_FIT) -> np.ndarray:
    try:
        data = _read_capped(path, MAX_FILE_BYTES)
    except DataError as exc:
        raise ImageError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read ({exc})") from exc
    return decode(data, path, size, channels=channels, fit=fit)


class FileSource:
    """Image files (local paths or fsspec URLs) in a fixed order, with optional labels.

    Build one with :meth:`from_folder` or :meth:`from_list`, or directly from paths.

    Parameters
    ----------
    paths : sequence of str
        Paths or URLs, in row order.
    size : (int, int)
        (H, W) every image is brought to.
    channels, fit : int, str
        3 (RGB) or 1 (gray); how another size reaches ``size`` (:func:`cvpipe.images.resize`).
    labels : (N,) int array, optional
        Class index per row; -1 (unknown) when absent.
    classes : list of str, optional
        Names of the label indices.
    origin : str
        What the paths came from (folder or list file), for the manifest.
    listing_digest : str, optional
        Digest of the file listing (paths, sizes, modification times) when known; else the
        fingerprint hashes the paths alone.
    """

    def __init__(self, paths: Sequence[str], size: tuple[int, int], labels: np.ndarray | None = None,
                 classes: list[str] | None = None, origin: str = "", listing_digest: str | None = None,
                 channels: int = 3, fit: str = DEFAULT_FIT):
        if not paths:
            raise DataError(f"no images in {origin or 'the input'}")
        self.paths = list(paths)
        self.n = len(self.paths)
        self.size = (int(size[0]), int(size[1]))
        self.channels, self.fit = int(channels), fit
        self.labels = (np.full(self.n, -1, np.int64) if labels is None
                       else np.asarray(labels, dtype=np.int64))
        if len(self.labels) != self.n:
            raise ConfigError(f"{len(self.labels)} labels for {self.n} images")
        self._classes = classes
        self.origin = origin
        if listing_digest is None:
            h = hashlib.sha256()
            for p in self.paths:
                h.update(p.encode() + b"\n")
            listing_digest = h.hexdigest()
        self.listing_digest = listing_digest

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.size[0], self.size[1], self.channels

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha256(self.labels.tobytes())
        # RGB stretched was the only conversion before channels and fit were options: such a
        # listing keeps the key it had then
        converted = {} if (self.channels, self.fit) == (3, "stretch") else {
            "channels": self.channels, "fit": self.fit}
        return {"kind": "files", "listing": self.listing_digest, "n": self.n,
                "size": list(self.size), **converted, "labels": h.hexdigest()[:16]}

    def describe(self) -> dict[str, Any]:
        return {**self.fingerprint(), "origin": self.origin, "classes": self._classes}

    def classes(self) -> list[str] | None:
        return self._classes

    def chunk(self, start: int, stop: int) -> FileChunk:
        return FileChunk(tuple(self.paths[start:stop]), self.labels[start:stop].copy(), self.size,
                         self.channels, self.fit)

    @classmethod
    def from_folder(cls, url: str, size: tuple[int, int], **convert: Any) -> FileSource:
        """Every image file under ``url`` (recursively), sorted by relative path.

        Labels come from the first folder level (``<url>/<class>/.../img.png``, classes in
        sorted order) when every image sits in a subfolder; else they are -1. The
        fingerprint hashes each file's relative path, size and modification time (or ETag),
        so changed files give a new output key.
        """
        import fsspec

        fs, root = fsspec.core.url_to_fs(url)
        if not fs.isdir(root):
            raise DataError(f"{url}: not a folder")
        listing = fs.find(root, detail=True)
        root = root.rstrip("/")
        entries = []
        for path, info in listing.items():
            if info.get("type", "file") != "file":
                continue
            if not is_image_name(path):
                continue
            rel = posixpath.relpath(path, root) if path.startswith(root) else path
            stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("etag")
            entries.append((rel, path, info.get("size"), str(stamp)))
        if not entries:
            raise DataError(f"{url}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        entries.sort()
        h = hashlib.sha256(f"{fs.unstrip_protocol(root)}\n".encode())
        for rel, _, nbytes, stamp in entries:
            h.update(f"{rel}|{nbytes}|{stamp}\n".encode())
        local = _is_local(fs)
        paths = [p if local else fs.unstrip_protocol(p) for _, p, _, _ in entries]
        labels, classes = None, None
        tops = [rel.split("/", 1)[0] if "/" in rel else None for rel, _, _, _ in entries]
        if all(t is not None for t in tops):
            classes = sorted(set(tops))  # type: ignore[arg-type]
            index = {c: i for i, c in enumerate(classes)}
            labels = np.array([index[t] for t in tops], dtype=np.int64)
        log.info("%s: %d images%s", url, len(paths),
                 f" in {len(classes)} classes" if classes else " (no class folders: labels -1)")
        return cls(paths, size, labels, classes, origin=url, listing_digest=h.hexdigest(), **convert)

    @classmethod
    def from_image(cls, url: str, size: tuple[int, int], **convert: Any) -> FileSource:
        """One image file; the fingerprint hashes its location, size and modification time
        (or ETag), as :meth:`from_folder` does each file's."""
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        try:
            info = fs.info(path)
        except (OSError, ValueError) as exc:  # gone since it was found, a server that fails
            raise DataError(f"{url}: cannot read ({exc})") from None
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("etag")
        digest = hashlib.sha256(f"{fs.unstrip_protocol(path)}|{info.get('size')}|{stamp}\n".encode())
        return cls([path if _is_local(fs) else fs.unstrip_protocol(path)], size, origin=url,
                   listing_digest=digest.hexdigest(), **convert)

    @classmethod
    def from_list(cls, list_file: str, size: tuple[int, int], **convert: Any) -> FileSource:
        """Paths or URLs listed one a line in ``list_file`` (blank lines and ``#`` comments
        skipped), in the file's order; relative paths are relative to the list's folder.
        Labels are -1. The fingerprint hashes the list; contents changed in place are not
        noticed (use ``--force``)."""
        try:
            lines = _read_capped(list_file, MAX_LIST_BYTES, "rt").splitlines()
        except (OSError, ValueError) as exc:
            raise DataError(f"{list_file}: cannot read the list of images ({exc})") from None
        base = posixpath.dirname(list_file)
        paths = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "://" not in line and not posixpath.isabs(line) and base:
                line = posixpath.join(base, line)
            paths.append(check_location(line))
        return cls(paths, size, origin=list_file, **convert)


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def open_input(spec: str, size: tuple[int, int], channels: int = 3,
               fit: str = DEFAULT_FIT) -> FileSource:
    """A :class:`FileSource` from ``--input``: a folder (local or URL), one image file (by its
    name), else a list file; images brought to ``size`` and ``channels`` (a model's, with its
    ``fit``)."""
    import fsspec

    check_location(spec)
    try:
        fs, path = fsspec.core.url_to_fs(spec)
        is_dir = fs.isdir(path)
        exists = is_dir or fs.exists(path)
    except (OSError, ValueError, ImportError) as exc:
        raise DataError(f"{spec}: cannot open ({exc})") from None
    if not exists:
        raise DataError(f"{spec}: no such folder or file")
    convert = {"channels": channels, "fit": fit}
    if is_dir:
        return FileSource.from_folder(spec, size, **convert)
    if is_image_name(path):  # photo.png is one image, not a list of paths to read as text
        return FileSource.from_image(spec, size, **convert)
    return FileSource.from_list(spec, size, **convert)


# --------------------------------------------------------------------------------------------
# a split grown by deterministic augmentations


#: Whole-pixel shifts (rows down, columns right), 2-pixel ones first.
SHIFTS: tuple[tuple[int, int], ...] = (
    (2, 0), (-2, 0), (0, 2), (0, -2), (2, 2), (-2, -2), (2, -2), (-2, 2),
    (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1),
    (2, 1), (1, 2), (-2, -1), (-1, -2), (2, -1), (-1, 2), (-2, 1), (1, -2))
#: The variants of an augmented split, in order: (mirrored, rows down, columns right). The
#: originals, their mirror images, then shifts of both by up to 2 pixels (2-pixel ones first;
#: edges reflected): 50 in all.
AUGMENTATIONS: tuple[tuple[bool, int, int], ...] = tuple(
    [(False, 0, 0), (True, 0, 0)] + [(flip, dy, dx) for dy, dx in SHIFTS for flip in (False, True)])


def training_variants(flip: bool, shifts: int) -> list[tuple[bool, int, int]]:
    """The (mirrored, rows down, columns right) variants a classic pipeline trains on: the
    images, their mirror images with ``flip``, then both moved by the first ``shifts`` of
    :data:`SHIFTS`."""
    if not 0 <= shifts <= len(SHIFTS):
        raise ConfigError(f"augment_shifts is 0 to {len(SHIFTS)}, not {shifts}")
    mirrors = (False, True) if flip else (False,)
    return [(m, 0, 0) for m in mirrors] + [(m, dy, dx) for dy, dx in SHIFTS[:shifts] for m in mirrors]


def test_time_variants(shifts: int) -> list[tuple[bool, int, int]]:
    """The (mirrored, rows down, columns right) copies a classic model describes an image by at
    prediction with ``test_time_shifts``: the image, then it moved by the first ``shifts`` of
    :data:`SHIFTS`; its features are their mean."""
    if isinstance(shifts, bool) or not isinstance(shifts, int) or not 0 <= shifts <= len(SHIFTS):
        raise ConfigError(f"test_time_shifts is a whole number from 0 to {len(SHIFTS)}, not {shifts!r}")
    return [(False, 0, 0)] + [(False, dy, dx) for dy, dx in SHIFTS[:shifts]]


def augment(images: np.ndarray, variant: tuple[bool, int, int]) -> np.ndarray:
    """``images`` (n, H, W[, C]) mirrored and/or shifted by whole pixels, edges reflected."""
    flip, dy, dx = variant
    out = images[:, :, ::-1] if flip else images
    if dy or dx:
        p = max(abs(dy), abs(dx))
        padded = np.pad(out, ((0, 0), (p, p), (p, p)) + ((0, 0),) * (out.ndim - 3), mode="reflect")
        h, w = images.shape[1:3]
        out = padded[:, p - dy:p - dy + h, p - dx:p - dx + w]
    return np.ascontiguousarray(out)


@dataclass(frozen=True)
class AugmentedChunk:
    """Rows of an augmented split: each row a (variant, image) pair."""

    images_path: str
    labels_path: str
    index: np.ndarray  # rows of the official split
    variants: np.ndarray  # index into AUGMENTATIONS, per row

    def read(self, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        images, labels = ArrayChunk(self.images_path, self.labels_path, self.index).read(threads)
        out = np.empty_like(images)
        for v in np.unique(self.variants):
            at = self.variants == v
            out[at] = augment(images[at], AUGMENTATIONS[int(v)])
        return out, labels


class AugmentedSource:
    """A dataset split grown to ``n`` rows by deterministic augmentations of it (mirror images,
    2-pixel shifts: :data:`AUGMENTATIONS`): rows ``[k m, (k + 1) m)`` are variant ``k`` of the
    split's ``m`` images, in a random order drawn from ``seed``. The first ``m`` rows are the
    split itself, so a store of ``n`` rows holds every smaller size as its first rows.

    Parameters
    ----------
    dataset : cvpipe.data.dataset.Dataset
    split : {"train", "train_full"}
    n : int
        Rows, at most ``len(AUGMENTATIONS)`` times the split's size.
    seed : int
    """

    def __init__(self, dataset: Any, split: str, n: int, seed: int = 0):
        self.base = DatasetSource(dataset, split)
        m = self.base.n
        if not 1 <= n <= m * len(AUGMENTATIONS):
            raise ConfigError(f"an augmented {split} split has 1 to {m * len(AUGMENTATIONS)} rows "
                              f"({len(AUGMENTATIONS)} variants of {m} images), not {n}")
        self.dataset, self.split, self.n, self.seed, self.m = dataset, split, int(n), int(seed), m
        rows = self.base._index if self.base._index is not None else np.arange(m)
        self._orders = [rows[np.random.default_rng([seed, k]).permutation(m)]
                        for k in range(-(-self.n // m))]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.base.image_shape

    def fingerprint(self) -> dict[str, Any]:
        return {**self.base.fingerprint(), "augmented": {"n": self.n, "seed": self.seed,
                                                         "variants": [list(v) for v in AUGMENTATIONS]}}

    def describe(self) -> dict[str, Any]:
        return {**self.fingerprint(), "cache_dir": str(self.dataset.cache_dir), "n": self.n}

    def classes(self) -> list[str] | None:
        return list(self.dataset.classes)

    def chunk(self, start: int, stop: int) -> AugmentedChunk:
        rows = np.arange(start, min(stop, self.n))
        variants, pos = rows // self.m, rows % self.m
        index = np.array([self._orders[v][p] for v, p in zip(variants, pos, strict=True)], np.int64)
        return AugmentedChunk(self.base._images_path, self.base._labels_path, index, variants)
