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

from cvpipe.classifiers import linear_svm
from cvpipe.classifiers.chunks import ArrayChunks
from cvpipe.classifiers.kernel_svm import RBFSVM, svc_decision
from cvpipe.classifiers.linear_svm import LinearSVM, objective_value
from cvpipe.classifiers.mlp import Dropout, MLPClassifier
from cvpipe.classifiers.opencv_svm import OpenCVSVM
from cvpipe.classifiers.preconditioners import Cholesky, Spectral
from cvpipe.classifiers.row_stats import Outer, compute_stats, full_gram, targets_for
from cvpipe.featurestore.dask import add_sums


@pytest.fixture(scope="module")
def blobs():
    X, y = make_classification(600, 20, n_informative=12, n_classes=4, n_clusters_per_class=1,
                               class_sep=2.0, random_state=0)
    return X[:400], y[:400], X[400:], y[400:]


@parametrize_with_checks([
    LinearSVM(),
    MLPClassifier(hidden_sizes=(32,), dropout=0.0, lr=1e-2, max_epochs=40, batch_size=32),
    OpenCVSVM(kernel="rbf"),
    RBFSVM(),
    RBFSVM(approximation="nystroem", n_components=20, max_iter=50),
])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_linear_svm_matches_liblinear(blobs, C):
    X, y, _, _ = blobs
    ours = LinearSVM(C=C).fit(X, y)
    # A huge intercept_scaling makes liblinear's (regularised) bias effectively free, as ours.
    ref = LinearSVC(C=C, dual=False, intercept_scaling=1e3, tol=1e-8, max_iter=10000).fit(X, y)
    as_ours = LinearSVM(C=C)
    as_ours.classes_, as_ours.coef_, as_ours.intercept_ = ref.classes_, ref.coef_, ref.intercept_
    # the same minimum of the same objective at the default tolerance
    assert objective_value(ours, X, y) == pytest.approx(objective_value(as_ours, X, y), rel=1e-5)
    # the same minimiser: at C = 1 the minimum is flat (weights 1e-2 apart differ in the
    # objective's sixth digit, where the default tolerance stops), so the weights are compared
    # after a tighter fit
    tight = LinearSVM(C=C, tol=1e-7).fit(X, y)
    np.testing.assert_allclose(tight.coef_, ref.coef_, atol=1e-3 if C < 1 else 5e-3)
    assert (ours.predict(X) == ref.predict(X)).mean() > 0.99


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_svm_gpu_code_path_equals_the_numpy_one_on_the_cpu(blobs, dtype):
    X, y, _, _ = blobs
    X = X.astype(dtype)
    host = LinearSVM(C=0.5, backend="numpy").fit(X, y)
    on_device = LinearSVM(C=0.5, device="cpu", backend="torch").fit(X, y)
    assert on_device.torch_device() is not None and host.torch_device() is None
    # L-BFGS stops on a relative decrease of the loss, so the two paths (products summed in
    # another order) stop at slightly different points of the same flat minimum: compare the
    # objective there, and the predictions
    losses = [objective_value(m, X.astype(np.float64), y) for m in (host, on_device)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert (on_device.predict(X) == host.predict(X)).mean() >= 0.99
    assert LinearSVM(device="cpu").torch_device() is None  # the CPU default stays NumPy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_sum_is_xtx_summed_in_place_over_blocks(dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(700, 1100)).astype(dtype)  # wider than full_gram's 1024-row blocks
    total = None
    for a in range(0, 700, 300):
        part = (Outer(X[a:a + 300]),)
        total = part if total is None else add_sums(total, part)
    G = full_gram(total[0])
    reference = X.astype(np.float64).T @ X.astype(np.float64)
    assert G.dtype == dtype and np.array_equal(G, G.T)
    np.testing.assert_allclose(G, reference, rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=1e-2 if dtype == np.float32 else 1e-9)
    # the statistics pass gives the same Gram matrix around its shift
    y = rng.integers(0, 3, 700)
    stats = compute_stats(ArrayChunks(X, y, rows=256), targets_for(3), with_gram=True)
    U = X.astype(np.float64) - stats.shift
    np.testing.assert_allclose(stats.gram, U.T @ U, rtol=1e-3, atol=0.5 if dtype == np.float32 else 1e-8)


def test_cholesky_preconditioner_factorises_in_place_and_inverts():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 40)).astype(np.float32)
    gram = (X.T @ X) / 300
    pre = Cholesky(gram, 300)
    U = pre.factor(0.01)
    H = np.eye(40) + 2 * 0.01 * 300 * gram.astype(np.float64)
    assert U.flags.f_contiguous and np.allclose(np.tril(U, -1), 0)  # LAPACK's layout, no copy
    np.testing.assert_allclose(U.T @ U, H, rtol=1e-10)
    to_w, to_v, grad_v = pre.at(0.01)
    W = rng.normal(size=(40, 3))
    np.testing.assert_allclose(to_w(to_v(W)), W, atol=1e-10)
    np.testing.assert_allclose(pre.solve(0.01, W), np.linalg.solve(H, W), rtol=1e-8)
    assert pre.factor(0.015) is U  # a nearby curvature reuses the factor
    assert pre.factor(0.05) is not U  # a far one gets its own, exact
    np.testing.assert_allclose(pre.factor(0.05).T @ pre.factor(0.05),
                               np.eye(40) + 2 * 0.05 * 300 * gram.astype(np.float64), rtol=1e-10)
    kept = pre.factor(0.05)
    wider = pre.with_rows(330)  # a refit: the Gram matrix shared, the factor handed on
    assert pre._factor is None and wider.gram is pre.gram and wider.factor(0.05) is kept


