"""Datasets beyond CIFAR-10: official CIFAR-100 and IDX archives, image folders of any size and
mode, every stage at the data's own size and channels, per-dataset reports and the summary."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvpipe.cli import main
from cvpipe.data import catalog, load_dataset
from cvpipe.errors import ChecksumError, DataError
from cvpipe.features import FeatureSpec, color_histogram
from cvpipe.images import decode, resize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


# ----------------------------------------------------------------------------- tiny official files


def _idx(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def write_idx(folder: Path, n_train: int = 30, n_test: int = 10, size: int = 28, seed: int = 0):
    """MNIST-style gzipped IDX files; returns {split: (images (N, H, W), labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        y = np.arange(n) % 10
        x = rng.integers(0, 40, (n, size, size), dtype=np.uint8)
        for i, label in enumerate(y):  # a bright bar whose row says the class
            x[i, 2 + 2 * label, 4:-4] = 250
        (folder / f"{stem}-images-idx3-ubyte.gz").write_bytes(_idx(x))
        (folder / f"{stem}-labels-idx1-ubyte.gz").write_bytes(_idx(y))
        out[split] = (x, y)
    return out


def write_cifar100(dest: Path, n_train: int = 40, n_test: int = 20, seed: int = 0):
    """A fake ``cifar-100-python.tar.gz``; returns (md5, {split: (images, fine, coarse)})."""
    rng = np.random.default_rng(seed)
    arrays, members = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = np.arange(n) % 100
        coarse = fine % 20
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        members[split] = {b"data": x.reshape(n, -1), b"fine_labels": fine.tolist(),
                          b"coarse_labels": coarse.tolist()}
        arrays[split] = (x.transpose(0, 2, 3, 1), fine, coarse)
    members["meta"] = {b"fine_label_names": [f"fine{i:02d}".encode() for i in range(100)],
                       b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)]}
    with tarfile.open(dest, "w:gz") as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(dest.read_bytes()).hexdigest(), arrays


def _publish(monkeypatch, name, files):
    """Make catalogued ``name``'s published files these (url, md5) pairs."""
    entry = catalog.CATALOG[name]
    remote = tuple(catalog.RemoteFile(u, m) for u, m in files)
    monkeypatch.setitem(catalog.CATALOG, name, dataclasses.replace(entry, files=remote))


# ----------------------------------------------------------------------------- official formats


def test_cifar100_fine_and_coarse_with_explicit_checksum(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    md5, arrays = write_cifar100(archive)
    fine = load_dataset("cifar100", tmp_path / "root", source=archive, checksum=f"md5:{md5}")
    coarse = load_dataset("cifar100-coarse", tmp_path / "root", source=archive, checksum=f"md5:{md5}")
    assert (fine.name, len(fine.classes), coarse.name, len(coarse.classes)) == (
        "cifar100", 100, "cifar100-coarse", 20)
    assert fine.classes[7] == "fine07" and coarse.classes[3] == "coarse03"
    for split in ("train", "test"):
        np.testing.assert_array_equal(fine.images(split), arrays[split][0])
        np.testing.assert_array_equal(fine.labels(split), arrays[split][1])
        np.testing.assert_array_equal(coarse.labels(split), arrays[split][2])
    assert fine.cache_dir != coarse.cache_dir and fine.cache_dir.name.startswith("cifar100-")
    # without the checksum, a path that holds CIFAR-100 is checked against the published MD5
    with pytest.raises(ChecksumError, match="md5 checksum mismatch"):
        load_dataset(archive, tmp_path / "root2")


def test_idx_folder_by_path_keeps_28x28_gray(tmp_path):
    written = write_idx(tmp_path / "digits")
    ds = load_dataset(tmp_path / "digits", tmp_path / "root")
    assert ds.name == "digits" and ds.image_shape == (28, 28, 1)
    assert ds.classes == tuple("0123456789")
    for split in ("train", "test"):
        np.testing.assert_array_equal(ds.images(split)[..., 0], written[split][0])
        np.testing.assert_array_equal(ds.labels(split), written[split][1])
    assert ds.manifest["source_kind"] == "idx-folder"


def test_catalogued_idx_is_checked_against_the_published_md5(tmp_path, monkeypatch):
    write_idx(tmp_path / "mnist")
    with pytest.raises(ChecksumError, match="differs from the published .* of MNIST"):
        load_dataset("mnist", tmp_path / "root", source=tmp_path / "mnist")
    # Fashion-MNIST named, its files "published": its class names come with it
    files = sorted((tmp_path / "mnist").iterdir())
    by_name = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in files}
    entry = catalog.CATALOG["fashion-mnist"]
    _publish(monkeypatch, "fashion-mnist", [(f.url, by_name[f.name]) for f in entry.files])
    monkeypatch.setenv("CVPIPE_FASHION_MNIST_SOURCE", str(tmp_path / "mnist"))
    ds = load_dataset("fashion-mnist", tmp_path / "root")
    assert ds.name == "fashion-mnist" and ds.classes[9] == "Ankle boot"


