"""Datasets by name or by path, decoded once into a memory-mappable cache.

``load_dataset("mnist")``, ``load_dataset("path/to/images.tar.gz")``: a catalogued name
(:mod:`cvpipe.data.catalog`) reads its official files (downloaded and checked, or a local copy
from ``source`` / ``$CVPIPE_<NAME>_SOURCE``); a path or URL is read in whatever supported
format it holds (:mod:`cvpipe.data.readers`). Images keep their own size and channels (MNIST
stays 28x28 gray) unless a ``size`` is asked for.

Cache layout, ``<data root>/cache/<dataset>-<key>/``::

    manifest.json                 dataset, source, checksum, classes, counts, image shape
    {train,test}_images.npy       uint8 (N, H, W, C), loaded with mmap_mode="r"
    {train,test}_labels.npy       int64 (N,)

``key`` hashes the source's checksum and the decoding options, so a changed source
or option builds a new cache. A cache is built in a temporary folder and renamed into
place only once complete, and ``manifest.json`` is written last. Image folders are
decoded straight into the memory-mapped files, so preparing one needs little memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cvpipe import __version__
from cvpipe.config import ENV_CIFAR10_CHECKSUM, data_root
from cvpipe.data import readers
from cvpipe.data.catalog import CatalogEntry, identify_idx, is_catalogued, lookup
from cvpipe.data.checksums import file_digests, memo_digests, parse_expected, verify
from cvpipe.data.download import download, download_key, public_location
from cvpipe.data.splits import check_split_options, stratified_split
from cvpipe.errors import ChecksumError, DataError
from cvpipe.images import DEFAULT_FIT, FIT_POLICIES, resize
from cvpipe.storage import holds, json_dumps, npy_header, replace_dir, reserved_npy

log = logging.getLogger(__name__)

CIFAR10_URL = lookup("cifar10").files[0].url
CIFAR10_MD5 = lookup("cifar10").files[0].md5
CACHE_FORMAT = 2
SPLIT_NAMES = ("train", "val", "train_full", "test")


@dataclass(frozen=True)
class Source:
    """A resolved dataset source: its name, where it is, its format and its fingerprint."""

    name: str  # catalogued name, or one made from the path
    title: str
    location: str
    path: Path
    format: str  # cvpipe.data.readers.FORMATS
    checksum: dict[str, str]
    entry: CatalogEntry | None = None

    @property
    def kind(self) -> str:
        """``image-folder`` or ``image-folder-archive``; for an official release
        ``official-<folder|archive>`` (CIFAR-10) or ``<format>-<folder|archive>``."""
        container = "folder" if self.path.is_dir() else "archive"
        if self.format == "image-folder":
            return "image-folder" if container == "folder" else "image-folder-archive"
        return f"{'official' if self.format == 'cifar10' else self.format}-{container}"


@dataclass
class Dataset:
    """A decoded dataset backed by a cache folder.

    ``images(split)`` and ``labels(split)`` give the official splits ("train", "test");
    ``split(name)`` adds the validation split carved from train: "train" (train minus
    validation), "val", "train_full" (all of train) and "test".
    """

    cache_dir: Path
    manifest: dict
    val_fraction: float = 0.1
    seed: int = 0
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def name(self) -> str:
        """The dataset's name (``cifar10``, ``mnist``, ``mnist5k-png``, ...)."""
        return self.manifest["dataset"]

    @property
    def title(self) -> str:
        return self.manifest.get("title") or self.name

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(int(v) for v in self.manifest["image_shape"])

    @property
    def checksum(self) -> str:
        """The source's fingerprint, ``algo:hex``."""
        algo = "sha256" if "sha256" in self.manifest["source_checksum"] else "tree-sha256"
        return f"{algo}:{self.manifest['source_checksum'][algo]}"

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.cache_dir / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def images(self, split: str) -> np.ndarray:
        """uint8 (N, H, W, C) images of an official split (C 3 for RGB, 1 for gray), memory-mapped."""
        return self._array(f"{_official(split)}_images")

    def labels(self, split: str) -> np.ndarray:
        """int64 (N,) labels of an official split."""
        return self._array(f"{_official(split)}_labels")

    def split_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) indices into the official train split."""
        return stratified_split(self.labels("train"), self.val_fraction, self.seed)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of "train", "val", "train_full" or "test"."""
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split {name!r}; choose from {', '.join(SPLIT_NAMES)}")
        if name in ("train_full", "test"):
            official = "train" if name == "train_full" else "test"
            return self.images(official), self.labels(official)
        idx = self.split_indices()[0 if name == "train" else 1]
        return self.images("train")[idx], self.labels("train")[idx]

    def summary(self) -> str:
        """Human-readable counts per class and split, source and cache location."""
        m = self.manifest
        counts = m["counts"]
        width = max(len(c) for c in self.classes) + 2
        lines = [
            (f"{self.title} dataset '{self.name}'" if self.title != self.name
             else f"Dataset '{self.name}'") + f" ({m['source_kind']})",
            f"  source:    {m['source']}",
            f"  checksum:  {self.checksum}",
            f"  cache:     {self.cache_dir}",
            f"  built:     {m['created']} in {m['build_seconds']:.1f} s (cvpipe {m['cvpipe_version']})",
            f"  images:    {' x '.join(map(str, m['image_shape']))} uint8 (H x W x channels)",
            f"  validation: {self.val_fraction:.0%} of train per class, seed {self.seed}",
            *([f"  test split: drawn from class folders, {m['notes']['test_split']['fraction']:.0%} "
               f"per class, seed {m['notes']['test_split']['seed']}"]
              if m.get("notes", {}).get("test_split") else []),
            "",
            f"  {'class':<{width}}{'train':>8}{'test':>8}",
        ]
        for c in self.classes:
            lines.append(f"  {c:<{width}}{counts['train'][c]:>8}{counts['test'][c]:>8}")
        totals = {s: sum(counts[s].values()) for s in ("train", "test")}
        lines.append(f"  {'total':<{width}}{totals['train']:>8}{totals['test']:>8}")
        return "\n".join(lines)


