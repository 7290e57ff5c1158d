"""Classifiers on features: correctness against references and the scikit-learn contract."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from cvpipe.classifiers.linear_svm import LinearSVM
from cvpipe.classifiers.mlp import MLPClassifier
from cvpipe.classifiers.opencv_svm import OpenCVSVM


@pytest.fixture(scope="module")
def blobs():
    X, y = make_classification(600, 20, n_informative=12, n_classes=4, n_clusters_per_class=1,
                               class_sep=2.0, random_state=0)
    return X[:400], y[:400], X[400:], y[400:]


@parametrize_with_checks([
    LinearSVM(),
    MLPClassifier(hidden_sizes=(32,), dropout=0.0, lr=1e-2, max_epochs=40, batch_size=32),
    OpenCVSVM(kernel="rbf"),
])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_linear_svm_matches_liblinear(blobs, C):
    X, y, _, _ = blobs
    ours = LinearSVM(C=C).fit(X, y)
    # A huge intercept_scaling makes liblinear's (regularised) bias effectively free, as ours.
    ref = LinearSVC(C=C, dual=False, intercept_scaling=1e3, tol=1e-8, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-3)
    assert (ours.predict(X) == ref.predict(X)).mean() > 0.99


def test_classifiers_learn(blobs):
    X, y, Xt, yt = blobs
    for est in (LinearSVM(C=0.1), MLPClassifier(hidden_sizes=(64,), lr=1e-2, max_epochs=60),
                MLPClassifier(hidden_sizes=(), batch_norm=False, dropout=0.0, lr=1e-2, max_epochs=60),
                OpenCVSVM(kernel="rbf", C=10), OpenCVSVM(kernel="linear")):
        pipe = make_pipeline(StandardScaler(), est).fit(X, y)
        assert pipe.score(Xt, yt) > 0.7, type(est).__name__  # chance is 0.25


def test_mlp_early_stopping_uses_eval_set_and_restores_best(blobs):
    X, y, Xt, yt = blobs
    mlp = MLPClassifier(hidden_sizes=(256,), dropout=0.0, lr=3e-3, max_epochs=200, patience=3,
                        lr_schedule="none").fit(X, y, eval_set=(Xt, yt))
    assert mlp.n_epochs_ < 200  # stopped early
    best = int(np.argmin(mlp.history_["val_loss"]))
    assert mlp.best_epoch_ == best and mlp.n_epochs_ == best + 1 + 3
    proba = mlp.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)


def test_mlp_is_repeatable_with_a_seed(blobs):
    X, y, Xt, _ = blobs
    a = MLPClassifier(hidden_sizes=(32,), max_epochs=5, random_state=3).fit(X, y).predict_proba(Xt)
    b = MLPClassifier(hidden_sizes=(32,), max_epochs=5, random_state=3).fit(X, y).predict_proba(Xt)
    np.testing.assert_array_equal(a, b)


def test_grid_search_and_clone(blobs):
    X, y, _, _ = blobs
    pipe = make_pipeline(StandardScaler(), LinearSVM())
    search = GridSearchCV(pipe, {"linearsvm__C": [0.001, 1.0]}, cv=3).fit(X, y)
    assert search.best_params_["linearsvm__C"] in (0.001, 1.0)
    c = clone(OpenCVSVM(C=3.0))
    assert c.C == 3.0 and not hasattr(c, "svm_")


def test_invalid_parameters_are_clear(blobs):
    X, y, _, _ = blobs
    with pytest.raises(ValueError, match="C must be positive"):
        LinearSVM(C=0).fit(X, y)
    with pytest.raises(ValueError, match="optimizer"):
        MLPClassifier(optimizer="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="kernel"):
        OpenCVSVM(kernel="poly").fit(X, y)
