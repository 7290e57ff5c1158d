"""Wavelet scattering features of a batch of images, computed by kymatio.

The scattering transform [1]_ [2]_ is designed, not learned: a cascade of Morlet wavelet
convolutions and moduli, averaged by a low-pass filter, that is stable to small
deformations. It is the classic answer to "how far do designed features go" on CIFAR-10
([3]_: 82.3% with a roto-translation variant and an SVM); kymatio [4]_ is the field's
library, and :class:`ScatteringTransformer` hands the whole batch to it, in these stages:

1. every channel of every image, as float32 (8-bit values divided by 255 into [0, 1], float
   images as they are), is filtered by kymatio's ``Scattering2D`` with ``J`` scales and ``L``
   orientations up to ``max_order``: ``K = 1 + J L`` coefficients of orders 0 and 1, plus
   ``L**2 J (J - 1) / 2`` of order 2, each a ``(H // 2**J, W // 2**J)`` map (on the CPU,
   its NumPy front end with :func:`periodise` as the Fourier subsampling, 1.5x faster);
2. (``log``) the coefficients are compressed by ``log(1 + max(x, 0) / LOG_EPS)``, which evens out
   the orders' very different scales for a linear classifier;
3. (``pool``) each map is averaged over a ``pool`` x ``pool`` grid of cells;
4. the values are flattened in the order (channel, coefficient, row, column).

Only kymatio's 2-D front ends are imported: kymatio 0.3.0's package-level ``kymatio.torch``
and ``kymatio.numpy`` also load its 3-D filters, which need ``scipy.special.sph_harm``, gone
since SciPy 1.17 (kymatio issue #1068).

References
----------
.. [1] S. Mallat, "Group Invariant Scattering", Comm. Pure Appl. Math. 65(10), 2012.
.. [2] J. Bruna and S. Mallat, "Invariant Scattering Convolution Networks", IEEE TPAMI
       35(8), 2013, :doi:`10.1109/TPAMI.2012.230`.
.. [3] E. Oyallon and S. Mallat, "Deep Roto-Translation Scattering for Object
       Classification", CVPR 2015.
.. [4] M. Andreux et al., "Kymatio: Scattering Transforms in Python", JMLR 21(60), 2020.
"""

from __future__ import annotations

import functools
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.utils._param_validation import Interval

from cvpipe.errors import ConfigError
from cvpipe.features._common import (
    RUNTIME_CONSTRAINTS,
    is_tensor,
    resolve_backend,
    run_chunked,
    to_device_tensor,
    torch_module,
)
from cvpipe.features.transformers import _ImageTransformer

#: The offset of the log compression (stage 2): coefficients of 8-bit images in [0, 1]
#: reach about 1 (order 0) down to 1e-4 (order 2).
LOG_EPS = 1e-4
#: Images per chunk: kymatio's intermediate maps of a chunk stay within a few tens of MB.
CHUNK = 128


