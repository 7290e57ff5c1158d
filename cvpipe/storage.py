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
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


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
        ``path``. On any failure (a full disk included) the temporary file is removed and the
        previous content of ``path``, if any, is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
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
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike[str], value: Any) -> Path:
    """:func:`atomic_write` of ``value`` as indented JSON."""
    return atomic_write(path, json_dumps(value) + "\n")


@contextlib.contextmanager
def replace_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder under a temporary name; on success, swap it in for ``target``.

    ``with replace_dir(out) as tmp:`` -- write everything into ``tmp``. When the block ends
    normally the files are synced and ``tmp`` takes ``target``'s place; the previous
    ``target`` is moved aside first and deleted only once the new one is in place. When the
    block raises, ``tmp`` is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = target.with_name(f".tmp-{target.name}-{tag}")
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        old = target.with_name(f".old-{target.name}-{tag}")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
