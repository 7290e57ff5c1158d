"""Data layer: every source format, the cache, the validation split and bad input."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvpipe.cli import main
from cvpipe.data import catalog, load_cifar10, load_dataset, stratified_split
from cvpipe.data import dataset as dataset_mod
from cvpipe.data.download import download, download_key
from cvpipe.errors import ChecksumError, ConfigError, DataError
from tests import synthetic


def _no_cache_left(root: Path) -> bool:
    cache = root / "cache"
    return not cache.exists() or not any(p.name.startswith("cifar10-") or
                                         p.name.startswith(".tmp") for p in cache.iterdir())


# ----------------------------------------------------------------------------- formats


def test_image_folder_directory_exact_pixels(tmp_path):
    written = synthetic.write_image_folder(tmp_path / "tiny")
    ds = load_cifar10(tmp_path / "tiny", tmp_path / "root")
    assert ds.classes == synthetic.CLASSES  # CIFAR-10 label order, not alphabetical
    for split in ("train", "test"):
        x, y = written[split]
        order = np.lexsort((np.arange(len(y)), y))  # files are read class by class
        np.testing.assert_array_equal(ds.images(split), x[order])
        np.testing.assert_array_equal(ds.labels(split), y[order])
    assert ds.manifest["counts"]["train"]["cat"] == 6
    assert ds.manifest["source_kind"] == "image-folder"


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_image_folder_archive(tmp_path, suffix):
    synthetic.write_image_folder(tmp_path / "tiny")
    archive = synthetic.tar_folder(tmp_path / "tiny", tmp_path / f"tiny{suffix}")
    from_dir = load_cifar10(tmp_path / "tiny", tmp_path / "r1")
    from_tar = load_cifar10(archive, tmp_path / "r2")
    assert from_tar.manifest["source_kind"] == "image-folder-archive"
    for split in ("train", "test"):
        np.testing.assert_array_equal(from_tar.images(split), from_dir.images(split))
        np.testing.assert_array_equal(from_tar.labels(split), from_dir.labels(split))
    assert from_tar.checksum == "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()


def test_non_cifar_class_names_are_sorted(tmp_path):
    synthetic.write_image_folder(tmp_path / "t", classes=("zebra", "ant", "moth"))
    ds = load_cifar10(tmp_path / "t", tmp_path / "root")
    assert ds.classes == ("ant", "moth", "zebra")


def _publish(monkeypatch, name, *md5s):
    """Make the catalogued dataset ``name``'s published MD5s those of our fakes."""
    entry = catalog.CATALOG[name]
    files = tuple(dataclasses.replace(f, md5=m) for f, m in zip(entry.files, md5s, strict=True))
    monkeypatch.setitem(catalog.CATALOG, name, dataclasses.replace(entry, files=files))


def test_official_archive_with_published_md5(tmp_path, monkeypatch):
    path, md5, arrays = synthetic.write_official_archive(tmp_path / "cifar-10-python.tar.gz")
    _publish(monkeypatch, "cifar10", md5)  # our fake is the "published" file
    ds = load_cifar10(path, tmp_path / "root")
    assert ds.manifest["source_kind"] == "official-archive"
    assert ds.manifest["source_checksum"]["md5"] == md5
    for split in ("train", "test"):
        np.testing.assert_array_equal(ds.images(split), arrays[split][0])
        np.testing.assert_array_equal(ds.labels(split), arrays[split][1])


def test_official_archive_wrong_md5_is_refused(tmp_path):
    path, _, _ = synthetic.write_official_archive(tmp_path / "cifar-10-python.tar.gz")
    # Not the published release: the real MD5 check must fail and build nothing.
    with pytest.raises(ChecksumError, match="md5 checksum mismatch"):
        load_cifar10(path, tmp_path / "root")
    assert _no_cache_left(tmp_path / "root")


def test_official_folder(tmp_path):
    folder, _, arrays = synthetic.write_official_archive(tmp_path, folder_only=True)
    for src in (folder, tmp_path):  # the batches folder itself, or its parent
        ds = load_cifar10(src, tmp_path / f"root-{src.name}")
        assert ds.manifest["source_kind"] == "official-folder"
        np.testing.assert_array_equal(ds.images("test"), arrays["test"][0])


def test_malicious_pickle_is_not_executed(tmp_path):
    folder, _, _ = synthetic.write_official_archive(tmp_path, folder_only=True)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="refusing to load global"):
        load_cifar10(folder, tmp_path / "root")
    assert not marker.exists()


