"""The scikit-learn transformers, make_features, and the visualisations.

scikit-learn's estimator checks (``parametrize_with_checks``) run on single-channel
configurations with ``image_shape=(1, -1)``: every check's synthetic 2-D data (2, 3, 5, 10,
... features) then forms valid 1-pixel-high images. RGB configurations are not run through
them because most checks use feature counts that are not multiples of 3, which can never be
RGB images; the RGB behaviour in ``Pipeline``, ``FeatureUnion``, ``GridSearchCV``, cloning and
pickling is tested below instead. Only ``check_array_api_input`` is skipped by scikit-learn
itself (it needs ``SCIPY_ARRAY_API=1``).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from cvpipe.errors import ConfigError
from cvpipe.features import (
    ColorHistogramTransformer,
    FeatureSpec,
    HOGTransformer,
    ImageFeatureUnion,
    PixelTransformer,
    color_histogram,
    hog,
    hog_glyphs,
    make_features,
    plot_color_histogram,
    plot_hog,
)


@parametrize_with_checks([
    HOGTransformer(image_shape=(1, -1), pixels_per_cell=1, cells_per_block=1,
                   channel_axis=None, device="cpu"),
    HOGTransformer(image_shape=(1, -1), pixels_per_cell=1, cells_per_block=1,
                   channel_axis=None, device="cpu", backend="torch"),
    ColorHistogramTransformer(image_shape=(1, -1), space="gray", bins=4, device="cpu"),
    PixelTransformer(image_shape=(1, -1)),
])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def data():
    """Two separable classes of 24x24 RGB images: horizontal vs vertical stripes, in
    different colours."""
    rng = np.random.default_rng(0)
    n = 40
    y = np.arange(n) % 2
    x = rng.integers(0, 60, (n, 24, 24, 3)).astype(np.int32)
    for i in range(n):
        if y[i]:
            x[i, ::4, :, 0] += 180
        else:
            x[i, :, ::4, 2] += 180
    return np.clip(x, 0, 255).astype(np.uint8), y


def test_transformers_equal_the_functions(data):
    x, _ = data
    np.testing.assert_array_equal(HOGTransformer(device="cpu").fit_transform(x),
                                  hog(x, backend="numpy"))
    np.testing.assert_array_equal(
        ColorHistogramTransformer(space="lab", bins=4, grid=2, device="cpu").transform(x),
        color_histogram(x, "lab", 4, grid=2, backend="numpy"))
    pix = PixelTransformer().fit_transform(x)
    assert pix.dtype == np.float32 and pix.shape == (40, 24 * 24 * 3) and pix.max() <= 1


def test_flat_rows_with_image_shape(data):
    x, _ = data
    flat = x.reshape(len(x), -1)
    t = HOGTransformer(image_shape=(24, -1, 3), device="cpu").fit(flat)
    assert t.n_features_in_ == 24 * 24 * 3 and t.image_shape_ == (24, 24, 3)
    np.testing.assert_array_equal(t.transform(flat), hog(x, backend="numpy"))
    np.testing.assert_array_equal(t.transform(x), hog(x, backend="numpy"))  # images too
    with pytest.raises(ValueError, match="features"):
        t.transform(flat[:, :-3])
    with pytest.raises(ValueError, match="seen in fit"):
        HOGTransformer(device="cpu").fit(x).transform(x.reshape(len(x), 48, 12, 3))
    with pytest.raises(ValueError, match="image_shape"):
        HOGTransformer(device="cpu").fit(flat)
    with pytest.raises(ValueError, match="do not form images"):
        HOGTransformer(image_shape=(24, 24, 3), device="cpu").fit(flat[:, :100])
    with pytest.raises(ValueError, match="do not match"):
        HOGTransformer(image_shape=(32, 32, 3), device="cpu").fit(x)


def test_feature_names_and_unfitted_transform(data):
    x, _ = data
    union = make_features("hog+color", device="cpu")
    out = union.transform(x)  # stateless: no fit needed
    assert out.shape == (40, 2 * 2 * 2 * 2 * 9 + 8 * 4 * 4)
    names = union.fit(x).get_feature_names_out()
    assert len(names) == out.shape[1]
    assert names[0] == "hog__hogtransformer0" and names[-1].startswith("color__")


def test_make_features_builds_the_union(data):
    x, _ = data
    union = make_features("hog+colour", device="cpu", n_jobs=1, hog__orientations=6,
                          color__space="rgb", color__bins=3, orientations=12)
    assert isinstance(union, FeatureUnion)
    hog_t = union.named_transformers["hog"]
    col_t = union.named_transformers["color"]
    assert hog_t.orientations == 6 and hog_t.n_jobs == 1 and col_t.n_jobs == 1
    assert col_t.space == "rgb" and col_t.bins == 3
    expected = np.hstack([hog(x, 6, backend="numpy"),
                          color_histogram(x, "rgb", 3, backend="numpy")])
    np.testing.assert_array_equal(union.fit_transform(x), expected)
    single = make_features("hog", orientations=12, device="cpu")
    assert isinstance(single, HOGTransformer) and single.orientations == 12
    three = make_features("pixels+hog+color", device="cpu")
    assert [n for n, _ in three.transformer_list] == ["pixels", "hog", "color"]


def test_fused_union_writes_one_array(data):
    import torch

    x, _ = data
    union = make_features("color+hog+pixels", device="cpu")
    assert isinstance(union, ImageFeatureUnion)
    expected = np.hstack([color_histogram(x, backend="numpy"), hog(x, backend="numpy"),
                          x.reshape(len(x), -1) / np.float32(255)])
    got = union.transform(x)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(union.transform(torch.from_numpy(x)), expected, rtol=1e-6)
    # weights make it an ordinary FeatureUnion, same numbers scaled
    union.set_params(transformer_weights={"hog": 2.0})
    weighted = union.transform(x)
    np.testing.assert_allclose(weighted[:, 128:272], 2 * expected[:, 128:272], rtol=1e-6)
    np.testing.assert_allclose(clone(union).fit_transform(x), weighted, rtol=1e-6)


def test_out_parameter(data):
    x, _ = data
    buf = np.zeros((40, 10 + 144), np.float32)
    res = hog(x, out=buf[:, 10:], backend="numpy")
    assert np.shares_memory(res, buf)
    np.testing.assert_array_equal(buf[:, 10:], hog(x, backend="numpy"))
    assert (buf[:, :10] == 0).all()
    res = color_histogram(x, "rgb", 3, out=buf[:, :27], backend="torch", device="cpu")
    np.testing.assert_array_equal(buf[:, :27], color_histogram(x, "rgb", 3, backend="numpy"))
    with pytest.raises(ConfigError, match="out must be"):
        hog(x, out=np.zeros((40, 143), np.float32))
    with pytest.raises(ConfigError, match="out must be"):
        color_histogram(x, out=np.zeros((40, 128), np.float64))


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("sift", {}, "unknown feature"),
        ("hog+hog", {}, "twice"),
        ("", {}, "non-empty"),
        ("hog", {"space": "hsv"}, "takes a parameter"),
        ("hog", {"color__bins": 4}, "not part of"),
        ("hog+color", {"hog__bins": 4}, "has no parameter"),
        ("hog", {"orientations": -1}, "orientations"),
        ("color", {"space": "cmyk"}, "'space' parameter"),
        ("hog", {"device": "tpu"}, "device"),
    ],
)
def test_make_features_errors(name, params, match):
    with pytest.raises(ConfigError, match=match):
        make_features(name, **params)


def test_pipeline_gridsearch_clone_pickle(data):
    x, y = data
    pipe = Pipeline([
        ("features", make_features("hog+color", device="cpu", n_jobs=1)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(max_iter=500)),
    ])
    grid = GridSearchCV(pipe, {"features__hog__orientations": [4, 9],
                               "features__color__bins": [2, 4]}, cv=2)
    grid.fit(x, y)
    assert grid.best_score_ > 0.9
    assert grid.best_estimator_.score(x, y) > 0.9
    assert set(grid.cv_results_["param_features__hog__orientations"]) == {4, 9}

    est = HOGTransformer(orientations=7, device="cpu")
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    fitted = est.fit(x)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.transform(x), fitted.transform(x))
    est.set_params(block_norm="L1")
    assert est.transform(x).shape == (40, 4 * 7 * 4)


def test_invalid_params_fail_on_fit_with_config_error(data):
    x, _ = data
    with pytest.raises(ConfigError, match="block_norm"):
        HOGTransformer(block_norm="max", device="cpu").fit(x)
    with pytest.raises(ConfigError, match="more cells"):
        ColorHistogramTransformer(grid=25, device="cpu").fit(x)
    with pytest.raises(ConfigError, match="image_shape"):
        HOGTransformer(image_shape=(0, 3)).fit(x)
    with pytest.raises(ConfigError, match="scale"):
        PixelTransformer(scale="yes").fit(x)


def test_hog_glyphs_equal_skimage_visualisation():
    from skimage.feature import hog as sk_hog

    rng = np.random.default_rng(5)
    for shape, ppc, ori, axis in (((32, 32, 3), (8, 8), 9, -1), ((45, 37), (6, 5), 8, None)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        _, ref = sk_hog(img, ori, ppc, (1, 1), visualize=True, channel_axis=axis)
        np.testing.assert_allclose(hog_glyphs(img, ori, ppc, channel_axis=axis), ref,
                                   atol=1e-4)
    assert hog_glyphs(img, ori, ppc, channel_axis=None, scale=4).shape == (180, 148)


def test_plots_render(tmp_path, data):
    x, _ = data
    figs = {
        "hog.png": plot_hog(x[0], title="stripes"),
        "hist.png": plot_color_histogram(x[0]),
        "joint.png": plot_color_histogram(x[1], "lab", 4, joint=True),
        "gray.png": plot_color_histogram(x[2, ..., 0], "gray", 16),
    }
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        fig.savefig(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 2000
    with pytest.raises(ConfigError):
        plot_hog(x)  # a batch, not one image


def test_parameters_are_validated_once_per_fit(data, monkeypatch):
    """fit keeps the validated parameter object; transform hands it down unchecked, and
    set_params makes the next call check the new value."""
    import cvpipe.features._hog.params as hog_params
    import cvpipe.features.transformers as transformers

    x, _ = data
    est = HOGTransformer(device="cpu").fit(x)
    assert est.params_ == hog_params.HOGParams()
    calls = []
    real = transformers.HOGParams.from_checked
    monkeypatch.setattr(transformers.HOGParams, "from_checked",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    first = est.transform(x)
    est.transform(x)
    assert calls == []  # fitted: the parameters were checked in fit, not per call
    est.set_params(orientations=12)
    assert "params_" not in est.__dict__
    assert est.transform(x).shape == (40, first.shape[1] // 9 * 12) and calls == [1]
    with pytest.raises(ConfigError, match="'orientations' parameter"):
        est.set_params(orientations=0).transform(x)  # a changed value is checked before use


def test_a_union_checks_its_images_once(data, monkeypatch):
    import cvpipe.features.transformers as transformers

    x, _ = data
    union = make_features("hog+color", device="cpu").fit(x)
    seen = []
    real = transformers.check_images
    monkeypatch.setattr(transformers, "check_images", lambda *a, **k: seen.append(1) or real(*a, **k))
    got = union.transform(x)
    assert len(seen) == 1
    np.testing.assert_array_equal(got, np.hstack([hog(x, backend="numpy"),
                                                  color_histogram(x, backend="numpy")]))


def test_non_finite_float_images_are_refused(data):
    x = data[0].astype(np.float32) / 255
    x[3, 4, 5, 1] = np.nan
    for est in (HOGTransformer(device="cpu"), ColorHistogramTransformer(device="cpu"),
                PixelTransformer()):
        with pytest.raises(ConfigError, match="NaN or inf"):
            est.fit_transform(x)
    with pytest.raises(ConfigError, match="NaN or inf"):
        hog(x, backend="numpy")


@pytest.mark.parametrize("name", ["hog", "color", "pixels", "scattering", "patches", "hog+color",
                                  "pixels+hog"])
def test_no_images_give_no_rows(data, name):
    # a chunk or a filtered batch can be empty: (0, d), the width of any other batch
    small = {"patches__n_centroids": 8, "patches__n_patches": 2000} if "patches" in name else {}
    est = make_features(name, device="cpu", **small).fit(data[0][:40])
    empty = est.transform(data[0][:0])
    assert empty.shape == (0, est.transform(data[0][:2]).shape[1])


def test_fit_to_shape_fixes_the_input_shape_without_images(data):
    from cvpipe.features import FeatureSpec, fit_to_shape

    x, _ = data
    spec = FeatureSpec.parse("hog+color")
    ready = fit_to_shape(spec.build(device="cpu"), x.shape[1:])
    np.testing.assert_array_equal(ready.transform(x), spec.build(device="cpu").transform(x))
    with pytest.raises(ValueError, match="expecting 1728 features"):
        ready.transform(x[:, :16, :16])
    with pytest.raises(ValueError, match="differ from the shape"):
        ready.transform(x.reshape(40, 12, 48, 3))
    with pytest.raises(ConfigError, match="learned features"):
        fit_to_shape(FeatureSpec.parse("patches").build(), x.shape[1:])


def test_each_feature_component_says_what_it_computes():
    spec = FeatureSpec.parse({"name": "mixed", "components": [
        {"name": "patches", "params": {"encoding": "knn", "flip_invariant": True,
                                       "pooling": [[1, 1], [2, 2]], "power": 0.5}},
        {"name": "hog", "params": {"pixels_per_cell": [4, 4]}},
        {"name": "color", "params": {"grid": [2, 2], "joint": False}},
        {"name": "pixels"},
        {"name": "scattering", "params": {"pool": 4}}]})
    assert [c.describe() for c in spec.components] == [
        "learned 6x6 patches: 0.4 x K nearest centroids, K=1600, flip-invariant, 1x1+2x2 sums, power 0.5",
        "HOG: 9 orientations, 4x4-pixel cells, 2x2-cell blocks, L2-Hys",
        "HSV histogram: 8x4x4 per-channel bins, 2x2 cells",
        "raw pixels, scaled to [0, 1]",
        "wavelet scattering: J=2, L=8, order 2, means over 4x4 cells"]
