"""Blocks of stored rows as the runners read them: joined, or as their stored column parts.

A joined feature set (patches + HOG + colour) is stored as one store per component; a block
of its rows is the components' blocks side by side. The passes that only multiply the rows
(a linear model's objective, scores and sketch) take them as a :class:`ColumnBlock` and
multiply part by part; everything else gets the joined array.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cvpipe.device import torch_blas_beats_numpy

#: What :func:`matmul` hands to PyTorch.
_TORCH_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class ColumnBlock:
    """A block of rows kept as the column parts it is stored in (a joined feature set's
    components, side by side), for the passes that only multiply it.

    ``X @ W`` and ``X.T @ G`` are summed and stacked part by part: joining the parts would copy
    the whole block on every pass (patches + HOG + colour, 45,000 x 22,852 float32 from the
    stores: 3.4 s a pass of a linear SVM's objective stacked, 1.4 s part by part, two cores).

    Parameters
    ----------
    parts : list of (n, D_i) float arrays
        The same rows' columns, in order: the block is ``np.hstack(parts)``.
    """

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        edges = np.cumsum([0, *(p.shape[1] for p in self.parts)])
        self.columns = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        self.shape = (self.parts[0].shape[0], int(edges[-1]))
        self.dtype = np.result_type(*self.parts)

    def __len__(self) -> int:
        return self.shape[0]

    def __matmul__(self, W: np.ndarray) -> np.ndarray:
        """``(n, D) @ (D, k)``: the parts' products summed."""
        out = matmul(self.parts[0], W[self.columns[0]])
        for part, cols in zip(self.parts[1:], self.columns[1:], strict=True):
            out += matmul(part, W[cols])
        return out

    @property
    def T(self) -> _TransposedColumns:
        return _TransposedColumns(self)

    def map_columns(self, fn: Callable[[np.ndarray, slice], np.ndarray]) -> ColumnBlock:
        """``fn(part, its columns)`` of every part: an elementwise step, such as centring by
        a per-column mean, without joining."""
        return ColumnBlock([fn(p, cols) for p, cols in zip(self.parts, self.columns, strict=True)])

    def joined(self) -> np.ndarray:
        return np.hstack(self.parts)


class _TransposedColumns:
    def __init__(self, block: ColumnBlock):
        self.block = block

    def __matmul__(self, G: np.ndarray) -> np.ndarray:
        """``(D, n) @ (n, k)``: the parts' products stacked."""
        return np.concatenate([matmul_t(p, G) for p in self.block.parts])


def matmul(A: np.ndarray | ColumnBlock, B: np.ndarray) -> np.ndarray:
    """``A @ B`` (a :class:`ColumnBlock` part by part), by PyTorch's CPU BLAS for two float
    arrays of one dtype (shared, not copied) where it multiplies a block of rows by a few
    weight columns faster than NumPy's (:func:`cvpipe.device.torch_blas_beats_numpy`: MKL on
    an Intel CPU). NumPy multiplies the rest, and what PyTorch cannot share: read-only
    memory, negative strides."""
    if (isinstance(A, ColumnBlock) or A.dtype != B.dtype or A.dtype not in _TORCH_DTYPES
            or min(A.strides + B.strides) < 0 or not (A.flags.writeable and B.flags.writeable)
            or not torch_blas_beats_numpy()):
        return A @ B
    import torch

    return (torch.from_numpy(A) @ torch.from_numpy(B)).numpy()


def matmul_t(X: np.ndarray | ColumnBlock, G: np.ndarray) -> np.ndarray:
    """``X.T @ G`` for rows ``X`` (n, D) and ``G`` (n, k), as ``(G.T @ X).T``: the rows read
    in their own order (the same product by PyTorch on a Xeon 6.4 ms against NumPy's
    ``X.T @ G`` 16.6 ms; by NumPy on an AMD EPYC 10.4 ms against 13.8)."""
    return X.T @ G if isinstance(X, ColumnBlock) else matmul(G.T, X).T


def takes_column_blocks(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a block function ``fn(X, y, ...)`` that accepts a :class:`ColumnBlock` for ``X``
    (it only multiplies it, or applies elementwise steps through ``map_columns``): the runners
    then hand it a joined set's parts without joining them (:func:`read_block`)."""
    fn.takes_column_blocks = True
    return fn


def read_parts(ref: Any) -> tuple[Any, np.ndarray]:
    """A block reference's ``(X, y)``, ``X`` as its stored parts (a :class:`ColumnBlock`)
    where the reference has several, else an array."""
    return ref.read_columns() if hasattr(ref, "read_columns") else ref.read()


def read_block(ref: Any, fn: Callable[..., Any] | None = None) -> tuple[Any, np.ndarray]:
    """A block reference's ``(X, y)`` for ``fn``: its parts where ``fn`` takes them
    (:func:`read_parts`), else one array."""
    return read_parts(ref) if getattr(fn, "takes_column_blocks", False) else ref.read()