# ----------------------------------------------------------------------------- cache


def test_cache_is_reused_and_changed_source_rebuilds(tmp_path, monkeypatch):
    synthetic.write_image_folder(tmp_path / "tiny")
    archive = synthetic.tar_folder(tmp_path / "tiny", tmp_path / "tiny.tar")
    first = load_cifar10(archive, tmp_path / "root")

    def fail(*a, **k):
        raise AssertionError("cache should have been reused")

    monkeypatch.setattr(dataset_mod, "_build_cache", fail)
    again = load_cifar10(archive, tmp_path / "root")
    assert again.cache_dir == first.cache_dir
    assert isinstance(again.images("train"), np.memmap)
    monkeypatch.undo()

    extra = tmp_path / "tiny" / "train" / "cat" / "9999.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(extra)
    synthetic.tar_folder(tmp_path / "tiny", archive)
    changed = load_cifar10(archive, tmp_path / "root")
    assert changed.cache_dir != first.cache_dir
    assert changed.manifest["counts"]["train"]["cat"] == 7


@pytest.mark.parametrize("damage", ["manifest cut short", "manifest a list", "manifest without counts",
                                    "images cut short", "labels missing", "checksum memo a list"])
def test_a_damaged_cache_is_decoded_again_with_a_warning(tmp_path, damage, caplog):
    synthetic.write_image_folder(tmp_path / "tiny")
    archive = synthetic.tar_folder(tmp_path / "tiny", tmp_path / "tiny.tar")
    first = load_cifar10(archive, tmp_path / "root")
    images, labels = np.array(first.images("train")), np.array(first.labels("test"))
    cache, memo = first.cache_dir, tmp_path / "root" / "cache" / "checksums.json"
    del first
    if damage == "manifest cut short":
        (cache / "manifest.json").write_text('{"format": 2, "data')
    elif damage == "manifest a list":
        (cache / "manifest.json").write_text("[1, 2]")
    elif damage == "manifest without counts":
        import json
        manifest = json.loads((cache / "manifest.json").read_text())
        del manifest["counts"]
        (cache / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "images cut short":
        path = cache / "train_images.npy"
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "labels missing":
        (cache / "test_labels.npy").unlink()
    else:
        memo.write_text("[1]")
    again = load_cifar10(archive, tmp_path / "root")
    assert again.cache_dir == cache
    assert np.array_equal(again.images("train"), images) and np.array_equal(again.labels("test"), labels)
    rebuilt = "decoding the dataset again" in caplog.text
    assert rebuilt == (damage != "checksum memo a list")  # the memo only saves a hash: remade quietly


def test_limit_per_class(tmp_path):
    synthetic.write_image_folder(tmp_path / "tiny")
    ds = load_cifar10(tmp_path / "tiny", tmp_path / "root", limit_per_class=2)
    assert ds.images("train").shape == (20, 32, 32, 3)
    assert set(ds.manifest["counts"]["test"].values()) == {2}
    path, md5, _ = synthetic.write_official_archive(tmp_path / "off.tar.gz")
    off = load_cifar10(path, tmp_path / "root", checksum=f"md5:{md5}", limit_per_class=3)
    assert set(off.manifest["counts"]["train"].values()) == {3}


def test_a_checksum_for_a_folder_or_a_url_that_is_not_fetched_is_refused(tmp_path):
    synthetic.write_image_folder(tmp_path / "tiny")
    with pytest.raises(DataError, match="--checksum checks an archive file; .* is a folder"):
        load_dataset(tmp_path / "tiny", tmp_path / "root", checksum="md5:" + "0" * 32)
    for url in ("ftp://example.org/x.tar.gz", "s3://bucket/x.tar.gz"):
        with pytest.raises(DataError, match="only http://, https:// and file:// URLs"):
            load_dataset(url, tmp_path / "root")
    assert not (tmp_path / "root" / "cache").exists()


def test_an_official_archive_is_resized_into_the_cache_with_its_space_reserved(tmp_path, monkeypatch):
    import errno
    import os

    from cvpipe.images import resize
    from cvpipe.storage import StorageError

    path, md5, arrays = synthetic.write_official_archive(tmp_path / "off.tar.gz")
    ds = load_cifar10(path, tmp_path / "root", checksum=f"md5:{md5}", size=(20, 24), fit="stretch")
    x, _ = arrays["test"]
    assert ds.images("test").shape == (len(x), 20, 24, 3)
    np.testing.assert_array_equal(np.asarray(ds.images("test"))[3], resize(x[3], (20, 24), "stretch"))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)  # a --size too large for the disk
    with pytest.raises(StorageError, match="do not fit on the disk .* a smaller --size"):
        load_cifar10(path, tmp_path / "full", checksum=f"md5:{md5}", size=(64, 64))
    assert _no_cache_left(tmp_path / "full")


