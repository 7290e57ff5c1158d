"""Readers for the supported dataset formats, each yielding decoded uint8 arrays.

Formats (each as an archive or an extracted folder):

* ``cifar10``: the official python release, ``cifar-10-batches-py/{data_batch_1..5,
  test_batch,batches.meta}``;
* ``cifar100``: the official python release, ``cifar-100-python/{train,test,meta}``, with its
  fine (100) or coarse (20) labels;
* ``idx``: MNIST's IDX files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``), as
  MNIST and Fashion-MNIST publish them;
* ``image-folder``: ``[prefix/]{train,test}/<class>/<image>``, or ``[prefix/]<class>/<image>``
  (then a seeded, stratified share of each class becomes the test split).

Images are uint8 ``(N, H, W, C)``, channels last: 3 (RGB) or 1 (gray, as MNIST's IDX files and
grayscale image folders are kept).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import logging
import math
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from cvpipe.data import cifar_pickle
from cvpipe.data.splits import stratified_split
from cvpipe.errors import DataError
from cvpipe.images import FIT_POLICIES, GRAY_MODES, ImageError, decode, is_image_name

log = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "test")
#: Most bytes one archive member may declare (an official batch is about 31 MB; a photo a few
#: MB) and most bytes of all members read from one archive: a crafted archive (a gzip bomb)
#: is refused from its headers before it fills the memory.
MAX_MEMBER_BYTES = 256 << 20
MAX_ARCHIVE_BYTES = 8 << 30
#: Most values an IDX file may declare (MNIST's train images hold 47 million).
MAX_IDX_VALUES = 256 << 20
_OFFICIAL_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


#: Formats a source may hold (see the module docstring).
FORMATS = ("cifar10", "cifar100", "idx", "image-folder")
#: MNIST's IDX file stems per split (each may end in ``.gz``).
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass
class DecodedDataset:
    """What a reader returns: per split, uint8 (N, H, W, C) images and int64 (N,) labels;
    ``notes`` go into the cache's manifest (how a test split was drawn, how images were
    resized)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: tuple[str, ...]
    notes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- official release


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


def _official_files(path: Path, accept: Callable[[str], str | None], sha256: str | None = None
                    ) -> dict[str, bytes]:
    """The files of an official release, by the key ``accept`` gives their base name (None:
    not wanted), from a folder (searched recursively) or a tar archive (never extracted)."""
    files: dict[str, bytes] = {}
    if path.is_dir():
        for p in _files_under(path):
            key = accept(p.name)
            if key is not None and key not in files:
                files[key] = _read_file(p)
        return files
    budget = _Budget(path)
    with _open_tar(path, sha256) as tar:
        for member in _iter_members(tar, path):
            key = accept(PurePosixPath(member.name).name) if member.isfile() else None
            if key is not None and key not in files:
                files[key] = _read_member(tar, member, path, budget)
    return files


def read_official(path: Path, fmt: str, *, labels: str = "fine",
                  classes: tuple[str, ...] | None = None, sha256: str | None = None) -> DecodedDataset:
    """Read an official release (``fmt`` "cifar10", "cifar100" or "idx") from its archive or
    folder; ``labels`` picks CIFAR-100's "fine" or "coarse" labels, ``classes`` names IDX
    labels (default "0", "1", ...); ``sha256``: the digest an archive was checked against,
    checked again on the bytes read."""
    if fmt == "cifar10":
        wanted = {*(n for names in _OFFICIAL_BATCHES.values() for n in names), "batches.meta"}
        return _batches_to_arrays(_official_files(path, lambda n: n if n in wanted else None, sha256))
    if fmt == "cifar100":
        if labels not in ("fine", "coarse"):
            raise DataError(f"CIFAR-100 labels are 'fine' or 'coarse', not {labels!r}")
        return _cifar100_to_arrays(
            _official_files(path, lambda n: n if n in ("train", "test", "meta") else None, sha256), labels)
    if fmt == "idx":
        stems = {s for pair in IDX_FILES.values() for s in pair}
        return _idx_to_arrays(_official_files(path, lambda n: _idx_stem(n) if _idx_stem(n) in stems
                                              else None, sha256), classes)
    raise DataError(f"unknown official format {fmt!r}")


