"""Learned patch features (Coates, Lee & Ng 2011): the estimator contract, the stages against a
direct implementation, train-only learning, save/load, the torch path, extraction and the API."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from cvpipe.classifiers.linear_svm import LinearSVM
from cvpipe.data import load_cifar10
from cvpipe.errors import ConfigError
from cvpipe.features import FeatureSpec, PatchFeatures, extractor_state
from cvpipe.features.patches import extract_patches, mirror_index, pooling_grids
from cvpipe.models import ClassicPipeline, load_model
from tests import synthetic

SMALL = dict(n_centroids=16, n_patches=4000, max_iter=5, device="cpu", random_state=1)


@parametrize_with_checks([
    PatchFeatures(image_shape=(1, -1), patch_size=1, pooling=(1, 1), n_centroids=2, n_patches=64,
                  max_iter=2, device="cpu"),
    PatchFeatures(image_shape=(1, -1), patch_size=1, pooling=(1, 1), n_centroids=2, n_patches=64,
                  max_iter=2, encoding="soft", device="cpu"),
    PatchFeatures(image_shape=(1, -1), patch_size=1, pooling=(1, 1), n_centroids=2, n_patches=64,
                  max_iter=2, flip_invariant=True, device="cpu"),
])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def images():
    x, _ = synthetic.make_images(6, seed=3)
    return x  # (60, 32, 32, 3) uint8


def reference(model: PatchFeatures, image: np.ndarray) -> np.ndarray:
    """The paper's stages for one image, one patch at a time, in float64."""
    s, k = model.patch_size, len(model.centroids_)
    positions = range(0, image.shape[0] - s + 1, model.stride)
    grid = np.zeros((len(positions), len(positions), k))
    for a, r in enumerate(positions):
        for b, c in enumerate(positions):
            p = image[r:r + s, c:c + s].astype(np.float64).reshape(-1)
            p = (p - p.mean()) / np.sqrt(p.var() + model.norm_eps)
            p = (p - model.mean_) @ model.whitening_.astype(np.float64)
            z = np.sqrt(((model.centroids_.astype(np.float64) - p) ** 2).sum(1))
            grid[a, b] = np.maximum(0, z.mean() - z)
    half = (len(positions) + 1) // 2  # 27 positions: 14 + 13, as the paper's quadrants
    quads = [grid[:half, :half], grid[:half, half:], grid[half:, :half], grid[half:, half:]]
    return np.concatenate([q.sum((0, 1)) for q in quads])


def test_encoding_equals_the_paper_stages_done_directly(images):
    model = PatchFeatures(**SMALL).fit(images)
    got = model.transform(images[:3])
    assert got.shape == (3, 4 * 16) and got.dtype == np.float32
    for i in range(3):
        np.testing.assert_allclose(got[i], reference(model, images[i]), rtol=2e-4, atol=2e-3)
    rooted = model.set_params(power=0.5).transform(images[:3])  # stage 8 only
    np.testing.assert_allclose(rooted, np.sqrt(got), rtol=1e-6)
    np.testing.assert_allclose(model.set_params(backend="torch").transform(images[:3]), rooted,
                               rtol=1e-4, atol=1e-3)


