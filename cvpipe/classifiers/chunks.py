"""Feature matrices read a block of rows at a time: what the classifiers train on.

A classifier that trains out of core never asks for the whole ``(N, D)`` matrix; it walks a
:class:`Chunks` object, which yields ``(X, y)`` blocks of rows in a fixed order (or in a
seeded random order of the blocks, for stochastic training). Two kinds exist:

* :class:`ArrayChunks` -- an array already in memory, cut into blocks (what ``fit(X, y)``
  wraps, so that in-memory and out-of-core training run the same code);
* stored features (:class:`cvpipe.featurestore.StoredChunks`), read from disk block by block.

Each block is addressed by a small picklable :class:`ChunkRef` that reads its own rows
wherever it runs (this process or a Dask worker), so statistics can be computed where the
data is. :class:`Concat` joins several sources (train + validation for a refit),
:class:`Mapped` applies a fitted transform to every block on the fly and :class:`Mean`
averages the features of the same rows from several sources (test-time shifts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cvpipe.featurestore.blocks import read_block

#: Rows per block of an in-memory matrix.
DEFAULT_ROWS = 4096
#: A matrix of at most this many bytes is read into memory once by iterative solvers (the
#: whole comparison peaks at 3.5 GB in the patch pipelines; hog2+color2's 545 MB of train +
#: validation rows, read from four stores and joined on every pass, took 23 s of refit).
SMALL_BYTES = 1 << 30


class ChunkRef(Protocol):
    """One block of rows; picklable and cheap to send."""

    n_rows: int

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(features float32 (n, D), labels int64 (n,)) of the block."""
        ...  # pragma: no cover


class Chunks(Protocol):
    """A feature matrix as blocks of rows."""

    n_rows: int
    n_features: int

    def refs(self) -> list[ChunkRef]:
        """The blocks, in order."""
        ...  # pragma: no cover

    def labels(self) -> np.ndarray:
        """int64 (n_rows,) labels of every row, in block order (small: read without the features)."""
        ...  # pragma: no cover


def read_ahead(chunks: Chunks, rng: np.random.Generator | None = None, *,
               for_fn: Callable[..., Any] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every block of ``chunks`` as ``(X, y)``, in order or in a random order of the blocks
    drawn from ``rng``; the next block is read in a background thread while the caller works
    on the current one (two blocks in memory at most). A joined set's blocks come as their
    stored parts where ``for_fn`` takes them (:func:`cvpipe.featurestore.blocks.read_block`)."""
    from concurrent.futures import ThreadPoolExecutor

    refs = chunks.refs()
    order = list(range(len(refs)) if rng is None else rng.permutation(len(refs)))
    if len(order) <= 1:  # nothing to read ahead
        for i in order:
            yield read_block(refs[i], for_fn)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="cvpipe-chunk-read") as pool:
        pending = pool.submit(read_block, refs[order[0]], for_fn)
        for k in range(len(order)):
            block = pending.result()
            pending = (pool.submit(read_block, refs[order[k + 1]], for_fn)
                       if k + 1 < len(order) else None)
            yield block
            del block


@dataclass(frozen=True)
class ArrayRef:
    """Rows ``[start, stop)`` of in-memory arrays."""

    X: np.ndarray
    y: np.ndarray
    start: int
    stop: int

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        return self.X[self.start:self.stop], self.y[self.start:self.stop]

    def __reduce__(self) -> Any:  # send only the rows, not the whole matrix
        X, y = self.read()
        return ArrayRef, (np.ascontiguousarray(X), np.ascontiguousarray(y), 0, self.n_rows)


class ArrayChunks:
    """An in-memory ``(N, D)`` matrix and its labels as blocks of ``rows`` rows.

    Parameters
    ----------
    X : (N, D) array
        Kept as it is (float32 or float64).
    y : (N,) int array
        Labels (class indices).
    rows : int
        Rows per block.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, rows: int = DEFAULT_ROWS):
        self.X = X
        self.y = np.asarray(y)
        if X.ndim != 2 or len(self.y) != len(X):
            raise ValueError(f"X must be (N, D) with N labels, not {X.shape} and {self.y.shape}")
        self.rows = max(1, int(rows))
        self.n_rows, self.n_features = X.shape

    def refs(self) -> list[ChunkRef]:
        return [ArrayRef(self.X, self.y, a, min(a + self.rows, self.n_rows))
                for a in range(0, self.n_rows, self.rows)]

    def labels(self) -> np.ndarray:
        return self.y


@dataclass(frozen=True)
class MappedRef:
    """A block with a function applied to its features."""

    ref: ChunkRef
    fn: Callable[[np.ndarray], np.ndarray]

    @property
    def n_rows(self) -> int:
        return self.ref.n_rows

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        X, y = self.ref.read()
        return self.fn(X), y


