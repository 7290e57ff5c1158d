"""Linear SVM (one-vs-rest, squared hinge) by preconditioned L-BFGS, in memory or out of core.

The primal objective is the one of liblinear's ``LinearSVC(loss="squared_hinge")``::

    min_w,b  1/2 ||w_k||^2 + C * sum_i max(0, 1 - y_ik (w_k . x_i + b_k))^2    for each class k

with y_ik = +1 for class k and -1 otherwise; the intercept is not regularised. Squared hinge
is differentiable, so every class is solved at once by L-BFGS on dense matrix products.

Stages, in order (:class:`LinearProblem`):

1. **Statistics**, one pass over the rows, a block at a time: count, sums, and the Gram
   matrix ``X^T X`` and ``X^T Y`` of the (shifted) rows (:mod:`cvpipe.classifiers.row_stats`).
   Nothing else needs the whole matrix, so the rows can stay on disk
   (:mod:`cvpipe.classifiers.chunks`) and the pass can run on a Dask cluster.
2. **One factorisation**: the Cholesky factor ``L`` of ``H0 = I + 2 C0 Xc^T Xc`` (``Xc``
   the centred, optionally standardised rows) -- the Hessian the objective would have if
   every margin were active. It preconditions every later fit: L-BFGS runs on
   ``v = L^T w``, where the objective's curvature is close to the identity, and converges in
   tens of passes where the plain problem took hundreds
   (:mod:`cvpipe.classifiers.preconditioners`). Beyond :data:`MAX_GRAM_FEATURES` features
   the Gram matrix is not formed: a rank-:data:`SKETCH_RANK` randomized Nystrom sketch of it,
   two more passes over the rows, preconditions instead (D x rank floats, where the Gram
   matrix and its factor took 12 D^2 bytes: 2.9 GB at D = 15,552).
   With fewer rows than half the features (in memory), the eigen-decomposition of the N x N
   matrix ``Xc Xc^T`` gives the exact preconditioner, and the problem is solved in the
   coordinates of the rows' span, where the minimiser lies (N x rank products per step).
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
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import ThreadpoolController, threadpool_limits

from cvpipe.classifiers.chunks import SMALL_BYTES, ArrayChunks, Chunks, in_memory, materialize, read_ahead
from cvpipe.classifiers.preconditioners import Cholesky, Diagonal, Spectral
from cvpipe.classifiers.row_stats import (
    LOCAL,
    Runner,
    Stats,
    chunk_active,
    chunk_objective,
    chunk_scores,
    chunk_sketch,
    compute_stats,
    targets_for,
)
from cvpipe.featurestore.blocks import read_parts

log = logging.getLogger(__name__)

#: Above this many features the D x D Gram matrix (4 D^2 bytes, and 8 D^2 for its factor) is
#: not formed: a randomized sketch of it preconditions (:meth:`Spectral.sketch`). Measured on
#: CIFAR-10's 45,000 training rows (benchmarks/preconditioners.py), three C values: at
#: D = 15,552 (scattering) 44 s and 3.7 GB peak against 110 s and 6.1 GB, at D = 11,200
#: (patches) 45 s and 2.8 GB against 76 s and 3.9 GB, validation accuracy within 0.2 points.
MAX_GRAM_FEATURES = 8192
#: The sketch's rank (D x rank floats) and its passes over the rows (rank 1,024: no better
#: on validation, 1.4x the time).
SKETCH_RANK = 512
SKETCH_PASSES = 2
#: Problems of at most this many values (rows x features) are solved on one BLAS thread.
SMALL_PROBLEM = 10_000_000
#: Up to this many features SciPy's own BLAS (L-BFGS's vector steps, the preconditioner's
#: solves) runs on one thread: 2x faster iterations on 45,000 x 2,000 rows, where its
#: threads only fight NumPy's; beyond, the triangular solves and the factorisation gain more.
SERIAL_SCIPY_FEATURES = 4096


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
    preconditioner: Any = None  # Cholesky or Spectral, or None
    xty: np.ndarray | None = None  # (D, k) Xc^T (T - mean T), for the least-squares start
    tbar: np.ndarray | None = None  # (k,) mean target
    # fewer rows than features: the same problem in the coordinates of the rows' span (solve)
    reduced: LinearProblem | None = None

    @classmethod
    def prepare(cls, chunks: Chunks, *, standardize: bool, runner: Runner = LOCAL,
                device: Any = None, precondition: bool = True) -> LinearProblem:
        """Stage 1 for the rows of ``chunks``: the statistics, with what preconditions --
        the Gram matrix ``Xc^T Xc`` of the centred, scaled rows, or, with fewer rows than
        half the features, the eigenvectors of ``Xc Xc^T`` (the rows gathered in memory, up to
        ``SMALL_BYTES``: fewer values than the Gram matrix would have); beyond
        :data:`MAX_GRAM_FEATURES` features, a sketch of the Gram matrix."""
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
        dual = precondition and 2 * n <= d and n * d * 4 <= SMALL_BYTES
        gram = precondition and not dual and d <= MAX_GRAM_FEATURES
        sketch = precondition and not dual and not gram
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
            problem.preconditioner, problem.xty = Cholesky(G, stats.n), B
        elif dual:
            X, y = materialize(chunks)
            # float32 throughout (it only preconditions): no float64 temporaries twice its size
            Xc = np.subtract(X, mean.astype(np.float32), dtype=np.float32)
            Xc /= scale.astype(np.float32)
            problem.xty = (Xc.T @ (targets[y] - problem.tbar).astype(np.float32)).astype(np.float64)
            problem.preconditioner, coordinates = Spectral.with_coordinates(Xc)
            problem.reduced = _reduced(problem, coordinates, y)
        elif sketch:
            problem.preconditioner, problem.xty = _sketched(chunks, mean, scale, targets, runner)
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
        if self.reduced is not None:
            # the minimiser lies in the rows' span, and so do the start and every L-BFGS step
            # (each is a sum of gradients W + C Xc^T g): the same iterations, in N x rank
            # products instead of four passes over N x D rows and D x rank basis per step
            basis = self.preconditioner.basis
            if start is not None:
                start = (basis.T @ start[0].astype(basis.dtype)).astype(np.float64), start[1]
            Z, b, nit = self.reduced.solve(C, start=start, max_iter=max_iter, tol=tol, ftol=ftol,
                                           fit_intercept=fit_intercept)
            return (basis @ Z.astype(basis.dtype)).astype(np.float64), b, nit
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
        return np.concatenate([chunk_scores(X, y, Wr, c)
                               for X, y in read_ahead(chunks, for_fn=chunk_scores)])


def _reduced(problem: LinearProblem, coordinates: np.ndarray, y: np.ndarray) -> LinearProblem:
    """``problem`` in the coordinates of its rows' span (``coordinates``: the centred, scaled
    rows times the :class:`Spectral` basis, N x rank): weights ``Z`` there are ``basis @ Z``,
    with the same norm and the same scores."""
    rank = coordinates.shape[1]
    targets = problem.targets
    return LinearProblem(
        ArrayChunks(coordinates, y), problem.classes, targets, np.zeros(rank), np.ones(rank),
        problem.stats, preconditioner=Diagonal(problem.preconditioner.s2),
        xty=coordinates.T @ (targets[y] - problem.tbar), tbar=problem.tbar)


def _sketched(chunks: Chunks, mean: np.ndarray, scale: np.ndarray, targets: np.ndarray,
              runner: Runner) -> tuple[Spectral, np.ndarray]:
    """Stage 2 without the D x D matrix: a :meth:`Spectral.sketch` of ``Xc^T Xc``, and
    ``Xc^T (T - mean T)`` (the rows centred: ``Xc^T T``), summed in the sketch's passes."""
    xty: list[np.ndarray] = []

    def sketch_pass(Q: np.ndarray) -> np.ndarray:
        Y, B = runner.map_sum(chunk_sketch, chunks, mean, scale, Q.astype(np.float32), targets)
        xty[:] = [B]
        return Y

    pre = Spectral.sketch(sketch_pass, chunks.n_features, SKETCH_RANK, SKETCH_PASSES)
    return pre, xty[0]


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

    def read_columns(self) -> tuple[Any, np.ndarray]:
        X, y = read_parts(self.ref)
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