def n_coefficients(J: int, L: int, max_order: int) -> int:
    """Scattering coefficients per channel and position: ``1 + J L (+ L**2 J (J-1) / 2)``."""
    return 1 + J * L + (L * L * J * (J - 1) // 2 if max_order == 2 else 0)


def compress_and_pool(coefficients: Any, log: bool, pool: int | None, xp: Any = np) -> Any:
    """Stages 2-3 on kymatio's ``(n, C, K, rows, cols)`` output (an ndarray, ``xp=np``, or a
    tensor, ``xp=torch``): ``log(1 + max(x, 0) / LOG_EPS)`` if ``log``, then the mean of each of
    ``pool`` x ``pool`` cells, row-major, giving ``(n, C, K, pool * pool)``."""
    if log:
        # a coefficient is a modulus averaged by a positive window, but kymatio's periodised
        # low-pass filter is not exactly positive: values down to about -1e-4 (an edge between
        # white and black), below -LOG_EPS would make the log NaN
        coefficients = xp.log1p(coefficients.clip(0) / LOG_EPS)
    if pool is None:
        return coefficients
    rows, cols = coefficients.shape[-2:]
    r_edges = [i * rows // pool for i in range(pool + 1)]
    c_edges = [j * cols // pool for j in range(pool + 1)]
    cells = [coefficients[..., r_edges[i]:r_edges[i + 1], c_edges[j]:c_edges[j + 1]].mean((-2, -1))
             for i in range(pool) for j in range(pool)]
    return xp.stack(cells, -1)


def periodise(x: np.ndarray, k: int) -> np.ndarray:
    """kymatio's ``subsample_fourier`` for the NumPy backend, 4x faster: the ``(B, N, M)``
    complex spectra folded onto ``(B, N // k, M // k)`` by the mean of their ``k x k``
    blocks (the spectrum of the signal subsampled by ``k``), summed block by block.

    kymatio takes the mean over two strided axes of a 5-d view, which NumPy walks element by
    element; it was half of the whole transform's time on CIFAR-10's 32 x 32 images. Equal to
    kymatio's to float32 rounding (the blocks are added in another order).
    """
    if k == 1:
        return x.copy()
    b, n, m = x.shape
    rows, cols = n // k, m // k
    folded = x[:, :rows].copy()
    for i in range(1, k):
        folded += x[:, i * rows:(i + 1) * rows]
    out = folded[:, :, :cols].copy()
    for j in range(1, k):
        out += folded[:, :, j * cols:(j + 1) * cols]
    out *= np.float32(1.0 / (k * k))
    return out


@functools.cache
def _numpy_backend() -> Any:
    """kymatio's NumPy backend with :func:`periodise` as its Fourier subsampling (kymatio takes
    a backend object in place of its name)."""
    from kymatio.scattering2d.backend.numpy_backend import NumpyBackend2D

    class PeriodisingBackend(NumpyBackend2D):
        @classmethod
        def subsample_fourier(cls, x: np.ndarray, k: int) -> np.ndarray:
            cls.complex_check(x)
            return periodise(x, k)

    return PeriodisingBackend


@functools.lru_cache(maxsize=16)
def _scattering(J: int, L: int, max_order: int, shape: tuple[int, int], backend: str,
                device: str) -> Any:
    """kymatio's ``Scattering2D`` for one image shape (its filters are built once)."""
    if backend == "numpy":
        from kymatio.scattering2d.frontend.numpy_frontend import ScatteringNumPy2D

        return ScatteringNumPy2D(J=J, shape=shape, L=L, max_order=max_order,
                                 backend=_numpy_backend())
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    return ScatteringTorch2D(J=J, shape=shape, L=L, max_order=max_order).to(device)


class ScatteringTransformer(_ImageTransformer):
    """Wavelet scattering features (kymatio's ``Scattering2D``), stateless.

    Parameters
    ----------
    J : int
        Scales: the maps are averaged over ``2**J`` pixels and subsampled by it; images need
        sides of at least ``2**J``.
    L : int
        Orientations of the wavelets.
    max_order : {1, 2}
        Highest order of the cascade.
    log : bool
        Compress every coefficient by ``log(1 + max(x, 0) / LOG_EPS)`` (stage 2).
    pool : int or None
        Average each map over a ``pool`` x ``pool`` grid of cells (stage 3); None keeps
        every position.
    image_shape, device, backend, n_jobs
        As for the other image transformers; ``backend="torch"`` runs kymatio's torch front
        end (on ``device``), ``"numpy"`` its NumPy one on the CPU.

    Attributes
    ----------
    n_features_in_, image_shape_
        As for the other image transformers.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((2, 32, 32, 3), np.uint8)
    >>> ScatteringTransformer(device="cpu").fit_transform(x).shape
    (2, 15552)
    """

    _parameter_constraints: dict = {
        "J": [Interval(Integral, 1, 8, closed="both")],
        "L": [Interval(Integral, 1, 32, closed="both")],
        "max_order": [Interval(Integral, 1, 2, closed="both")],
        "log": ["boolean"],
        "pool": [None, Interval(Integral, 1, None, closed="left")],
        **RUNTIME_CONSTRAINTS,
    }

    def __init__(self, J: int = 2, L: int = 8, max_order: int = 2, log: bool = False,
                 pool: int | None = None, image_shape: tuple[int, ...] | None = None,
                 device: Any = None, backend: str | None = None, n_jobs: int | None = -1):
        self.J = J
        self.L = L
        self.max_order = max_order
        self.log = log
        self.pool = pool
        self.image_shape = image_shape
        self.device = device
        self.backend = backend
        self.n_jobs = n_jobs

    def describe(self) -> str:
        where = "every position" if self.pool is None else f"means over {self.pool}x{self.pool} cells"
        return (f"wavelet scattering: J={self.J}, L={self.L}, order {self.max_order}"
                f"{', log' if self.log else ''}, {where}")

    def _make_params(self) -> dict[str, Any]:
        return {"J": int(self.J), "L": int(self.L), "max_order": int(self.max_order),
                "log": bool(self.log), "pool": None if self.pool is None else int(self.pool)}

    def _grid(self, image_shape: tuple[int, ...], params: dict[str, Any]) -> tuple[int, int]:
        """(rows, columns) of each coefficient's map after stage 3."""
        h, w, step = int(image_shape[0]), int(image_shape[1]), 2 ** params["J"]
        if min(h, w) < step:
            raise ConfigError(f"images of {h}x{w} pixels are too small for scattering with J="
                              f"{params['J']}: they need sides of at least {step}")
        rows, cols = h // step, w // step
        pool = params["pool"]
        if pool is not None and pool > min(rows, cols):
            raise ConfigError(f"pool={pool} cells a side, but {h}x{w} images give {rows}x{cols} "
                              f"positions with J={params['J']}")
        return (pool, pool) if pool is not None else (rows, cols)

    def _n_out(self, image_shape: tuple[int, ...], params: dict[str, Any]) -> int:
        rows, cols = self._grid(image_shape, params)
        channels = int(image_shape[2]) if len(image_shape) > 2 else 1
        return channels * n_coefficients(params["J"], params["L"], params["max_order"]) * rows * cols

    def _extract(self, images: Any, params: dict[str, Any], out: Any = None) -> Any:
        kind, device = resolve_backend(images, self.device, self.backend)
        n, h, w, _ = (int(s) for s in images.shape)
        d = self._n_out(tuple(images.shape[1:]), params)
        scattering = _scattering(params["J"], params["L"], params["max_order"], (h, w), kind,
                                 str(device) if kind == "torch" else "cpu")
        if kind == "torch":
            return self._scatter_torch(images, scattering, params, device, d)
        if is_tensor(images):
            images = images.detach().cpu().numpy()
        if out is None:
            out = np.empty((n, d), np.float32)

        def make_worker():
            def work(start: int, stop: int) -> None:
                x = np.moveaxis(images[start:stop], -1, 1).astype(np.float32)
                if images.dtype == np.uint8:
                    x *= np.float32(1 / 255)
                codes = compress_and_pool(scattering(x), params["log"], params["pool"], np)
                out[start:stop] = codes.reshape(stop - start, -1)
            return work

        run_chunked(n, CHUNK, self.n_jobs, make_worker)
        return out

    def _scatter_torch(self, images: Any, scattering: Any, params: dict[str, Any], device: Any,
                       d: int) -> Any:
        torch = torch_module()
        x_all = to_device_tensor(images, device)
        outs = []
        for start in range(0, len(x_all), CHUNK):
            x = x_all[start:start + CHUNK].permute(0, 3, 1, 2).float()
            if x_all.dtype == torch.uint8:
                x = x / 255.0
            outs.append(compress_and_pool(scattering(x.contiguous()), params["log"],
                                          params["pool"], torch).reshape(len(x), -1))
        return torch.cat(outs) if outs else torch.zeros((0, d), device=x_all.device)
