"""Passes over the rows of a chunked matrix, and the statistics a linear model needs of them.

Every pass sums a function of each block of rows (:class:`Runner`: one block after another
here, or on a Dask cluster's workers, :class:`cvpipe.featurestore.dask.DaskRunner`). The
block functions (``chunk_*``) are plain functions of arrays, so a cluster can run them where
the rows are stored:

* :func:`chunk_stats` -- count, sums, and the Gram matrix ``X^T X`` (in place, by BLAS
  ``syrk``: :class:`Outer`) and ``X^T T`` of the shifted rows, summed into :class:`Stats`
  by :func:`compute_stats`;
* :func:`chunk_sketch` -- ``Xc^T (Xc Q)`` and ``Xc^T T`` of the centred, scaled rows (a
  randomized sketch of their Gram matrix, without forming it);
* :func:`chunk_objective` -- a squared-hinge loss and its gradient for given weights;
* :func:`chunk_active`, :func:`chunk_scores` -- margins and decision scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg
from sklearn.preprocessing import StandardScaler

from cvpipe.classifiers.chunks import Chunks, read_ahead
from cvpipe.featurestore.blocks import ColumnBlock, matmul, matmul_t, takes_column_blocks
from cvpipe.featurestore.dask import add_sums


class Runner:
    """Sums a function of every block of rows: here, one block after another.

    :class:`cvpipe.featurestore.dask.DaskRunner` does the same on a Dask cluster, each worker
    summing its share of the blocks where they are stored.
    """

    name = "local"

    def map_sum(self, fn: Callable[..., tuple], chunks: Chunks, *args: Any) -> tuple:
        """``sum(fn(X, y, *args) for (X, y) in chunks)``, element by element of the tuples."""
        total = None
        for X, y in read_ahead(chunks, for_fn=fn):
            part = fn(X, y, *args)
            total = part if total is None else add_sums(total, part)
        if total is None:
            raise ValueError("no rows to sum over")
        return total


LOCAL = Runner()


def _as_float(X: np.ndarray | ColumnBlock) -> np.ndarray | ColumnBlock:
    return X if X.dtype in (np.float32, np.float64) else X.astype(np.float32)


def chunk_stats(X: np.ndarray, y: np.ndarray, shift: np.ndarray, targets: np.ndarray | None,
                with_gram: bool) -> tuple:
    """One block's contribution to :class:`Stats` (``targets``: class index -> target row, or
    None for sums of the features alone)."""
    U = _as_float(X) - shift.astype(X.dtype if X.dtype == np.float64 else np.float32)
    s1 = U.sum(0, dtype=np.float64)
    s2 = np.einsum("ij,ij->j", U, U, dtype=np.float64)
    if targets is None:
        return len(U), s1, s2, np.zeros((0, 0)), np.zeros((0, 0)), np.zeros(0)
    T = targets[y]
    # float32 from float32 rows (half the memory; the Gram matrix only preconditions and starts)
    gram = Outer(U) if with_gram else np.zeros((0, 0))
    xty = (U.T @ T.astype(U.dtype)).astype(np.float64) if with_gram else np.zeros((0, 0))
    return len(U), s1, s2, gram, xty, T.sum(0, dtype=np.float64)


class Outer:
    """``U^T U`` of one block of rows, not yet formed: :meth:`add_to` adds it into a running
    sum in place with BLAS ``syrk`` (the lower triangle only: half the products of ``U.T @ U``
    and no D x D temporary). :func:`full_gram` completes the sum's upper triangle."""

    def __init__(self, U: np.ndarray):
        self.U = U

    def add_to(self, total: np.ndarray | None) -> np.ndarray:
        d = self.U.shape[1]
        if total is None:
            total = np.zeros((d, d), self.U.dtype)
        if isinstance(total, Outer):
            total = total.add_to(None)
        U = self.U.astype(total.dtype, copy=False)  # BLAS works in the sum's own type, in place
        syrk = linalg.get_blas_funcs("syrk", (U,))
        # Fortran views: total.T's upper triangle is total's lower one; U.T is (D, n)
        syrk(1.0, U.T, beta=1.0, c=total.T, trans=0, lower=0, overwrite_c=1)
        return total


def full_gram(gram: np.ndarray | Outer) -> np.ndarray:
    """The symmetric matrix of a sum of :class:`Outer` blocks (lower triangle summed),
    completed in place a block of rows at a time."""
    if isinstance(gram, Outer):
        gram = gram.add_to(None)
    d, rows = len(gram), 1024
    for a in range(0, d, rows):
        b = min(a + rows, d)
        diagonal = gram[a:b, a:b]
        diagonal[np.triu_indices(b - a, 1)] = diagonal.T[np.triu_indices(b - a, 1)]
        gram[a:b, b:] = gram[b:, a:b].T
    return gram


@takes_column_blocks
def chunk_sketch(X: np.ndarray | ColumnBlock, y: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                 Q: np.ndarray, targets: np.ndarray) -> tuple:
    """One block's ``(Xc^T (Xc Q), Xc^T T)``, ``Xc = (X - mean) / scale`` (float32 products,
    float64 sums)."""
    mean32, scale32 = mean.astype(np.float32), scale.astype(np.float32)
    if isinstance(X, ColumnBlock):
        Xc = X.map_columns(lambda part, cols: (part - mean32[cols]) / scale32[cols])
    else:
        Xc = (_as_float(X) - mean32) / scale32
    Q = Q.astype(np.float32, copy=False)
    T = targets[y].astype(np.float32)
    return matmul_t(Xc, matmul(Xc, Q)).astype(np.float64), matmul_t(Xc, T).astype(np.float64)


