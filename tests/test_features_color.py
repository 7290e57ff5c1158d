"""Colour histograms: equality with cv2.calcHist / np.histogramdd, conversions, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cvpipe.errors import ConfigError
from cvpipe.features import color_histogram, color_histogram_size, convert_color

torch = pytest.importorskip("torch")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = [("numpy", "cpu")] + [("torch", d) for d in DEVICES]
CV2_CODES = {"hsv": cv2.COLOR_RGB2HSV, "lab": cv2.COLOR_RGB2Lab, "gray": cv2.COLOR_RGB2GRAY}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Natural-looking colour images: smooth random fields plus noise, and flat patches."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (40, 4, 4, 3)).astype(np.float32)
    x = np.stack([cv2.resize(b, (29, 23), interpolation=cv2.INTER_CUBIC) for b in base])
    x += rng.normal(0, 12, x.shape)
    x[::5, :6, :6] = 128  # gray patches (hue 0, saturation 0)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _cv2_hist(img, space, bins, ranges, joint):
    conv = img if space == "rgb" else cv2.cvtColor(img, CV2_CODES[space])
    flat = [lo_hi for r in ranges for lo_hi in r]
    if joint:
        return cv2.calcHist([conv], list(range(len(bins))), None, list(bins), flat).ravel()
    return np.concatenate([
        cv2.calcHist([conv], [i], None, [b], list(r)).ravel()
        for i, (b, r) in enumerate(zip(bins, ranges, strict=True))
    ])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize(
    "space,bins,ranges",
    [
        ("hsv", (8, 4, 4), ((0, 180), (0, 256), (0, 256))),
        ("hsv", (7, 5, 3), ((10, 170), (30, 250.5), (0, 200))),  # values out of range
        ("rgb", (4, 4, 4), ((0, 256),) * 3),
        ("rgb", (3, 6, 5), ((0, 255),) * 3),  # 255 is outside [0, 255)
        ("lab", (5, 7, 3), ((0, 256),) * 3),
        ("gray", (16,), ((0, 256),)),
    ],
)
@pytest.mark.parametrize("joint", [True, False])
def test_matches_cv2_calchist(images, backend, device, space, bins, ranges, joint):
    got = color_histogram(images, space, bins, joint, norm=None, ranges=ranges,
                          backend=backend, device=device)
    ref = np.stack([_cv2_hist(im, space, bins, ranges, joint) for im in images])
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    assert got.sum() > 0


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_matches_histogramdd_on_a_grid(images, backend, device):
    grid, bins, rng_ = (2, 3), (6, 4, 3), ((0, 180), (0, 256), (0, 256))
    got = color_histogram(images, "hsv", bins, True, grid, "l1", backend=backend, device=device)
    hsv = np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2HSV) for im in images])
    h, w = images.shape[1:3]
    ref = []
    for im in hsv:
        cells = []
        for i in range(grid[0]):
            for j in range(grid[1]):
                cell = im[i * h // grid[0] : (i + 1) * h // grid[0],
                          j * w // grid[1] : (j + 1) * w // grid[1]]
                hist, _ = np.histogramdd(cell.reshape(-1, 3), bins=bins, range=rng_)
                cells.append(hist.ravel() / hist.sum())
        ref.append(np.concatenate(cells))
    np.testing.assert_allclose(got, np.asarray(ref), rtol=0, atol=1e-6)


def test_per_channel_l2_matches_np_histogram(images):
    got = color_histogram(images, "rgb", (8, 5, 3), joint=False, norm="l2", backend="numpy")
    ref = []
    for im in images:
        parts = []
        for c, b in enumerate((8, 5, 3)):
            hist, _ = np.histogram(im[..., c], bins=b, range=(0, 256))
            parts.append(hist / np.linalg.norm(hist))
        ref.append(np.concatenate(parts))
    np.testing.assert_allclose(got, np.asarray(ref), atol=1e-6)
    assert got.shape[1] == color_histogram_size("rgb", (8, 5, 3), joint=False)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_conversion_matches_opencv(device):
    rng = np.random.default_rng(1)
    random = rng.integers(0, 256, (1 << 18, 3), dtype=np.uint8)
    v = np.arange(256, dtype=np.uint8)
    a, b = np.meshgrid(v, v, indexing="ij")
    # two equal channels: the max/min ties of the hue formula
    ties = np.concatenate([np.stack(p, -1).reshape(-1, 3)
                           for p in ((a, a, b), (a, b, a), (b, a, a))])
    colours = np.concatenate([random, ties])[None]  # (1, M, 3) one "image"
    for space in ("hsv", "lab", "gray"):
        ref = cv2.cvtColor(colours, CV2_CODES[space]).reshape(1, -1, 1 if space == "gray" else 3)
        got = convert_color(torch.from_numpy(colours[None]).to(device), space)[0]
        np.testing.assert_array_equal(got.cpu().numpy(), ref, err_msg=space)
        np.testing.assert_array_equal(convert_color(colours[None], space, backend="numpy")[0],
                                      ref, err_msg=space)


@pytest.mark.slow
def test_torch_hsv_matches_opencv_on_all_colours():
    allc = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([(allc >> 16) & 255, (allc >> 8) & 255, allc & 255], -1)
    rgb = rgb.astype(np.uint8).reshape(1, 4096, 4096, 3)
    ref = cv2.cvtColor(rgb[0], cv2.COLOR_RGB2HSV)
    got = convert_color(torch.from_numpy(rgb), "hsv", device="cpu")[0].numpy()
    np.testing.assert_array_equal(got, ref)


def test_float_and_integer_inputs(images):
    ref = color_histogram(images, backend="numpy")
    as_float = images.astype(np.float64) / 255.0
    np.testing.assert_array_equal(color_histogram(as_float, backend="numpy"), ref)
    np.testing.assert_array_equal(color_histogram(images.astype(np.int64), backend="numpy"), ref)
    np.testing.assert_array_equal(
        color_histogram(torch.from_numpy(as_float), device="cpu").numpy(), ref)
    # floats outside [0, 1] saturate like OpenCV's conversion to 8 bits
    np.testing.assert_array_equal(color_histogram(as_float * 3 - 1, backend="numpy"),
                                  color_histogram(np.clip(as_float * 3 - 1, 0, 1),
                                                  backend="numpy"))
    gray = images[..., 0]
    np.testing.assert_array_equal(
        color_histogram(gray, "gray", 8, backend="numpy"),
        np.stack([np.histogram(g, 8, (0, 256))[0] / g.size for g in gray]).astype(np.float32))


def test_batching_threads_and_norms(images):
    ref = color_histogram(images, grid=2, n_jobs=1, backend="numpy")
    for n_jobs, chunk in ((2, 3), (-1, 1), (2, None)):
        np.testing.assert_array_equal(
            color_histogram(images, grid=2, n_jobs=n_jobs, chunk_size=chunk, backend="numpy"),
            ref)
    np.testing.assert_allclose(ref.reshape(len(images), 4, -1).sum(-1), 1.0, atol=1e-6)
    counts = color_histogram(images, grid=2, norm=None, backend="numpy")
    assert counts.reshape(len(images), 4, -1).sum(-1).sum(-1).tolist() == [23 * 29] * 40
    assert color_histogram(images[:0], backend="numpy").shape == (0, 128)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"space": "yuv"}, "'space' parameter"),
        ({"bins": 0}, "'bins' parameter"),
        ({"bins": (8, 0, 4)}, "positive"),
        ({"bins": (8, 4)}, "3 value"),
        ({"grid": (24, 1)}, "more cells"),
        ({"grid": 0}, "grid"),
        ({"norm": "l3"}, "norm"),
        ({"ranges": ((0, 180), (0, 256))}, "ranges"),
        ({"ranges": ((10, 5), (0, 256), (0, 256))}, "low < high"),
        ({"joint": "yes"}, "joint"),
    ],
)
def test_invalid_parameters_raise_config_error(images, kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        color_histogram(images[:2], **kwargs)
    assert isinstance(info.value, ValueError)


def test_invalid_images_raise_config_error(images):
    with pytest.raises(ConfigError, match="RGB images"):
        color_histogram(images[..., :2])
    with pytest.raises(ConfigError, match="RGB images"):
        color_histogram(images[..., 0], "hsv")
    with pytest.raises(ConfigError, match="8-bit"):
        color_histogram(images.astype(np.int32) * 2, backend="numpy")
    with pytest.raises(ConfigError, match="batch of shape"):
        color_histogram(images[0, 0])