def test_explicit_sha256_checksum(tmp_path):
    synthetic.write_image_folder(tmp_path / "tiny")
    archive = synthetic.tar_folder(tmp_path / "tiny", tmp_path / "tiny.tar.gz")
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    load_cifar10(archive, tmp_path / "ok", checksum=f"sha256:{good}")
    with pytest.raises(ChecksumError):
        load_cifar10(archive, tmp_path / "bad", checksum="sha256:" + "0" * 64)
    assert _no_cache_left(tmp_path / "bad")


# ----------------------------------------------------------------------------- validation split


def test_stratified_split_is_seeded_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 500
    assert np.bincount(labels[va]).tolist() == [10] * 10
    tr2, va2 = stratified_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, stratified_split(labels, 0.2, seed=4)[1])


@pytest.mark.parametrize("options, message", [
    ({"val_fraction": 1.0}, "val_fraction must be in"), ({"val_fraction": -0.1}, "val_fraction"),
    ({"val_fraction": float("nan")}, "val_fraction"), ({"seed": -1}, "seed must be"),
    ({"seed": 1.5}, "seed must be"), ({"seed": True}, "seed must be")])
def test_split_options_are_refused_before_the_source_is_read(tmp_path, options, message):
    # a source that does not exist: the option's error has to come first
    with pytest.raises(ConfigError, match=message):
        load_cifar10(tmp_path / "missing", tmp_path / "root", **options)
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").rglob("*.npy"))
    with pytest.raises(ConfigError, match=message):
        stratified_split(np.repeat(np.arange(2), 5), **{"val_fraction": 0.1, **options})


@pytest.mark.parametrize("flag, value, message", [
    ("--val-fraction", "1.5", "val_fraction must be in"), ("--seed", "-1", "seed must be"),
    ("--seed", "2.5", "expected a whole number"), ("--workers", "0", "at least 1, not 0")])
def test_cli_refuses_split_and_engine_options_as_it_parses(tmp_path, capsys, flag, value, message):
    # train, before it looks for the model or the data (both missing here)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--pipeline", "hog-linear-svm", "--dataset", str(tmp_path / "none"),
              "--models-dir", str(tmp_path / "models"), flag, value])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_dataset_split_names(image_folder, tmp_path):
    ds = load_cifar10(image_folder, tmp_path / "root", val_fraction=1 / 3)
    xt, yt = ds.split("train")
    xv, yv = ds.split("val")
    assert len(yt) == 40 and len(yv) == 20 and np.bincount(yv).tolist() == [2] * 10
    assert len(ds.split("train_full")[1]) == 60 and len(ds.split("test")[1]) == 30
    with pytest.raises(DataError, match="unknown split"):
        ds.split("validation")


# ----------------------------------------------------------------------------- bad input


