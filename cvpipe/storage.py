"""Writing files so that readers never see half of one, hashing them, and JSON of numpy values.

Every artifact cvpipe writes (dataset caches, models, reports, feature stores, checkpoints)
goes through here, so one set of rules holds everywhere:

* a file is written to a temporary name in its own folder, flushed to disk, then renamed over
  the old one (:func:`atomic_write`);
* a folder is built whole under a temporary name, then swapped in; the previous folder stays
  in place until the new one is complete (:func:`replace_dir`);
* JSON never fails on numpy scalars, arrays, tuples or paths (:func:`to_jsonable`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cvpipe.errors import ConfigError, CvpipeError


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays, tuples, sets and paths made plain JSON types."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_jsonable(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def json_dumps(value: Any, *, indent: int | None = 2) -> str:
    """JSON text of ``value`` (numpy values, tuples and paths allowed)."""
    return json.dumps(to_jsonable(value), indent=indent)


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys and tuples as lists: the text that keys are hashed from."""
    return json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse it
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(Path(root) / name, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


class StorageError(CvpipeError):
    """A file or folder could not be written (disk full, permissions), or may not be replaced."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def safe_name(name: str, what: str = "name") -> str:
    """``name`` if it is one plain path component (letters, digits, ``._+-``), else
    :class:`ConfigError`: a model or report name never reaches outside its folder."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", "..") or len(name) > 200:
        raise ConfigError(f"{what} {name!r} must be one plain name: letters, digits and ._+- "
                          "(no slashes, not starting with a dot)")
    return name


def _disk_error(path: Path, exc: OSError) -> StorageError:
    hint = " (the disk is full)" if exc.errno == errno.ENOSPC else ""
    return StorageError(f"could not write {path}: {exc.strerror or exc}{hint}; nothing was replaced")


def _temp_name(path: Path, kind: str) -> Path:
    # The pid says whose it is: a leftover of a dead process can be cleaned up safely.
    return path.with_name(f".{kind}-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


#: What :func:`_temp_name` makes: ``.<kind>-<name>-<pid>-<8 hex digits>``.
_LEFTOVER = re.compile(r"\.(?:tmp|old)-(.+)-\d+-[0-9a-f]{8}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holds(*names: str) -> Callable[[Path], bool]:
    """An ``owned`` test for :func:`replace_dir`: the folder is empty or holds one of ``names``."""

    def owned(folder: Path) -> bool:
        return not any(folder.iterdir()) or any((folder / n).exists() for n in names)

    return owned


def recover(target: str | os.PathLike[str]) -> None:
    """Finish or undo an interrupted replacement of ``target``.

    A process killed between moving the old version aside and moving the new one in leaves
    ``target`` missing and ``.old-<name>-*`` beside it: the old version is put back. Temporary
    and old folders of processes no longer alive are removed.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return
    leftovers = []
    # exactly this name: ".tmp-hog-svm-<pid>-<hex>" belongs to "hog-svm", not to "hog"
    mine = re.compile(rf"\.(tmp|old)-{re.escape(target.name)}-(\d+)-[0-9a-f]{{8}}")
    for p in parent.iterdir():
        match = mine.fullmatch(p.name)
        if match and not _pid_alive(int(match[2])):
            leftovers.append((match[1], p))
    olds = sorted((p for kind, p in leftovers if kind == "old"), key=lambda p: p.stat().st_mtime)
    if not target.exists() and olds:
        os.replace(olds.pop(), target)  # the most recent complete version
        _fsync_dir(parent)
    for _, p in leftovers:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def recover_all(parent: str | os.PathLike[str]) -> None:
    """:func:`recover` every folder of ``parent`` that an interrupted replacement left behind."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for p in parent.glob(".[to][ml][pd]-*"):
        match = _LEFTOVER.fullmatch(p.name)
        if match:
            recover(parent / match[1])


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``path`` whole or not at all.

    Parameters
    ----------
    path : path
    data : bytes, str or callable
        The content, or a function that writes the temporary file it is given.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    StorageError
        The write failed (a full disk, say): the temporary file is removed and the previous
        content of ``path``, if any, is untouched.
    """
    path = Path(path)
    tmp = _temp_name(path, "tmp")
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _disk_error(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def size_text(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``3.9 MB``, ``2.1 GB`` (powers of 1,000)."""
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes free on the disk that holds ``path`` (or would: its nearest existing folder)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_free(path: str | os.PathLike[str], nbytes: int, what: str, hint: str) -> None:
    """:class:`StorageError` before any work if ``nbytes`` more do not fit on ``path``'s disk
    (``what`` needs them; ``hint``: what the user can do)."""
    free = free_bytes(path)
    if nbytes > free:
        raise StorageError(f"{what} need {size_text(nbytes)} more on the disk of {path} "
                           f"({size_text(free)} free); {hint}")


def npy_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data_offset)`` of a ``.npy`` file, from its header
    alone (nothing mapped or read past it), so a caller can check the file's size against
    what the header declares. :class:`OSError` or :class:`ValueError` for a file that is
    missing or not ``.npy``."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        return tuple(shape), bool(fortran), dtype, f.tell()


def reserved_npy(path: str | os.PathLike[str], dtype: Any, shape: tuple[int, ...], hint: str
                 ) -> np.memmap:
    """A new ``.npy`` file of ``shape`` and ``dtype``, open for writing as a memory map, its
    whole size taken on the disk first.

    A memory map written on a full disk kills the process with SIGBUS, nothing said and a
    half-built folder left; reserving the space up front turns that into a
    :class:`StorageError` here (``hint``: what the user can do), before any work. On a
    filesystem without ``fallocate`` the space is taken as the map is written.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    offset, nbytes = array.offset, array.nbytes
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), offset, max(nbytes, 1))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                return array
            del array
            Path(path).unlink(missing_ok=True)
            free = free_bytes(Path(path).parent)
            raise StorageError(f"{path}: {size_text(nbytes)} do not fit on the disk "
                               f"({size_text(free)} free); {hint}") from None
    return array


def write_json(path: str | os.PathLike[str], value: Any) -> Path:
    """:func:`atomic_write` of ``value`` as indented JSON."""
    return atomic_write(path, json_dumps(value) + "\n")


@contextlib.contextmanager
def replace_dir(target: str | os.PathLike[str], owned: Callable[[Path], bool] | None = None
                ) -> Iterator[Path]:
    """Build a folder under a temporary name; on success, swap it in for ``target``.

    ``with replace_dir(out) as tmp:`` -- write everything into ``tmp``. When the block ends
    normally the files are synced and ``tmp`` takes ``target``'s place: the previous
    ``target`` is moved aside first and deleted only once the new one is in place (a process
    killed between the two moves is repaired by :func:`recover`, run first). When the block
    raises, ``tmp`` is removed and ``target`` is left as it was.

    Parameters
    ----------
    target : path
    owned : callable, optional
        ``owned(target)`` says whether an existing ``target`` was written by cvpipe; if not
        (a user's folder that happens to have the name), it is never replaced or deleted.

    Raises
    ------
    StorageError
        ``target`` is not cvpipe's to replace, or writing failed (the old ``target`` stays).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recover(target)
    except OSError as exc:
        raise _disk_error(target, exc) from exc
    if target.exists() and owned is not None and not owned(target):
        raise StorageError(f"{target} exists and was not written by cvpipe; refusing to replace "
                           "it (move it away or choose another name)")
    tmp = _temp_name(target, "tmp")
    try:
        tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        old = _temp_name(target, "old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise _disk_error(target, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
