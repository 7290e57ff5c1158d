"""Batch feature extraction on one machine: chunked store, key, reuse, resume, inputs, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from cvpipe.cli import main
from cvpipe.data import load_cifar10
from cvpipe.errors import ConfigError, DataError
from cvpipe.features import FeatureSpec, make_features
from cvpipe.featurestore import DatasetSource, FileSource, extract, load_features, open_input
from cvpipe.featurestore.store import FeatureStore
from cvpipe.storage import size_text
from tests import synthetic

CHUNK = 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """300 train / 60 test synthetic CIFAR-like images, decoded into a cache."""
    base = tmp_path_factory.mktemp("extract-data")
    synthetic.write_image_folder(base / "tiny", n_train=30, n_test=6)
    return load_cifar10(base / "tiny", base / "root")


def reference(images: np.ndarray, name: str = "hog+color", **params) -> np.ndarray:
    return make_features(name, n_jobs=1, **params).fit(images[:1]).transform(images)


def test_zarr_output_matches_direct_transform_row_for_row(dataset, tmp_path):
    res = extract(DatasetSource(dataset, "train_full"), "hog+color", out=tmp_path / "f",
                  chunk_rows=CHUNK, fmt="zarr")
    feats, labels, manifest = load_features(res.path)
    x, y = dataset.split("train_full")
    assert feats.shape == (300, 452) and feats.chunks == (CHUNK, 452)
    np.testing.assert_array_equal(np.asarray(feats), reference(np.asarray(x)))
    np.testing.assert_array_equal(labels, y)
    assert manifest["n"] == 300 and manifest["d"] == 452 and manifest["format"] == "zarr"
    assert manifest["features"] == FeatureSpec.parse("hog+color").to_dict()
    assert manifest["input"]["checksum"] == dataset.checksum
    assert manifest["classes"] == list(synthetic.CLASSES)
    assert manifest["rows_computed"] == 300 and manifest["images_per_s"] > 0
    assert not res.reused and res.computed_chunks == -(-300 // CHUNK)


def test_split_rows_follow_the_dataset_split(dataset, tmp_path):
    res = extract(DatasetSource(dataset, "val"), "color", out=tmp_path / "v", chunk_rows=7)
    feats, labels, manifest = load_features(res.path)
    x, y = dataset.split("val")
    assert manifest["format"] == "npz" and isinstance(feats, np.ndarray)
    np.testing.assert_array_equal(feats, reference(np.asarray(x), "color"))
    np.testing.assert_array_equal(labels, y)
    assert manifest["input"]["validation"] == {"fraction": 0.1, "seed": 0}


def test_npz_is_packed_and_scratch_removed(dataset, tmp_path):
    res = extract(DatasetSource(dataset, "test"), "hog", out=tmp_path / "n", chunk_rows=CHUNK)
    names = sorted(p.name for p in Path(res.path).iterdir())
    assert names == ["features.npz", "manifest.json", "run.json"]
    feats, labels, _ = load_features(res.path)
    np.testing.assert_array_equal(feats, reference(np.asarray(dataset.images("test")), "hog"))


def test_memory_is_bounded_by_the_chunk_size(dataset, tmp_path):
    source = DatasetSource(dataset, "train_full")
    seen = []
    original = source.chunk

    def spy(start, stop):
        seen.append(stop - start)
        return original(start, stop)

    source.chunk = spy
    extract(source, "hog+color", out=tmp_path / "m", chunk_rows=CHUNK, fmt="zarr")
    assert max(seen) <= CHUNK and sum(seen[1:]) == 300  # seen[0]: the one-image config check


def test_default_folder_is_keyed_and_a_second_run_reuses(dataset, tmp_path):
    source = DatasetSource(dataset, "train_full")
    first = extract(source, "hog+color", root=tmp_path, chunk_rows=CHUNK)
    assert Path(first.path).parent == tmp_path / "features"
    stamp = (Path(first.path) / "manifest.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = extract(source, "hog+color", root=tmp_path)
    assert time.perf_counter() - t0 < 2.0
    assert again.reused and again.computed_chunks == 0 and again.path == first.path
    assert (Path(first.path) / "manifest.json").stat().st_mtime_ns == stamp
    # the same effective parameters spelled differently, or other thread counts: same key
    same = extract(source, {"name": "hog+color", "params": {"hog__orientations": 9, "n_jobs": 1}},
                   root=tmp_path)
    assert same.reused and same.path == first.path
    # other parameters, other split: other keys
    other = extract(source, "hog+color", params={"hog__orientations": 12}, root=tmp_path)
    test = extract(DatasetSource(dataset, "test"), "hog+color", root=tmp_path)
    assert len({first.path, other.path, test.path}) == 3
    assert other.manifest["d"] == 452 - 324 + 432


def test_components_config_like_pipeline_specs(dataset, tmp_path):
    config = {"name": "hog-2scales", "components": [
        {"name": "hog", "params": {"pixels_per_cell": [4, 4]}}, {"name": "hog"}]}
    res = extract(DatasetSource(dataset, "test"), config, out=tmp_path / "c")
    feats, _, manifest = load_features(res.path)
    x = np.asarray(dataset.images("test"))
    want = np.hstack([reference(x, "hog", pixels_per_cell=(4, 4)), reference(x, "hog")])
    np.testing.assert_array_equal(feats, want)
    assert manifest["features"]["components"][0]["params"] == {"pixels_per_cell": [4, 4]}


class Stop(Exception):
    pass


def _stop_after(k):
    count = []

    def on_chunk(meta):
        count.append(meta)
        if len(count) == k:
            raise Stop

    return on_chunk


def _assert_exactly_once(path: str, n: int, chunk: int) -> None:
    markers = sorted(Path(path, "done").glob("*.json"))
    spans = sorted((json.loads(m.read_text())["start"], json.loads(m.read_text())["stop"])
                   for m in markers)
    assert spans == [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def test_interrupted_run_resumes_without_missing_or_duplicated_rows(dataset, tmp_path):
    source = DatasetSource(dataset, "train_full")
    out = tmp_path / "r"
    with pytest.raises(Stop):
        extract(source, "hog+color", out=out, chunk_rows=CHUNK, fmt="zarr", on_chunk=_stop_after(5))
    store = FeatureStore(out)
    assert store.manifest() is None and store.done() == set(range(5))
    with pytest.raises(DataError, match="no finished"):
        load_features(out)
    # a new chunk size is ignored: the partial store keeps its layout
    res = extract(source, "hog+color", out=out, chunk_rows=50, fmt="zarr")
    assert res.computed_chunks == 19 - 5 and res.manifest["rows_computed"] == 300 - 5 * CHUNK
    _assert_exactly_once(res.path, 300, CHUNK)
    feats, labels, _ = load_features(res.path)
    x, y = dataset.split("train_full")
    np.testing.assert_array_equal(np.asarray(feats), reference(np.asarray(x)))
    np.testing.assert_array_equal(labels, y)


def test_chunks_written_without_marker_are_recomputed(dataset, tmp_path):
    """A run killed after writing a chunk's data but before its marker."""
    source = DatasetSource(dataset, "train_full")
    res = extract(source, "hog+color", out=tmp_path / "k", chunk_rows=CHUNK, fmt="zarr")
    import zarr

    group = zarr.open_group(Path(res.path, "features.zarr"), mode="r+")
    group["features"][3 * CHUNK:5 * CHUNK] = 0.0  # garbage in chunks 3 and 4
    for i in (3, 4):
        Path(res.path, "done", f"{i:06d}.json").unlink()
    Path(res.path, "manifest.json").unlink()
    again = extract(source, "hog+color", out=tmp_path / "k")
    assert again.computed_chunks == 2 and not again.reused
    _assert_exactly_once(again.path, 300, CHUNK)
    np.testing.assert_array_equal(np.asarray(load_features(again.path)[0]),
                                  reference(np.asarray(dataset.images("train"))))