def test_catalogued_dataset_downloads_every_file_and_verifies_it(tmp_path, monkeypatch):
    served = tmp_path / "served"
    write_idx(served)
    entry = catalog.CATALOG["mnist"]
    _publish(monkeypatch, "mnist", [((served / f.name).as_uri(),
                                     hashlib.md5((served / f.name).read_bytes()).hexdigest())
                                    for f in entry.files])
    ds = load_dataset("mnist", tmp_path / "root")
    assert ds.name == "mnist" and ds.image_shape == (28, 28, 1)
    downloads = tmp_path / "root" / "downloads" / "mnist"
    assert sorted(p.name for p in downloads.iterdir()) == sorted(f.name for f in entry.files)
    # a corrupt publication: the download is refused and nothing half-written stays
    _publish(monkeypatch, "mnist", [((served / f.name).as_uri(), "0" * 32) for f in entry.files])
    with pytest.raises(ChecksumError):
        load_dataset("mnist", tmp_path / "root3")
    assert not any((tmp_path / "root3" / "downloads" / "mnist").iterdir())


def test_idx_archive_and_bad_idx_files(tmp_path):
    write_idx(tmp_path / "raw")
    archive = tmp_path / "digits.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "raw", arcname="MNIST/raw")
    ds = load_dataset(archive, tmp_path / "root")
    assert ds.name == "digits" and ds.image_shape == (28, 28, 1)
    (tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01"
                                                                             b"\x00\x00\x00\x09"))
    with pytest.raises(DataError, match="holds only 0 of the 9 values its header declares"):
        load_dataset(tmp_path / "raw", tmp_path / "root")


def test_unknown_name_and_source_with_a_path_are_clear(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*cifar10, cifar100"):
        load_dataset("imagenet", tmp_path / "root")
    write_idx(tmp_path / "d")
    with pytest.raises(DataError, match="give it alone"):
        load_dataset(tmp_path / "d", tmp_path / "root", source=tmp_path / "d")


# ----------------------------------------------------------------------------- image folders


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _gray_folder(root: Path, classes=("a", "b", "c"), per_class: int = 10, size=(20, 24),
                 split_folders: bool = True) -> None:
    rng = np.random.default_rng(3)
    for c, cls in enumerate(classes):
        for i in range(per_class):
            img = rng.integers(0, 60, size, dtype=np.uint8)
            img[:, 2 + 5 * c: 5 + 5 * c] = 240
            split = ("train" if i < per_class * 0.7 else "test") if split_folders else ""
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:03d}.png").write_bytes(_png(img))


def test_gray_image_folder_stays_gray_at_its_own_size(tmp_path):
    _gray_folder(tmp_path / "parts")
    ds = load_dataset(tmp_path / "parts", tmp_path / "root")
    assert ds.name == "parts" and ds.image_shape == (20, 24, 1)
    assert ds.classes == ("a", "b", "c") and len(ds.labels("train")) == 21