def test_soft_split_encoding_is_two_thresholded_codes_per_unit_centroid(images):
    """Coates & Ng's polarity split: max(0, a.x - alpha) and max(0, -a.x - alpha) per unit
    centroid a, summed over the quadrants, as the stages done directly."""
    model = PatchFeatures(**SMALL, encoding="soft-split", alpha=0.5).fit(images)
    got = model.transform(images[:2])
    assert got.shape == (2, 4 * 2 * 16)
    unit = model.centroids_ / np.linalg.norm(model.centroids_, axis=1, keepdims=True)
    s = model.patch_size
    for i in range(2):
        grid = np.zeros((27, 27, 32))
        for r in range(27):
            for c in range(27):
                p = images[i, r:r + s, c:c + s].astype(np.float64).reshape(-1)
                p = (p - p.mean()) / np.sqrt(p.var() + model.norm_eps)
                z = ((p - model.mean_) @ model.whitening_) @ unit.T
                grid[r, c] = np.maximum(0, np.concatenate([z, -z]) - 0.5)
        quads = [grid[:14, :14], grid[:14, 14:], grid[14:, :14], grid[14:, 14:]]
        np.testing.assert_allclose(got[i], np.concatenate([q.sum((0, 1)) for q in quads]),
                                   rtol=2e-4, atol=2e-3)
    np.testing.assert_allclose(model.set_params(backend="torch").transform(images[:2]), got,
                               rtol=1e-4, atol=1e-3)
    # flip-invariant: the signed codes keep their mirror pairs
    flip = PatchFeatures(**SMALL, encoding="soft-split", flip_invariant=True).fit(images)
    features = flip.transform(images)
    assert features.shape == (len(images), 4 * 16)
    np.testing.assert_allclose(flip.transform(mirrored(images)), features, rtol=1e-4, atol=1e-2)


def test_fused_threshold_and_cell_sums_equal_the_numpy_stages():
    """The compiled pass (threshold, then each cell's sum) against NumPy's ufuncs and sums, on
    unequal cells, with and without the negative polarity; edges that do not cut the grid
    are refused before any work."""
    from cvpipe.features._threshold_pool import threshold_cell_sums

    products = np.random.default_rng(0).normal(size=(3, 7, 5, 11)).astype(np.float32)
    row_edges, col_edges = [0, 2, 3, 7], [0, 4, 5]
    positive, negative = threshold_cell_sums(products, 0.25, row_edges, col_edges, split=True)
    assert positive.shape == negative.shape == (3, 2, 3, 11) and positive.dtype == np.float32
    for i, (r0, r1) in enumerate(itertools.pairwise(row_edges)):
        for j, (c0, c1) in enumerate(itertools.pairwise(col_edges)):
            cell = products[:, r0:r1, c0:c1]
            np.testing.assert_allclose(positive[i, j], np.maximum(cell - 0.25, 0).sum((1, 2)), rtol=1e-6)
            np.testing.assert_allclose(negative[i, j], np.maximum(-cell - 0.25, 0).sum((1, 2)), rtol=1e-6)
    alone, none = threshold_cell_sums(products, 0.25, row_edges, col_edges, split=False)
    assert none is None and np.array_equal(alone, positive)
    for rows, cols in (([0, 2, 6], col_edges), ([0, 3, 3, 7], col_edges), (row_edges, [1, 5])):
        with pytest.raises(ValueError, match="edges"):
            threshold_cell_sums(products, 0.25, rows, cols, split=True)


def test_fused_pass_compiles_without_a_writable_cache(monkeypatch):
    """Where numba finds no writable place for its cache (a read-only install without a home),
    the pass is compiled for the process instead of failing the encoding."""
    from numba.core import caching

    from cvpipe.features import _threshold_pool

    cache_impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in 0.60
    monkeypatch.setattr(cache_impl, "_locator_classes", [])
    _threshold_pool._compiled.cache_clear()
    try:
        sums, _ = _threshold_pool.threshold_cell_sums(np.ones((1, 2, 2, 3), np.float32), 0.25,
                                                      [0, 2], [0, 1, 2], split=False)
        np.testing.assert_allclose(sums[0, :, 0], np.full((2, 3), 1.5))
    finally:
        _threshold_pool._compiled.cache_clear()


