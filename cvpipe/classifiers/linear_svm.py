"""Linear SVM (one-vs-rest, squared hinge) fitted by full-batch L-BFGS.

The primal objective is the one of liblinear's ``LinearSVC(loss="squared_hinge")``::

    min_w,b  1/2 ||w_k||^2 + C * sum_i max(0, 1 - y_ik (w_k . x_i + b_k))^2    for each class k

with y_ik = +1 for class k and -1 otherwise. Squared hinge is differentiable, so every class
is solved at once by L-BFGS on dense matrix products, which is an order of magnitude faster
than coordinate descent on the 45,000 x ~500 feature matrices of CIFAR-10. The intercept is
not regularised.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


class LinearSVM(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear SVM with squared hinge loss.

    Parameters
    ----------
    C : float
        Inverse regularisation strength (as in ``sklearn.svm.LinearSVC``).
    fit_intercept : bool
        Learn an unregularised bias per class.
    max_iter : int
        L-BFGS iterations.
    tol : float
        L-BFGS gradient tolerance, relative to the number of samples.

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
    }

    def __init__(self, C: float = 1.0, fit_intercept: bool = True, max_iter: int = 1000,
                 tol: float = 1e-5):
        self.C = C
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y) -> LinearSVM:
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError("LinearSVM needs samples of at least 2 classes, got 1 class")
        # Two classes: one separating hyperplane, as scikit-learn's linear models do.
        if n_classes == 2:
            Y = np.where(y_idx == 1, 1.0, -1.0)[:, None]
        else:
            Y = -np.ones((len(y), n_classes))
            Y[np.arange(len(y)), y_idx] = 1.0
        # The matrix products dominate; float32 features keep them in float32 (twice as fast),
        # while the loss and L-BFGS state stay in float64.
        n, d = X.shape
        k = Y.shape[1]
        C = float(self.C)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            W = theta[: d * k].reshape(d, k)
            b = theta[d * k:] if self.fit_intercept else 0.0
            margin = 1.0 - Y * ((X @ W.astype(X.dtype)) + b)
            active = np.maximum(margin, 0.0)
            loss = 0.5 * np.sum(W * W) + C * np.sum(active * active)
            g_scores = -2.0 * C * Y * active  # d loss / d scores
            grad_w = W + (X.T @ g_scores.astype(X.dtype))
            if self.fit_intercept:
                return loss, np.concatenate([grad_w.ravel(), g_scores.sum(axis=0)])
            return loss, grad_w.ravel()

        theta0 = np.zeros(d * k + (k if self.fit_intercept else 0))
        result = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                          options={"maxiter": self.max_iter, "gtol": self.tol * max(n, 1) * C,
                                   "maxcor": 20})
        self.coef_ = result.x[: d * k].reshape(d, k).T.copy()
        self.intercept_ = result.x[d * k:].copy() if self.fit_intercept else np.zeros(k)
        self.n_iter_ = int(result.nit)
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[idx]
