"""Linear SVM (one-vs-rest, squared hinge) by preconditioned L-BFGS, in memory or out of core.

The primal objective is the one of liblinear's ``LinearSVC(loss="squared_hinge")``::

    min_w,b  1/2 ||w_k||^2 + C * sum_i max(0, 1 - y_ik (w_k . x_i + b_k))^2    for each class k

with y_ik = +1 for class k and -1 otherwise; the intercept is not regularised. Squared hinge
is differentiable, so every class is solved at once by L-BFGS on dense matrix products.

Stages, in order (:class:`LinearProblem`):

1. **Statistics**, one pass over the rows, a block at a time: count, sums, and the Gram
   matrix ``X^T X`` and ``X^T Y`` of the (shifted) rows. Nothing else needs the whole
   matrix, so the rows can stay on disk (:mod:`cvpipe.classifiers.chunks`) and the pass can
   run on a Dask cluster.
2. **One factorisation**: the Cholesky factor ``L`` of ``H0 = I + 2 C0 Xc^T Xc`` (``Xc``
   the centred, optionally standardised rows) -- the Hessian the objective would have if
   every margin were active. It preconditions every later fit: L-BFGS runs on
   ``v = L^T w``, where the objective's curvature is close to the identity, and converges in
   tens of passes where the plain problem took hundreds.
3. **Start** from the least-squares solution ``H0^{-1} 2 C0 Xc^T (Y - mean Y)`` (the
   squared hinge with every margin active, one triangular solve away), or from a previous
   candidate's weights (warm starts along a path of C values).
4. **L-BFGS** on the exact objective; each evaluation is one pass over the rows (scores,
   then the gradient), summed block by block.

A grid of C values therefore costs one statistics pass, one factorisation and the passes
of the fits themselves (:func:`fit_path`), and a refit on more rows starts from the chosen
candidate's weights with the same preconditioner. The preconditioner only changes the path,
not the minimum: the result is the objective's minimiser (to the tolerance), as liblinear's.

The products run with NumPy on the host, or with PyTorch on a GPU (``device``); the L-BFGS
iterations stay in SciPy, in float64, on the host.

References
----------
Fan, Chang, Hsieh, Wang & Lin, "LIBLINEAR: A library for large linear classification",
JMLR 9 (2008). Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006), ch. 7 (L-BFGS)
and 5.1 (preconditioning).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np
from scipy import linalg
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import ThreadpoolController, threadpool_limits

from cvpipe.classifiers.chunks import ArrayChunks, Chunks, in_memory, materialize, read_ahead
from cvpipe.featurestore.dask import add_sums

log = logging.getLogger(__name__)

#: Above this many features the D x D Gram matrix (8 D^2 bytes) is not formed: L-BFGS runs
#: without a preconditioner.
MAX_GRAM_FEATURES = 16384
#: Problems of at most this many values (rows x features) are solved on one BLAS thread.
SMALL_PROBLEM = 10_000_000
#: Up to this many features SciPy's own BLAS (L-BFGS's vector steps, the preconditioner's
#: solves) runs on one thread: 2x faster iterations on 45,000 x 2,000 rows, where its
#: threads only fight NumPy's; beyond, the triangular solves and the factorisation gain more.
SERIAL_SCIPY_FEATURES = 4096
#: A preconditioner's factor is reused for curvatures up to this factor away from its own.
FACTOR_REUSE = 2.0


# --------------------------------------------------------------------------------------------
# passes over the rows: local, or on a cluster


class Runner:
    """Sums a function of every block of rows: here, one block after another.

    :class:`cvpipe.featurestore.dask.DaskRunner` does the same on a Dask cluster, each worker
    summing its share of the blocks where they are stored.
    """

    name = "local"

    def map_sum(self, fn: Callable[..., tuple], chunks: Chunks, *args: Any) -> tuple:
        """``sum(fn(X, y, *args) for (X, y) in chunks)``, element by element of the tuples."""
        total = None
        for X, y in read_ahead(chunks):
            part = fn(X, y, *args)
            total = part if total is None else add_sums(total, part)
        if total is None:
            raise ValueError("no rows to sum over")
        return total


LOCAL = Runner()


def _as_float(X: np.ndarray) -> np.ndarray:
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


def chunk_objective(X: np.ndarray, y: np.ndarray, Wr: np.ndarray, c: np.ndarray,
                    targets: np.ndarray, device: Any = None) -> tuple:
    """One block's squared-hinge loss (without C and the regulariser) and its gradients
    ``(loss, X^T g, sum g)`` for scores ``X Wr + c`` (``g``: d loss / d scores)."""
    T = targets[y]
    if device is not None:
        import torch

        Xd = torch.from_numpy(np.ascontiguousarray(_as_float(X))).to(device)
        Td = torch.from_numpy(T).to(device)
        scores = (Xd @ torch.from_numpy(Wr).to(device, Xd.dtype)).double() + torch.from_numpy(c).to(device)
        active = (1.0 - Td * scores).clamp_min(0.0)
        g = -2.0 * Td * active
        xtg = (Xd.T @ g.to(Xd.dtype)).double()
        return float((active * active).sum()), xtg.cpu().numpy(), g.sum(0).cpu().numpy()
    X = _as_float(X)
    active = np.maximum(1.0 - T * (X @ Wr.astype(X.dtype) + c), 0.0)
    g = -2.0 * T * active
    xtg = (X.T @ g.astype(X.dtype)).astype(np.float64)
    return float(np.sum(active * active, dtype=np.float64)), xtg, g.sum(0, dtype=np.float64)


def chunk_active(X: np.ndarray, y: np.ndarray, Wr: np.ndarray, c: np.ndarray,
                 targets: np.ndarray) -> tuple:
    """(margins below 1, margins) of one block for scores ``X Wr + c``."""
    T = targets[y]
    margins = T * (_as_float(X) @ Wr.astype(_as_float(X).dtype) + c)
    return int((margins < 1).sum()), margins.size


def chunk_scores(X: np.ndarray, y: np.ndarray, Wr: np.ndarray, c: np.ndarray) -> np.ndarray:
    return _as_float(X) @ Wr.astype(_as_float(X).dtype) + c


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


@dataclass
class LinearProblem:
    """Rows, labels and the preconditioner of a squared-hinge linear SVM.

    The weights live in the coordinates ``(x - mean) / scale``: with ``mean`` and ``scale``
    a StandardScaler's, that is a linear SVM on standardised features; with ``scale`` 1 the
    centring only re-parametrises the (free) intercept.

    Build it with :meth:`prepare`.
    """

    chunks: Chunks
    classes: np.ndarray  # the labels' values, sorted
    targets: np.ndarray  # class index -> target row
    mean: np.ndarray
    scale: np.ndarray
    stats: Stats
    runner: Runner = field(default=LOCAL)
    device: Any = None
    preconditioner: Any = None  # _Cholesky or _Spectral, or None
    xty: np.ndarray | None = None  # (D, k) Xc^T (T - mean T), for the least-squares start
    tbar: np.ndarray | None = None  # (k,) mean target

    @classmethod
    def prepare(cls, chunks: Chunks, *, standardize: bool, runner: Runner = LOCAL,
                device: Any = None, precondition: bool = True) -> LinearProblem:
        """Stage 1 for the rows of ``chunks``: the statistics, with what preconditions --
        the Gram matrix ``Xc^T Xc`` of the centred, scaled rows, or, with fewer rows than
        half the features, the eigenvectors of ``Xc Xc^T`` (the rows gathered in memory:
        fewer values than the Gram matrix would have). No preconditioner beyond
        :data:`MAX_GRAM_FEATURES` features."""
        if runner is LOCAL:
            chunks = in_memory(chunks)
        labels = chunks.labels()
        classes = np.unique(labels)
        if len(classes) < 2:
            raise ValueError("LinearSVM needs samples of at least 2 classes, got 1 class")
        if labels.dtype.kind not in "iu" or not np.array_equal(classes, np.arange(len(classes))):
            chunks = _Relabelled(chunks, classes)
        targets = targets_for(len(classes))
        n, d = chunks.n_rows, chunks.n_features
        usable = precondition and d <= MAX_GRAM_FEATURES
        dual = usable and 2 * n <= d
        gram = usable and not dual
        stats = compute_stats(chunks, targets, with_gram=gram, runner=runner)
        mean = stats.mean
        scale = stats.scaler().scale_ if standardize else np.ones(d)
        problem = cls(chunks, classes, targets, mean, scale, stats, runner, device)
        problem.tbar = stats.tsum / max(stats.n, 1)
        if gram:
            # the Gram matrix of the centred, scaled rows, in place
            # (rank-one corrections row block by row block: a D x D temporary is 1.5 GB at D = 13,500)
            delta = mean - stats.shift
            G = stats.gram
            for a in range(0, d, 1024):
                rows = slice(a, a + 1024)
                block = (np.outer(delta[rows], stats.s1) + np.outer(stats.s1[rows], delta)
                         - stats.n * np.outer(delta[rows], delta))
                denominator = scale[rows, None] * scale[None, :] * max(stats.n, 1)
                G[rows] = (G[rows] - block) / denominator
            # per row (/ n), so that a refit on more rows can reuse it
            B = (stats.xty - np.outer(delta, stats.tsum)) / scale[:, None]  # Xc^T T
            B -= np.outer(stats.s1 - stats.n * delta, problem.tbar) / scale[:, None]
            stats.gram = stats.xty = None
            problem.preconditioner, problem.xty = _Cholesky(G, stats.n), B
        elif dual:
            X, y = materialize(chunks)
            Xc = ((X - mean) / scale).astype(np.float32)  # float32: it only preconditions
            problem.xty = (Xc.T @ (targets[y] - problem.tbar).astype(np.float32)).astype(np.float64)
            problem.preconditioner = _Spectral.of(Xc)
        return problem

    def with_rows(self, more: Chunks, standardize: bool) -> LinearProblem:
        """The problem on these rows and ``more`` (a refit on train + validation): the
        statistics merged, the preconditioner of the first rows kept (it still preconditions
        well; the weights start from a fitted model's)."""
        from cvpipe.classifiers.chunks import Concat

        extra = _Relabelled(more, self.classes) if isinstance(self.chunks, _Relabelled) else more
        if self.runner is LOCAL and isinstance(self.chunks, ArrayChunks):
            extra = in_memory(extra)
        stats = self.stats.merged(compute_stats(extra, self.targets, with_gram=False, runner=self.runner))
        scale = stats.scaler().scale_ if standardize else np.ones(len(self.mean))
        pre = self.preconditioner.with_rows(stats.n) if self.preconditioner is not None else None
        return LinearProblem(Concat([self.chunks, extra]), self.classes, self.targets, stats.mean,
                             scale, stats, self.runner, self.device, pre)

    def least_squares(self, C: float) -> tuple[np.ndarray, np.ndarray]:
        """Stage 3: the minimiser of the objective with every margin active (squared loss),
        ``(W, b)``."""
        return self.preconditioner.solve(C, 2 * C * self.xty), self.tbar.copy()

    def active_fraction(self, W: np.ndarray, b: np.ndarray) -> float:
        """Share of the margins ``t (w . x + b)`` below 1 at ``(W, b)``: how much of ``H0``'s
        curvature the objective has there."""
        Wr, c = self.raw(W, b)
        active, count = self.runner.map_sum(chunk_active, self.chunks, Wr, c, self.targets)
        return float(active) / max(float(count), 1.0)

    # the weights in these coordinates <-> scores of raw rows -------------------------------

    def raw(self, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Wr, c) such that ``x Wr + c`` are the scores of raw rows ``x``."""
        Wr = W / self.scale[:, None]
        return Wr, b - self.mean @ Wr

    def from_raw(self, Wr: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The weights in these coordinates of a model scoring raw rows by ``x Wr + c``."""
        return Wr * self.scale[:, None], c + self.mean @ Wr

    # stage 4 ---------------------------------------------------------------------------------

    def solve(self, C: float, *, start: tuple[np.ndarray, np.ndarray] | None = None,
              max_iter: int = 100, tol: float = 1e-5, ftol: float = 0.0,
              fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
        """``(W, b, iterations)`` minimising the objective at ``C`` (W: (D, k), in this
        problem's coordinates), from ``start`` or the least-squares start."""
        d, k = len(self.mean), self.targets.shape[1]
        to_w = to_v = grad_v = _identity
        if start is None and self.xty is not None:
            start = self.least_squares(C)
        if start is None:
            start = (np.zeros((d, k)), np.zeros(k))
        if self.preconditioner is not None:
            # stage 2: precondition with the curvature of the margins active at the start
            rho = min(1.0, max(self.active_fraction(*start), 0.01))
            to_w, to_v, grad_v = self.preconditioner.at(rho * C)
        W0, b0 = start
        b0 = b0 if fit_intercept else np.zeros(k)
        v0 = to_v(W0)
        n = max(self.stats.n, 1)
        C = float(C)

        def weights(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return to_w(theta[: d * k].reshape(d, k)), (theta[d * k:] if fit_intercept else np.zeros(k))

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            W, b = weights(theta)
            Wr, c = self.raw(W, b)
            loss, xtg, gsum = self.runner.map_sum(chunk_objective, self.chunks, Wr, c, self.targets,
                                                  self.device)
            # X^T g of the raw rows -> of the rows in these coordinates
            grad_w = W + C * (xtg - np.outer(self.mean, gsum)) / self.scale[:, None]
            value = 0.5 * float(np.sum(W * W)) + C * loss
            if fit_intercept:
                return value, np.concatenate([grad_v(grad_w).ravel(), C * gsum])
            return value, grad_v(grad_w).ravel()

        theta0 = np.concatenate([v0.ravel(), b0]) if fit_intercept else v0.ravel()
        options = {"maxiter": max_iter, "gtol": tol * n * C, "maxcor": 20}
        if ftol:
            options["ftol"] = ftol
        # NumPy and SciPy each bring a BLAS whose threads spin after a call: on small problems,
        # alternating between the two costs more than threads gain (10x on 2,700 x 128 rows)
        small = self.stats.n * d <= SMALL_PROBLEM
        scipy_blas = _scipy_blas() if d <= SERIAL_SCIPY_FEATURES and not small else None
        with (threadpool_limits(1 if small else None),
              scipy_blas.limit(limits=1) if scipy_blas is not None else nullcontext()):
            result = minimize(objective, theta0, jac=True, method="L-BFGS-B", options=options)
        W, b = weights(result.x)
        return W, np.array(b, dtype=np.float64), int(result.nit)

    def scores(self, chunks: Chunks, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Decision scores of every row of ``chunks`` (raw rows, as this problem's)."""
        Wr, c = self.raw(W, b)
        return np.concatenate([chunk_scores(X, y, Wr, c) for X, y in read_ahead(chunks)])


@functools.cache
def _scipy_blas() -> ThreadpoolController | None:
    """SciPy's BLAS where it is a library of its own (pip's wheels each bundle one), else None."""
    import scipy

    root = os.path.dirname(os.path.abspath(scipy.__file__))
    controller = ThreadpoolController()
    own = [lib.filepath for lib in controller.lib_controllers
           if lib.user_api == "blas" and lib.filepath.startswith(root)]
    return controller.select(filepath=own) if own else None


def _identity(M: np.ndarray) -> np.ndarray:
    return M


class _Cholesky:
    """``H0 = I + 2 C0 n G`` (``G = Xc^T Xc / n``, D x D): L-BFGS runs on ``v = L^T w`` with
    ``L`` its Cholesky factor. One factor is kept (D x D floats) and serves every ``C0 n``
    within a factor :data:`FACTOR_REUSE` of the one it was computed for: it only
    preconditions, and a factorisation costs 6 s at D = 11,200 on 2 cores (a grid of three
    C values and the refit computed four)."""

    def __init__(self, gram: np.ndarray, n: int,
                 factor: tuple[float, np.ndarray] | None = None):
        self.gram, self.n = gram, n
        self._factor = factor  # (2 C0 n, U)

    def factor(self, C0: float) -> np.ndarray:
        """``U = L^T``, upper triangular and Fortran-ordered (LAPACK's own layout: no copy)."""
        weight = 2 * float(C0) * self.n
        if self._factor is None or not (1 / FACTOR_REUSE <= self._factor[0] / weight <= FACTOR_REUSE):
            self._factor = None  # free the old factor first
            H = self.gram.astype(np.float64)  # a float32 Gram matrix, a float64 factor
            H *= weight
            H[np.diag_indices_from(H)] += 1.0
            # H is symmetric, so H.T (a Fortran-ordered view) is H: factorised in place, where
            # a C-ordered matrix would be copied first (1 GB at D = 11,200)
            U = linalg.cholesky(H.T, lower=False, overwrite_a=True, check_finite=False)
            self._factor = (weight, U)
        return self._factor[1]

    def at(self, C0: float) -> tuple[Callable, Callable, Callable]:
        """(v -> w, w -> v, gradient in w -> gradient in v) for ``H0`` at ``C0``."""
        U = self.factor(C0)
        return (lambda V: linalg.solve_triangular(U, V, lower=False, check_finite=False),
                lambda W: U @ W,
                lambda G: linalg.solve_triangular(U, G, trans="T", lower=False, check_finite=False))

    def solve(self, C0: float, B: np.ndarray) -> np.ndarray:
        return linalg.cho_solve((self.factor(C0), False), B, check_finite=False)

    def with_rows(self, n: int) -> _Cholesky:
        """The preconditioner of ``n`` rows from the same Gram matrix, handed this one's factor
        (a refit replaces the selection's problem: two factors would double the memory)."""
        factor, self._factor = self._factor, None
        return _Cholesky(self.gram, n, factor)


class _Spectral:
    """``H0 = I + 2 C0 Xc^T Xc`` from the thin eigen-decomposition of ``Xc`` (fewer rows than
    features): ``Xc^T Xc = V diag(s2) V^T``, so ``H0^(-1/2) = I + V (f - 1) V^T`` with
    ``f = (1 + 2 C0 s2)^(-1/2)``; every ``C0`` costs nothing more."""

    def __init__(self, basis: np.ndarray, s2: np.ndarray):
        self.basis, self.s2 = basis, s2

    @classmethod
    def of(cls, Xc: np.ndarray) -> _Spectral:
        s2, U = np.linalg.eigh((Xc @ Xc.T).astype(np.float64))
        keep = s2 > s2.max(initial=0.0) * 1e-8
        s2, U = s2[keep], U[:, keep]
        basis = Xc.T @ (U / np.sqrt(s2)).astype(Xc.dtype)  # float32: it only preconditions
        return cls(np.ascontiguousarray(basis), s2)

    def _apply(self, M: np.ndarray, f: np.ndarray) -> np.ndarray:
        B = self.basis
        return M + B @ ((f - 1.0)[:, None] * (B.T @ M.astype(B.dtype))).astype(B.dtype)

    def at(self, C0: float) -> tuple[Callable, Callable, Callable]:
        f = 1.0 / np.sqrt(1.0 + 2 * C0 * self.s2)
        return (lambda V: self._apply(V, f), lambda W: self._apply(W, 1.0 / f),
                lambda G: self._apply(G, f))

    def solve(self, C0: float, B: np.ndarray) -> np.ndarray:
        return self._apply(B, 1.0 / (1.0 + 2 * C0 * self.s2))

    def with_rows(self, n: int) -> _Spectral:
        return self


@dataclass(frozen=True)
class _RelabelledRef:
    ref: Any
    classes: np.ndarray

    @property
    def n_rows(self) -> int:
        return self.ref.n_rows

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        X, y = self.ref.read()
        return X, np.searchsorted(self.classes, y)


class _Relabelled:
    """Labels of any values as indices into their sorted unique values."""

    def __init__(self, chunks: Chunks, classes: np.ndarray):
        self.chunks, self.classes = chunks, classes
        self.n_rows, self.n_features = chunks.n_rows, chunks.n_features

    def refs(self) -> list:
        return [_RelabelledRef(r, self.classes) for r in self.chunks.refs()]

    def labels(self) -> np.ndarray:
        return np.searchsorted(self.classes, self.chunks.labels())


def fit_path(problem: LinearProblem, template: LinearSVM, Cs: list[float],
             on_fit: Callable[[float, LinearSVM], None] | None = None, *,
             scaled_inputs: bool = False) -> list[LinearSVM]:
    """A fitted :class:`LinearSVM` for every C of ``Cs`` on one problem: one factorisation,
    each fit started from the previous one's weights (C in increasing order). ``template``
    gives every other parameter. With ``scaled_inputs`` the models take the rows in the
    problem's coordinates (after its StandardScaler), else the raw rows."""
    models: dict[float, LinearSVM] = {}
    start = None
    for C in sorted(Cs):
        model = clone(template).set_params(C=C)
        W, b, nit = problem.solve(C, start=start, max_iter=model.max_iter, tol=model.tol,
                                  ftol=model.ftol, fit_intercept=model.fit_intercept)
        start = (W, b)
        model._set_weights(problem.classes, W, b, problem.chunks.n_features, nit,
                           *(() if scaled_inputs else (problem.scale, problem.mean)))
        models[C] = model
        if on_fit is not None:
            on_fit(C, model)
    return [models[C] for C in Cs]


# --------------------------------------------------------------------------------------------
# the estimator


class LinearSVM(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear SVM with squared hinge loss.

    Parameters
    ----------
    C : float
        Inverse regularisation strength (as in ``sklearn.svm.LinearSVC``).
    fit_intercept : bool
        Learn an unregularised bias per class.
    max_iter : int
        L-BFGS iterations (each one pass over the rows, plus line-search passes).
    tol : float
        Stop when the gradient (of the preconditioned variables) is below ``tol`` times the
        number of samples times C.
    ftol : float
        Also stop when an iteration lowers the objective by less than this fraction of it
        (0: SciPy's default, about 2e-9). Large problems need far fewer passes at 1e-4, and
        their accuracy does not move (measured on CIFAR-10; see the README).
    device : str or None
        Where the objective's matrix products run: None picks ``cuda`` when available, else
        the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    backend : {"numpy", "torch"} or None
        None: NumPy on the CPU, PyTorch elsewhere; ``"torch"`` on the CPU runs the GPU code
        path there (tests compare the two).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (n_classes, n_features), or (1, n_features) for two classes
    intercept_ : ndarray of shape (n_classes,) or (1,)
    n_iter_ : int
    """

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "fit_intercept": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "ftol": [Interval(Real, 0, 1, closed="left")],
        "device": [None, str],
        "backend": [None, StrOptions({"numpy", "torch"})],
    }

    def __init__(self, C: float = 1.0, fit_intercept: bool = True, max_iter: int = 1000,
                 tol: float = 1e-5, ftol: float = 0.0, device: str | None = None,
                 backend: str | None = None):
        self.C = C
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.ftol = ftol
        self.device = device
        self.backend = backend

    def fit(self, X, y) -> LinearSVM:
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        return self.fit_chunks(ArrayChunks(X, y))

    def fit_chunks(self, chunks: Chunks, runner: Runner = LOCAL) -> LinearSVM:
        """Fit on rows read a block at a time (see :mod:`cvpipe.classifiers.chunks`)."""
        self._validate_params()
        problem = LinearProblem.prepare(chunks, standardize=False, runner=runner,
                                        device=self.torch_device())
        W, b, nit = problem.solve(self.C, max_iter=self.max_iter, tol=self.tol, ftol=self.ftol,
                                  fit_intercept=self.fit_intercept)
        return self._set_weights(problem.classes, W, b, chunks.n_features, nit,
                                 problem.scale, problem.mean)

    def _set_weights(self, classes: np.ndarray, W: np.ndarray, b: np.ndarray, n_features: int,
                     nit: int, scale: np.ndarray | None = None, mean: np.ndarray | None = None
                     ) -> LinearSVM:
        """Store weights ``W`` (D, k), ``b`` (k,) of the coordinates ``(x - mean) / scale``
        as the coefficients of raw inputs (none given: of the inputs as they are)."""
        if scale is not None:
            W = W / scale[:, None]
            b = b - mean @ W
        self.classes_ = np.asarray(classes)
        self.coef_ = np.ascontiguousarray(W.T)
        self.intercept_ = np.asarray(b, dtype=np.float64).copy()
        self.n_iter_ = int(nit)
        self.n_features_in_ = int(n_features)
        return self

    def torch_device(self) -> Any:
        """The torch device of the objective's products, or None for NumPy on the host."""
        if self.backend == "numpy" or (self.backend is None and self.device == "cpu"):
            return None
        from cvpipe.device import resolve_device

        device = resolve_device(self.device)
        return None if self.backend is None and device.type == "cpu" else device

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X @ self.coef_.T.astype(X.dtype) + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[idx]


def objective_value(model: LinearSVM, X: np.ndarray, y: np.ndarray) -> float:
    """The objective a fitted model reaches on ``(X, y)`` (for tests and diagnostics)."""
    idx = np.searchsorted(model.classes_, y)
    T = targets_for(len(model.classes_))[idx]
    scores = X @ model.coef_.T + model.intercept_
    active = np.maximum(1.0 - T * scores, 0.0)
    return 0.5 * float(np.sum(model.coef_ ** 2)) + model.C * float(np.sum(active * active))
