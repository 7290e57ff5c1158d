"""CIFAR-10 from any supported source, decoded once into a memory-mappable cache.

Cache layout, ``<data root>/cache/cifar10-<key>/``::

    manifest.json                 source, checksum, classes, counts per class per split
    {train,test}_images.npy       uint8 (N, 32, 32, 3), loaded with mmap_mode="r"
    {train,test}_labels.npy       int64 (N,)

``key`` hashes the source's checksum and the decoding options, so a changed source
or option builds a new cache. A cache is built in a temporary folder and renamed into
place only once complete, and ``manifest.json`` is written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cvpipe import __version__
from cvpipe.config import ENV_CIFAR10_CHECKSUM, ENV_CIFAR10_SOURCE, data_root
from cvpipe.data import readers
from cvpipe.data.checksums import memo_digests, parse_expected, verify
from cvpipe.data.download import download, public_location
from cvpipe.data.splits import stratified_split
from cvpipe.errors import DataError
from cvpipe.storage import holds, json_dumps, replace_dir

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CACHE_FORMAT = 1
SPLIT_NAMES = ("train", "val", "train_full", "test")


@dataclass(frozen=True)
class Source:
    """A resolved dataset source: where it is, what kind it is and its fingerprint."""

    location: str
    path: Path
    kind: str  # official-archive | official-folder | image-folder | image-folder-archive
    checksum: dict[str, str]


@dataclass
class Dataset:
    """A decoded CIFAR-10-style dataset backed by a cache folder.

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
    def checksum(self) -> str:
        """The source's fingerprint, ``algo:hex``."""
        algo = "sha256" if "sha256" in self.manifest["source_checksum"] else "tree-sha256"
        return f"{algo}:{self.manifest['source_checksum'][algo]}"

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.cache_dir / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def images(self, split: str) -> np.ndarray:
        """uint8 (N, 32, 32, 3) RGB images of an official split, memory-mapped."""
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
            f"CIFAR-10 dataset ({m['source_kind']})",
            f"  source:    {m['source']}",
            f"  checksum:  {self.checksum}",
            f"  cache:     {self.cache_dir}",
            f"  built:     {m['created']} in {m['build_seconds']:.1f} s (cvpipe {m['cvpipe_version']})",
            f"  images:    {' x '.join(map(str, m['image_shape']))} uint8",
            f"  validation: {self.val_fraction:.0%} of train per class, seed {self.seed}",
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


def resolve_source(source: str | os.PathLike[str] | None, root: Path,
                   checksum: str | None = None) -> Source:
    """Find, fetch if needed, verify and fingerprint a source.

    ``source`` is a URL, a local path, or None for ``$CVPIPE_CIFAR10_SOURCE`` and then the
    official download. The official archive is checked against its published MD5 unless
    ``checksum`` (or ``$CVPIPE_CIFAR10_CHECKSUM``) names another expected digest.
    """
    location = str(source or os.environ.get(ENV_CIFAR10_SOURCE) or CIFAR10_URL)
    checksum = checksum or os.environ.get(ENV_CIFAR10_CHECKSUM) or None
    expected = parse_expected(checksum) if checksum else None
    memo = root / "cache" / "checksums.json"

    if location.startswith(("http://", "https://", "file://")):
        name = Path(location.split("?", 1)[0]).name or "cifar10-download"
        path = root / "downloads" / name
        if not path.exists():
            official = location == CIFAR10_URL
            want_md5 = expected[1] if expected and expected[0] == "md5" else None
            download(location, path, md5=want_md5 or (CIFAR10_MD5 if official else None))
    else:
        path = Path(location).expanduser()
        if not path.exists():
            raise DataError(f"dataset source {path} does not exist")

    if path.is_dir():
        batches = path if (path / "data_batch_1").exists() else path / "cifar-10-batches-py"
        if (batches / "data_batch_1").exists():
            return Source(location, batches, "official-folder", _tree_digest(batches))
        return Source(location, path, "image-folder", _tree_digest(path))

    kind = "official-archive" if readers.is_official_archive(path) else "image-folder-archive"
    if expected is None and kind == "official-archive":
        expected = ("md5", CIFAR10_MD5)
    algos = ("sha256", "md5") if expected and expected[0] == "md5" else ("sha256",)
    digests = memo_digests(path, memo, algos)
    if expected is not None:
        verify(path, digests, expected)
    return Source(location, path, kind, digests)


