"""Official releases (CIFAR-10, CIFAR-100, IDX) from their archive or folder; a source's
format told from its file names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

from cvpipe.data.readers.archives import (
    _Budget,
    _files_under,
    _iter_members,
    _open_tar,
    _read_file,
    _read_member,
)
from cvpipe.data.readers.cifar import _OFFICIAL_BATCHES, _batches_to_arrays, _cifar100_to_arrays
from cvpipe.data.readers.decoded import DecodedDataset
from cvpipe.data.readers.idx import IDX_FILES, _idx_stem, _idx_to_arrays
from cvpipe.errors import DataError
from cvpipe.images import is_image_name


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
