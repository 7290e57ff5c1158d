"""RBF-kernel SVM that stays affordable at any training-set size.

Up to ``exact_max_samples`` training samples it is scikit-learn's exact ``SVC`` (libsvm, one
vs one); beyond, the kernel is approximated by Nystroem features (``n_components`` landmark
samples) and a :class:`~cvpipe.classifiers.linear_svm.LinearSVM` is fitted on them (Williams &
Seeger, "Using the Nystroem method to speed up kernel machines", NIPS 2001). Which of the two
runs is decided by the data ``fit`` gets, so one set of parameters serves a 3,000-image
subsample and the 50,000-image training set alike.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import _ovr_decision_function
from sklearn.utils.validation import check_is_fitted, validate_data

from cvpipe.classifiers.chunks import Chunks, Mapped, gather_rows, materialize
from cvpipe.classifiers.linear_svm import LinearSVM
from cvpipe.classifiers.row_stats import LOCAL, Runner, compute_stats

#: Above this many training samples, approximation="auto" uses Nystroem.
EXACT_KERNEL_MAX_SAMPLES = 10_000
#: Rows whose kernel values against every support vector are held at once (float64).
KERNEL_ROWS = 1024


def svc_decision(svc: SVC, X: np.ndarray) -> np.ndarray:
    """``svc.decision_function(X)`` of a fitted RBF ``SVC``, its kernel values computed by
    matrix products.

    libsvm evaluates the kernel one support vector and one row at a time, on one core: on
    the quick profile's 3,000 test images, scoring the three exact RBF pipelines took longer
    than fitting them. Here the squared distances are ``|x|^2 + |s|^2 - 2 x.s`` (one BLAS
    product per block of rows), and each one-vs-one value is libsvm's sum for the pair
    ``(i, j)``: ``sum_{s in SV_i} a_{j-1,s} K(x, s) + sum_{s in SV_j} a_{i,s} K(x, s) + b_ij``
    (scikit-learn's ``_dual_coef_`` and ``_intercept_``), then scikit-learn's "ovr" shape.

    Parameters
    ----------
    svc : SVC
        Fitted with ``kernel="rbf"``.
    X : ndarray of shape (N, n_features)

    Returns
    -------
    ndarray of shape (N, n_classes), or (N,) for two classes, float64
    """
    X = np.asarray(X, np.float64)
    sv = svc.support_vectors_
    sv_sq = np.einsum("ij,ij->i", sv, sv)
    ends = np.cumsum(svc._n_support)
    starts = ends - svc._n_support
    n_classes = len(svc.classes_)
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    # every pair's coefficients as one (n_SV, n_pairs) matrix: one product per block of rows
    pair_coef = np.zeros((len(sv), len(pairs)))
    for p, (i, j) in enumerate(pairs):
        si, sj = slice(starts[i], ends[i]), slice(starts[j], ends[j])
        pair_coef[si, p] = svc._dual_coef_[j - 1, si]
        pair_coef[sj, p] = svc._dual_coef_[i, sj]
    dec = np.empty((len(X), len(pairs)))
    for at in range(0, len(X), KERNEL_ROWS):
        x = X[at:at + KERNEL_ROWS]
        d2 = x @ sv.T
        d2 *= -2.0
        d2 += np.einsum("ij,ij->i", x, x)[:, None]
        d2 += sv_sq
        np.maximum(d2, 0.0, out=d2)
        kernel = np.exp(-svc._gamma * d2, out=d2)
        np.matmul(kernel, pair_coef, out=dec[at:at + KERNEL_ROWS])
    dec += svc._intercept_
    if n_classes == 2:
        return -dec.ravel()  # scikit-learn's sign for two classes
    return _ovr_decision_function(dec < 0, -dec, n_classes)


class RBFSVM(ClassifierMixin, BaseEstimator):
    """RBF SVM: exact ``SVC`` on small training sets, Nystroem + linear SVM on large ones.

    Parameters
    ----------
    C : float
        Inverse regularisation strength.
    gamma : "scale" or float
        Kernel width; "scale" is ``1 / (n_features * X.var())`` as in ``SVC``.
    approximation : {"auto", "exact", "nystroem"}
        "auto": exact up to ``exact_max_samples`` training samples, else Nystroem.
    n_components : int
        Nystroem landmarks (at most the number of training samples are used).
    max_iter : int
        L-BFGS iterations of the linear SVM on Nystroem features. Validation accuracy settles
        long before the optimum (measured on CIFAR-10), and the cap keeps a 2,000-component
        fit to seconds. The exact SVC always runs to convergence.
    exact_max_samples : int
    random_state : int
        Seeds the choice of landmarks.

    Attributes
    ----------
    estimator_ : SVC or Pipeline
        What was fitted.
    approximation_ : {"exact", "nystroem"}
    n_iter_ : int
        Iterations of the solver (the most of libsvm's one-vs-one problems).
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    """

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "gamma": [StrOptions({"scale"}), Interval(Real, 0, None, closed="neither")],
        "approximation": [StrOptions({"auto", "exact", "nystroem"})],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "exact_max_samples": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, C: float = 1.0, gamma: float | str = "scale", approximation: str = "auto",
                 n_components: int = 2000, max_iter: int = 100,
                 exact_max_samples: int = EXACT_KERNEL_MAX_SAMPLES, random_state: int | None = 0):
        self.C = C
        self.gamma = gamma
        self.approximation = approximation
        self.n_components = n_components
        self.max_iter = max_iter
        self.exact_max_samples = exact_max_samples
        self.random_state = random_state

    def method_for(self, n_samples: int) -> str:
        """"exact" or "nystroem": what ``fit`` runs on ``n_samples`` training samples."""
        if self.approximation != "auto":
            return self.approximation
        return "exact" if n_samples <= self.exact_max_samples else "nystroem"

    def make_estimator(self, n_samples: int, n_features: int | None = None) -> SVC | Pipeline:
        """The unfitted estimator ``fit`` uses for ``n_samples`` samples, its parameters checked.

        ``n_features`` (when known) turns ``gamma="scale"`` into Nystroem's explicit width later,
        at fit time; it is not needed to check the parameters.
        """
        self._validate_params()
        if self.method_for(n_samples) == "exact":
            est = SVC(kernel="rbf", C=self.C, gamma=self.gamma)
            est._validate_params()
            return est
        nystroem = Nystroem(kernel="rbf", gamma=None if self.gamma == "scale" else self.gamma,
                            n_components=min(self.n_components, max(n_samples, 1)),
                            random_state=self.random_state)
        nystroem._validate_params()
        svm = LinearSVM(C=self.C, max_iter=self.max_iter)
        svm._validate_params()
        return Pipeline([("nystroem", nystroem), ("svm", svm)])

    def fit(self, X, y) -> RBFSVM:
        """Fit the exact or the approximate SVM, as the number of samples decides."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        est = self.make_estimator(len(X), X.shape[1])
        if isinstance(est, Pipeline) and self.gamma == "scale":
            var = float(X.var())  # SVC's "scale", which Nystroem does not know
            est.set_params(nystroem__gamma=1.0 / (X.shape[1] * var) if var > 0 else 1.0)
        self.estimator_ = est.fit(X, y)
        self.approximation_ = self.method_for(len(X))
        solver = est if isinstance(est, SVC) else est.named_steps["svm"]
        self.n_iter_ = int(np.max(solver.n_iter_))
        self.classes_ = np.asarray(est.classes_)
        return self

    def fit_chunks(self, chunks: Chunks, runner: Runner = LOCAL) -> RBFSVM:
        """Fit on rows read a block at a time: the exact SVM on the rows gathered in memory
        (it is only chosen for small sets), or Nystroem features of landmark rows drawn from
        every block, computed block by block for the out-of-core linear SVM."""
        self._validate_params()
        n = chunks.n_rows
        if self.method_for(n) == "exact":
            X, y = materialize(chunks)
            return self.fit(X, y)
        rng = check_random_state(self.random_state)
        m = min(self.n_components, n)
        landmarks = gather_rows(chunks, np.sort(rng.choice(n, m, replace=False)))
        gamma = self.gamma
        if gamma == "scale":  # SVC's 1 / (n_features * X.var()), from per-feature sums
            stats = compute_stats(chunks, None, with_gram=False, runner=runner)
            mean, var = stats.mean, stats.var
            total_var = float(np.mean(var + mean * mean) - np.mean(mean) ** 2)
            gamma = 1.0 / (chunks.n_features * total_var) if total_var > 0 else 1.0
        nystroem = Nystroem(kernel="rbf", gamma=gamma, n_components=m,
                            random_state=self.random_state).fit(landmarks)
        svm = LinearSVM(C=self.C, max_iter=self.max_iter).fit_chunks(
            Mapped(chunks, nystroem.transform, m), runner)
        self.estimator_ = Pipeline([("nystroem", nystroem), ("svm", svm)])
        self.approximation_ = "nystroem"
        self.n_iter_ = int(svm.n_iter_)
        self.classes_ = np.asarray(svm.classes_)
        self.n_features_in_ = int(chunks.n_features)
        return self

    def decision_function(self, X) -> np.ndarray:
        """(N, n_classes) decision scores, (N,) for two classes."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        if isinstance(self.estimator_, SVC):
            return svc_decision(self.estimator_, X)
        return self.estimator_.decision_function(X)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.estimator_.predict(X)