@takes_column_blocks
def chunk_objective(X: np.ndarray | ColumnBlock, y: np.ndarray, Wr: np.ndarray, c: np.ndarray,
                    targets: np.ndarray, device: Any = None) -> tuple:
    """One block's squared-hinge loss (without C and the regulariser) and its gradients
    ``(loss, X^T g, sum g)`` for scores ``X Wr + c`` (``g``: d loss / d scores)."""
    T = targets[y]
    if device is not None:
        import torch

        X = X.joined() if isinstance(X, ColumnBlock) else X  # one array to send to the device
        Xd = torch.from_numpy(np.ascontiguousarray(_as_float(X))).to(device)
        Td = torch.from_numpy(T).to(device)
        scores = (Xd @ torch.from_numpy(Wr).to(device, Xd.dtype)).double() + torch.from_numpy(c).to(device)
        active = (1.0 - Td * scores).clamp_min(0.0)
        g = -2.0 * Td * active
        xtg = (Xd.T @ g.to(Xd.dtype)).double()
        return float((active * active).sum()), xtg.cpu().numpy(), g.sum(0).cpu().numpy()
    X = _as_float(X)
    active = np.maximum(1.0 - T * (matmul(X, Wr.astype(X.dtype)) + c), 0.0)
    g = -2.0 * T * active
    xtg = matmul_t(X, g.astype(X.dtype)).astype(np.float64)
    return float(np.sum(active * active, dtype=np.float64)), xtg, g.sum(0, dtype=np.float64)


@takes_column_blocks
def chunk_active(X: np.ndarray | ColumnBlock, y: np.ndarray, Wr: np.ndarray, c: np.ndarray,
                 targets: np.ndarray) -> tuple:
    """(margins below 1, margins) of one block for scores ``X Wr + c``."""
    T = targets[y]
    X = _as_float(X)
    margins = T * (matmul(X, Wr.astype(X.dtype)) + c)
    return int((margins < 1).sum()), margins.size


@takes_column_blocks
def chunk_scores(X: np.ndarray | ColumnBlock, y: np.ndarray, Wr: np.ndarray, c: np.ndarray) -> np.ndarray:
    X = _as_float(X)
    return matmul(X, Wr.astype(X.dtype)) + c


# --------------------------------------------------------------------------------------------
# statistics and the problem


@dataclass
class Stats:
    """Sums over a set of rows, taken around ``shift`` (any point near the data: it only keeps
    the sums well conditioned)."""

    n: int
    shift: np.ndarray  # (D,)
    s1: np.ndarray  # (D,) sum of (x - shift)
    s2: np.ndarray  # (D,) sum of (x - shift)^2
    gram: np.ndarray | None  # (D, D) sum of (x - shift)(x - shift)^T, or None
    xty: np.ndarray | None  # (D, k) sum of (x - shift) t^T
    tsum: np.ndarray  # (k,) sum of t

    @property
    def mean(self) -> np.ndarray:
        return self.shift + self.s1 / max(self.n, 1)

    @property
    def var(self) -> np.ndarray:
        m = self.s1 / max(self.n, 1)
        return np.maximum(self.s2 / max(self.n, 1) - m * m, 0.0)

    def merged(self, other: Stats) -> Stats:
        """The statistics of both sets of rows (their Gram matrices are not kept)."""
        delta = other.shift - self.shift
        s1 = self.s1 + other.s1 + other.n * delta
        s2 = self.s2 + other.s2 + 2 * delta * other.s1 + other.n * delta * delta
        tsum = self.tsum + other.tsum if len(self.tsum) == len(other.tsum) else self.tsum
        return Stats(self.n + other.n, self.shift, s1, s2, None, None, tsum)

    def scaler(self) -> StandardScaler:
        """A fitted :class:`~sklearn.preprocessing.StandardScaler` of these rows (what
        ``StandardScaler().fit(X)`` gives, from the sums)."""
        scaler = StandardScaler()
        var = self.var
        scaler.mean_ = self.mean
        scaler.var_ = var
        scale = np.sqrt(var)
        scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
        scaler.scale_ = scale
        scaler.n_samples_seen_ = self.n
        scaler.n_features_in_ = len(var)
        return scaler


def targets_for(n_classes: int) -> np.ndarray:
    """Class index -> row of +-1 targets: one column per class, or one for two classes."""
    if n_classes == 2:
        return np.array([[-1.0], [1.0]])
    return 2.0 * np.eye(n_classes) - 1.0


def compute_stats(chunks: Chunks, targets: np.ndarray | None, *, with_gram: bool,
                  runner: Runner = LOCAL, shift: np.ndarray | None = None) -> Stats:
    """:class:`Stats` of every row of ``chunks`` (labels: class indices into ``targets``; with
    ``targets`` None, the sums of the features alone)."""
    if shift is None:
        refs = chunks.refs()
        first, _ = refs[0].read() if refs else (np.zeros((0, chunks.n_features)), None)
        shift = first.mean(0, dtype=np.float64) if len(first) else np.zeros(chunks.n_features)
    n, s1, s2, gram, xty, tsum = runner.map_sum(chunk_stats, chunks, shift, targets, with_gram)
    gram = full_gram(gram) if with_gram else None
    return Stats(int(n), shift, s1, s2, gram, xty if with_gram else None, tsum)
