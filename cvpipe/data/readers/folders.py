"""Image folders: ``[prefix/]{train,test}/<class>/<image>`` or ``[prefix/]<class>/<image>``,
from a folder or a tar archive, decoded on every core."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Container, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import UnidentifiedImageError
from tqdm.auto import tqdm

from cvpipe.data.readers.archives import (
    _Budget,
    _files_under,
    _iter_members,
    _open_tar,
    _read_file,
    _read_member,
)
from cvpipe.data.readers.decoded import CIFAR10_CLASSES, SPLITS, DecodedDataset
from cvpipe.data.splits import stratified_split
from cvpipe.errors import DataError
from cvpipe.images import DEFAULT_FIT, FIT_POLICIES, ImageError, decode, is_image_name, peek
from cvpipe.storage import reserved_npy

#: Encoded files read ahead of the decoding threads (bounds the memory they take).
_READ_AHEAD = 1024


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


def _where(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(split, class) of ``.../split/class/file``, ("all", class) of ``.../class/file``."""
    if len(parts) >= 3 and parts[-3] in SPLITS:
        return parts[-3], parts[-2]
    if len(parts) >= 2:
        return "all", parts[-2]
    return None


class _ImageSource:
    """The image files of a folder or a tar archive: listed from their names (an archive's
    headers) first, then the headers of the files kept peeked, then those files read again in
    order while decoding, so no more than a batch of encoded files is in memory."""

    def __init__(self, path: Path, sha256: str | None = None) -> None:
        self.path = path
        self.sha256 = sha256  # an archive's checked digest: every pass reads what it covers
        self.is_dir = path.is_dir()
        self.root = find_image_root(path) if self.is_dir else path

    def _files(self, wanted: Container[str] = ()
               ) -> Iterator[tuple[tuple[str, ...], str, Callable[[], bytes] | None]]:
        """(path parts, shown name, reader) of every visible image file, in a stable order,
        with a reader for the ``wanted`` names only (none: nothing is read). Every member of
        an archive counts against its byte budget, read or not (the stream inflates it all),
        so one that declares too many (a gzip bomb) is refused from the headers."""
        if self.is_dir:
            for f in _files_under(self.root):
                if is_image_name(f.name):
                    yield (f.relative_to(self.root).parts, str(f),
                           functools.partial(_read_file, f) if str(f) in wanted else None)
            return
        budget = _Budget(self.path)
        with _open_tar(self.path, self.sha256) as tar:
            for member in _iter_members(tar, self.path):
                parts = PurePosixPath(member.name).parts
                if member.isfile() and is_image_name(parts[-1]):
                    name = f"{self.path}:{member.name}"
                    if name not in wanted:
                        budget.take(member)
                        yield parts, name, None
                        continue
                    data = _read_member(tar, member, self.path, budget)
                    yield parts, name, lambda data=data: data

    def entries(self) -> list[_Entry]:
        """Every image file's split, class and name, from the names alone (sizes unknown
        until :meth:`peek`): a subset, e.g. the first images of each class, is chosen before
        any file is read."""
        found = []
        for parts, name, _ in tqdm(self._files(), desc="listing", unit="img", disable=None,
                                   mininterval=0.5):
            where = _where(parts)
            if where is not None:
                found.append(_Entry(*where, name))
        if any(e.split != "all" for e in found):  # train/test layout: loose files are ignored
            found = [e for e in found if e.split != "all"]
        names = [e.name for e in found]
        if len(set(names)) != len(names):  # a tar may hold one name twice: which one is meant?
            twice = sorted({n for n in names if names.count(n) > 1})[:3]
            raise DataError(f"{self.path}: the archive holds {', '.join(twice)} more than once")
        return found

    def peek(self, entries: list[_Entry]) -> None:
        """Fill in each entry's size and colour from its file's header (no pixel decoded), so
        that the arrays can be sized, and a file that is no image refused, before decoding."""
        by_name = {e.name: e for e in entries}
        with tqdm(total=len(entries), desc="checking", unit="img", disable=None,
                  mininterval=0.5) as bar:
            for _, name, data in self.read_in_order(dict.fromkeys(by_name, 0)):
                try:
                    header = peek(data)
                except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                    raise DataError(f"unreadable image {name}: {exc}") from exc
                by_name[name].size, by_name[name].gray = (header.height, header.width), header.gray
                bar.update()

    def read_in_order(self, names: dict[str, int]) -> Iterator[tuple[int, str, bytes]]:
        """(index, name, bytes) of the files in ``names`` (shown name -> index), each once;
        one listed but gone by now is an error (it would stay a blank image with a label)."""
        seen: set[str] = set()
        for _parts, name, read in self._files(names):
            if read is not None and name not in seen:
                seen.add(name)
                try:
                    data = read()
                except OSError as exc:
                    raise DataError(f"cannot read image {name}: {exc}") from exc
                yield names[name], name, data
        if len(seen) != len(names):
            gone = sorted(set(names) - seen)
            raise DataError(f"{len(gone)} image(s) listed a moment ago are gone, e.g. {gone[0]}; "
                            "was the dataset changed while it was read?")


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
    fit: str = DEFAULT_FIT,
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

    source.peek(entries)  # only the images kept
    h, w = _target_size(path, entries, size)
    channels = 1 if all(e.gray for e in entries) else 3
    notes["resized"] = sum(e.size != (h, w) for e in entries)
    images, labels_out = {}, {}
    for split in SPLITS:
        rows = [e for e in entries if e.split == split]
        shape = (len(rows), h, w, channels)
        if out_dir is not None:
            images[split] = reserved_npy(out_dir / f"{split}_images.npy", np.uint8, shape,
                                         hint="free some or choose another --data-root")
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
