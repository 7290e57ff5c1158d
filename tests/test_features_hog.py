"""HOG: equality with scikit-image, backend agreement, batching, errors."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from skimage.feature import hog as sk_hog

from cvpipe.errors import ConfigError
from cvpipe.features import hog, hog_cells, hog_feature_count
from cvpipe.features._hog import BLOCK_NORMS
from cvpipe.features._hog.tables import _tables

torch = pytest.importorskip("torch")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ATOL = 1e-4


def _skimage(images, orientations, ppc, cpb, block_norm, transform_sqrt, channel_axis):
    return np.stack([
        sk_hog(im, orientations, ppc, cpb, block_norm, transform_sqrt=transform_sqrt,
               channel_axis=channel_axis)
        for im in images
    ])


def _images(rng, n, shape, dtype):
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    x = rng.random((n, *shape))
    x[:, : shape[0] // 3] = 0.5  # a flat band: zero gradients, ties between channels
    return x.astype(dtype)


# (shape, orientations, pixels_per_cell, cells_per_block): CIFAR size, sizes that are not
# multiples of the cell, odd and rectangular cells, blocks larger than 2x2, single-cell blocks
CASES = [
    ((32, 32), 9, (8, 8), (2, 2)),
    ((37, 29), 8, (7, 5), (2, 3)),
    ((16, 20), 4, (4, 4), (3, 3)),
    ((23, 41), 12, (6, 6), (1, 1)),
    ((9, 10), 6, (3, 3), (2, 2)),
]


@pytest.mark.parametrize("block_norm", BLOCK_NORMS)
@pytest.mark.parametrize("transform_sqrt", [False, True])
@pytest.mark.parametrize("channel_axis", [None, -1], ids=["gray", "color"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_matches_skimage_random_images(block_norm, transform_sqrt, channel_axis, dtype):
    rng = np.random.default_rng(hash((block_norm, transform_sqrt, channel_axis)) % 2**32)
    for shape, ori, ppc, cpb in CASES:
        full = shape if channel_axis is None else (*shape, 3)
        x = _images(rng, 4, full, dtype)
        ref = _skimage(x, ori, ppc, cpb, block_norm, transform_sqrt, channel_axis)
        got = hog(x, ori, ppc, cpb, block_norm, transform_sqrt, channel_axis, backend="numpy")
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL, err_msg=f"{shape} {ori} {ppc}")


def test_rgb_input_with_gray_channel_axis_uses_rgb2gray():
    from skimage.color import rgb2gray

    x = np.random.default_rng(3).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    ref = np.stack([sk_hog(rgb2gray(im), 9, (8, 8), (2, 2)) for im in x])
    np.testing.assert_allclose(hog(x, channel_axis=None, backend="numpy"), ref, atol=ATOL)


def test_uint8_tables_bin_every_gradient_like_skimage():
    """The 8-bit tables against scikit-image's own cell histogram routine, with one-pixel
    cells, for all 511 x 511 integer gradients and several bin counts (edges on exact angles
    such as 45 and 90 degrees included)."""
    hh = pytest.importorskip("skimage.feature._hoghistogram")
    g = np.arange(-255, 256, dtype=np.float64)
    g_row, g_col = (np.ascontiguousarray(a) for a in np.meshgrid(g, g, indexing="ij"))
    for n in (4, 8, 9, 12):
        ref = np.zeros((511, 511, n))
        try:
            hh.hog_histograms(g_col, g_row, 1, 1, 511, 511, 511, 511, n, ref)
        except (TypeError, ValueError) as exc:  # private API changed
            pytest.skip(f"skimage's private hog_histograms has another signature: {exc}")
        t = _tables(n, 1)
        packed = t.packed
        bins = packed & t.bin_mask
        mag = t.magnitude[packed >> t.rank_shift]
        got = np.zeros((511 * 511, n))
        ok = bins < n
        got[np.nonzero(ok)[0], bins[ok]] = mag[ok]
        np.testing.assert_allclose(got.reshape(511, 511, n), ref, rtol=1e-6, atol=1e-4)


def read_real_cifar(path: Path, n: int) -> np.ndarray:
    """The first ``n`` images found in a CIFAR-10 copy, read straight from it (an
    image-folder archive or folder of JPEG/PNG files, or the official python archive)."""
    from PIL import Image

    src = str(path)
    images = []
    if path.is_dir():
        for p in sorted(path.rglob("*"))[: 20 * n]:
            if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                images.append(np.asarray(Image.open(p).convert("RGB")))
            if len(images) == n:
                break
    else:
        with tarfile.open(path) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                if m.name.endswith("data_batch_1"):  # the official python archive
                    batch = pickle.load(tar.extractfile(m), encoding="bytes")
                    data = np.asarray(batch[b"data"][:n], dtype=np.uint8)
                    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
                if m.name.lower().endswith((".jpg", ".jpeg", ".png")):
                    with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                        images.append(np.asarray(im.convert("RGB")))
                if len(images) == n:
                    break
    if not images:
        pytest.skip(f"no images found in {src}")
    return np.stack(images)


@pytest.mark.realdata
@pytest.mark.parametrize("block_norm", BLOCK_NORMS)
def test_matches_skimage_on_real_cifar(block_norm, real_cifar_source):
    x = read_real_cifar(real_cifar_source, 64)
    for sqrt in (False, True):
        for channel_axis, imgs in ((-1, x), (None, x[..., 1])):
            ref = _skimage(imgs, 9, (8, 8), (2, 2), block_norm, sqrt, channel_axis)
            for backend in ("numpy", "torch"):
                got = hog(imgs, 9, (8, 8), (2, 2), block_norm, sqrt, channel_axis,
                          backend=backend, device="cpu")
                np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype,sqrt,channels",
    [(np.uint8, False, 3), (np.uint8, True, 3), (np.uint8, False, 1), (np.float32, True, 3),
     (np.float64, False, 3), (np.float64, True, 1)],
)
def test_torch_backend_matches_numpy(device, dtype, sqrt, channels):
    rng = np.random.default_rng(7)
    for shape, ori, ppc, cpb in CASES[:3]:
        full = (*shape, channels) if channels > 1 else shape
        x = _images(rng, 5, full, dtype)
        for norm in BLOCK_NORMS:
            ref = hog(x, ori, ppc, cpb, norm, sqrt, backend="numpy")
            got = hog(torch.from_numpy(x).to(device), ori, ppc, cpb, norm, sqrt)
            assert isinstance(got, torch.Tensor) and got.device.type == device
            assert got.dtype == torch.float32
            np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_deterministic_cell_sums(device, monkeypatch):
    """The atomics-free cell sums used under torch.use_deterministic_algorithms."""
    import cvpipe.features._hog.torch_backend as hog_module

    monkeypatch.setattr(hog_module, "FORCE_DETERMINISTIC", True)
    rng = np.random.default_rng(8)
    for shape, ori, ppc, cpb in CASES:
        for x in (_images(rng, 3, (*shape, 3), np.uint8), _images(rng, 3, shape, np.float32)):
            ref = hog(x, ori, ppc, cpb, backend="numpy")
            got = hog(torch.from_numpy(x).to(device), ori, ppc, cpb)
            np.testing.assert_allclose(got.cpu().numpy(), ref, rtol=0, atol=ATOL)


def test_torch_backend_bins_exact_angles_like_numpy():
    """sqrt of 8-bit values gives gradients such as (-3, -sqrt(3)) at exactly 60 degrees,
    where torch's and NumPy's atan2 can round apart: both backends must still agree."""
    x = np.zeros((1, 16, 16, 3), np.uint8)
    x[0, 2::4, :, 0] = 9  # rows: g_row = +-3 after sqrt
    x[0, :, 2::4, 0] += 3  # columns: g_col = +-sqrt(3)
    x[0, :, :, 1] = x[0, :, :, 0][:, ::-1]
    for norm in BLOCK_NORMS:
        ref = _skimage(x, 9, (4, 4), (2, 2), norm, True, -1)
        for backend in ("numpy", "torch"):
            got = hog(x, 9, (4, 4), (2, 2), norm, True, backend=backend, device="cpu")
            np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)


def test_batching_and_threads_do_not_change_results():
    x = np.random.default_rng(1).integers(0, 256, (37, 32, 32, 3), dtype=np.uint8)
    ref = hog(x, backend="numpy", n_jobs=1)
    for n_jobs, chunk in ((2, 5), (-1, 1), (1, 100), (2, None)):
        np.testing.assert_array_equal(hog(x, backend="numpy", n_jobs=n_jobs, chunk_size=chunk),
                                      ref)
    np.testing.assert_allclose(hog(x, backend="torch", device="cpu", chunk_size=4), ref,
                               atol=ATOL)
    # a batch is the stack of single images
    singles = np.concatenate([hog(x[i : i + 1], backend="numpy") for i in range(len(x))])
    np.testing.assert_array_equal(singles, ref)


def test_shapes_counts_and_memmap(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (6, 40, 24, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    out = hog(mm, 9, (8, 8), (2, 2), backend="numpy")
    assert out.shape == (6, hog_feature_count((40, 24, 3), orientations=9))
    assert out.shape[1] == 4 * 2 * 2 * 2 * 9
    assert hog(x[:0], backend="numpy").shape == (0, out.shape[1])
    np.testing.assert_array_equal(hog(mm, backend="torch", device="cpu").shape, out.shape)
    cells = hog_cells(x, 9, (8, 8))
    assert cells.shape == (6, 5, 3, 9) and (cells >= 0).all()


def test_block_norms_give_unit_blocks():
    x = np.random.default_rng(4).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for norm in BLOCK_NORMS:
        f = hog(x, block_norm=norm, backend="numpy").reshape(8, 9, 36).astype(np.float64)
        assert (f >= 0).all()
        if norm == "L1":
            total = f.sum(-1)
        elif norm == "L1-sqrt":
            total = (f**2).sum(-1)
        else:
            total = np.linalg.norm(f, axis=-1)
        np.testing.assert_allclose(total, 1.0, atol=1e-4, err_msg=norm)
    # L2-Hys differs from L2 only where a normalised value exceeded 0.2
    l2 = hog(x, block_norm="L2", backend="numpy")
    hys = hog(x, block_norm="L2-Hys", backend="numpy")
    blocks_clipped = (l2.reshape(8, 9, 36) > 0.2).any(-1)
    same = np.isclose(l2, hys, atol=1e-6).reshape(8, 9, 36).all(-1)
    np.testing.assert_array_equal(same, ~blocks_clipped)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"orientations": 0}, "orientations"),
        ({"orientations": 2.5}, "orientations"),
        ({"pixels_per_cell": (0, 8)}, "pixels_per_cell"),
        ({"cells_per_block": "big"}, "cells_per_block"),
        ({"block_norm": "L3"}, "block_norm"),
        ({"channel_axis": 0}, "channel_axis"),
        ({"pixels_per_cell": (40, 40)}, "too small"),
        ({"cells_per_block": (5, 5)}, "too small"),
        ({"backend": "jax"}, "backend"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"n_jobs": "all"}, "n_jobs"),
    ],
)
def test_invalid_parameters_raise_config_error(kwargs, match):
    x = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match=match) as info:
        hog(x, **kwargs)
    assert isinstance(info.value, ValueError)


def test_invalid_images_raise_config_error():
    with pytest.raises(ConfigError, match="batch of shape"):
        hog(np.zeros((32, 32), np.uint8)[None, None, None])
    with pytest.raises(ConfigError, match="batch of shape"):
        hog(np.zeros(32, np.uint8))
    with pytest.raises(ConfigError, match="numeric"):
        hog(np.full((1, 16, 16), "a"))
    with pytest.raises(ConfigError, match="grayscale"):
        hog(np.zeros((1, 16, 16, 4), np.uint8), channel_axis=None)
    with pytest.raises(ConfigError, match="negative"):
        hog(-np.ones((1, 16, 16)), transform_sqrt=True, backend="numpy")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            hog(np.zeros((1, 16, 16), np.uint8), device="cuda")
    with pytest.raises(ConfigError, match="CPU only"):
        hog(np.zeros((1, 16, 16), np.uint8), device="meta", backend="numpy")
