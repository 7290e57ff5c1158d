"""Preconditioners of the linear SVM's L-BFGS: the curvature every margin active would give.

``H0 = I + 2 C0 Xc^T Xc`` (``Xc`` the centred, scaled rows): L-BFGS runs on ``v = L^T w``,
``L`` a square root of ``H0``, where the objective's curvature is close to the identity.
:class:`Cholesky` factorises ``H0`` from the Gram matrix (more rows than features);
:class:`Spectral` works from the thin eigen-decomposition of the rows (fewer rows than
features) or from a randomized Nystrom sketch of ``Xc^T Xc`` (too many features for a
D x D matrix: :meth:`Spectral.sketch`). All give ``(v -> w, w -> v, gradient in w -> gradient
in v)`` for a ``C0`` (:meth:`at`) and solve ``H0 x = b`` (the least-squares start).

References
----------
Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006), 5.1 (preconditioning).
Tropp, Yurtsever, Udell & Cevher, "Fixed-rank approximation of a positive-semidefinite matrix
from streaming data", NeurIPS 2017 (the stable Nystrom approximation). Frangella, Tropp & Udell,
"Randomized Nystrom preconditioning", SIAM J. Matrix Anal. Appl. 44 (2023).
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
    """``H0 = I + 2 C0 Xc^T Xc`` from eigenpairs of ``Xc^T Xc = V diag(s2) V^T + rest``:
    ``H0^(-1/2) = f_rest I + V diag(f - f_rest) V^T`` with ``f = (1 + 2 C0 s2)^(-1/2)``; every
    ``C0`` costs nothing more. Exact from the rows (:meth:`with_coordinates`, fewer rows than features: the
    rest is 0), or the leading ``rank`` pairs of a sketch (:meth:`sketch`): the directions left
    out are given the sketch's smallest eigenvalue, about the largest of theirs (Frangella et
    al.), so that their preconditioned curvature stays near or below 1 and the least-squares
    start does not overshoot them."""

    def __init__(self, basis: np.ndarray, s2: np.ndarray, rest: float = 0.0):
        self.basis, self.s2, self.rest = basis, s2, float(rest)

    @classmethod
    def with_coordinates(cls, Xc: np.ndarray) -> tuple[Spectral, np.ndarray]:
        """The exact preconditioner of rows ``Xc`` (N x D, N < D), and the rows' coordinates
        in its basis, ``Xc @ basis = U diag(s)`` (N x rank, float64): weights in the basis'
        span score the rows through them without touching the D columns."""
        s2, U = np.linalg.eigh((Xc @ Xc.T).astype(np.float64))
        keep = s2 > s2.max(initial=0.0) * 1e-8
        s2, U = s2[keep], U[:, keep]
        basis = Xc.T @ (U / np.sqrt(s2)).astype(Xc.dtype)  # float32: it only preconditions
        return cls(np.ascontiguousarray(basis), s2), U * np.sqrt(s2)

    @classmethod
    def sketch(cls, sketch_pass: Callable[[np.ndarray], np.ndarray], d: int, rank: int,
               passes: int = 2, seed: int = 0) -> Spectral:
        """The leading ``rank`` eigenpairs of ``A = Xc^T Xc`` (D x D, never formed) from
        ``passes`` products ``A @ Q`` (``sketch_pass``: one pass over the rows each, D x rank
        floats of memory): a random start, ``passes - 1`` subspace iterations, then the
        numerically stable Nystrom approximation ``(A Q)(Q^T A Q)^+ (A Q)^T`` (Tropp et al.
        2017, algorithm 3; shifted by a tiny ``nu`` so that its Cholesky factor exists)."""
        rank = int(min(rank, d))
        rng = np.random.default_rng(seed)
        Q = np.linalg.qr(rng.standard_normal((d, rank)))[0]
        Y = sketch_pass(Q)
        for _ in range(int(passes) - 1):  # subspace iteration: a basis nearer the leading one
            Q = np.linalg.qr(Y)[0]
            Y = sketch_pass(Q)
        nu = np.sqrt(d) * np.spacing(np.float32(np.linalg.norm(Y)))  # the passes' float32 rounding
        Y += nu * Q
        core = Q.T @ Y
        upper = linalg.cholesky(0.5 * (core + core.T), lower=False, check_finite=False)
        B = linalg.solve_triangular(upper, Y.T, trans="T", lower=False, check_finite=False).T
        basis, sigma, _ = linalg.svd(B, full_matrices=False, check_finite=False)
        s2 = np.maximum(sigma * sigma - nu, 0.0)
        rest = float(s2[-1]) if rank < d else 0.0
        return cls(np.ascontiguousarray(basis, np.float32), s2, rest)

    def _apply(self, M: np.ndarray, f: np.ndarray, f_rest: float) -> np.ndarray:
        B = self.basis
        return f_rest * M + B @ ((f - f_rest)[:, None] * (B.T @ M.astype(B.dtype))).astype(B.dtype)

    def _scales(self, C0: float, power: float) -> tuple[np.ndarray, float]:
        return (1.0 + 2 * C0 * self.s2) ** power, (1.0 + 2 * C0 * self.rest) ** power

    def at(self, C0: float) -> tuple[Callable, Callable, Callable]:
        f, f_rest = self._scales(C0, -0.5)
        return (lambda V: self._apply(V, f, f_rest), lambda W: self._apply(W, 1.0 / f, 1.0 / f_rest),
                lambda G: self._apply(G, f, f_rest))

    def solve(self, C0: float, B: np.ndarray) -> np.ndarray:
        return self._apply(B, *self._scales(C0, -1.0))

    def with_rows(self, n: int) -> Spectral:
        return self


class Diagonal:
    """``H0 = I + 2 C0 diag(s2)``: :class:`Spectral` seen from its own basis, where the rows'
    coordinates have orthogonal columns of squared norms ``s2`` (the reduced problem of a
    linear SVM with fewer rows than features)."""

    def __init__(self, s2: np.ndarray):
        self.s2 = s2

    def at(self, C0: float) -> tuple[Callable, Callable, Callable]:
        f = (1.0 + 2 * C0 * self.s2)[:, None] ** -0.5
        return (lambda V: f * V, lambda W: W / f, lambda G: f * G)

    def solve(self, C0: float, B: np.ndarray) -> np.ndarray:
        return B / (1.0 + 2 * C0 * self.s2)[:, None]
