"""OpenCV's ``cv2.ml.SVM`` behind the scikit-learn interface.

As in OpenCV's own HOG+SVM sample (``samples/python/digits.py``): a C-SVC with an RBF or
linear kernel, one-vs-one inside OpenCV. OpenCV gives no per-class scores for several
classes, so :meth:`decision_function` returns one-hot votes for the predicted class.
The trained model is stored in OpenCV's own YAML format (:meth:`save` / :func:`load_opencv_svm`).
"""

from __future__ import annotations

import tempfile
from numbers import Integral, Real
from pathlib import Path

import cv2
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

_KERNELS = ("rbf", "linear")


def _ml():  # noqa: ANN202 - cv2's module has no type stubs
    """``cv2.ml``, or a clear error where OpenCV ships without it (opencv-python-headless 5.x)."""
    if not hasattr(cv2, "ml"):
        raise ImportError(f"OpenCV {cv2.__version__} has no cv2.ml module (5.x wheels dropped it); "
                          "install opencv-python-headless<5 for the opencv-svm classifier")
    return cv2.ml


class OpenCVSVM(ClassifierMixin, BaseEstimator):
    """C-SVC from ``cv2.ml.SVM``.

    Parameters
    ----------
    kernel : {"rbf", "linear"}
    C : float
    gamma : float or "scale"
        RBF width; "scale" is 1 / (n_features * X.var()), as scikit-learn's SVC.
    max_iterations : int
        Solver iteration cap (OpenCV's term criteria; it reports no iteration count).
    tol : float

    Attributes
    ----------
    classes_, n_features_in_, svm_ (the ``cv2.ml.SVM``), gamma_
    """

    _parameter_constraints: dict = {
        "kernel": [StrOptions(set(_KERNELS))],
        "C": [Interval(Real, 0, None, closed="neither")],
        "gamma": [StrOptions({"scale"}), Interval(Real, 0, None, closed="neither")],
        "max_iterations": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, kernel: str = "rbf", C: float = 1.0, gamma: float | str = "scale",
                 max_iterations: int = 10000, tol: float = 1e-3):
        self.kernel = kernel
        self.C = C
        self.gamma = gamma
        self.max_iterations = max_iterations
        self.tol = tol

    def fit(self, X, y) -> OpenCVSVM:
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("OpenCVSVM needs samples of at least 2 classes, got 1 class")
        if self.gamma == "scale":
            var = float(X.var())
            self.gamma_ = 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        else:
            self.gamma_ = float(self.gamma)
        ml = _ml()
        svm = ml.SVM_create()
        svm.setType(ml.SVM_C_SVC)
        svm.setKernel(ml.SVM_RBF if self.kernel == "rbf" else ml.SVM_LINEAR)
        svm.setC(float(self.C))
        svm.setGamma(self.gamma_)
        svm.setTermCriteria((cv2.TERM_CRITERIA_MAX_ITER + cv2.TERM_CRITERIA_EPS,
                             int(self.max_iterations), float(self.tol)))
        svm.train(np.ascontiguousarray(X), ml.ROW_SAMPLE, y_idx.astype(np.int32))
        self.svm_ = svm
        return self

    def _predict_idx(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        if len(X) == 0:
            return np.zeros(0, dtype=int)
        return self.svm_.predict(np.ascontiguousarray(X))[1].ravel().astype(int)

    def predict(self, X) -> np.ndarray:
        idx = self._predict_idx(X)  # checks fitted state before classes_ is read
        return self.classes_[idx]

    def decision_function(self, X) -> np.ndarray:
        """One-hot votes (N, n_classes); for two classes, +1/-1 for the positive class."""
        idx = self._predict_idx(X)
        if len(self.classes_) == 2:
            return np.where(idx == 1, 1.0, -1.0)
        votes = np.zeros((len(idx), len(self.classes_)))
        votes[np.arange(len(idx)), idx] = 1.0
        return votes

    def __getstate__(self) -> dict:
        # cv2.ml objects do not pickle; carry the model as OpenCV's own YAML text instead
        # (for clone/joblib/Dask within a process, never for files users hand us).
        state = self.__dict__.copy()
        if "svm_" in state:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "svm.yml"
                self.svm_.save(str(path))
                state["svm_"] = path.read_text()
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("svm_"), str):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "svm.yml"
                path.write_text(state["svm_"])
                state["svm_"] = _ml().SVM_load(str(path))
        self.__dict__.update(state)

    def save(self, path: Path) -> None:
        """Write the trained SVM as OpenCV YAML."""
        check_is_fitted(self)
        self.svm_.save(str(path))


def load_opencv_svm(path: Path, params: dict, classes: np.ndarray, n_features: int,
                    gamma: float) -> OpenCVSVM:
    """Rebuild an :class:`OpenCVSVM` from its YAML file and stored parameters."""
    est = OpenCVSVM(**params)
    est.svm_ = _ml().SVM_load(str(path))
    est.classes_ = np.asarray(classes)
    est.n_features_in_ = n_features
    est.gamma_ = gamma
    return est