def test_class_folders_only_get_a_seeded_stratified_test_split(tmp_path):
    _gray_folder(tmp_path / "flat", per_class=10, split_folders=False)
    a = load_dataset(tmp_path / "flat", tmp_path / "root", test_fraction=0.3, seed=4)
    b = load_dataset(tmp_path / "flat", tmp_path / "root2", test_fraction=0.3, seed=4)
    assert np.bincount(a.labels("test")).tolist() == [3, 3, 3]
    np.testing.assert_array_equal(a.images("test"), b.images("test"))
    assert a.manifest["notes"]["test_split"] == {"fraction": 0.3, "seed": 4, "stratified": True}
    c = load_dataset(tmp_path / "flat", tmp_path / "root", test_fraction=0.3, seed=5)
    assert not np.array_equal(a.images("test"), c.images("test"))
    assert "test split: drawn from class folders, 30% per class, seed 4" in a.summary()


def test_mixed_sizes_and_modes_need_a_size_and_follow_the_fit_policy(tmp_path):
    root = tmp_path / "mixed"
    for split in ("train", "test"):
        for cls in ("x", "y"):
            (root / split / cls).mkdir(parents=True)
        (root / split / "x" / "wide.png").write_bytes(_png(np.full((20, 40, 3), 255, np.uint8)))
        (root / split / "y" / "gray.png").write_bytes(_png(np.full((30, 30), 128, np.uint8)))
    with pytest.raises(DataError, match="images differ in size.*--size HxW"):
        load_dataset(root, tmp_path / "r")
    padded = load_dataset(root, tmp_path / "r", size=(32, 32), fit="pad")
    assert padded.image_shape == (32, 32, 3)  # one RGB image makes the dataset RGB
    wide = np.asarray(padded.images("train"))[0]
    assert (wide[:8] == 0).all() and (wide[8:24] == 255).all() and (wide[24:] == 0).all()
    cropped = load_dataset(root, tmp_path / "r", size=(32, 32), fit="crop")
    assert (np.asarray(cropped.images("train"))[0] == 255).all()
    gray = np.asarray(cropped.images("train"))[1]
    assert (gray == 128).all()  # gray replicated into RGB
    assert cropped.manifest["notes"]["resized"] == 4


def test_resize_policies():
    img = np.zeros((10, 20, 1), np.uint8)
    img[:, :10] = 200  # left half bright
    assert resize(img, (10, 10), "crop")[:, :5].mean() == 200  # the centre: half and half
    assert resize(img, (10, 10), "crop")[:, 5:].mean() == 0
    padded = resize(img, (20, 20), "pad")
    assert padded.shape == (20, 20, 1) and (padded[:5] == 0).all() and (padded[15:] == 0).all()
    assert resize(img, (10, 10), "stretch").shape == (10, 10, 1)
    with pytest.raises(ValueError, match="fit must be one of"):
        resize(img, (4, 4), "zoom")


def test_decode_converts_to_the_channels_asked():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    data = _png(rgb)
    assert decode(data, channels=3).shape == (8, 8, 3)
    gray = decode(data, channels=1)
    assert gray.shape == (8, 8, 1) and abs(int(gray[0, 0, 0]) - 76) <= 1  # 0.299 * 255
    assert decode(_png(np.full((8, 8), 9, np.uint8)), channels=None).shape == (8, 8, 1)
    assert decode(data, channels=None).shape == (8, 8, 3)


# ----------------------------------------------------------------------------- every stage


def test_features_on_gray_images():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    spec = FeatureSpec.parse("hog+color")
    dim = spec.check((28, 28, 1))
    features = spec.build().fit(gray).transform(gray)
    assert features.shape == (5, dim)
    # the colour part of a gray image is its intensity histogram, as many bins as HSV 8x4x4
    intensity = color_histogram(gray, "gray", 128)
    np.testing.assert_allclose(features[:, -128:], intensity, rtol=1e-6)


