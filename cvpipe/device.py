"""Where work runs: a torch device (CUDA when present, else CPU, always overridable) and how
many CPU threads a job takes."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import numpy as np

from cvpipe.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - torch is imported only where a device is resolved
    import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None picks ``cuda`` when available, else ``cpu``; anything else is checked."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} asked for, but CUDA is not available here "
                          "(CPU build of torch or no GPU); use device cpu or auto")
    return dev


def cpu_has_bfloat16_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware: Intel AMX tiles, or AVX-512's
    bfloat16 dot products (AVX512_BF16: AMD Zen 4 and later, Intel Cooper Lake and later). With
    AMX, bfloat16 autocast trains the CPU airbench net 2.7x faster (0.40 against 1.10 s a step of
    1,024 images on 2 cores); with AVX512_BF16 alone 1.6x (a 2-core AMD EPYC: 0.44 against 0.70
    s, and the patches MLP 1.56x the rows a second). Elsewhere bfloat16 is emulated and slower
    than float32 (an MLP on 11,200 patch features: 10x slower on a 2-core AMD EPYC with AVX2
    only)."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch >= 2.3
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def bfloat16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 matrix products beat float32 ones on ``device``: a CUDA GPU that
    supports bfloat16, or a CPU with bfloat16 units (:func:`cpu_has_bfloat16_units`)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_bfloat16_units()


@functools.cache
def cpu_vendor() -> str:
    """The CPU's maker as Linux names it ("GenuineIntel", "AuthenticAMD"), "" where unknown."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return ""


@functools.cache
def torch_blas_beats_numpy() -> bool:
    """Whether PyTorch's CPU BLAS multiplies the linear SVM's thin products (a block of rows
    times a few columns) faster than NumPy's: where PyTorch's is MKL on an Intel CPU (1,024 x
    22,400 float32 rows times 10 columns, 2 cores of a Xeon: 8.4 ms against 10.2). On other
    CPUs MKL is the slower (a 2-core AMD EPYC: 21.9 ms against NumPy's OpenBLAS 8.7)."""
    import torch

    return bool(torch.backends.mkl.is_available()) and cpu_vendor() == "GenuineIntel"


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def available_memory_bytes() -> int | None:
    """Memory this machine can still give without swapping (Linux's ``MemAvailable``), or
    None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # pragma: no cover - neither Linux nor POSIX
        return None


def n_workers(n_jobs: int | None) -> int:
    """Threads for ``n_jobs`` in joblib's convention: None or 1 = one, -1 = all cores, -2 = all
    but one, ..."""
    if n_jobs is None or n_jobs == 0:
        return 1
    if not isinstance(n_jobs, (int, np.integer)) or isinstance(n_jobs, bool):
        raise ConfigError(f"n_jobs must be an integer, not {n_jobs!r}")
    n = cpu_count()
    return int(n_jobs) if n_jobs > 0 else max(1, n + 1 + int(n_jobs))