class Mapped:
    """``chunks`` with ``fn`` (a fitted transform: ``(n, D) -> (n, D')``) applied to every block."""

    def __init__(self, chunks: Chunks, fn: Callable[[np.ndarray], np.ndarray], n_features: int):
        self.chunks, self.fn = chunks, fn
        self.n_rows, self.n_features = chunks.n_rows, int(n_features)

    def refs(self) -> list[ChunkRef]:
        return [MappedRef(r, self.fn) for r in self.chunks.refs()]

    def labels(self) -> np.ndarray:
        return self.chunks.labels()


class Concat:
    """Several chunked matrices of the same width, one after the other."""

    def __init__(self, parts: Sequence[Chunks]):
        widths = {p.n_features for p in parts}
        if len(widths) != 1:
            raise ValueError(f"cannot join matrices of widths {sorted(widths)}")
        self.parts = list(parts)
        self.n_rows = sum(p.n_rows for p in parts)
        self.n_features = widths.pop()

    def refs(self) -> list[ChunkRef]:
        return [r for p in self.parts for r in p.refs()]

    def labels(self) -> np.ndarray:
        return np.concatenate([p.labels() for p in self.parts])


@dataclass(frozen=True)
class MeanRef:
    """One block of rows, the mean of the same block of several matrices."""

    refs: tuple[ChunkRef, ...]

    @property
    def n_rows(self) -> int:
        return self.refs[0].n_rows

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        X, y = self.refs[0].read()

        def others() -> Iterator[np.ndarray]:
            for ref in self.refs[1:]:
                more, labels = ref.read()
                if not np.array_equal(labels, y):
                    raise ValueError("matrices averaged row by row must hold the same rows")
                yield more

        return mean_of(X, others()), y


def mean_of(first: np.ndarray, others: Iterable[np.ndarray]) -> np.ndarray:
    """The float32 mean of ``first`` and ``others``, added in that order: stored features
    (:class:`Mean`) and a model's own from images average alike, to the last bit."""
    total = np.array(first, np.float32)
    count = 1
    for more in others:
        total += more
        count += 1
    total /= np.float32(count)
    return total


class Mean:
    """Several matrices of the same rows in the same blocks (the features of the same images
    and of altered copies of them), averaged row by row: what a model scores with
    test-time shifts."""

    def __init__(self, parts: Sequence[Chunks]):
        parts = list(parts)
        shapes = {(p.n_rows, p.n_features, tuple(r.n_rows for r in p.refs())) for p in parts}
        if not parts or len(shapes) != 1:
            raise ValueError("matrices averaged row by row need the same rows, width and blocks")
        self.parts = parts
        self.n_rows, self.n_features = parts[0].n_rows, parts[0].n_features

    def refs(self) -> list[ChunkRef]:
        return [MeanRef(refs) for refs in zip(*(p.refs() for p in self.parts), strict=True)]

    def labels(self) -> np.ndarray:
        return self.parts[0].labels()


def in_memory(chunks: Chunks, budget: int = SMALL_BYTES) -> Chunks:
    """``chunks`` gathered into memory when their features take at most ``budget`` bytes (a
    small matrix read many times, by an iterative solver, is read from disk once), else
    ``chunks`` as they are."""
    if isinstance(chunks, ArrayChunks) or chunks.n_rows * chunks.n_features * 4 > budget:
        return chunks
    X, y = materialize(chunks)
    return ArrayChunks(X, y, rows=max(1, chunks.n_rows))


def materialize(chunks: Chunks) -> tuple[np.ndarray, np.ndarray]:
    """The whole matrix in memory, for the estimators that need it (exact kernel SVM, OpenCV's
    SVM, PCA): ``(X float32 (N, D), y (N,))``."""
    if isinstance(chunks, ArrayChunks):
        return chunks.X, chunks.y
    X = np.empty((chunks.n_rows, chunks.n_features), np.float32)
    y = np.empty(chunks.n_rows, np.int64)
    at = 0
    for xb, yb in read_ahead(chunks):
        X[at:at + len(xb)], y[at:at + len(yb)] = xb, yb
        at += len(xb)
    return X, y


def gather_rows(chunks: Chunks, rows: np.ndarray) -> np.ndarray:
    """The features of the rows numbered ``rows`` (sorted, into the block order), read block
    by block: ``(len(rows), D)``."""
    rows = np.asarray(rows, np.int64)
    out, at, start = [], 0, 0
    for ref in chunks.refs():
        stop = start + ref.n_rows
        take = rows[(rows >= start) & (rows < stop)] - start
        if len(take):
            X, _ = ref.read()
            out.append(np.asarray(X[take]))
            at += len(take)
        start = stop
    return np.concatenate(out) if out else np.zeros((0, chunks.n_features), np.float32)