def test_cnn_trains_and_predicts_on_gray_28x28():
    from cvpipe.cnn import CNNConfig, train_cnn

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    y = np.arange(40) % 4
    result = train_cnn((x[:32], y[:32]), (x[32:], y[32:]),
                       CNNConfig(epochs=1, width=8, batch_size=16, device="cpu"), n_classes=4)
    assert result.model.cfg.in_channels == 1
    assert len(result.mean) == 1


@pytest.mark.slow
def test_compare_serve_and_summary_on_a_gray_dataset(tmp_path, capsys):
    """A gray 20x24 dataset end to end: compare (report and models at its size), the API
    converting an RGB photo of another size, extraction with a model, the summary."""
    from service.app import create_app

    _gray_folder(tmp_path / "parts", per_class=14)
    config = tmp_path / "c.toml"
    config.write_text('[compare]\nseed = 0\nval_fraction = 0.25\npipelines = ["hog-linear-svm", '
                      '"color-mlp", "cnn"]\n[profiles.tiny]\nmodel_prefix = "t-"\n'
                      'options = { cnn = { epochs = 2, width = 8, batch_size = 8 } }\n')
    common = ["--models-dir", str(tmp_path / "models"), "--reports-dir", str(tmp_path / "reports"),
              "--data-root", str(tmp_path / "data"), "--config", str(config), "--profile", "tiny"]
    assert main(["compare", "--dataset", str(tmp_path / "parts"), *common]) == 0
    results = json.loads((tmp_path / "reports" / "parts-tiny" / "results.json").read_text())
    assert results["dataset"]["name"] == "parts" and results["dataset"]["image_shape"] == [20, 24, 1]
    report = (tmp_path / "reports" / "parts-tiny" / "report.html").read_text()
    assert "vs a CNN on parts" in report and "20 × 24 × 1" in report
    meta = json.loads((tmp_path / "models" / "parts-t-cnn" / "model.json").read_text())
    assert (meta["input_size"], meta["channels"], meta["dataset"]["name"]) == ([20, 24], 1, "parts")

    app = create_app({"MODELS_DIR": str(tmp_path / "models")})
    photo = _png(np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    client = app.test_client()
    for model in ("parts-t-cnn", "parts-t-hog-linear-svm", "parts-t-color-mlp"):
        got = client.post(f"/v1/models/{model}/predict", data={"images": (io.BytesIO(photo), "p.png")},
                          content_type="multipart/form-data")
        assert got.status_code == 200, got.get_json()
        assert got.get_json()["predictions"][0]["label"] in ("a", "b", "c")
    feats = client.post("/v1/features", data={"images": (io.BytesIO(photo), "p.png"),
                                              "model": "parts-t-hog-linear-svm"},
                        content_type="multipart/form-data")
    assert feats.status_code == 200 and feats.get_json()["input_size"] == [20, 24]
    assert feats.get_json()["dim"] == FeatureSpec.parse("hog").check((20, 24, 1))

    # a second dataset, then the summary orders them by number of classes
    _gray_folder(tmp_path / "duo", classes=("p", "q"), per_class=14)
    assert main(["compare", "--dataset", str(tmp_path / "duo"), *common]) == 0
    capsys.readouterr()
    assert main(["summary", "--reports-dir", str(tmp_path / "reports")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "reports" / "summary" / "summary.json").read_text())
    assert [d["dataset"] for d in summary["datasets"]] == ["duo", "parts"]
    assert all(d["cnn"] and d["best_classic"]["pipeline"] for d in summary["datasets"])
    assert "summary.png" in printed and (tmp_path / "reports" / "summary" / "summary.png").stat().st_size


@pytest.mark.skipif(not (SHARED / "mnist5k-png.tar.gz").exists(),
                    reason="../shared/datasets/mnist5k-png.tar.gz is not there")
def test_real_mnist5k_loads_at_its_own_size(tmp_path):
    ds = load_dataset(SHARED / "mnist5k-png.tar.gz", tmp_path / "root")
    assert ds.name == "mnist5k-png" and ds.image_shape == (28, 28, 1)
    assert ds.classes == tuple("0123456789")
    assert len(ds.labels("train")) == 4000 and len(ds.labels("test")) == 1000
    assert np.bincount(ds.labels("test")).tolist() == [100] * 10


def test_an_archive_holding_a_file_twice_is_refused(tmp_path):
    png = _png(np.zeros((8, 8), np.uint8))
    archive = tmp_path / "twice.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("d/train/a/0.png", "d/train/a/0.png", "d/test/a/1.png"):
            info = tarfile.TarInfo(name)
            info.size = len(png)
            tar.addfile(info, io.BytesIO(png))
    with pytest.raises(DataError, match="holds .*0.png more than once"):
        load_dataset(archive, tmp_path / "root")


def test_summary_without_runs_says_what_to_do(tmp_path, capsys):
    assert main(["summary", "--reports-dir", str(tmp_path / "nowhere")]) == 2
    assert "no such reports folder (run cvpipe compare first)" in capsys.readouterr().err
    (tmp_path / "reports" / "empty").mkdir(parents=True)
    assert main(["summary", "--reports-dir", str(tmp_path / "reports")]) == 2
    assert "no comparison results" in capsys.readouterr().err
    # results.json that is not JSON, or JSON of another shape: skipped by name, no traceback
    for name, text in (("broken", "{bad"), ("a-list", "[]"),
                       ("odd", '{"pipelines": [{"family": "classic"}]}')):
        (tmp_path / "reports" / name).mkdir()
        (tmp_path / "reports" / name / "results.json").write_text(text)
    assert main(["summary", "--reports-dir", str(tmp_path / "reports")]) == 2
    assert "no comparison results" in capsys.readouterr().err


def test_offline_named_dataset_says_which_variable_to_set(tmp_path, monkeypatch):
    entry = catalog.CATALOG["fashion-mnist"]
    _publish(monkeypatch, "fashion-mnist", [((tmp_path / "gone" / f.name).as_uri(), f.md5)
                                            for f in entry.files])
    with pytest.raises(DataError, match=r"could not download .* point \$CVPIPE_FASHION_MNIST_SOURCE"):
        load_dataset("fashion-mnist", tmp_path / "root")
    assert not any((tmp_path / "root" / "downloads" / "fashion-mnist").iterdir())


def test_summary_shows_each_dataset_once_by_its_most_telling_run(tmp_path):
    from cvpipe.compare.summary import chart, collect

    def run(folder: str, dataset: str, train: int, cnn: bool, created: str, best: float) -> None:
        rows = [{"pipeline": "hog-mlp", "family": "classic", "train_accuracy": 0.9,
                 "val_accuracy": best, "test_accuracy": best, "test_ci95": [best - 0.01, best + 0.01]}]
        if cnn:
            rows.append({"pipeline": "cnn", "family": "cnn", "train_accuracy": 0.95,
                         "val_accuracy": 0.9, "test_accuracy": 0.9, "test_ci95": [0.89, 0.91]})
        path = tmp_path / folder / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({
            "run": {"profile": {"name": folder}, "created": created}, "pipelines": rows,
            "dataset": {"name": dataset, "title": dataset, "classes": list("abc"),
                        "image_shape": [8, 8, 1], "train": train, "val": 10, "test": 30}}))

    run("c-quick", "c", 300, True, "2026-12-02", 0.5)      # latest, but trained on few images
    run("c-full", "c", 4500, True, "2026-12-01", 0.7)
    run("c-sweep", "c", 4500, False, "2026-12-03", 0.72)   # no CNN to compare with
    run("m-full", "m", 400, True, "2026-12-01", 0.8)
    assert sorted(line["run"] for line in collect(tmp_path)) == ["c-full", "m-full"]
    every = collect(tmp_path, all_runs=True)
    assert sorted(line["run"] for line in every) == ["c-full", "c-quick", "c-sweep", "m-full"]
    assert chart(every)[:4] == b"\x89PNG"