def test_missing_split(tmp_path):
    synthetic.write_image_folder(tmp_path / "t")
    for p in sorted((tmp_path / "t" / "test").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (tmp_path / "t" / "test").rmdir()
    with pytest.raises(DataError, match="missing split 'test'"):
        load_cifar10(tmp_path / "t", tmp_path / "root")
    assert _no_cache_left(tmp_path / "root")


def test_unreadable_image_is_reported_by_path(tmp_path):
    synthetic.write_image_folder(tmp_path / "t")
    bad = tmp_path / "t" / "train" / "dog" / "0033.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"unreadable image .*dog/0033\.png"):
        load_cifar10(tmp_path / "t", tmp_path / "root")
    assert _no_cache_left(tmp_path / "root")


@pytest.mark.parametrize("as_archive", [False, True], ids=["folder", "archive"])
def test_a_subset_reads_only_the_images_it_keeps(tmp_path, as_archive):
    """limit_per_class chooses from the names alone: a file past the limit is never opened
    (the quick profile reads 6,000 of CIFAR-10's 60,000), one within it still is."""
    synthetic.write_image_folder(tmp_path / "t")
    names = sorted((tmp_path / "t" / "train" / "dog").iterdir())
    names[-1].write_bytes(b"this is not a png")
    source = synthetic.tar_folder(tmp_path / "t", tmp_path / "t.tar") if as_archive else tmp_path / "t"
    ds = load_cifar10(source, tmp_path / "root", limit_per_class=2)
    assert np.bincount(np.asarray(ds.labels("train"))).tolist() == [2] * 10
    with pytest.raises(DataError, match=rf"unreadable image .*dog/{names[-1].name}"):
        load_cifar10(source, tmp_path / "root2", limit_per_class=len(names))


def test_empty_class_folder(tmp_path):
    synthetic.write_image_folder(tmp_path / "t")
    for f in (tmp_path / "t" / "test" / "frog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="empty or missing class folder.*test/frog"):
        load_cifar10(tmp_path / "t", tmp_path / "root")


def test_empty_class_folder_in_archive(tmp_path):
    synthetic.write_image_folder(tmp_path / "t")
    for f in (tmp_path / "t" / "train" / "ship").iterdir():
        f.unlink()
    archive = synthetic.tar_folder(tmp_path / "t", tmp_path / "t.tar")
    with pytest.raises(DataError, match="empty or missing class folder.*train/ship"):
        load_cifar10(archive, tmp_path / "root")


def test_mixed_sizes_refused_or_resized(tmp_path):
    synthetic.write_image_folder(tmp_path / "t")
    odd = tmp_path / "t" / "train" / "bird" / "0020.png"
    Image.fromarray(np.full((48, 40, 3), 200, np.uint8)).save(odd)
    with pytest.raises(DataError, match=r"images differ in size .*0020\.png is 40x48.*--size HxW"):
        load_cifar10(tmp_path / "t", tmp_path / "root")
    ds = load_cifar10(tmp_path / "t", tmp_path / "root", size=(32, 32), fit="crop")
    assert ds.images("train").shape[1:] == (32, 32, 3)
    assert (np.asarray(ds.images("train")) == 200).all(axis=(1, 2, 3)).any()


def test_grayscale_and_palette_images_become_rgb(tmp_path):
    synthetic.write_image_folder(tmp_path / "t")
    Image.fromarray(np.full((32, 32), 77, np.uint8)).save(tmp_path / "t/train/cat/0030.png")
    ds = load_cifar10(tmp_path / "t", tmp_path / "root")
    assert (np.asarray(ds.images("train")) == 77).all(axis=(1, 2, 3)).any()


def test_truncated_archive(tmp_path):
    synthetic.write_image_folder(tmp_path / "t", n_train=30)
    archive = synthetic.tar_folder(tmp_path / "t", tmp_path / "t.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_cifar10(archive, tmp_path / "root")
    assert _no_cache_left(tmp_path / "root")


def test_not_an_archive_and_missing_path(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="not a readable tar archive"):
        load_cifar10(junk, tmp_path / "root")
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "nope", tmp_path / "root")


def test_truncated_official_archive(tmp_path):
    path, _, _ = synthetic.write_official_archive(tmp_path / "o.tar.gz", n_per_class=40)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(DataError):
        load_cifar10(path, tmp_path / "root", checksum="md5:" + hashlib.md5(data).hexdigest())


# ----------------------------------------------------------------------------- download (real HTTP)


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_verifies_md5_and_renames_into_place(tmp_path, http_server):
    served, base = http_server
    path, md5, arrays = synthetic.write_official_archive(served / "cifar-10-python.tar.gz")
    root = tmp_path / "root"
    ds = load_cifar10(f"{base}/cifar-10-python.tar.gz", root, checksum=f"md5:{md5}")
    np.testing.assert_array_equal(ds.images("train"), arrays["train"][0])
    url = f"{base}/cifar-10-python.tar.gz"
    downloaded = root / "downloads" / download_key(url) / "cifar-10-python.tar.gz"
    assert downloaded.read_bytes() == path.read_bytes()
    assert not list((root / "downloads").rglob("*.part"))


def test_two_urls_ending_in_one_file_name_are_two_datasets(tmp_path, http_server):
    served, base = http_server
    for version, classes in (("v1", ("cat", "dog")), ("v2", ("car", "plane", "ship"))):
        synthetic.write_image_folder(tmp_path / version, n_train=3, n_test=2, classes=classes)
        (served / version).mkdir()
        synthetic.tar_folder(tmp_path / version, served / version / "images.tar")
    root = tmp_path / "root"
    first = load_dataset(f"{base}/v1/images.tar", root)
    second = load_dataset(f"{base}/v2/images.tar", root)
    assert first.classes == ("cat", "dog") and second.classes == ("car", "plane", "ship")
    # credentials and fragments are not part of the key; the query is
    assert download_key("http://u:secret@Example.org/a.tar#x") == download_key("http://example.org/a.tar")
    assert download_key("http://example.org/a.tar?v=2") != download_key("http://example.org/a.tar")


def test_concurrent_downloads_of_one_file_both_succeed(tmp_path, http_server):
    served, base = http_server
    path, md5, _ = synthetic.write_official_archive(served / "cifar-10-python.tar.gz", n_per_class=40)
    dest = tmp_path / "downloads" / "cifar-10-python.tar.gz"
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            download(f"{base}/cifar-10-python.tar.gz", dest, md5=md5)
        except BaseException as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and dest.read_bytes() == path.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary file left


def test_download_with_bad_checksum_leaves_nothing(tmp_path, http_server):
    served, base = http_server
    synthetic.write_official_archive(served / "cifar-10-python.tar.gz")
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match="differs from the published"):
        load_cifar10(f"{base}/cifar-10-python.tar.gz", root, checksum="md5:" + "0" * 32)
    assert not [p for p in (root / "downloads").rglob("*") if p.is_file()]
    assert _no_cache_left(root)


def test_download_failure_is_clear(tmp_path, http_server):
    _, base = http_server
    with pytest.raises(DataError, match=r"could not download .*404.* point \$CVPIPE_CIFAR10_SOURCE"):
        load_cifar10(f"{base}/missing.tar.gz", tmp_path / "root")
    # a URL of one's own: the hint names --dataset, not a catalogued dataset's variable
    with pytest.raises(DataError, match="could not download .*404.* point --dataset at a local"):
        load_dataset(f"{base}/mine.tar.gz", tmp_path / "root")


def test_default_source_is_the_official_url(tmp_path, monkeypatch):
    seen = {}

    def fake_download(url, dest, md5=None, **_):
        seen.update(url=url, md5=md5)
        raise DataError("offline")

    monkeypatch.setattr(dataset_mod, "download", fake_download)
    with pytest.raises(DataError, match="offline"):
        load_cifar10(None, tmp_path / "root")
    assert seen == {"url": dataset_mod.CIFAR10_URL, "md5": dataset_mod.CIFAR10_MD5}


# ----------------------------------------------------------------------------- CLI


def test_cli_prepare_and_info(image_folder, tmp_path, capsys):
    args = ["--source", str(image_folder), "--data-root", str(tmp_path / "r")]
    assert main(["data", "prepare", *args]) == 0
    out = capsys.readouterr().out
    assert "automobile" in out and "total" in out and "60" in out
    assert main(["data", "info", "--json", *args]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["test"]["truck"] == 3 and info["validation"]["val"] == 10


def test_cli_error_is_one_clear_line(tmp_path, capsys):
    code = main(["data", "info", "--source", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cvpipe: error:") and "Traceback" not in err


def test_cli_reads_source_from_environment(image_folder, monkeypatch, capsys):
    monkeypatch.setenv("CVPIPE_CIFAR10_SOURCE", str(image_folder))
    assert main(["data", "info"]) == 0
    assert "image-folder" in capsys.readouterr().out


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_cifar10_subset_end_to_end(real_cifar_source, tmp_path, capsys):
    """1,000 real images (50 per class per split) through the CLI and the loader."""
    args = ["--source", str(real_cifar_source), "--data-root", str(tmp_path / "r"),
            "--limit-per-class", "50"]
    assert main(["data", "prepare", *args]) == 0
    ds = load_cifar10(real_cifar_source, tmp_path / "r", limit_per_class=50)
    assert ds.classes == synthetic.CLASSES
    assert ds.images("train").shape == (500, 32, 32, 3)
    assert ds.images("test").shape == (500, 32, 32, 3)
    assert all(n == 50 for split in ("train", "test") for n in ds.manifest["counts"][split].values())
    x = np.asarray(ds.images("train"), dtype=np.float64)
    assert 50 < x.mean() < 200 and x.std() > 30  # real photographs, not blank decodes
    assert "airplane" in capsys.readouterr().out
