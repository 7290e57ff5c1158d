"""Readers for the supported CIFAR-10 layouts, each yielding decoded uint8 arrays.

Layouts:

* the official python release: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``,
  as a ``.tar.gz`` or an extracted folder;
* an image-folder tree ``[prefix/]{train,test}/<class>/<image>``, as a folder or a ``.tar[.gz]``.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm.auto import tqdm

from cvpipe.errors import DataError
from cvpipe.images import ImageError, decode, is_image_name, resize

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
_OFFICIAL_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


@dataclass
class DecodedDataset:
    """What a reader returns: per split, images (N, H, W, 3) uint8 and labels (N,) int64."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: tuple[str, ...]


# --------------------------------------------------------------------------- official release


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain containers and numpy arrays.

    The official release is a set of Python-2 pickles; a normal ``pickle.load`` would run
    whatever a tampered file asks for, so every global outside this list is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy"):
            import numpy._core.multiarray as multiarray

            return {"_reconstruct": multiarray._reconstruct, "ndarray": np.ndarray,
                    "dtype": np.dtype}[name]
        import _codecs

        return _codecs.encode


def _load_batch(data: bytes, name: str) -> dict[str, object]:
    try:
        raw = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any failure here means a corrupt or foreign file
        raise DataError(f"{name}: not a readable CIFAR-10 batch ({exc})") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{name}: not a readable CIFAR-10 batch (top level is not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _batches_to_arrays(files: dict[str, bytes]) -> DecodedDataset:
    missing = [n for names in _OFFICIAL_BATCHES.values() for n in names if n not in files]
    if missing:
        raise DataError(f"official CIFAR-10 release is missing {', '.join(missing)}")
    classes = CIFAR10_CLASSES
    if "batches.meta" in files:
        meta = _load_batch(files["batches.meta"], "batches.meta")
        names = meta.get("label_names")
        if names:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    images, labels = {}, {}
    for split, names in _OFFICIAL_BATCHES.items():
        xs, ys = [], []
        for name in names:
            batch = _load_batch(files[name], name)
            data = np.asarray(batch.get("data"))
            y = np.asarray(batch.get("labels"), dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(f"{name}: expected uint8 rows of 3072 values, got {data.shape}")
            if len(y) != len(data) or (len(y) and (y.min() < 0 or y.max() >= len(classes))):
                raise DataError(f"{name}: labels do not match the images or the class list")
            # Rows hold three 32x32 planes (R, G, B); convert to channels-last.
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(y)
        images[split] = np.ascontiguousarray(np.concatenate(xs))
        labels[split] = np.concatenate(ys)
    return DecodedDataset(images, labels, classes)


def read_official_archive(path: Path) -> DecodedDataset:
    """Read ``cifar-10-python.tar.gz`` without extracting it to disk."""
    wanted = {*(n for names in _OFFICIAL_BATCHES.values() for n in names), "batches.meta"}
    files: dict[str, bytes] = {}
    budget = _Budget(path)
    with _open_tar(path) as tar:
        for member in _iter_members(tar, path):
            name = PurePosixPath(member.name).name
            if member.isfile() and name in wanted:
                files[name] = _read_member(tar, member, path, budget)
    return _batches_to_arrays(files)


def read_official_folder(path: Path) -> DecodedDataset:
    """Read an extracted ``cifar-10-batches-py/`` folder."""
    files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    return _batches_to_arrays(files)


# --------------------------------------------------------------------------- image folders


@dataclass
class _Entry:
    split: str
    cls: str
    name: str  # path shown in errors
    data: bytes


def _class_order(found: set[str]) -> tuple[str, ...]:
    """CIFAR-10's label order when the names are CIFAR-10's, else sorted names."""
    if found == set(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(sorted(found))


def _split_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(split, class) for a path ``.../split/class/file``, or None for anything else."""
    if len(parts) >= 3 and parts[-3] in SPLITS:
        return parts[-3], parts[-2]
    return None


def _entries_from_dir(root: Path) -> tuple[list[_Entry], set[tuple[str, str]]]:
    entries, class_dirs = [], set()
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            class_dirs.add((split, class_dir.name))
            for f in sorted(class_dir.iterdir()):
                if f.is_file() and is_image_name(f.name):
                    try:
                        entries.append(_Entry(split, class_dir.name, str(f), f.read_bytes()))
                    except OSError as exc:
                        raise DataError(f"cannot read image {f}: {exc}") from exc
    return entries, class_dirs


def find_image_root(path: Path) -> Path:
    """The folder under ``path`` (itself or one level down) that holds ``train/`` or ``test/``."""
    for candidate in (path, *sorted(p for p in path.iterdir() if p.is_dir())):
        if any((candidate / s).is_dir() for s in SPLITS):
            return candidate
    raise DataError(f"{path}: no train/ or test/ folder found (expected train/<class>/<image>)")


def _entries_from_tar(path: Path) -> tuple[list[_Entry], set[tuple[str, str]]]:
    entries, class_dirs = [], set()
    budget = _Budget(path)
    with _open_tar(path) as tar:
        for member in _iter_members(tar, path):
            parts = PurePosixPath(member.name).parts
            if member.isdir():
                if len(parts) >= 2 and parts[-2] in SPLITS:
                    class_dirs.add((parts[-2], parts[-1]))
                continue
            where = _split_class(parts)
            if not member.isfile() or where is None or not is_image_name(parts[-1]):
                continue
            class_dirs.add(where)
            entries.append(_Entry(*where, f"{path}:{member.name}",
                                  _read_member(tar, member, path, budget)))
    entries.sort(key=lambda e: (e.split, e.cls, e.name))
    return entries, class_dirs


def read_image_folder(
    path: Path,
    image_size: tuple[int, int] = (32, 32),
    on_size_mismatch: str = "error",
    limit_per_class: int | None = None,
    workers: int | None = None,
) -> DecodedDataset:
    """Decode an image-folder tree (folder or tar archive) into arrays.

    Parameters
    ----------
    path : Path
        A folder, or a ``.tar``/``.tar.gz`` archive, holding ``[prefix/]{train,test}/<class>/``.
    image_size : (int, int)
        Expected (height, width) of every image.
    on_size_mismatch : {"error", "resize"}
        Refuse images of another size (naming them), or resize them (bicubic, antialiased).
    limit_per_class : int, optional
        Keep only the first images (by file name) of each class in each split.
    workers : int, optional
        Decoding threads; defaults to the number of CPUs.
    """
    if on_size_mismatch not in ("error", "resize"):
        raise DataError(f"on_size_mismatch must be 'error' or 'resize', not {on_size_mismatch!r}")
    if path.is_dir():
        entries, class_dirs = _entries_from_dir(find_image_root(path))
    else:
        entries, class_dirs = _entries_from_tar(path)

    for split in SPLITS:
        if not any(s == split for s, _ in class_dirs):
            raise DataError(f"{path}: missing split '{split}' (expected {split}/<class>/<image>)")
    counts: dict[tuple[str, str], int] = dict.fromkeys(class_dirs, 0)
    for e in entries:
        counts[(e.split, e.cls)] += 1
    empty = sorted(f"{s}/{c}" for (s, c), n in counts.items() if n == 0)
    if empty:
        raise DataError(f"{path}: empty class folder(s): {', '.join(empty)}")
    per_split = {s: {c for (t, c) in class_dirs if t == s} for s in SPLITS}
    if per_split["train"] != per_split["test"]:
        diff = sorted(per_split["train"] ^ per_split["test"])
        raise DataError(f"{path}: train and test have different classes ({', '.join(diff)})")
    classes = _class_order(per_split["train"])

    if limit_per_class is not None:
        kept, seen = [], dict.fromkeys(counts, 0)
        for e in entries:
            if seen[(e.split, e.cls)] < limit_per_class:
                seen[(e.split, e.cls)] += 1
                kept.append(e)
        entries = kept

    images = _decode_all(entries, image_size, on_size_mismatch, workers)
    index = {c: i for i, c in enumerate(classes)}
    out_images, out_labels = {}, {}
    for split in SPLITS:
        rows = [i for i, e in enumerate(entries) if e.split == split]
        out_images[split] = images[rows]
        out_labels[split] = np.array([index[entries[i].cls] for i in rows], dtype=np.int64)
    return DecodedDataset(out_images, out_labels, classes)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode one encoded image to RGB uint8 (H, W, 3) with :func:`cvpipe.images.decode`, the
    path every image takes; the error names the file."""
    try:
        return decode(data, name)
    except ImageError as exc:
        raise DataError(f"unreadable image {exc}") from exc


def _decode_all(
    entries: list[_Entry], size: tuple[int, int], on_mismatch: str, workers: int | None
) -> np.ndarray:
    h, w = size
    out = np.empty((len(entries), h, w, 3), dtype=np.uint8)

    def work(i: int) -> None:
        e = entries[i]
        img = decode_image(e.data, e.name)
        if img.shape[:2] != (h, w):
            if on_mismatch == "error":
                raise DataError(
                    f"image {e.name} is {img.shape[1]}x{img.shape[0]}, expected {w}x{h} "
                    "(pass --on-size-mismatch resize to resize such images)"
                )
            img = resize(img, (h, w))
        out[i] = img

    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for _ in tqdm(pool.map(work, range(len(entries)), chunksize=256), total=len(entries),
                      desc="decoding", unit="img", disable=None, mininterval=0.5):
            pass
    return out


# --------------------------------------------------------------------------- tar helpers

_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except _TAR_ERRORS as exc:
        raise DataError(f"{path}: not a readable tar archive ({exc})") from exc


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


def is_official_archive(path: Path) -> bool:
    """True when the tar archive holds the official ``data_batch_1`` file."""
    with _open_tar(path) as tar:
        for member in _iter_members(tar, path):
            if PurePosixPath(member.name).name.startswith(("data_batch_", "test_batch")):
                return True
            if _split_class(PurePosixPath(member.name).parts):
                return False
    return False