def test_sketched_preconditioner_finds_the_leading_eigenpairs_and_inverts():
    rng = np.random.default_rng(2)
    # 10 strong directions over a weak rest, as standardised features have: 400 rows, 120 features
    X = rng.normal(size=(400, 10)) @ rng.normal(size=(10, 120)) * 5 + rng.normal(size=(400, 120))
    A = X.T @ X
    exact = np.linalg.eigvalsh(A)[::-1]
    pre = Spectral.sketch(lambda Q: A @ Q, 120, rank=20, passes=2)
    np.testing.assert_allclose(pre.s2[:10], exact[:10], rtol=1e-3)  # the leading ones
    assert pre.basis.shape == (120, 20) and np.allclose(pre.basis.T @ pre.basis, np.eye(20), atol=1e-5)
    assert 0.3 * exact[19] <= pre.rest <= exact[19] * 1.001  # the rest: about the smallest kept
    to_w, to_v, grad_v = pre.at(0.01)
    W = rng.normal(size=(120, 3))
    np.testing.assert_allclose(to_w(to_v(W)), W, rtol=1e-4, atol=1e-4)
    # on the leading directions the solve is H0's inverse
    H = np.eye(120) + 2 * 0.01 * A
    top = np.linalg.eigh(A)[1][:, ::-1][:, :10]
    np.testing.assert_allclose(pre.solve(0.01, H @ top), top, atol=1e-2)
    # and it preconditions: H0's condition number falls a thousandfold
    M = to_v(to_w(np.eye(120)))  # identity, as a check of the pair
    np.testing.assert_allclose(M, np.eye(120), atol=1e-4)
    P = grad_v(grad_v(H).T).T  # L^-1 H L^-T
    assert np.linalg.cond(H) > 10_000 and np.linalg.cond(P) < np.linalg.cond(H) / 1000
    full = Spectral.sketch(lambda Q: A @ Q, 120, rank=500)  # rank capped at D: exact
    assert full.rest == 0.0 and len(full.s2) == 120
    np.testing.assert_allclose(full.s2, exact, rtol=1e-3, atol=1e-3 * exact[0])


def test_wide_features_are_preconditioned_by_a_sketch_with_the_same_minimum(blobs, monkeypatch):
    X, y, _, _ = blobs
    reference = LinearSVM(C=0.05).fit(X, y)  # the Gram matrix and its Cholesky factor
    monkeypatch.setattr(linear_svm, "MAX_GRAM_FEATURES", 10)  # 20 features are "wide"
    monkeypatch.setattr(linear_svm, "SKETCH_RANK", 8)  # fewer pairs than features
    chunks = ArrayChunks(X.astype(np.float32), y, rows=64)
    problem = linear_svm.LinearProblem.prepare(chunks, standardize=False)
    assert isinstance(problem.preconditioner, Spectral) and problem.preconditioner.rest > 0
    np.testing.assert_allclose(problem.xty, ((X - X.mean(0)).T @ targets_for(4)[y]), rtol=1e-4, atol=1e-3)
    sketched = LinearSVM(C=0.05).fit(X, y)
    assert objective_value(sketched, X, y) == pytest.approx(objective_value(reference, X, y), rel=1e-5)
    assert (sketched.predict(X) == reference.predict(X)).mean() > 0.99


