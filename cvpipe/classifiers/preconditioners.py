"""Preconditioners of the linear SVM's L-BFGS: the curvature every margin active would give.

``H0 = I + 2 C0 Xc^T Xc`` (``Xc`` the centred, scaled rows): L-BFGS runs on ``v = L^T w``,
``L`` a square root of ``H0``, where the objective's curvature is close to the identity.
:class:`Cholesky` factorises ``H0`` from the Gram matrix (more rows than features);
:class:`Spectral` works from the thin eigen-decomposition of the rows (fewer rows than
features). Both give ``(v -> w, w -> v, gradient in w -> gradient in v)`` for a ``C0``
(:meth:`at`) and solve ``H0 x = b`` (the least-squares start).

Reference: Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006), 5.1 (preconditioning).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import linalg

#: A preconditioner's factor is reused for curvatures up to this factor away from its own.
FACTOR_REUSE = 2.0


class Cholesky:
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

    def with_rows(self, n: int) -> Cholesky:
        """The preconditioner of ``n`` rows from the same Gram matrix, handed this one's factor
        (a refit replaces the selection's problem: two factors would double the memory)."""
        factor, self._factor = self._factor, None
        return Cholesky(self.gram, n, factor)


class Spectral:
    """``H0 = I + 2 C0 Xc^T Xc`` from the thin eigen-decomposition of ``Xc`` (fewer rows than
    features): ``Xc^T Xc = V diag(s2) V^T``, so ``H0^(-1/2) = I + V (f - 1) V^T`` with
    ``f = (1 + 2 C0 s2)^(-1/2)``; every ``C0`` costs nothing more."""

    def __init__(self, basis: np.ndarray, s2: np.ndarray):
        self.basis, self.s2 = basis, s2

    @classmethod
    def of(cls, Xc: np.ndarray) -> Spectral:
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

    def with_rows(self, n: int) -> Spectral:
        return self