def test_force_recomputes_and_foreign_folders_are_refused(dataset, tmp_path):
    source = DatasetSource(dataset, "test")
    out = tmp_path / "o"
    extract(source, "color", out=out)
    assert extract(source, "color", out=out, force=True).computed_chunks == 1
    with pytest.raises(ConfigError, match="another configuration"):
        extract(source, "hog", out=out)
    assert extract(source, "hog", out=out, force=True).manifest["d"] == 324
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not empty"):
        extract(source, "hog", out=foreign, force=True)
    assert (foreign / "thesis.tex").exists()


def test_a_damaged_store_record_is_refused_listed_as_unfinished_and_force_replaces_it(
        dataset, tmp_path, capsys):
    source = DatasetSource(dataset, "test")
    first = extract(source, "color", root=tmp_path)
    manifest = Path(first.path) / "manifest.json"
    manifest.write_text("[1, 2]")  # valid JSON, not what cvpipe writes
    with pytest.raises(DataError, match="not a cvpipe record .*use --force"):
        extract(source, "color", root=tmp_path)
    assert main(["store", "list", "--data-root", str(tmp_path)]) == 0  # no traceback
    assert "(unfinished)" in capsys.readouterr().out
    (Path(first.path) / "run.json").write_text('{"input": "crafted", "features": [1]}')
    assert main(["store", "list", "--data-root", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["stores"]
    assert [(e["complete"], e["input"], e["features"]) for e in listed] == [(False, None, None)]
    again = extract(source, "color", root=tmp_path, force=True)
    assert again.computed_chunks == 1 and json.loads(manifest.read_text())["n"] == source.n
    manifest.write_text('{"key": "cut sh')  # a truncated record: its error says --force, which works
    with pytest.raises(DataError, match="unreadable .*use --force"):
        extract(source, "color", root=tmp_path)
    assert extract(source, "color", root=tmp_path, force=True).computed_chunks == 1


@pytest.mark.parametrize(("params", "match"), [
    ({"color__space": "foo"}, "'space' parameter"),
    ({"hog__pixels_per_cell": 64}, "too small for HOG"),
    ({"color__bins": 0}, "'bins' parameter"),
    ({"hog__nonsense": 1}, "no parameter"),
])
def test_bad_configurations_are_config_errors(dataset, tmp_path, params, match):
    with pytest.raises(ConfigError, match=match):
        extract(DatasetSource(dataset, "test"), "hog+color", params=params, out=tmp_path / "b")
    assert not (tmp_path / "b").exists()  # nothing written


def test_bad_options(dataset, tmp_path):
    source = DatasetSource(dataset, "test")
    with pytest.raises(ConfigError, match="unknown feature"):
        extract(source, "sift", out=tmp_path / "x")
    with pytest.raises(ConfigError, match="format"):
        extract(source, "hog", out=tmp_path / "x", fmt="parquet")
    with pytest.raises(ConfigError, match="chunk"):
        extract(source, "hog", out=tmp_path / "x", chunk_rows=0)
    with pytest.raises(ConfigError, match="split"):
        DatasetSource(dataset, "holdout")


# --------------------------------------------------------------------------------------------
# image files


def test_image_folder_input_with_labels_from_class_folders(tmp_path):
    written = synthetic.write_image_folder(tmp_path / "imgs", n_train=3, n_test=1)
    source = open_input(str(tmp_path / "imgs" / "train"), (32, 32))
    assert isinstance(source, FileSource) and source.n == 30
    res = extract(source, "hog+color", out=tmp_path / "f", chunk_rows=7, fmt="zarr")
    feats, labels, manifest = load_features(res.path)
    x, y = written["train"]  # PNG is lossless, written class by class in sorted order
    np.testing.assert_array_equal(np.asarray(feats), reference(x))
    np.testing.assert_array_equal(labels, y)
    assert manifest["classes"] == sorted(synthetic.CLASSES)
    assert extract(open_input(str(tmp_path / "imgs" / "train"), (32, 32)), "hog+color",
                   out=tmp_path / "f").reused


def test_image_list_input_resizes_and_has_no_labels(tmp_path):
    written = synthetic.write_image_folder(tmp_path / "imgs", n_train=1, n_test=1, size=48)
    files = sorted((tmp_path / "imgs" / "train").rglob("*.png"))
    listing = tmp_path / "imgs" / "list.txt"
    listing.write_text("# my images\n" + "\n".join(str(p.relative_to(listing.parent)) for p in files)
                       + "\n\n")
    source = open_input(str(listing), (32, 32))
    assert source.n == 10 and source.image_shape == (32, 32, 3)
    res = extract(source, "color", out=tmp_path / "l")
    feats, labels, _ = load_features(res.path)
    assert feats.shape == (10, 128) and (labels == -1).all()
    assert written["train"][0].shape[1:] == (48, 48, 3)


def test_one_image_file_is_one_row_and_a_changed_file_a_new_key(tmp_path):
    synthetic.write_image_folder(tmp_path / "imgs", n_train=1, n_test=1, size=48)
    photo = sorted((tmp_path / "imgs" / "train").rglob("*.png"))[0]
    source = open_input(str(photo), (32, 32))  # an image, not a list of paths read as text
    assert source.n == 1 and source.paths == [str(photo)]
    res = extract(source, "color", out=tmp_path / "one")
    feats, labels, _ = load_features(res.path)
    assert feats.shape == (1, 128) and labels.tolist() == [-1]
    key = source.fingerprint()["listing"]
    other = sorted((tmp_path / "imgs" / "test").rglob("*.png"))[0]
    photo.write_bytes(other.read_bytes() + b"\0")
    assert open_input(str(photo), (32, 32)).fingerprint()["listing"] != key


def test_unreadable_image_names_the_file(tmp_path):
    synthetic.write_image_folder(tmp_path / "imgs", n_train=1, n_test=1)
    bad = tmp_path / "imgs" / "train" / "cat" / "0003.png"
    bad.write_bytes(b"not a png")
    from cvpipe.images import ImageError

    with pytest.raises(ImageError, match="0003.png"):
        extract(open_input(str(tmp_path / "imgs" / "train"), (32, 32)), "hog", out=tmp_path / "o",
                chunk_rows=4)
    with pytest.raises(DataError, match="no such"):
        open_input(str(tmp_path / "nowhere"), (32, 32))


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--features", "--feature-params", "--split", "--format", "--chunk-size", "--out",
                   "--scheduler", "--workers", "--force", "--input"):
        assert option in out


def test_cli_run_then_reuse(dataset, tmp_path, capsys):
    source = ["--source", dataset.manifest["source_path"], "--data-root", str(tmp_path)]
    args = ["extract", "--features", "hog+color", "--split", "test", "--chunk-size", "16", *source]
    assert main(args) == 0
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert line.startswith("extracted 60 rows x 452 dims in ") and "images/s" in line
    path = line.rsplit("-> ", 1)[1]
    assert Path(path).parent == tmp_path / "features"
    assert "extract: 100%" in captured.err  # the progress bar
    t0 = time.perf_counter()
    assert main([*args, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["reused"] and info["path"] == path and info["n"] == 60
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(("params", "match"), [
    ('{"color__space": "foo"}', "Got 'foo' instead"),
    ('{"hog__pixels_per_cell": 64}', "too small for HOG"),
    ('{"color__bins": 0}', "'bins' parameter"),
    ("{oops", "invalid JSON"),
])
def test_cli_bad_configuration_is_one_clear_line(dataset, tmp_path, capsys, params, match):
    code = main(["extract", "--features", "hog+color", "--feature-params", params, "--split", "test",
                 "--source", dataset.manifest["source_path"], "--data-root", str(tmp_path)])
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "cvpipe.data" not in line]
    assert len(err) == 1 and err[0].startswith("cvpipe: error: ") and match in err[0]


@pytest.mark.parametrize(("features", "params", "match"), [
    ("bogus", None, "unknown feature 'bogus'"),
    ("hog", '{"bogus": 1}', "takes a parameter 'bogus'"),
    ("hog", '{"orientations": -1}', "'orientations' parameter"),
])
def test_cli_checks_the_features_before_reading_the_data(tmp_path, capsys, features, params, match):
    # the source does not exist: the features' error, not the source's, shows they come first
    args = ["extract", "--features", features, "--split", "test",
            "--source", str(tmp_path / "missing"), "--data-root", str(tmp_path)]
    assert main(args + (["--feature-params", params] if params else [])) == 2
    assert match in capsys.readouterr().err
    assert main(["extract", "--features", "hog", *args[3:]]) == 2
    assert "missing" in capsys.readouterr().err


def test_cli_image_folder(tmp_path, capsys):
    synthetic.write_image_folder(tmp_path / "imgs", n_train=1, n_test=1)
    assert main(["extract", "--features", "color", "--input", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("extracted 20 rows x 128 dims")
    _, labels, manifest = load_features(tmp_path / "o")
    assert manifest["classes"] == ["test", "train"]  # first folder level
    # --out at a file, below a file, or where no folder can be made: one line, the file kept
    photo = sorted((tmp_path / "imgs").rglob("*.png"))[0]
    before = photo.read_bytes()
    for out, message in ((photo, "is a file; features go in a folder"),
                         (photo / "sub", "a file stands where a folder of its path should be"),
                         (Path("/proc/cvpipe-out"), "cannot create the feature folder")):
        for force in ([], ["--force"]):
            assert main(["extract", "--features", "color", "--input", str(tmp_path / "imgs"),
                         "--out", str(out), "--no-progress", *force]) == 2
            assert message in capsys.readouterr().err
    assert photo.read_bytes() == before


def _run_until_killed(script: str, markers: Path, at_least: int, timeout: float = 60) -> None:
    """Run ``script`` in a new Python and SIGKILL it once ``at_least`` chunk markers exist."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + timeout
        while len(list(markers.glob("*.json"))) < at_least:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)


def test_killed_process_resumes_with_every_row_exactly_once(dataset, tmp_path):
    out = tmp_path / "killed"
    script = (
        "import time\n"
        "from cvpipe.data import load_cifar10\n"
        "from cvpipe.featurestore import DatasetSource, extract\n"
        f"ds = load_cifar10({dataset.manifest['source_path']!r}, {str(dataset.cache_dir.parents[1])!r})\n"
        f"extract(DatasetSource(ds, 'train_full'), 'hog+color', out={str(out)!r}, chunk_rows={CHUNK},\n"
        "        fmt='zarr', on_chunk=lambda meta: time.sleep(0.1))\n"
    )
    _run_until_killed(script, out / "done", at_least=4)
    store = FeatureStore(out)
    done = len(store.done())
    assert store.manifest() is None and 4 <= done < 19
    res = extract(DatasetSource(dataset, "train_full"), "hog+color", out=out)
    assert res.computed_chunks == 19 - done
    _assert_exactly_once(res.path, 300, CHUNK)
    np.testing.assert_array_equal(np.asarray(load_features(res.path)[0]),
                                  reference(np.asarray(dataset.images("train"))))


@pytest.mark.parametrize("fmt", ["zarr", "npz"])
def test_output_to_an_fsspec_url(dataset, tmp_path, fmt):
    """What a cluster without a shared filesystem uses (s3://...); fsspec's memory:// here."""
    import uuid

    url = f"memory://cvpipe-test-{uuid.uuid4().hex[:8]}"
    source = DatasetSource(dataset, "test")
    res = extract(source, "hog+color", out=url, chunk_rows=CHUNK, fmt=fmt)
    assert res.path == url and extract(source, "hog+color", out=url).reused
    feats, labels, manifest = load_features(url)
    np.testing.assert_array_equal(np.asarray(feats), reference(np.asarray(dataset.images("test"))))
    np.testing.assert_array_equal(labels, dataset.labels("test"))
    assert manifest["format"] == fmt


def test_npy_format_resumes_reads_slices_and_matches_the_transform(dataset, tmp_path):
    source = DatasetSource(dataset, "train_full")
    out = tmp_path / "npy"
    with pytest.raises(Stop):
        extract(source, "hog+color", out=out, chunk_rows=CHUNK, fmt="npy", on_chunk=_stop_after(4))
    assert sorted(p.name for p in out.iterdir()) == ["done", "features.npy", "labels.npy", "run.json"]
    res = extract(source, "hog+color", out=out, fmt="npy")
    assert res.computed_chunks == 19 - 4 and res.manifest["format"] == "npy"
    _assert_exactly_once(res.path, 300, CHUNK)
    feats, labels, _ = load_features(res.path)
    x, y = dataset.split("train_full")
    expected = reference(np.asarray(x))
    assert feats.shape == (300, 452) and not isinstance(feats, np.memmap)
    np.testing.assert_array_equal(feats[37:101], expected[37:101])  # a slice across chunks
    np.testing.assert_array_equal(np.asarray(feats), expected)
    np.testing.assert_array_equal(labels, y)


def test_npy_store_cut_short_is_refused(dataset, tmp_path):
    res = extract(DatasetSource(dataset, "test"), "hog", out=tmp_path / "cut", fmt="npy")
    path = Path(res.path, "features.npy")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="header needs"):
        load_features(res.path)


def test_npy_store_that_does_not_fit_on_the_disk_fails_before_any_work(dataset, tmp_path, monkeypatch):
    import errno
    import os

    from cvpipe.storage import StorageError

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(StorageError, match="do not fit on the disk"):
        extract(DatasetSource(dataset, "test"), "hog", out=tmp_path / "full", fmt="npy")


@pytest.mark.parametrize("fmt, factor", [("zarr", 1), ("npz", 2)])
def test_a_compressed_store_that_may_not_fit_is_warned_about_and_written_all_the_same(
        dataset, tmp_path, monkeypatch, caplog, fmt, factor):
    import logging

    import cvpipe.featurestore.core as core

    bound = 60 * (324 * 4 + 8) * factor  # 60 test rows of 324 HOG values, uncompressed
    monkeypatch.setattr(core, "free_bytes", lambda path: bound - 1)
    with caplog.at_level(logging.WARNING, "cvpipe.featurestore.core"):
        res = extract(DatasetSource(dataset, "test"), "hog", out=tmp_path / fmt, fmt=fmt)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"60 rows x 324 values may take up to {size_text(bound)}" in warned[0]
    assert f"({fmt}, before compression), and {size_text(bound - 1)} are free" in warned[0]
    assert res.manifest["n"] == 60  # a bound, not a refusal: the rows were written
    caplog.clear()
    monkeypatch.setattr(core, "free_bytes", lambda path: bound)
    with caplog.at_level(logging.WARNING, "cvpipe.featurestore.core"):
        extract(DatasetSource(dataset, "test"), "hog", out=tmp_path / f"{fmt}-2", fmt=fmt)
        extract(DatasetSource(dataset, "test"), "hog", out=tmp_path / "npy", fmt="npy")  # reserved
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_chunks_that_would_not_fit_in_memory_shrink_or_are_refused(dataset, tmp_path, monkeypatch):
    import cvpipe.device

    # 64 KiB free: two chunks of 324 HOG values a row fit 12 rows each in half of it
    monkeypatch.setattr(cvpipe.device, "available_memory_bytes", lambda: 64 * 1024)
    with pytest.raises(ConfigError, match=r"--chunk-size 100: .* give --chunk-size 12 or less"):
        extract(DatasetSource(dataset, "test"), "hog", out=tmp_path / "big", chunk_rows=100)
    assert not (tmp_path / "big").exists()  # refused before the folder is made
    res = extract(DatasetSource(dataset, "test"), "hog", out=tmp_path / "auto")  # the default shrinks
    assert res.manifest["chunk_rows"] == 12 and res.manifest["n"] == 60
    monkeypatch.undo()
    feats, _, _ = load_features(res.path)
    whole = extract(DatasetSource(dataset, "test"), "hog", out=tmp_path / "whole")
    np.testing.assert_array_equal(np.asarray(feats), np.asarray(load_features(whole.path)[0]))


def test_npy_needs_a_local_folder(dataset, tmp_path):
    with pytest.raises(ConfigError, match="needs a local folder"):
        extract(DatasetSource(dataset, "test"), "hog", out=f"memory://{tmp_path.name}/npy", fmt="npy")