def test_fewer_rows_than_features_are_solved_in_their_span_with_the_same_minimum():
    # 80 rows of 300 features (plus a non-integer label set): the rows' span, 80-dimensional,
    # holds the minimiser; the reduced problem must give liblinear's minimum, and the minimum
    # L-BFGS finds over all 300 coordinates, fit by fit along a warm-started C path (the
    # minimum is flat: weights 4e-4 apart relative to their largest differ in the objective's
    # seventh digit)
    X, y = make_classification(80, 300, n_informative=30, n_classes=3, random_state=1)
    X, labels = X.astype(np.float32), np.array([-1, 4, 9])[y]
    problem = linear_svm.LinearProblem.prepare(ArrayChunks(X, labels), standardize=True)
    assert problem.reduced is not None and problem.reduced.chunks.n_features <= 80
    wide = linear_svm.LinearProblem.prepare(ArrayChunks(X, labels), standardize=True)
    wide.reduced = None
    Xs = StandardScaler().fit_transform(X)
    template = LinearSVM(tol=1e-8, max_iter=2000)
    reduced, full = (linear_svm.fit_path(p, template, [0.01, 0.1], scaled_inputs=True)
                     for p in (problem, wide))
    for model, reference in zip(reduced, full, strict=True):
        # the span's minimum is never above the one found over all coordinates, which L-BFGS
        # on float32 products stops within 1e-5 of, where the BLAS's summation order takes it
        # (one OpenBLAS thread: 1.6e-6 above the span's at C = 0.1, the weights 1.5e-3 apart)
        got, want = objective_value(model, Xs, labels), objective_value(reference, Xs, labels)
        assert got <= want * (1 + 1e-7) and got == pytest.approx(want, rel=1e-5)
        np.testing.assert_allclose(model.coef_, reference.coef_, atol=2e-3 * np.abs(reference.coef_).max())
        np.testing.assert_array_equal(model.predict(Xs), reference.predict(Xs))
    ours = LinearSVM(C=0.1, tol=1e-8).fit(Xs, labels)
    assert ours.fit_chunks(ArrayChunks(Xs.astype(np.float32), labels)).n_iter_ > 0
    ref = LinearSVC(C=0.1, dual=False, intercept_scaling=1e3, tol=1e-10, max_iter=100000).fit(Xs, labels)
    as_ours = LinearSVM(C=0.1)
    as_ours.classes_, as_ours.coef_, as_ours.intercept_ = ref.classes_, ref.coef_, ref.intercept_
    assert objective_value(ours, Xs, labels) == pytest.approx(objective_value(as_ours, Xs, labels), rel=1e-5)
    np.testing.assert_array_equal(ours.predict(Xs), ref.predict(Xs))


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


@pytest.mark.parametrize("units", [True, False])
def test_mlp_auto_precision_is_bfloat16_only_where_the_cpu_multiplies_it(monkeypatch, blobs, units):
    import torch

    X, y, Xt, _ = blobs
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: units)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    auto = MLPClassifier(hidden_sizes=(32,), max_epochs=2, precision="auto", device="cpu").fit(X, y)
    assert auto.precision_ == ("bfloat16" if units else "float32")
    # the training is the one that precision, given by name, gives
    named = MLPClassifier(hidden_sizes=(32,), max_epochs=2, precision=auto.precision_,
                          device="cpu").fit(X, y)
    np.testing.assert_array_equal(auto.predict_proba(Xt), named.predict_proba(Xt))
    for given in ("float32", "bfloat16"):  # a named precision is kept on any CPU
        assert MLPClassifier(hidden_sizes=(8,), max_epochs=1, precision=given,
                             device="cpu").fit(X, y).precision_ == given


