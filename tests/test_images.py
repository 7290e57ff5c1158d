"""One decoding path: a file gives a model the same pixels in training, prediction, the API and
extraction, whatever its format and mode."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from cvpipe.data import load_cifar10
from cvpipe.errors import DataError
from cvpipe.featurestore import FileSource
from cvpipe.images import ImageError, decode, load_images
from service.inputs import Upload, decode_images
from tests import synthetic

SIZE = (32, 32)


def _ramps() -> np.ndarray:
    """Red grows left to right, green top to bottom: every rotation or flip looks different."""
    ramp = np.arange(32, dtype=np.uint8) * 8
    return np.dstack([np.tile(ramp, (32, 1)), np.tile(ramp[:, None], (1, 32)),
                      np.full((32, 32), 90, np.uint8)])


def _exif_jpeg(rgb: np.ndarray) -> bytes:
    """Stored sideways with EXIF orientation 6: viewers (and cvpipe) turn it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(buf, "JPEG", quality=95,
                                                                   exif=exif.tobytes())
    return buf.getvalue()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _gif_with_transparency(rgb: np.ndarray) -> bytes:
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    pal.save(buf, "GIF", transparency=0)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files():
    """name -> encoded bytes: the modes a user's photo folder holds."""
    x, _ = synthetic.make_images(1, seed=5)
    rgb = x[3]
    rgba = np.dstack([rgb, np.where(np.arange(32)[None, :] < 16, 0, 255).repeat(32, 0)]).astype(np.uint8)
    gray16 = (rgb.mean(2) * 257).astype(np.uint16)
    return {
        "exif.jpg": _exif_jpeg(_ramps()),
        "alpha.png": _png(Image.fromarray(rgba, "RGBA")),
        "gray16.png": _png(Image.fromarray(gray16)),
        "gray.png": _png(Image.fromarray(rgb.mean(2).astype(np.uint8))),
        "palette.gif": _gif_with_transparency(rgb),
        "big.png": _png(Image.fromarray(rgb).resize((48, 40))),
    }


def test_one_file_gives_the_same_array_through_every_path(files, tmp_path):
    # the dataset reader: a folder with every file in train/ and test/ of one class each
    root = tmp_path / "folder"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
    for name, data in files.items():
        for split in ("train", "test"):
            (root / split / "a" / name).write_bytes(data)
    for split in ("train", "test"):  # class b: filler
        shutil.copy(root / split / "a" / "gray.png", root / split / "b" / "x.png")
    ds = load_cifar10(root, tmp_path / "data", size=SIZE, val_fraction=0.0)  # every path's default fit
    names = sorted(files)  # the reader orders a class's files by name
    from_dataset = np.asarray(ds.images("test"))[: len(names)]

    paths = [str(root / "test" / "a" / n) for n in names]
    from_predict = load_images(paths, SIZE)  # what `cvpipe predict` runs
    from_api = decode_images([Upload(n, files[n]) for n in names], SIZE, 10**7, 10**8)
    from_extract = FileSource(paths, SIZE).chunk(0, len(paths)).read()[0]
    for i, name in enumerate(names):
        want = decode(files[name], name, SIZE)
        for path, got in (("dataset", from_dataset[i]), ("predict", from_predict[i]),
                          ("api", from_api[i]), ("extract", from_extract[i])):
            np.testing.assert_array_equal(got, want, err_msg=f"{name} through {path}")


def test_modes_are_converted_as_documented(files):
    x, _ = synthetic.make_images(1, seed=5)
    rgb = x[3]
    upright = decode(files["exif.jpg"])
    assert upright.shape == (32, 32, 3)
    assert np.abs(upright.astype(int) - _ramps()).max() < 12  # JPEG noise only: turned upright
    alpha = decode(files["alpha.png"])
    assert (alpha[:, :16] == 255).all() and np.array_equal(alpha[:, 16:], rgb[:, 16:])  # on white
    gray16 = decode(files["gray16.png"])
    want = (rgb.mean(2) * 257).astype(np.uint16) / 65535 * 255
    assert np.abs(gray16[..., 0] - want).max() <= 0.5 + 1e-6
    assert (gray16[..., 0] == gray16[..., 2]).all()


def test_formats_outside_the_list_are_refused(tmp_path):
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="EPS images are not accepted"):
        decode(eps, "x.eps")
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, "ICO")
    with pytest.raises(ImageError, match="ICO images are not accepted"):
        decode(ico.getvalue(), "x.ico")
    root = tmp_path / "f"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        (root / split / "a" / "x.png").write_bytes(ico.getvalue())  # an ICO named .png
    with pytest.raises(DataError, match="x.png"):
        load_cifar10(root, tmp_path / "data")


@pytest.mark.parametrize("side", [8_000, 20_000])  # over the 40 M limit; over Pillow's own guard
def test_an_image_over_the_pixel_limit_is_named_as_such(side):
    from tests.test_api import bomb_png

    with pytest.raises(ImageError, match="big.png: .*over the limit of 40000000 pixels"):
        decode(bomb_png(side, side), "big.png")


def test_peek_reads_headers_as_decoding_would():
    """One header reader for datasets and the API: sizes after EXIF orientation, gray or not,
    the PNG fast path equal to Pillow's reading, a rotated PNG read by Pillow."""
    from cvpipe.images import _png_header, peek

    rgb = np.ascontiguousarray(_ramps()[:, :20])  # 32 x 20: a quarter turn shows
    for mode, gray in (("RGB", False), ("L", True), ("RGBA", False), ("P", False), ("I;16", True)):
        im = Image.fromarray(rgb).convert(mode) if mode != "I;16" else Image.fromarray(
            rgb[..., 0].astype(np.uint16) * 257)
        buf = io.BytesIO()
        im.save(buf, "PNG")
        header = peek(buf.getvalue())
        assert (header.height, header.width, header.gray) == (*rgb.shape[:2], gray), mode
        assert header.pixels == rgb.shape[0] * rgb.shape[1]
    rotated = peek(_exif_jpeg(rgb))
    assert (rotated.height, rotated.width) == decode(_exif_jpeg(rgb)).shape[:2] == rgb.shape[:2]
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", exif=exif.tobytes())
    assert _png_header(buf.getvalue()) is None  # the eXIf chunk sends it to Pillow
    turned = peek(buf.getvalue())
    assert (turned.height, turned.width) == decode(buf.getvalue()).shape[:2] == rgb.shape[1::-1]
    with pytest.raises(UnidentifiedImageError):
        peek(b"GIF89a-not-really")