def _official(split: str) -> str:
    if split not in ("train", "test"):
        raise DataError(f"official splits are 'train' and 'test', not {split!r}")
    return split



def _stem(location: str) -> str:
    """A dataset name made from a path or URL: its last component without archive endings."""
    name = Path(location.split("?", 1)[0].rstrip("/")).name
    for ending in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".gz"):
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    # what a model's or report's name may hold (cvpipe.storage.safe_name): ASCII letters and
    # digits first, then ._+- ("données" -> "donn-es", "_x" -> "x")
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "._+-" else "-" for c in name)
    cleaned = cleaned.lstrip("._+-").rstrip(".-")[:64]
    return cleaned or "dataset"


def _fetch(entry: CatalogEntry, root: Path) -> Path:
    """The official files of ``entry`` under ``<root>/downloads/<name>/``, downloading (each to
    a temporary name, checked against its published MD5, then renamed) what is missing."""
    folder = root / "downloads" / entry.name
    for remote in entry.files:
        if not (folder / remote.name).exists():
            download(remote.url, folder / remote.name, md5=remote.md5,
                     local_hint=f"${entry.env} (or --source)")
    return folder / entry.files[0].name if len(entry.files) == 1 else folder


def resolve_source(dataset: str | os.PathLike[str] | None, root: Path,
                   checksum: str | None = None, source: str | os.PathLike[str] | None = None
                   ) -> Source:
    """Find, fetch if needed, verify and fingerprint a dataset.

    ``dataset`` is a catalogued name (default ``cifar10``) or a path or URL. A named dataset is
    read from ``source``, else ``$CVPIPE_<NAME>_SOURCE``, else its official download. Official
    archives are checked against their published MD5 unless ``checksum`` (or, for CIFAR-10,
    ``$CVPIPE_CIFAR10_CHECKSUM``) names another expected digest.
    """
    dataset = str(dataset) if dataset is not None else "cifar10"
    entry = lookup(dataset) if is_catalogued(dataset) else None
    if entry is None and source is not None:
        raise DataError(f"--source locates a named dataset's files; {dataset!r} is already a "
                        "path: give it alone")
    if entry is not None:
        location = str(source or os.environ.get(entry.env) or "")
        if entry.name == "cifar10":
            checksum = checksum or os.environ.get(ENV_CIFAR10_CHECKSUM) or None
    else:
        location = dataset
    expected = parse_expected(checksum) if checksum else None
    memo = root / "cache" / "checksums.json"

    if not location:
        path = _fetch(entry, root)
    elif location.startswith(("http://", "https://", "file://")):
        # keyed by the whole URL: v1/images.tar and v2/images.tar are two datasets
        path = root / "downloads" / download_key(location) / (
            Path(urllib.parse.urlsplit(location).path).name or "download")
        if not path.exists():
            official = {f.url: f.md5 for e in ([entry] if entry else []) for f in e.files}
            want_md5 = expected[1] if expected and expected[0] == "md5" else None
            download(location, path, md5=want_md5 or official.get(location),
                     local_hint=f"${entry.env} (or --source)" if entry else "--dataset")
    elif "://" in location:  # ftp://, s3://: read as a path it became 'ftp:/x', missing
        raise DataError(f"{location}: only http://, https:// and file:// URLs are downloaded; "
                        "fetch it yourself and give the local copy")
    else:
        path = Path(location).expanduser()
        if not path.exists():
            if entry is None and os.sep not in location and "." not in location:
                lookup(location)  # a bare word: most likely a name mistyped; says which exist
            raise DataError(f"dataset source {path} does not exist")

    fmt = readers.detect_format(path)
    if entry is not None and fmt != "image-folder" and fmt != entry.format:
        raise DataError(f"{public_location(location) or path} holds the {fmt} format, not "
                        f"{entry.title}'s ({entry.format})")
    if path.is_dir():
        if expected is not None:  # nothing to hold it against: a folder has no file digest
            raise DataError(f"--checksum checks an archive file; {path} is a folder (give the "
                            "archive, or leave out the checksum)")
        digests = _tree_digest(path)
        if fmt == "idx":
            entry = _check_idx_files(path, entry)
    else:
        official = {f.md5 for f in entry.files} if entry and fmt == entry.format else set()
        if expected is None and fmt in ("cifar10", "cifar100") and not official:
            official = {f.md5 for f in lookup(fmt).files}
        algos = ("sha256", "md5") if official or (expected and expected[0] == "md5") else ("sha256",)
        digests = memo_digests(path, memo, algos)
        if expected is not None:
            verify(path, digests, expected)
        elif official and digests["md5"] not in official:
            verify(path, digests, ("md5", sorted(official)[0]))
    if entry is None and fmt in ("cifar10", "cifar100"):
        entry = lookup(fmt)
    name = entry.name if entry else _stem(location)
    return Source(name, entry.title if entry else name, location, path, fmt, digests, entry)