def test_mlp_precision_benchmark_reports_both_precisions_and_the_auto_choice():
    import json
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "benchmarks/mlp_precision.py", "--rows", "512",
                           "--features", "64"], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert set(report["rows_per_s"]) == {"float32", "bfloat16"}
    assert all(v > 0 for v in report["rows_per_s"].values())
    assert report["auto_takes"] == ("bfloat16" if report["cpu_has_bfloat16_units"] else "float32")


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_cpu_dropout_keeps_one_minus_p_scaled_and_repeats_with_its_seed(p):
    import torch

    layer = Dropout(p).train()
    layer.seed(np.random.default_rng(3))
    x = torch.ones(400, 500, requires_grad=True)
    out = layer(x)
    kept = out.detach() != 0
    assert abs(float(kept.float().mean()) - (1 - p)) < 0.01
    assert torch.allclose(out.detach()[kept], torch.tensor(1 / (1 - p)))
    out.sum().backward()  # the gradient flows through the kept values only, scaled
    assert torch.equal(x.grad != 0, kept)
    layer.seed(np.random.default_rng(3))
    assert torch.equal(layer(x).detach(), out.detach())
    assert torch.equal(layer.eval()(x), x)  # no mask when evaluating


def test_grid_search_and_clone(blobs):
    X, y, _, _ = blobs
    pipe = make_pipeline(StandardScaler(), LinearSVM())
    # C = 1e-7 shrinks every weight to nothing (chance accuracy); C = 1 separates the blobs: a
    # search that works must choose 1, and clones must fit independently of the template.
    search = GridSearchCV(pipe, {"linearsvm__C": [1e-7, 1.0]}, cv=3).fit(X, y)
    assert search.best_params_["linearsvm__C"] == 1.0
    scores = search.cv_results_["mean_test_score"]
    assert scores[1] > 0.8 and scores[0] < scores[1] - 0.3
    c = clone(OpenCVSVM(C=3.0))
    assert c.C == 3.0 and not hasattr(c, "svm_")
    fitted = LinearSVM(C=1.0).fit(X, y)
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params() and not hasattr(copy, "coef_")


def test_invalid_parameters_are_clear(blobs):
    X, y, _, _ = blobs
    with pytest.raises(ValueError, match="'C' parameter of LinearSVM must be a float in the range"):
        LinearSVM(C=0).fit(X, y)
    with pytest.raises(ValueError, match="'approximation' parameter of RBFSVM"):
        RBFSVM(approximation="fast").fit(X, y)
    with pytest.raises(ValueError, match="optimizer"):
        MLPClassifier(optimizer="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="kernel"):
        OpenCVSVM(kernel="poly").fit(X, y)


def test_rbf_svm_is_exact_on_small_sets_and_nystroem_on_large(blobs):
    X, y, Xt, yt = blobs
    small = RBFSVM(C=10.0, exact_max_samples=len(X)).fit(X, y)
    assert small.approximation_ == "exact" and type(small.estimator_).__name__ == "SVC"
    large = RBFSVM(C=10.0, n_components=200, exact_max_samples=len(X) - 1).fit(X, y)
    assert large.approximation_ == "nystroem"
    assert large.estimator_.named_steps["nystroem"].n_components == 200
    for model in (small, large):
        assert model.score(Xt, yt) > 0.8  # chance is 0.25
        assert model.decision_function(Xt).shape == (len(Xt), 4)
    # one set of parameters serves both sizes: Nystroem's n_components does not reach the SVC
    # (the shipped color-rbf-svm once failed this way on the quick profile's 2,700 images)
    assert RBFSVM(n_components=1000).fit(X, y).approximation_ == "exact"


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_exact_rbf_svm_scores_by_products_equal_libsvms(n_classes, monkeypatch):
    # rows of several blocks, float32 as the store holds them, classes with few support vectors
    monkeypatch.setattr("cvpipe.classifiers.kernel_svm.KERNEL_ROWS", 64)
    X, y = make_classification(300, 30, n_informative=10, n_classes=n_classes,
                               n_clusters_per_class=1, class_sep=1.0, random_state=1)
    X = X.astype(np.float32)
    model = RBFSVM(C=3.0).fit(X[:200], y[:200])
    libsvm = model.estimator_.decision_function(X[200:])
    ours = model.decision_function(X[200:])
    assert ours.shape == libsvm.shape == ((100,) if n_classes == 2 else (100, n_classes))
    np.testing.assert_allclose(ours, libsvm, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(svc_decision(model.estimator_, X[200:201]), libsvm[:1], atol=1e-9)