def test_knn_encoding_marks_the_nearest_centroids(images):
    """Thiry et al.'s k-nearest-atom encoding: 1 for the knn_fraction * K nearest centroids,
    summed over the quadrants, as the stages done directly."""
    model = PatchFeatures(**SMALL, encoding="knn", knn_fraction=0.25).fit(images)
    got = model.transform(images[:2])
    assert got.shape == (2, 4 * 16)
    s = model.patch_size
    for i in range(2):
        grid = np.zeros((27, 27, 16))
        for r in range(27):
            for c in range(27):
                p = images[i, r:r + s, c:c + s].astype(np.float64).reshape(-1)
                p = (p - p.mean()) / np.sqrt(p.var() + model.norm_eps)
                z = (((p - model.mean_) @ model.whitening_ - model.centroids_) ** 2).sum(1)
                grid[r, c, np.argsort(z)[:4]] = 1  # 0.25 * 16 nearest
        quads = [grid[:14, :14], grid[:14, 14:], grid[14:, :14], grid[14:, 14:]]
        want = np.concatenate([q.sum((0, 1)) for q in quads])
        # a near tie at the 4th distance may fall either way in float32: a few patches at most
        assert np.abs(got[i] - want).sum() <= 4 and got[i].sum() == 4 * 27 * 27
    np.testing.assert_allclose(model.set_params(backend="torch").transform(images[:2]), got, atol=4)
    flip = PatchFeatures(**SMALL, encoding="knn", flip_invariant=True).fit(images)
    features = flip.transform(images)
    np.testing.assert_allclose(flip.transform(mirrored(images)), features, atol=4)


def test_whitening_decorrelates_and_the_dictionary_is_learned(images):
    model = PatchFeatures(**SMALL).fit(images)
    patches = extract_patches(images, 6, 1).reshape(-1, 108).astype(np.float64)
    patches -= patches.mean(1, keepdims=True)
    patches /= np.sqrt(patches.var(1, keepdims=True) + 10)
    white = (patches - model.mean_) @ model.whitening_
    np.testing.assert_allclose(model.whitening_, model.whitening_.T, atol=1e-5)  # ZCA: symmetric
    # whitened covariance: eigenvalues lambda / (lambda + 0.1), near 1 where the data vary and
    # below 1 where they do not; before, they spread over orders of magnitude
    # (one eigenvalue is 0 either way: every normalised patch sums to 0)
    before = np.linalg.eigvalsh(np.cov(patches, rowvar=False))[1:]
    after = np.linalg.eigvalsh(np.cov(white, rowvar=False))[1:]
    assert after.max() < 1.15 and after[-5:].min() > 0.8 and after.min() > 0.1
    assert before.max() / before.min() > 100 * after.max() / after.min()
    assert model.centroids_.shape == (16, 108) and np.isfinite(model.inertia_)
    more = PatchFeatures(**{**SMALL, "max_iter": 20}).fit(images)
    assert more.inertia_ <= model.inertia_ + 1e-6  # Lloyd's iterations never increase it