def _tree_digest(path: Path) -> dict[str, str]:
    """Fingerprint of a folder from its files' relative paths, sizes and modification times."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(path).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return {"tree-sha256": h.hexdigest()}


def load_cifar10(
    source: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    *,
    checksum: str | None = None,
    limit_per_class: int | None = None,
    on_size_mismatch: str = "error",
    val_fraction: float = 0.1,
    seed: int = 0,
    rebuild: bool = False,
) -> Dataset:
    """Load CIFAR-10, decoding the source into the cache on first use.

    Parameters
    ----------
    source : str or path, optional
        URL, official archive or ``cifar-10-batches-py/`` folder, or an image-folder tree
        (folder or ``.tar[.gz]``). Defaults to ``$CVPIPE_CIFAR10_SOURCE``, then the
        official download.
    root : path, optional
        Data root for downloads and caches (default ``$CVPIPE_DATA_ROOT`` or ``./data``).
    checksum : str, optional
        Expected ``md5:<hex>`` or ``sha256:<hex>`` of an archive source.
    limit_per_class : int, optional
        Keep the first N images of each class in each split (a quick subset).
    on_size_mismatch : {"error", "resize"}
        What to do with images that are not 32x32.
    val_fraction, seed : float, int
        Validation split carved from train (stratified, seeded).
    rebuild : bool
        Decode again even if a cache exists.
    """
    root = data_root(root)
    if limit_per_class is not None and limit_per_class < 1:
        raise DataError(f"limit_per_class must be at least 1, got {limit_per_class}")
    src = resolve_source(source, root, checksum)
    options = {"limit_per_class": limit_per_class, "on_size_mismatch": on_size_mismatch}
    key_text = json.dumps([CACHE_FORMAT, src.kind, src.checksum, options], sort_keys=True)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cache_dir = root / "cache" / f"cifar10-{key}"
    if rebuild or not (cache_dir / "manifest.json").exists():
        _build_cache(src, cache_dir, options)
    else:
        log.info("using cached dataset %s", cache_dir)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    return Dataset(cache_dir, manifest, val_fraction=val_fraction, seed=seed)


def _decode(src: Source, options: dict) -> readers.DecodedDataset:
    if src.kind == "official-archive":
        decoded = readers.read_official_archive(src.path)
    elif src.kind == "official-folder":
        decoded = readers.read_official_folder(src.path)
    else:
        return readers.read_image_folder(
            src.path, on_size_mismatch=options["on_size_mismatch"],
            limit_per_class=options["limit_per_class"],
        )
    limit = options["limit_per_class"]
    if limit is not None:  # first N of each class, in file order
        for split in readers.SPLITS:
            y = decoded.labels[split]
            keep = np.sort(np.concatenate(
                [np.flatnonzero(y == c)[:limit] for c in range(len(decoded.classes))]))
            decoded.images[split], decoded.labels[split] = decoded.images[split][keep], y[keep]
    return decoded


def _build_cache(src: Source, cache_dir: Path, options: dict) -> None:
    start = time.perf_counter()
    log.info("decoding %s (%s) into %s", public_location(src.location), src.kind, cache_dir)
    decoded = _decode(src, options)
    with replace_dir(cache_dir, owned=holds("manifest.json")) as tmp:
        for split in readers.SPLITS:
            np.save(tmp / f"{split}_images.npy", decoded.images[split])
            np.save(tmp / f"{split}_labels.npy", decoded.labels[split])
        counts = {
            split: {c: int((decoded.labels[split] == i).sum()) for i, c in enumerate(decoded.classes)}
            for split in readers.SPLITS
        }
        manifest = {
            "format": CACHE_FORMAT,
            "dataset": "cifar10",
            "source": public_location(src.location),
            "source_path": str(src.path),
            "source_kind": src.kind,
            "source_checksum": src.checksum,
            "options": options,
            "classes": list(decoded.classes),
            "counts": counts,
            "image_shape": list(decoded.images["train"].shape[1:]),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - start, 3),
            "cvpipe_version": __version__,
        }
        (tmp / "manifest.json").write_text(json_dumps(manifest))
    log.info("dataset ready in %.1f s", time.perf_counter() - start)
