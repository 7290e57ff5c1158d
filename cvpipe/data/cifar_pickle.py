"""The official CIFAR python batches, read without trusting them.

A batch of the official CIFAR-10 and CIFAR-100 releases is a Python 2 pickle of a dict with
bytes keys: ``data``, a uint8 ``(N, 3072)`` NumPy array (three 32 x 32 planes per row);
``labels`` (CIFAR-10) or ``fine_labels`` and ``coarse_labels`` (CIFAR-100), lists of ints;
and names (``filenames``, ``batch_label``). The ``meta`` files hold lists of class names.

``pickle.load`` runs whatever a file asks for, and even NumPy's own array reconstructors are
not safe: a crafted file can declare an object dtype and build an array of attacker-chosen
pointers over raw bytes, which the first cast dereferences. So the unpickler below never
hands the stream a NumPy callable. It gives it stand-ins that only record what the stream
declares, in order:

1. **dtype**: only ``uint8`` (code ``u1``, no fields, no sub-array, no flags) is accepted;
2. **array**: a declared shape of at most :data:`MAX_VALUES` values whose raw bytes are in
   the file, as many as the shape needs; the array is a read-only ``uint8`` view of them
   (nothing allocated from a declared size, nothing uninitialised);
3. **the batch**: a dict of bytes or str keys whose ``data`` is such an array of rows of
   3,072 values, and whose label lists are flat lists of ints in range, as many as the rows,
   checked element by element before anything is cast (a list sharing itself many times
   would otherwise expand exponentially in ``np.asarray``).

Any other structure is a :class:`~cvpipe.errors.DataError`.

References
----------
Krizhevsky, "Learning Multiple Layers of Features from Tiny Images" (2009), and the release's
page, https://www.cs.toronto.edu/~kriz/cifar.html (the batch layout).
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from typing import Any

import numpy as np

from cvpipe.errors import DataError

#: Values per image row: three 32 x 32 colour planes.
ROW_VALUES = 3 * 32 * 32
#: Most rows one batch file may hold (CIFAR-100's train file has 50,000) and most values of
#: any array in one: a declared size beyond them is refused before anything is read.
MAX_ROWS = 60_000
MAX_VALUES = MAX_ROWS * ROW_VALUES
#: Most class names, and characters per name, of a meta file (CIFAR-100 has 100 and 20).
MAX_CLASSES = 1000
MAX_NAME_CHARS = 200

_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


class _DType:
    """Stands for ``numpy.dtype(code, align, copy)``: only plain uint8."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if code not in ("u1", b"u1"):
            raise pickle.UnpicklingError(f"refusing dtype {code!r}: only uint8 arrays are read")

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, sub-array, names, fields, item size, alignment, flags)
        if (not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5])
                or (len(state) > 7 and state[7] != 0)):
            raise pickle.UnpicklingError("refusing a dtype with fields, a sub-array or flags")


class _Array:
    """Stands for ``numpy.core.multiarray._reconstruct(ndarray, shape, typecode)`` and the
    state the stream then sets: becomes a read-only uint8 view of the file's bytes."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5) or self.array is not None:
            raise pickle.UnpicklingError("not an array's state")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, _DType) or not isinstance(fortran, bool):
            raise pickle.UnpicklingError("an array of another dtype than uint8")
        if (not isinstance(shape, tuple) or not 1 <= len(shape) <= 2
                or not all(type(n) is int and n >= 0 for n in shape)):
            raise pickle.UnpicklingError(f"an array of shape {shape!r}")
        size = math.prod(shape)
        if size > MAX_VALUES:
            raise pickle.UnpicklingError(f"an array of {size:,} values (at most {MAX_VALUES:,})")
        if isinstance(raw, str):  # a Python 2 str, read as latin-1 text
            raw = raw.encode("latin1")
        if not isinstance(raw, bytes) or len(raw) != size:
            raise pickle.UnpicklingError(f"an array of shape {shape} without its {size:,} bytes")
        self.array = np.frombuffer(raw, np.uint8).reshape(shape, order="F" if fortran else "C")


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("refusing to reconstruct anything but an ndarray")
    return _Array()


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode``, as protocol-2 pickles of bytes use it: latin-1 text only."""
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _LATIN1:
        raise pickle.UnpicklingError("refusing _codecs.encode of anything but latin-1 text")
    return text.encode("latin1")


#: ``numpy.ndarray`` in the stream: a marker that ``_reconstruct`` accepts, nothing callable.
_NDARRAY = object()


class _Unpickler(pickle.Unpickler):
    """Resolves the four globals of an official batch to the stand-ins; refuses all others."""

    _GLOBALS = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _DType,
        ("_codecs", "encode"): _encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _check_opcodes(data: bytes) -> None:
    """Walk the stream's opcodes before the C unpickler runs them: every declared length must
    lie within the file, and memo slots must be numbered in order (as ``pickle.dumps`` writes
    them) -- the C unpickler grows and zero-fills its memo up to any index it is given, so one
    ``LONG_BINPUT 0x7fffffff`` would cost 32 GB (found by tests/test_fuzz_readers.py)."""
    memo = 0
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if not isinstance(arg, int) or not 0 <= arg <= memo:
                raise pickle.UnpicklingError(f"memo slot {arg} out of order")
            memo = max(memo, arg + 1)
        elif opcode.name == "MEMOIZE":
            memo += 1


def load_batch(data: bytes, name: str) -> dict[str, Any]:
    """The dict a batch or meta file holds, keys as str, arrays as read-only uint8 arrays."""
    try:
        _check_opcodes(data)
        raw = _Unpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any failure here means a corrupt, foreign or crafted file
        raise DataError(f"{name}: not a readable CIFAR batch ({exc})") from exc
    if not isinstance(raw, dict) or not all(isinstance(k, (bytes, str)) for k in raw):
        raise DataError(f"{name}: not a readable CIFAR batch (not a dict of names)")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, _Array):
            if value.array is None:
                raise DataError(f"{name}: an array without its data")
            value = value.array
        out[key.decode("latin1") if isinstance(key, bytes) else key] = value
    return out


def class_names(meta: dict[str, Any], key: str, name: str) -> tuple[str, ...]:
    """The class names of a meta file's ``key``: a list of at most :data:`MAX_CLASSES`
    distinct, non-empty names."""
    names = meta.get(key)
    if (not isinstance(names, list) or not 2 <= len(names) <= MAX_CLASSES
            or not all(isinstance(n, (bytes, str)) and 0 < len(n) <= MAX_NAME_CHARS for n in names)):
        raise DataError(f"{name}: {key} is not a list of 2 to {MAX_CLASSES} class names")
    try:
        decoded = tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: a class name is not UTF-8 text") from exc
    if len(set(decoded)) != len(decoded):
        raise DataError(f"{name}: {key} names a class twice")
    return decoded


def batch_arrays(batch: dict[str, Any], name: str, label_key: str, n_classes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) images and int64 (N,) labels of one batch, its structure checked
    (see the module's docstring) before any cast."""
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != ROW_VALUES:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{name}: expected uint8 rows of {ROW_VALUES} values, got {shape}")
    labels = batch.get(label_key)
    if not isinstance(labels, list) or len(labels) != len(data):
        raise DataError(f"{name}: {label_key} is not a list of one label per image")
    if not all(type(v) is int and 0 <= v < n_classes for v in labels):
        raise DataError(f"{name}: labels do not match the images or the class list")
    # rows hold three 32 x 32 planes (R, G, B): channels last
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, np.array(labels, dtype=np.int64)
