"""Shared plumbing of the feature extractors: input checks, backend choice, chunked threads.

Two backends compute every feature:

``"numpy"``
    NumPy and OpenCV on the host. The batch is cut into chunks of a few hundred images; one
    thread per core walks its own contiguous share of chunks (NumPy and OpenCV release the GIL
    in the loops that matter), with work buffers allocated once per thread and call.
``"torch"``
    The same algorithm written once in device-agnostic PyTorch; it runs on ``cuda`` (or on
    ``cpu`` for testing). Inputs already on the device stay there.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.utils._param_validation import (
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
)

from cvpipe.device import n_workers
from cvpipe.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

BACKENDS = ("numpy", "torch")


class BoundedCache:
    """A thread-safe least-recently-used cache bounded in bytes, not entries.

    Tables computed once per parameter set (HOG block indices, device copies of lookup
    tables) are kept here, so that no sequence of parameter sets, however hostile, can make
    the cache hold more than ``max_bytes``; a value larger than the budget is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @staticmethod
    def nbytes(value: Any) -> int:
        if isinstance(value, (tuple, list)):
            return sum(BoundedCache.nbytes(v) for v in value)
        if dataclasses.is_dataclass(value):
            return sum(BoundedCache.nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
        if hasattr(value, "nbytes"):
            return int(value.nbytes)
        if hasattr(value, "element_size") and hasattr(value, "numel"):  # a torch tensor
            return int(value.element_size() * value.numel())
        return 64

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        """The value for ``key``, made by ``make()`` and kept when it fits."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        value = make()
        size = self.nbytes(value)
        if size > self.max_bytes:
            return value
        with self._lock:
            if key not in self._items:
                self._items[key] = (value, size)
                self._size += size
                while self._size > self.max_bytes:
                    _, (_, dropped) = self._items.popitem(last=False)
                    self._size -= dropped
        return value

    @property
    def size(self) -> int:
        """Bytes held now."""
        return self._size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0


#: The features' one cache of tables kept between calls (HOG's gradient tables and block
#: indices, colour bin tables and conversion tables, their copies on a device): 128 MiB at
#: most, whatever parameters are asked for.
TABLES = BoundedCache(128 << 20)


def is_tensor(x: Any) -> bool:
    """True for a ``torch.Tensor``, without importing torch when it is not loaded."""
    mod = type(x).__module__
    if not mod.startswith("torch"):
        return False
    import torch

    return isinstance(x, torch.Tensor)


def check_device(device: Any, backend: str | None) -> None:
    """Check ``device`` and ``backend`` names without asking the driver anything.

    ``"auto"``/None are resolved only when features are computed (:func:`resolve_backend`):
    a process that merely builds extractors (a server's master before it forks its workers)
    must not initialise CUDA.
    """
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if device is None or (isinstance(device, str) and device == "auto"):
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from None
    if backend == "numpy" and dev.type != "cpu":
        raise ConfigError(f"the numpy backend runs on the CPU only, not on {dev}")


def resolve_backend(images: Any, device: Any, backend: str | None) -> tuple[str, Any]:
    """Pick ``(backend, torch_device_or_None)``.

    ``device`` None (or ``"auto"``) means: the tensor's own device for a tensor input, else
    ``cuda`` when available, else the CPU. ``backend`` None means ``"torch"`` for a tensor
    input or a non-CPU device, else ``"numpy"``.
    """
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    tensor_in = is_tensor(images)
    if device is None or (isinstance(device, str) and device == "auto"):
        if tensor_in:
            dev_type, dev = images.device.type, images.device
        elif backend == "numpy":
            return "numpy", None
        else:
            import torch

            dev_type = "cuda" if torch.cuda.is_available() else "cpu"
            dev = torch.device(dev_type)
    else:
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"invalid device {device!r}: {exc}") from None
        dev_type = dev.type
        if dev_type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} requested but CUDA is not available here")
    if backend is None:
        backend = "torch" if (tensor_in or dev_type != "cpu") else "numpy"
    if backend == "numpy":
        if dev_type != "cpu":
            raise ConfigError(f"the numpy backend runs on the CPU only, not on {dev}")
        return "numpy", None
    return "torch", dev


#: Constraints of the parameters every image transformer takes: where and how to compute, and
#: the shape that unflattens 2-D rows (the device is checked by :func:`check_device`).
RUNTIME_CONSTRAINTS: dict[str, list[Any]] = {
    "image_shape": [None, "array-like"],
    "device": "no_validation",
    "backend": [None, StrOptions(set(BACKENDS))],
    "n_jobs": [None, Integral],
}


def check_constraints(constraints: dict[str, list[Any]], values: dict[str, Any], caller: str) -> None:
    """Check ``values`` against scikit-learn style ``constraints`` (the same declarations the
    transformers' ``_parameter_constraints`` hold); :class:`ConfigError` names the first
    invalid one."""
    try:
        validate_parameter_constraints(constraints, values, caller_name=caller)
    except InvalidParameterError as exc:
        raise ConfigError(str(exc)) from None


def as_pair(value: Any, name: str, minimum: int = 1) -> tuple[int, int]:
    """``(a, b)`` of positive ints from an int or a 2-sequence."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an int or a pair of ints, not {value!r}") from None
    out = []
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ConfigError(f"{name} must hold integers >= {minimum}, not {value!r}")
        out.append(int(v))
    return out[0], out[1]


def check_images(images: Any, *, channels: int | None, name: str = "images") -> Any:
    """Check a batch of images and return it as an array (or tensor) of shape (N, H, W, C).

    The one check of a batch on each call path: the feature functions call it on what they are
    given, the transformers on what they are given, and neither checks twice.

    Parameters
    ----------
    images : (N, H, W) or (N, H, W, C) array_like or torch.Tensor
        Batch of images, channels last. ``(N, H, W)`` is a batch of single-channel images.
    channels : int or None
        Required number of channels, or None for any.

    Returns
    -------
    (N, H, W, C) ndarray or torch.Tensor
        Same data; a view where possible. Numeric and boolean dtypes are accepted.
    """
    if not is_tensor(images):
        images = np.asarray(images)
        if images.dtype == object or not (
            np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_
        ):
            raise ConfigError(f"{name} must be a numeric array, not dtype {images.dtype}")
        if np.iscomplexobj(images):
            raise ConfigError(f"{name} must be real-valued, not dtype {images.dtype}")
        if images.dtype.kind == "f" and not np.isfinite(images).all():
            raise ConfigError(f"{name} must be finite: they hold NaN or inf values")
    elif images.is_complex():
        raise ConfigError(f"{name} must be real-valued, not dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ConfigError(
            f"{name} must be a batch of shape (N, H, W) or (N, H, W, C), "
            f"not {tuple(images.shape)}"
        )
    if channels is not None and images.shape[-1] != channels:
        raise ConfigError(
            f"{name} must have {channels} channel(s) on the last axis, "
            f"not shape {tuple(images.shape)}"
        )
    if images.shape[1] < 1 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ConfigError(f"{name} have an empty dimension: {tuple(images.shape)}")
    return images


def default_chunk(pixels_per_image: int, budget: int = 1 << 18) -> int:
    """Images per chunk so a chunk holds about ``budget`` pixels (cache-sized work buffers)."""
    return max(1, budget // max(1, pixels_per_image))


def run_chunked(
    n: int,
    chunk: int,
    n_jobs: int | None,
    make_worker: Callable[[], Callable[[int, int], None]],
) -> None:
    """Run ``worker(start, stop)`` over ``range(n)`` in chunks, on up to ``n_jobs`` threads.

    Each thread builds its own worker with ``make_worker()`` (so its buffers are allocated
    once per call) and then takes the next chunk from a shared queue until none is left,
    which keeps the cores busy when one of them is slowed by other processes.
    """
    if n == 0:
        return
    starts = iter(range(0, n, chunk))
    threads = min(n_workers(n_jobs), -(-n // chunk))
    lock = threading.Lock()

    def run() -> None:
        worker = make_worker()
        while True:
            with lock:
                s = next(starts, None)
            if s is None:
                return
            worker(s, min(s + chunk, n))

    if threads == 1:
        run()
        return
    log.debug("%d images in chunks of %d on %d threads", n, chunk, threads)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cvpipe-features") as ex:
        for fut in [ex.submit(run) for _ in range(threads)]:
            fut.result()


def check_out(out: Any, n: int, d: int, tensor_input: bool) -> None:
    """Check a caller-supplied output array: float32 ndarray of shape (n, d), any strides."""
    if out is None:
        return
    if tensor_input:
        raise ConfigError("out= is for NumPy input; tensor input returns a tensor")
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (n, d):
        raise ConfigError(
            f"out must be a float32 ndarray of shape ({n}, {d}), not "
            f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
        )
    if not out.flags.writeable:
        raise ConfigError("out must be writable")


def torch_module() -> Any:
    """Import torch (lazily: the numpy backend does not need it)."""
    import torch

    return torch


def to_device_tensor(images: Any, device: torch.device) -> torch.Tensor:
    """``images`` as a tensor on ``device`` (no copy when already there)."""
    torch = torch_module()
    if is_tensor(images):
        return images.to(device)
    arr = np.ascontiguousarray(images)
    if arr.dtype in (np.uint16, np.uint32, np.uint64):
        arr = arr.astype(np.float64)  # torch lacks arithmetic on these
    if not arr.flags.writeable:  # e.g. a memory-mapped dataset; torch wants writable memory
        arr = arr.copy()
    return torch.from_numpy(arr).to(device)
