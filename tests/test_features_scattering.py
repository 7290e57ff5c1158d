"""Wavelet scattering features: kymatio's own Scattering2D, in the transformer's stages."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from kymatio.scattering2d.frontend.numpy_frontend import ScatteringNumPy2D
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from cvpipe.errors import ConfigError
from cvpipe.features import FeatureSpec, ScatteringTransformer, make_features
from cvpipe.features.scattering import LOG_EPS, n_coefficients


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).integers(0, 256, (7, 24, 20, 3), dtype=np.uint8)


def reference(images: np.ndarray, J: int = 2, L: int = 8, max_order: int = 2) -> np.ndarray:
    """kymatio on (N, C, H, W) float images in [0, 1]: (N, C, K, rows, cols)."""
    x = np.moveaxis(images, -1, 1).astype(np.float32) / 255
    return ScatteringNumPy2D(J=J, shape=images.shape[1:3], L=L, max_order=max_order)(x)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("params", [{}, {"J": 3, "L": 4}, {"max_order": 1}])
def test_equals_kymatio(images, backend, params):
    got = make_features("scattering", backend=backend, device="cpu", **params).transform(images)
    want = reference(images, **params)
    assert got.shape == (7, 3 * n_coefficients(params.get("J", 2), params.get("L", 8),
                                                params.get("max_order", 2))
                         * want.shape[-2] * want.shape[-1])
    np.testing.assert_allclose(got, want.reshape(7, -1), rtol=1e-5, atol=1e-6)


def test_log_and_pooling_stages(images):
    want = reference(images)  # (7, 3, 81, 6, 5)
    logged = make_features("scattering", log=True, device="cpu").transform(images)
    np.testing.assert_allclose(logged, np.log1p(want.clip(0) / LOG_EPS).reshape(7, -1), rtol=1e-5)
    pooled = make_features("scattering", pool=2, device="cpu").transform(images)
    rows, cols = [0, 3, 6], [0, 2, 5]  # floor(i * 6 / 2), floor(j * 5 / 2)
    cells = [want[..., rows[i]:rows[i + 1], cols[j]:cols[j + 1]].mean((-2, -1))
             for i in range(2) for j in range(2)]
    np.testing.assert_allclose(pooled, np.stack(cells, -1).reshape(7, -1), rtol=1e-5, atol=1e-7)
    torch_pooled = make_features("scattering", pool=2, backend="torch", device="cpu").transform(
        torch.from_numpy(images))
    np.testing.assert_allclose(torch_pooled, pooled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_an_edge_between_white_and_black_gives_finite_logs(backend):
    # kymatio's low-pass filter is not exactly positive: here a coefficient of about -1.06e-4,
    # under -LOG_EPS, which made log(1 + x / LOG_EPS) NaN (a CIFAR-10 image shifted 2 rows did)
    x = np.zeros((2, 32, 32, 3), np.uint8)
    x[:, :16] = 255
    raw = make_features("scattering", backend=backend, device="cpu").transform(x)
    assert raw.min() < -LOG_EPS
    logged = make_features("scattering", log=True, backend=backend, device="cpu").transform(x)
    assert np.isfinite(logged).all()
    np.testing.assert_allclose(logged, np.log1p(raw.clip(0) / LOG_EPS), rtol=1e-5, atol=1e-6)


def test_gray_images_and_the_spec(images):
    gray = images[..., 0]
    spec = FeatureSpec.parse({"name": "scattering", "params": {"J": 2, "pool": 3}})
    assert spec.n_features((24, 20, 1)) == 81 * 9 == spec.build().fit(gray).transform(gray).shape[1]
    assert FeatureSpec.parse("scatter").components[0].kind == "scattering" and not spec.stateful
    union = make_features("hog+scattering", scattering__pool=1, device="cpu").transform(images)
    assert union.shape[1] == FeatureSpec.parse("hog").n_features((24, 20, 3)) + 3 * 81


def test_bad_parameters_and_images_are_config_errors(images):
    with pytest.raises(ConfigError, match="'J' parameter"):
        ScatteringTransformer(J=0).fit(images)
    with pytest.raises(ConfigError, match="too small for scattering"):
        ScatteringTransformer(J=5).fit(images)
    with pytest.raises(ConfigError, match="pool=7"):
        ScatteringTransformer(pool=7).fit(images)
    with pytest.raises(ConfigError, match="NaN or inf"):
        ScatteringTransformer().fit_transform(np.full((2, 8, 8), np.nan, np.float32))


def test_clones_pickles_and_fits_in_a_pipeline(images):
    y = np.arange(7) % 2
    est = ScatteringTransformer(pool=1, device="cpu")
    pipe = Pipeline([("features", est), ("clf", LogisticRegression(max_iter=200))]).fit(images, y)
    assert pipe.predict(images).shape == (7,)
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.predict_proba(images), pipe.predict_proba(images))
    assert clone(est).get_params() == est.get_params()


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_periodise_is_kymatios_fourier_subsampling(k):
    from kymatio.scattering2d.backend.numpy_backend import NumpyBackend2D

    from cvpipe.features.scattering import periodise

    rng = np.random.default_rng(k)
    shape = (5, 8 * 3, 8 * 5)  # sides multiples of every k, not square
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    got = periodise(x, k)
    want = NumpyBackend2D.subsample_fourier(x, k)
    assert got.shape == want.shape == (5, 24 // k, 40 // k) and got.dtype == np.complex64
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.shares_memory(got, x)  # a new array (k = 1 too), as kymatio's mean gives