def _idx_stem(name: str) -> str:
    return name[:-3] if name.endswith(".gz") else name


def read_official_archive(path: Path) -> DecodedDataset:
    """Read ``cifar-10-python.tar.gz`` without extracting it to disk."""
    return read_official(path, "cifar10")


def read_official_folder(path: Path) -> DecodedDataset:
    """Read an extracted ``cifar-10-batches-py/`` folder."""
    return read_official(path, "cifar10")


# --------------------------------------------------------------------------- image folders


@dataclass
class _Entry:
    split: str  # "train", "test", or "all" until a test split is drawn
    cls: str
    name: str  # path shown in errors; the tar member name or file path that holds the bytes
    size: tuple[int, int] = (0, 0)  # (H, W) after EXIF orientation
    gray: bool = False


def _class_order(found: set[str]) -> tuple[str, ...]:
    """CIFAR-10's label order when the names are CIFAR-10's, numeric order for numbers, else
    sorted names."""
    if found == set(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    if all(c.isascii() and c.isdecimal() for c in found):  # "²" is a digit, but not a number
        return tuple(sorted(found, key=int))
    return tuple(sorted(found))


def _peek(data: bytes, name: str) -> tuple[tuple[int, int], bool]:
    """((H, W) after EXIF orientation, is grayscale) from an image's header, decoding nothing."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated a quarter turn
                w, h = h, w
            return (h, w), im.mode in GRAY_MODES
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"unreadable image {name}: {exc}") from exc


def _where(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(split, class) of ``.../split/class/file``, ("all", class) of ``.../class/file``."""
    if len(parts) >= 3 and parts[-3] in SPLITS:
        return parts[-3], parts[-2]
    if len(parts) >= 2:
        return "all", parts[-2]
    return None


class _ImageSource:
    """The image files of a folder or a tar archive: listed once (headers peeked), then read
    again in order while decoding, so no more than a batch of encoded files is in memory."""

    def __init__(self, path: Path, sha256: str | None = None) -> None:
        self.path = path
        self.sha256 = sha256  # an archive's checked digest: every pass reads what it covers
        self.is_dir = path.is_dir()
        self.root = find_image_root(path) if self.is_dir else path

    def _files(self) -> Iterator[tuple[tuple[str, ...], str, Callable[[], bytes]]]:
        """(path parts, shown name, reader) of every visible image file, in a stable order."""
        if self.is_dir:
            for f in _files_under(self.root):
                if is_image_name(f.name):
                    yield f.relative_to(self.root).parts, str(f), functools.partial(_read_file, f)
            return
        budget = _Budget(self.path)
        with _open_tar(self.path, self.sha256) as tar:
            for member in _iter_members(tar, self.path):
                parts = PurePosixPath(member.name).parts
                if member.isfile() and is_image_name(parts[-1]):
                    data = _read_member(tar, member, self.path, budget)
                    yield parts, f"{self.path}:{member.name}", lambda data=data: data

    def check_budget(self) -> None:
        """Refuse an archive whose members declare too many bytes (a gzip bomb), from the tar
        headers alone, before any member is read."""
        if self.is_dir:
            return
        budget = _Budget(self.path)
        with _open_tar(self.path, self.sha256) as tar:
            for member in _iter_members(tar, self.path):
                if member.isfile() and is_image_name(member.name):
                    budget.take(member)

    def entries(self) -> list[_Entry]:
        self.check_budget()
        found = []
        for parts, name, read in tqdm(self._files(), desc="listing", unit="img", disable=None,
                                      mininterval=0.5):
            where = _where(parts)
            if where is None:
                continue
            try:
                data = read()
            except OSError as exc:
                raise DataError(f"cannot read image {name}: {exc}") from exc
            size, gray = _peek(data, name)
            found.append(_Entry(*where, name, size, gray))
        if any(e.split != "all" for e in found):  # train/test layout: loose files are ignored
            found = [e for e in found if e.split != "all"]
        names = [e.name for e in found]
        if len(set(names)) != len(names):  # a tar may hold one name twice: which one is meant?
            twice = sorted({n for n in names if names.count(n) > 1})[:3]
            raise DataError(f"{self.path}: the archive holds {', '.join(twice)} more than once")
        return found

    def read_in_order(self, names: dict[str, int]) -> Iterator[tuple[int, str, bytes]]:
        """(index, name, bytes) of the files in ``names`` (shown name -> index), each once;
        one listed but gone by now is an error (it would stay a blank image with a label)."""
        seen: set[str] = set()
        for _parts, name, read in self._files():
            if name in names and name not in seen:
                seen.add(name)
                yield names[name], name, read()
        if len(seen) != len(names):
            gone = sorted(set(names) - seen)
            raise DataError(f"{len(gone)} image(s) listed a moment ago are gone, e.g. {gone[0]}; "
                            "was the dataset changed while it was read?")


def _files_under(root: Path) -> Iterator[Path]:
    """The files of a folder tree, in a stable order; one that is (or lies under) a link to
    somewhere outside the tree is an error, not read."""
    inside = root.resolve()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            if not f.resolve().is_relative_to(inside):
                raise DataError(f"{f}: a link to {f.resolve()}, outside the dataset's folder {root}; "
                                "copy the file in instead")
            yield f


def _read_file(path: Path) -> bytes:
    """A file's bytes, at most :data:`MAX_MEMBER_BYTES` (as an archive's member)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MEMBER_BYTES + 1)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(data) > MAX_MEMBER_BYTES:
        raise DataError(f"{path}: over the limit of {MAX_MEMBER_BYTES:,} bytes for one file")
    return data


def find_image_root(path: Path) -> Path:
    """The folder under ``path`` (itself or one level down) that holds ``train/`` or ``test/``,
    else ``path`` itself (class folders only)."""
    for candidate in (path, *sorted(p for p in path.iterdir() if p.is_dir())):
        if any((candidate / s).is_dir() for s in SPLITS):
            return candidate
    return path


def _check_layout(path: Path, entries: list[_Entry]) -> None:
    if not entries:
        raise DataError(f"{path}: no images found (expected [train|test/]<class>/<image>, "
                        "images ending in .png, .jpg, ...)")
    if entries[0].split == "all":
        return
    per_split = {s: {e.cls for e in entries if e.split == s} for s in SPLITS}
    for split in SPLITS:
        if not per_split[split]:
            raise DataError(f"{path}: missing split '{split}' (expected {split}/<class>/<image>)")
    if per_split["train"] != per_split["test"]:
        missing = sorted(f"{s}/{c}" for s, other in (("train", "test"), ("test", "train"))
                         for c in per_split[other] - per_split[s])
        raise DataError(f"{path}: empty or missing class folder(s): {', '.join(missing)} (train "
                        "and test need images of the same classes)")


def _target_size(path: Path, entries: list[_Entry], size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        return int(size[0]), int(size[1])
    sizes = {e.size for e in entries}
    if len(sizes) > 1:
        by_size = {}
        for e in entries:
            by_size.setdefault(e.size, e.name)
        examples = ", ".join(f"{n} is {w}x{h}" for (h, w), n in list(by_size.items())[:2])
        raise DataError(f"{path}: images differ in size ({examples}); pass --size HxW (and "
                        f"--fit {'|'.join(FIT_POLICIES)}) to bring them to one size")
    return next(iter(sizes))


def read_image_folder(
    path: Path,
    size: tuple[int, int] | None = None,
    fit: str = "crop",
    limit_per_class: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int | None = None,
    out_dir: Path | None = None,
    sha256: str | None = None,
) -> DecodedDataset:
    """Decode an image-folder tree (folder or tar archive) into arrays.

    Parameters
    ----------
    path : Path
        A folder, or a ``.tar``/``.tar.gz`` archive, holding ``[prefix/]{train,test}/<class>/``
        or only ``[prefix/]<class>/`` folders of images.
    size : (int, int), optional
        (height, width) to bring every image to by ``fit``. Default: the images' own size,
        which must then be the same for all (a clear error names two that differ).
    fit : {"crop", "pad", "stretch"}
        How an image of another size or aspect ratio is brought to ``size`` (see
        :func:`cvpipe.images.resize`).
    limit_per_class : int, optional
        Keep only the first images (by file name) of each class in each split.
    test_fraction, seed : float, int
        Without train/ and test/ folders, the share of each class drawn (seeded, stratified)
        into the test split.
    workers : int, optional
        Decoding threads; defaults to the number of CPUs.
    out_dir : Path, optional
        Decode straight into ``<out_dir>/{train,test}_images.npy`` (memory-mapped), so a
        dataset larger than the memory can be prepared.
    sha256 : str, optional
        The digest a tar archive was checked against: each pass over it reads the archive as
        one stream and checks that digest again, so what is decoded is what was checked.

    Returns
    -------
    DecodedDataset
        uint8 (N, H, W, C) images: C is 1 when every image is grayscale, else 3.
    """
    if fit not in FIT_POLICIES:
        raise DataError(f"fit must be one of {', '.join(FIT_POLICIES)}, not {fit!r}")
    source = _ImageSource(path, sha256)
    entries = source.entries()
    _check_layout(path, entries)
    classes = _class_order({e.cls for e in entries})
    index = {c: i for i, c in enumerate(classes)}
    notes: dict = {"fit": fit}

    if entries[0].split == "all":  # class folders only: draw the test split
        labels = np.array([index[e.cls] for e in entries], dtype=np.int64)
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        if not len(test_idx) or not len(train_idx):
            raise DataError(f"{path}: too few images for a test split of {test_fraction:.0%}")
        for i in test_idx:
            entries[i].split = "test"
        for i in train_idx:
            entries[i].split = "train"
        notes["test_split"] = {"fraction": test_fraction, "seed": seed, "stratified": True}
    entries.sort(key=lambda e: (e.split, index[e.cls], e.name))
    if limit_per_class is not None:
        kept, seen = [], {}
        for e in entries:
            seen[(e.split, e.cls)] = seen.get((e.split, e.cls), 0) + 1
            if seen[(e.split, e.cls)] <= limit_per_class:
                kept.append(e)
        entries = kept

    h, w = _target_size(path, entries, size)
    channels = 1 if all(e.gray for e in entries) else 3
    notes["resized"] = sum(e.size != (h, w) for e in entries)
    images, labels_out = {}, {}
    for split in SPLITS:
        rows = [e for e in entries if e.split == split]
        shape = (len(rows), h, w, channels)
        if out_dir is not None:
            images[split] = np.lib.format.open_memmap(out_dir / f"{split}_images.npy", "w+",
                                                      np.uint8, shape)
        else:
            images[split] = np.empty(shape, np.uint8)
        labels_out[split] = np.array([index[e.cls] for e in rows], dtype=np.int64)
    where = {}
    for split in SPLITS:
        for i, e in enumerate(x for x in entries if x.split == split):
            where[e.name] = (split, i)
    _decode_all(source, where, images, (h, w), channels, fit, workers)
    for arr in images.values():
        if isinstance(arr, np.memmap):
            arr.flush()
    return DecodedDataset(images, labels_out, classes, notes)


def decode_image(data: bytes, name: str, channels: int | None = 3) -> np.ndarray:
    """Decode one encoded image to uint8 (H, W, C) with :func:`cvpipe.images.decode`, the
    path every image takes; the error names the file."""
    try:
        return decode(data, name, channels=channels)
    except ImageError as exc:
        raise DataError(f"unreadable image {exc}") from exc


#: Encoded files read ahead of the decoding threads (bounds the memory they take).
_READ_AHEAD = 1024


def _decode_all(source: _ImageSource, where: dict[str, tuple[str, int]],
                images: dict[str, np.ndarray], size: tuple[int, int], channels: int, fit: str,
                workers: int | None) -> None:
    order = {name: k for k, name in enumerate(where)}

    def work(item: tuple[int, str, bytes]) -> None:
        _, name, data = item
        try:
            img = decode(data, name, size, channels=channels, fit=fit)
        except ImageError as exc:
            raise DataError(f"unreadable image {exc}") from exc
        split, i = where[name]
        images[split][i] = img

    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool, \
            tqdm(total=len(where), desc="decoding", unit="img", disable=None,
                 mininterval=0.5) as bar:
        batch: list[tuple[int, str, bytes]] = []
        for item in source.read_in_order(order):
            batch.append(item)
            if len(batch) == _READ_AHEAD:
                list(pool.map(work, batch))
                bar.update(len(batch))
                batch = []
        list(pool.map(work, batch))
        bar.update(len(batch))


# --------------------------------------------------------------------------- tar helpers

_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


class _Hashing(io.RawIOBase):
    """A file read once, front to back, hashing what it reads: what was parsed is what the
    checksum covers (a file swapped after its checksum was taken is caught)."""

    def __init__(self, path: Path, sha256: str) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed with the tar file that reads it
        self._hash = hashlib.sha256()
        self.expected = sha256

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - io's signature
        n = self._file.readinto(buffer)
        self._hash.update(memoryview(buffer)[:n])
        return n

    def close(self) -> None:
        self._file.close()
        super().close()

    def finish(self, path: Path) -> None:
        """Read what the parser left and compare the whole file's digest."""
        while chunk := self._file.read(1 << 20):
            self._hash.update(chunk)
        if self._hash.hexdigest() != self.expected:
            raise DataError(f"{path}: changed while it was read (its sha256 is no longer the one "
                            "checked); read it again")


@contextlib.contextmanager
def _open_tar(path: Path, sha256: str | None = None) -> Iterator[tarfile.TarFile]:
    """``path`` as a tar archive; with ``sha256``, read as one stream whose digest is checked
    once the block that reads it ends without an error (what it left unread is read then)."""
    stream = _Hashing(path, sha256) if sha256 is not None else None
    try:
        try:
            tar = (tarfile.open(path, "r:*") if stream is None else
                   tarfile.open(fileobj=io.BufferedReader(stream, 1 << 20), mode="r|*"))
        except _TAR_ERRORS as exc:
            raise DataError(f"{path}: not a readable tar archive ({exc})") from exc
        with tar:
            yield tar
        if stream is not None:  # read whole, without an error: was it the file checked?
            stream.finish(path)
    finally:
        if stream is not None:
            stream.close()


def _iter_members(tar: tarfile.TarFile, path: Path) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tar
    except _TAR_ERRORS as exc:
        raise DataError(f"{path}: archive is truncated or corrupt ({exc})") from exc


class _Budget:
    """Bytes still allowed from one archive (:data:`MAX_ARCHIVE_BYTES`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.left = MAX_ARCHIVE_BYTES

    def take(self, member: tarfile.TarInfo) -> None:
        if member.size > MAX_MEMBER_BYTES:
            raise DataError(f"{self.path}: member {member.name} declares {member.size:,} bytes, over "
                            f"the limit of {MAX_MEMBER_BYTES:,} for one file")
        self.left -= member.size
        if self.left < 0:
            raise DataError(f"{self.path}: the files read from this archive exceed "
                            f"{MAX_ARCHIVE_BYTES:,} bytes in all; split the dataset")


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, budget: _Budget) -> bytes:
    budget.take(member)
    try:
        f = tar.extractfile(member)
        data = f.read() if f is not None else b""
    except _TAR_ERRORS as exc:
        raise DataError(f"{path}: archive is truncated or corrupt at {member.name} ({exc})") from exc
    if len(data) != member.size:
        raise DataError(f"{path}: archive is truncated at {member.name}")
    return data


def _format_of_names(names: list[str]) -> str | None:
    """The official format that these file base names reveal, if any."""
    base = set(names)
    if any(n.startswith(("data_batch_", "test_batch")) for n in base):
        return "cifar10"
    if {"train", "test", "meta"} <= base:
        return "cifar100"
    if any(_idx_stem(n) in IDX_FILES["train"] for n in base):
        return "idx"
    return None


def detect_format(path: Path) -> str:
    """The format of a folder or archive (see :data:`FORMATS`), from its file names only."""
    if path.is_dir():
        names = [p.name for p in path.rglob("*") if p.is_file() and not is_image_name(p.name)]
        return _format_of_names(names) or "image-folder"
    names = []
    with _open_tar(path) as tar:
        for member in _iter_members(tar, path):
            if member.isfile():
                name = PurePosixPath(member.name).name
                if is_image_name(name):  # image folders: the first image decides
                    break
                names.append(name)
    return _format_of_names(names) or "image-folder"


def is_official_archive(path: Path) -> bool:
    """True when the tar archive holds the official CIFAR-10 release."""
    return detect_format(path) == "cifar10"