def _check_idx_files(folder: Path, entry: CatalogEntry | None) -> CatalogEntry | None:
    """Check a folder's gzipped IDX files against the published MD5s of ``entry`` (or of the
    catalogued dataset they belong to); returns that dataset, if known."""
    gz = [p for p in sorted(folder.rglob("*-ubyte.gz")) if p.is_file()]
    md5s = {p.name: file_digests(p, ("md5",))["md5"] for p in gz}
    known = entry or identify_idx(set(md5s.values()))
    if known is not None:
        published = {f.name: f.md5 for f in known.files}
        for name, md5 in md5s.items():
            if name in published and md5 != published[name]:
                raise ChecksumError(f"{folder / name}: md5 {md5} differs from the published "
                                    f"{published[name]} of {known.title}")
    return known


def _tree_digest(path: Path) -> dict[str, str]:
    """Fingerprint of a folder from its files' relative paths, sizes and modification times."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(path).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return {"tree-sha256": h.hexdigest()}


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"28x32"`` -> (28, 32) (height x width), ``"32"`` -> (32, 32); None stays None."""
    if text is None:
        return None
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
        h, w = parts * 2 if len(parts) == 1 else parts
    except ValueError:
        raise DataError(f"size {text!r}: expected HxW (or N for NxN), e.g. 32x32") from None
    if not (1 <= h <= 4096 and 1 <= w <= 4096):
        raise DataError(f"size {text!r}: each side must be between 1 and 4096 pixels")
    return h, w