def test_fit_uses_the_images_only_and_is_repeatable(images):
    a = PatchFeatures(**SMALL).fit(images, y=np.arange(len(images)))
    b = PatchFeatures(**SMALL).fit(images)
    for name in ("mean_", "whitening_", "centroids_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = PatchFeatures(**SMALL).fit(images[:30])
    assert not np.array_equal(c.centroids_, a.centroids_)


def test_torch_path_on_the_cpu_equals_the_numpy_path(images):
    model = PatchFeatures(**SMALL).fit(images)
    numpy_out = model.transform(images)
    model.set_params(backend="torch")
    np.testing.assert_allclose(model.transform(images), numpy_out, rtol=1e-4, atol=1e-3)
    soft = PatchFeatures(**SMALL, encoding="soft", alpha=0.5).fit(images)
    np.testing.assert_allclose(soft.set_params(backend="torch").transform(images),
                               soft.set_params(backend="numpy").transform(images), rtol=1e-4, atol=1e-3)
    import torch  # a tensor given to the numpy backend is computed on the host

    np.testing.assert_array_equal(soft.transform(torch.from_numpy(images)), soft.transform(images))


def test_parameters_and_size_are_checked(images):
    spec = FeatureSpec.parse("patches", {"n_centroids": 100, "pooling": 3})
    assert spec.stateful and spec.n_features((32, 32, 3)) == 9 * 100
    with pytest.raises(ConfigError, match="encoding"):
        FeatureSpec.parse("patches", {"encoding": "sparse-coding"})
    with pytest.raises(ConfigError, match="knn_fraction"):
        FeatureSpec.parse("patches", {"encoding": "knn", "knn_fraction": 0})
    with pytest.raises(ConfigError, match="smaller than"):
        FeatureSpec.parse("patches", {"patch_size": 40}).check((32, 32, 3))
    with pytest.raises(NotFittedError, match="not fitted"):
        PatchFeatures(**SMALL).transform(images)


def test_downscale_learns_and_encodes_the_block_means(images):
    """downscale=2 is the same features computed on the 2 x 2 block means of the images: learned
    from them, encoded from them (numpy and torch), flip-invariant still, and its own size."""
    half = images.reshape(60, 16, 2, 16, 2, 3).astype(np.float64).mean((2, 4)).astype(np.float32)
    params = dict(SMALL, flip_invariant=True, pooling=[[1, 1], [2, 2]])
    model = PatchFeatures(**params, downscale=2).fit(images)
    direct = PatchFeatures(**params).fit(half)
    for name in ("mean_", "whitening_", "centroids_"):
        np.testing.assert_allclose(getattr(model, name), getattr(direct, name), rtol=1e-4, atol=1e-4)
    got = model.transform(images)
    assert got.shape == (60, 5 * 8)
    assert model.get_feature_names_out().shape == (40,)
    np.testing.assert_allclose(got, direct.transform(half), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(model.set_params(backend="torch").transform(images), got,
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(model.set_params(backend="numpy").transform(mirrored(images)), got,
                               rtol=1e-4, atol=1e-2)
    # another scale gives other features
    assert np.abs(PatchFeatures(**params).fit(images).transform(images)[:, :40] - got).max() > 1
    assert "1/2-scale" in model.describe()
    spec = FeatureSpec.parse("patches", {"n_centroids": 100, "pooling": 3, "downscale": 2})
    assert spec.n_features((32, 32, 3)) == 9 * 100
    # added later: at its default it is not part of the key, so stores written before stay valid
    plain = FeatureSpec.parse("patches", {"n_centroids": 100, "pooling": 3})
    assert "downscale" not in plain.effective_params()[0]["params"]
    explicit = FeatureSpec.parse("patches", {"n_centroids": 100, "pooling": 3, "downscale": 1})
    assert explicit.key() == plain.key()
    assert spec.effective_params()[0]["params"]["downscale"] == 2 and spec.key() != plain.key()
    with pytest.raises(ConfigError, match="not multiples of 3"):
        FeatureSpec.parse("patches", {"downscale": 3}).check((32, 32, 3))
    with pytest.raises(ConfigError, match="smaller than"):
        FeatureSpec.parse("patches", {"downscale": 8}).check((32, 32, 3))


def mirrored(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[:, :, ::-1])


@pytest.mark.parametrize("flip_invariant", [False, True])
def test_a_pyramid_joins_the_features_of_its_grids(images, flip_invariant):
    model = PatchFeatures(**SMALL, flip_invariant=flip_invariant, power=0.5,
                          pooling=[[1, 1], [2, 2], [3, 1]]).fit(images)
    got = model.transform(images[:5])
    per_cell = 8 if flip_invariant else 16
    assert got.shape == (5, (1 + 4 + 3) * per_cell)
    parts = [model.set_params(pooling=grid).transform(images[:5]) for grid in ((1, 1), 2, (3, 1))]
    # the same sums, added in another order (the pyramid sums the finest cells first)
    np.testing.assert_allclose(got, np.concatenate(parts, 1), rtol=1e-6, atol=1e-6)
    # the 1 x 1 grid is the sum of the 3 x 1 cells, before the square roots (not of the 2 x 2
    # ones when flip-invariant: the middle column belongs to both halves)
    np.testing.assert_allclose(parts[0] ** 2, (parts[2] ** 2).reshape(5, 3, -1).sum(1), rtol=1e-4)
    model.set_params(pooling=[[1, 1], [2, 2], [3, 1]], backend="torch")
    np.testing.assert_allclose(model.transform(images[:5]), got, rtol=1e-4, atol=1e-3)
    spec = FeatureSpec.parse("patches", {"n_centroids": 100, "pooling": [[1, 1], [3, 3]]})
    assert spec.n_features((32, 32, 3)) == 10 * 100


@pytest.mark.parametrize("pooling", [[1, 2, 3], [], [[2, 2], 3], [[2, 2], [0, 1]], [[30, 1]]])
def test_a_pooling_that_is_not_grids_is_refused(pooling):
    with pytest.raises(ConfigError, match="pooling"):
        FeatureSpec.parse("patches", {"pooling": pooling}).check((32, 32, 3))


@pytest.mark.parametrize("pooling", [(2, 2), (3, 3), (1, 2), [[1, 1], [2, 2], [3, 3]]])
def test_flip_invariant_features_are_those_of_the_mirror_image(images, pooling):
    model = PatchFeatures(**SMALL, flip_invariant=True, pooling=pooling).fit(images)
    got = model.transform(images)
    cells = sum(gh * gw for gh, gw in pooling_grids(pooling))
    assert got.shape == (len(images), cells * 8)
    # float32 rounding only: the codes are sums of hundreds of distances of order 1
    np.testing.assert_allclose(model.transform(mirrored(images)), got, rtol=1e-4, atol=1e-2)
    # the learned state is mirror-symmetric: centroid 8 + k mirrors k, whitening commutes
    mirror = mirror_index(6, 3)
    np.testing.assert_array_equal(model.centroids_[8:], model.centroids_[:8][:, mirror])
    np.testing.assert_allclose(model.whitening_[np.ix_(mirror, mirror)], model.whitening_, atol=1e-6)
    np.testing.assert_allclose(model.set_params(backend="torch").transform(images), got,
                               rtol=1e-4, atol=1e-3)
    # without the option, a mirror image has other features
    plain = PatchFeatures(**SMALL, pooling=pooling).fit(images)
    assert np.abs(plain.transform(mirrored(images)) - plain.transform(images)).max() > 1


def test_flip_invariant_linear_svm_is_the_flip_augmented_one(images):
    """A linear SVM on flip-invariant features gives the scores of one trained, with the same C,
    on the full (unsummed) features of the images and of their mirror images."""
    x, y = images, np.repeat(np.arange(10), 6)
    sym = PatchFeatures(**SMALL, flip_invariant=True, pooling=(2, 1)).fit(x)
    # the same dictionary without the summing: one column cell, mirror-symmetric either way
    full = PatchFeatures(**SMALL, pooling=(2, 1)).set_state(sym.get_state(), x.shape[1:])
    scale = 1e-3  # codes sum to hundreds: keep the problem well conditioned
    augmented = LinearSVM(C=0.1, max_iter=5000, tol=1e-9).fit(
        scale * np.concatenate([full.transform(x), full.transform(mirrored(x))]), np.tile(y, 2))
    on_sym = LinearSVM(C=0.1, max_iter=5000, tol=1e-9).fit(scale * sym.transform(x), y)
    test = np.asarray(synthetic.make_images(2, seed=9)[0])
    np.testing.assert_allclose(on_sym.decision_function(scale * sym.transform(test)),
                               augmented.decision_function(scale * full.transform(test)),
                               rtol=1e-3, atol=1e-3)


def test_flip_invariant_needs_an_even_and_mirror_closed_dictionary(images):
    with pytest.raises(ConfigError, match="even n_centroids"):
        PatchFeatures(**{**SMALL, "n_centroids": 15}, flip_invariant=True).fit(images)
    plain = PatchFeatures(**SMALL).fit(images)
    with pytest.raises(ConfigError, match="mirror-closed"):
        PatchFeatures(**SMALL, flip_invariant=True).set_state(plain.get_state(), (32, 32, 3))
    spec = FeatureSpec.parse("patches", {"n_centroids": 100, "flip_invariant": True})
    assert spec.n_features((32, 32, 3)) == 4 * 50


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    synthetic.write_image_folder(root / "src", n_train=12, n_test=4)
    ds = load_cifar10(root / "src", root / "data", val_fraction=0.25)
    table = {"features": {"name": "patches+color", "components": [
        {"name": "patches", "params": {"n_centroids": 16, "n_patches": 4000, "max_iter": 5}},
        {"name": "color"}]},
        "classifier": {"type": "linear-svm", "params": {"C": 0.1}}}
    meta = ClassicPipeline.from_table("p", table).train(ds, root / "models" / "p", progress=False)
    return root, ds, meta


def test_learned_from_the_train_split_only_and_saved_as_data(trained):
    root, ds, meta = trained
    model = load_model(root / "models" / "p")
    # the model's dictionary is exactly what fitting on the train split's images gives
    own = PatchFeatures(n_centroids=16, n_patches=4000, max_iter=5).fit(np.asarray(ds.split("train")[0]))
    np.testing.assert_array_equal(model.feature_extractor.named_transformers["patches"].centroids_,
                                  own.centroids_)
    on_disk = json.loads((root / "models" / "p" / "model.json").read_text())
    assert "features.safetensors" in on_disk["files"]
    assert on_disk["features_state"]["image_shape"] == [32, 32, 3]
    assert meta["feature_dim"] == 4 * 16 + 128 and meta["train_seconds"] >= meta["fit_seconds"]
    x_test, y_test = ds.split("test")
    scores, _ = model.scores(np.asarray(x_test))
    assert (scores.argmax(1) == y_test).mean() == pytest.approx(meta["metrics"]["test"]["accuracy"])
    again = load_model(root / "models" / "p")
    np.testing.assert_array_equal(again.scores(np.asarray(x_test))[0], scores)  # identical reload
    state = extractor_state(model.feature_extractor, FeatureSpec.parse(on_disk["features"]))
    assert set(state) == {"patches.mean_", "patches.whitening_", "patches.centroids_"}


def test_extract_with_a_models_learned_features(trained, tmp_path, capsys):
    from cvpipe.cli import main
    from cvpipe.featurestore import load_features

    root, ds, _ = trained
    args = ["extract", "--model", "p", "--models-dir", str(root / "models"), "--split", "test",
            "--source", ds.manifest["source_path"], "--data-root", str(root / "data"), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    feats, _, _ = load_features(out["path"])
    model = load_model(root / "models" / "p")
    np.testing.assert_allclose(np.asarray(feats),
                               model.feature_extractor.transform(np.asarray(ds.split("test")[0])),
                               rtol=1e-6)
    code = main(["extract", "--features", "patches", "--split", "test", "--source",
                 ds.manifest["source_path"], "--data-root", str(root / "data")])
    assert code == 2 and "--model" in capsys.readouterr().err


def test_api_serves_a_models_learned_features(trained):
    from service import create_app
    from tests.test_api import encode

    root, ds, meta = trained
    client = create_app({"TESTING": True, "MODELS_DIR": str(root / "models"), "API_TOKEN": None}
                        ).test_client()
    blob = encode(np.asarray(ds.split("test")[0][0]))
    r = client.post("/v1/features", data={"model": "p", "images": [(io.BytesIO(blob), "a.png")]})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["dim"] == meta["feature_dim"]
    r = client.post("/v1/features", data={"features": "patches",
                                          "images": [(io.BytesIO(blob), "a.png")]})
    assert r.status_code == 400 and "model=" in r.get_json()["message"]
    r = client.post("/v1/models/p/predict", data={"images": [(io.BytesIO(blob), "a.png")]})
    assert r.status_code == 200


def test_encoding_on_several_threads_leaves_the_blas_thread_counts_as_they_were(images, monkeypatch):
    """Its one-thread limit covers the encoding only: once raced in every thread, it could stay
    on NumPy's BLAS for the rest of the process (every later product on one core)."""
    from threadpoolctl import threadpool_info

    def counts() -> list[tuple[str, int]]:
        return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                      if i["user_api"] == "blas")

    import cvpipe.features.patches as patches_module

    pf = PatchFeatures(n_centroids=20, n_patches=2000, max_iter=3, n_jobs=2).fit(images)
    monkeypatch.setattr(patches_module, "CHUNK_CODES", 729 * 40)  # an image per chunk
    before = counts()
    for _ in range(10):
        pf.transform(images)
        assert counts() == before