def load_dataset(
    dataset: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    *,
    source: str | os.PathLike[str] | None = None,
    checksum: str | None = None,
    limit_per_class: int | None = None,
    size: tuple[int, int] | None = None,
    fit: str = DEFAULT_FIT,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    rebuild: bool = False,
) -> Dataset:
    """Load a dataset, decoding its source into the cache on first use.

    Parameters
    ----------
    dataset : str or path, optional
        A catalogued name (``cifar10`` -- the default --, ``cifar100``, ``cifar100-coarse``,
        ``mnist``, ``fashion-mnist``), or a URL, official archive or folder, or an image-folder
        tree (folder or ``.tar[.gz]``).
    root : path, optional
        Data root for downloads and caches (default ``$CVPIPE_DATA_ROOT`` or ``./data``).
    source : str or path, optional
        Where a named dataset's files are (default ``$CVPIPE_<NAME>_SOURCE``, else the
        official download).
    checksum : str, optional
        Expected ``md5:<hex>`` or ``sha256:<hex>`` of an archive source.
    limit_per_class : int, optional
        Keep the first N images of each class in each split (a quick subset).
    size : (int, int), optional
        (H, W) to bring every image to (default: the images' own size).
    fit : {"crop", "pad", "stretch"}
        How images of another size or shape reach ``size`` (:func:`cvpipe.images.resize`).
    test_fraction : float
        Image folders without train/ and test/: share of each class drawn into test.
    val_fraction, seed : float, int
        Validation split carved from train (stratified, seeded); the seed also draws a test
        split.
    rebuild : bool
        Decode again even if a cache exists.
    """
    root = data_root(root)
    check_split_options(val_fraction, seed)
    if limit_per_class is not None and limit_per_class < 1:
        raise DataError(f"limit_per_class must be at least 1, got {limit_per_class}")
    if fit not in FIT_POLICIES:
        raise DataError(f"fit must be one of {', '.join(FIT_POLICIES)}, not {fit!r}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    src = resolve_source(dataset, root, checksum, source)
    options = {"limit_per_class": limit_per_class, "size": list(size) if size else None,
               "fit": fit}
    if src.format == "image-folder":
        options.update(test_fraction=test_fraction, seed=seed)
    if src.entry is not None and src.format == "cifar100":
        options["labels"] = src.entry.labels
    key_text = json.dumps([CACHE_FORMAT, src.format, src.checksum, options], sort_keys=True)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cache_dir = root / "cache" / f"{src.name}-{key}"
    manifest = None if rebuild else _cached_manifest(cache_dir)
    if manifest is None:
        _build_cache(src, cache_dir, options)
        manifest = json.loads((cache_dir / "manifest.json").read_text())
    else:
        log.info("using cached dataset %s", cache_dir)
    return Dataset(cache_dir, manifest, val_fraction=val_fraction, seed=seed)


#: What a cache's manifest holds that a :class:`Dataset` reads.
_MANIFEST_KEYS = ("format", "dataset", "source_checksum", "classes", "counts", "image_shape")


def _cached_manifest(cache_dir: Path) -> dict | None:
    """The manifest of a complete, intact cache, or None: none there yet, or a damaged one
    (a record unreadable or not cvpipe's, an array missing or not of the shape and size its
    record implies), which is then decoded again from the source, the cache being derived
    data. Headers and sizes only, not the pixels: the cache is written whole and swapped in,
    so damage means a hand or a disk, and a cut or a foreign file changes those."""
    path = cache_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        intact = (isinstance(manifest, dict) and all(k in manifest for k in _MANIFEST_KEYS)
                  and manifest["format"] == CACHE_FORMAT and _arrays_intact(cache_dir, manifest))
    except (OSError, ValueError, TypeError, AttributeError):
        intact = False
    if not intact:
        log.warning("%s: the dataset cache is damaged; decoding the dataset again", cache_dir)
        return None
    return manifest


def _arrays_intact(cache_dir: Path, manifest: dict) -> bool:
    """Whether every split's arrays are there with the shape and dtype the manifest implies
    and exactly the bytes their headers declare."""
    image_shape = tuple(int(v) for v in manifest["image_shape"])
    for split in readers.SPLITS:
        n = sum(int(v) for v in manifest["counts"][split].values())
        for name, shape, dtype in ((f"{split}_images", (n, *image_shape), np.uint8),
                                   (f"{split}_labels", (n,), np.int64)):
            path = cache_dir / f"{name}.npy"
            found, _, found_dtype, data_start = npy_header(path)  # OSError when missing
            if (found != shape or found_dtype != np.dtype(dtype)
                    or path.stat().st_size != data_start + int(np.prod(shape)) * np.dtype(dtype).itemsize):
                return False
    return True


def load_cifar10(source: str | os.PathLike[str] | None = None,
                 root: str | os.PathLike[str] | None = None, **options) -> Dataset:
    """CIFAR-10 from ``source`` (any supported copy of it) or its official download:
    :func:`load_dataset` with ``dataset="cifar10"``."""
    return load_dataset("cifar10", root, source=source, **options)


def _decode(src: Source, options: dict, out_dir: Path) -> readers.DecodedDataset:
    size = tuple(options["size"]) if options["size"] else None
    sha256 = src.checksum.get("sha256")  # an archive: read what was checked
    if src.format == "image-folder":
        return readers.read_image_folder(
            src.path, size=size, fit=options["fit"], limit_per_class=options["limit_per_class"],
            test_fraction=options["test_fraction"], seed=options["seed"], out_dir=out_dir,
            sha256=sha256)
    entry = src.entry
    decoded = readers.read_official(
        src.path, src.format, labels=entry.labels if entry else "fine",
        classes=entry.classes if entry and entry.format == "idx" else None, sha256=sha256)
    limit = options["limit_per_class"]
    for split in readers.SPLITS:
        y = decoded.labels[split]
        if limit is not None:  # first N of each class, in file order
            keep = np.sort(np.concatenate(
                [np.flatnonzero(y == c)[:limit] for c in range(len(decoded.classes))]))
            decoded.images[split], decoded.labels[split] = decoded.images[split][keep], y[keep]
        source = decoded.images[split]
        if size is not None and source.shape[1:3] != size:
            # resized straight into the cache file, its space reserved first: a large --size
            # fails here in one line, not as an exhausted memory or a full disk later
            resized = reserved_npy(out_dir / f"{split}_images.npy", np.uint8,
                                   (len(source), *size, source.shape[3]),
                                   hint="free some, choose another --data-root or a smaller --size")
            for i, img in enumerate(source):
                resized[i] = resize(img, size, options["fit"])
            decoded.images[split] = resized
    return decoded


def _build_cache(src: Source, cache_dir: Path, options: dict) -> None:
    start = time.perf_counter()
    log.info("decoding %s (%s) into %s", public_location(src.location) or src.path, src.kind,
             cache_dir)
    with replace_dir(cache_dir, owned=holds("manifest.json")) as tmp:
        decoded = _decode(src, options, tmp)
        for split in readers.SPLITS:
            if not (tmp / f"{split}_images.npy").exists():
                np.save(tmp / f"{split}_images.npy", decoded.images[split])
            np.save(tmp / f"{split}_labels.npy", decoded.labels[split])
        counts = {
            split: {c: int((decoded.labels[split] == i).sum()) for i, c in enumerate(decoded.classes)}
            for split in readers.SPLITS
        }
        manifest = {
            "format": CACHE_FORMAT,
            "dataset": src.name,
            "title": src.title,
            "source": public_location(src.location) or "official download",
            "source_path": str(src.path),
            "source_kind": src.kind,
            "source_checksum": src.checksum,
            "options": options,
            "notes": decoded.notes,
            "classes": list(decoded.classes),
            "counts": counts,
            "image_shape": list(decoded.images["train"].shape[1:]),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - start, 3),
            "cvpipe_version": __version__,
        }
        del decoded  # release the memory maps before the folder is renamed
        (tmp / "manifest.json").write_text(json_dumps(manifest))
    log.info("dataset ready in %.1f s", time.perf_counter() - start)
