"""Faults and lost work: unsafe names, folders cvpipe did not write, a process killed at each
step of a replacement, a full disk on every write path, and model files that model.json does
not vouch for."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cvpipe.cli import main
from cvpipe.data import load_cifar10
from cvpipe.errors import ArtifactError
from cvpipe.models import ClassicPipeline, load_model, read_metadata, write_artifact
from cvpipe.storage import StorageError, recover_all, replace_dir
from tests import synthetic

ROOT = Path(__file__).resolve().parent.parent
LINEAR = {"features": {"name": "color"}, "classifier": {"type": "linear-svm", "params": {"C": 0.1}}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    synthetic.write_image_folder(root / "src", n_train=8, n_test=2)
    return root / "src"


def _train(src: Path, models: Path, name: str = "m") -> dict:
    ds = load_cifar10(src, models.parent / "data")
    return ClassicPipeline.from_table(name, LINEAR).train(ds, models / name, progress=False)


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------ names and other people's folders

@pytest.mark.parametrize("name", [".", "..", "/tmp/elsewhere", "a/b", ".hidden", "../models2", ""])
def test_unsafe_model_names_are_refused_and_nothing_is_touched(tiny, tmp_path, capsys, name):
    models = tmp_path / "models"
    models.mkdir()
    (models / "keep.txt").write_text("mine")
    code = main(["train", "--pipeline", "color-linear-svm", "--name", name, "--source", str(tiny),
                 "--data-root", str(tmp_path / "data"), "--models-dir", str(models)])
    assert code == 2 and "plain name" in capsys.readouterr().err
    assert (models / "keep.txt").read_text() == "mine" and sorted(p.name for p in models.iterdir()) == [
        "keep.txt"]


def test_compare_run_names_are_checked_before_any_work(tiny, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    code = main(["compare", "--run", "../victim", "--reports-dir", str(tmp_path / "reports"),
                 "--source", str(tiny), "--data-root", str(tmp_path / "data"),
                 "--models-dir", str(tmp_path / "models")])
    assert code == 2 and "plain name" in capsys.readouterr().err
    assert (victim / "thesis.tex").exists() and not (tmp_path / "models").exists()


@pytest.mark.parametrize("folder", ["données", "_tiny", "+tiny"])
def test_compare_on_any_folder_name_writes_its_models_and_report(tiny, tmp_path, folder):
    import shutil

    src = tmp_path / folder
    shutil.copytree(tiny, src)
    config = tmp_path / "compare.toml"
    config.write_text('[compare]\npipelines = ["color-linear-svm"]\n[profiles.tiny]\nlimit_per_class = 6\n')
    code = main(["compare", "--profile", "tiny", "--config", str(config), "--dataset", str(src),
                 "--data-root", str(tmp_path / "data"), "--models-dir", str(tmp_path / "models"),
                 "--reports-dir", str(tmp_path / "reports")])
    assert code == 0
    (model,) = [p for p in (tmp_path / "models").iterdir() if not p.name.startswith(".")]
    assert model.name.endswith("-color-linear-svm") and model.name[0].isalnum() and model.name.isascii()
    (report,) = (tmp_path / "reports").iterdir()
    assert (report / "results.json").is_file() and (report / "report.html").is_file()


def test_a_class_named_like_tex_is_drawn_as_plain_text(tmp_path):
    classes = ("$\\evil$", "cat", "dog")
    synthetic.write_image_folder(tmp_path / "src", n_train=6, n_test=3, classes=classes)
    config = tmp_path / "compare.toml"
    config.write_text('[compare]\npipelines = ["color-linear-svm"]\n[profiles.tiny]\nlimit_per_class = 6\n')
    code = main(["compare", "--profile", "tiny", "--config", str(config), "--dataset", str(tmp_path / "src"),
                 "--data-root", str(tmp_path / "data"), "--models-dir", str(tmp_path / "models"),
                 "--reports-dir", str(tmp_path / "reports")])
    assert code == 0
    (report,) = (tmp_path / "reports").iterdir()
    results = json.loads((report / "results.json").read_text())
    assert classes[0] in results["dataset"]["classes"]
    assert "Not drawn" not in (report / "report.md").read_text()  # every figure drawn, as text


def test_a_figure_that_fails_costs_only_that_figure(monkeypatch, tmp_path):
    from cvpipe.compare import plots, report

    def broken(*_args, **_kwargs):
        raise RuntimeError("no ink")

    monkeypatch.setattr(plots, "per_class_chart", broken)
    drawn, failed = report._draw([("a", "fine", lambda: b"png"), ("b", "Per-class", broken)])
    assert drawn == [("a", "fine", b"png")] and failed == ["Per-class: RuntimeError: no ink"]


def test_a_folder_cvpipe_did_not_write_is_never_replaced(tiny, tmp_path):
    models = tmp_path / "models"
    (models / "m").mkdir(parents=True)
    (models / "m" / "notes.txt").write_text("not a model")
    with pytest.raises(StorageError, match="not written by cvpipe"):
        _train(tiny, models)
    assert (models / "m" / "notes.txt").read_text() == "not a model"
    from cvpipe.compare.report import write_report

    (tmp_path / "reports" / "r").mkdir(parents=True)
    (tmp_path / "reports" / "r" / "draft.md").write_text("mine")
    with pytest.raises(StorageError, match="not written by cvpipe"):
        write_report({"pipelines": [], "dataset": {"classes": []}}, tmp_path / "reports" / "r")
    assert (tmp_path / "reports" / "r" / "draft.md").exists()


# ------------------------------------------------------------------ killed at each step

KILLER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    step = int(sys.argv[2])
    calls = {"n": 0}
    real_replace = os.replace
    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == step:
            os._exit(9)  # killed before this move: no cleanup, no finally
        real_replace(src, dst)
        if step == 3 and calls["n"] == 2:
            os._exit(9)  # killed after the new model is in, before the old one is deleted
    os.replace = replace
    from cvpipe.models import write_artifact
    def files(tmp):
        if step == 0:
            (tmp / "weights.bin").write_bytes(b"half")
            os._exit(9)
        (tmp / "weights.bin").write_bytes(b"new" * 1000)
    write_artifact(Path(sys.argv[1]), {"kind": "test", "classes": ["a"], "card": {}, "version": "new"}, files)
""")


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_a_model_replacement_killed_at_any_step_leaves_a_whole_model(tmp_path, step):
    """Step 0: killed while writing the files; 1: before the old model is moved aside; 2: between
    moving the old one aside and the new one in; 3: after, before the old one is deleted."""
    target = tmp_path / "models" / "m"
    write_artifact(target, {"kind": "test", "classes": ["a"], "card": {}, "version": "old"},
                   lambda tmp: (tmp / "weights.bin").write_bytes(b"old"))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(target), str(step)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    recover_all(target.parent)  # what the next `cvpipe serve`, `models list` or write does first
    meta = read_metadata(target)  # whole and verified: either version, never half of one
    assert meta["version"] == ("new" if step == 3 else "old")
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]  # no leftovers


def test_an_interrupted_replacement_is_repaired_by_the_next_write(tmp_path):
    target = tmp_path / "r"
    with replace_dir(target) as tmp:
        (tmp / "results.json").write_text("1")
    stale = tmp_path / ".old-r-999999999-deadbeef"  # a dead process's moved-aside version
    target.rename(stale)
    with replace_dir(target) as tmp:
        assert (target / "results.json").read_text() == "1"  # restored before the new write
        (tmp / "results.json").write_text("2")
    assert (target / "results.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_recovery_touches_only_its_own_names(tmp_path):
    import os

    from cvpipe.storage import recover, recover_all

    models = tmp_path / "models"
    (models / "hog").mkdir(parents=True)
    (models / "hog" / "model.json").write_text("hog")
    # another model's work: a live process's temporary folder, a dead one's moved-aside version
    live = models / f".tmp-hog-svm-{os.getpid()}-0123abcd"
    dead_other = models / ".old-hog-svm-999999999-deadbeef"
    for folder in (live, dead_other):
        folder.mkdir()
        (folder / "model.json").write_text(folder.name)
    (models / "hog").rename(models / ".old-hog-999999999-feedf00d")  # hog itself interrupted
    recover(models / "hog")
    assert (models / "hog" / "model.json").read_text() == "hog"  # its own old version, back
    assert live.is_dir() and dead_other.is_dir()  # not "hog"'s: untouched
    recover_all(models)  # hog-svm's own recovery: restores its dead process's version
    assert (models / "hog-svm" / "model.json").read_text() == dead_other.name
    assert live.is_dir()  # a live process's work is never removed
    assert (models / "hog" / "model.json").read_text() == "hog"


# ------------------------------------------------------------------ a full disk on every write path

def test_disk_full_while_writing_a_model_keeps_the_previous_one(tiny, tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    before = _train(tiny, models)
    import cvpipe.classifiers.persist as persist

    monkeypatch.setattr(persist.sio, "dump", _disk_full)
    with pytest.raises(StorageError, match="disk is full"):
        _train(tiny, models)
    assert read_metadata(models / "m")["created"] == before["created"]
    load_model(models / "m")
    assert sorted(p.name for p in models.iterdir()) == ["m"]
    code = main(["train", "--pipeline", "color-linear-svm", "--name", "m", "--force", "--source",
                 str(tiny), "--data-root", str(tmp_path / "data"), "--models-dir", str(models)])
    assert code == 2 and "disk is full" in capsys.readouterr().err


def test_disk_full_while_building_the_dataset_cache(tiny, tmp_path, monkeypatch):
    import cvpipe.data.dataset as dataset

    monkeypatch.setattr(dataset.np, "save", _disk_full)
    with pytest.raises(StorageError, match="disk is full"):
        load_cifar10(tiny, tmp_path / "data")
    monkeypatch.undo()
    cache = tmp_path / "data" / "cache"
    assert not any(p.name.startswith("cifar10-") for p in cache.iterdir())  # nothing half-built
    ds = load_cifar10(tiny, tmp_path / "data")  # and the next run builds it whole
    assert len(ds.labels("test")) == 20


def test_a_dataset_cache_too_large_for_the_disk_fails_before_decoding(tiny, tmp_path, monkeypatch):
    # the images are decoded into memory maps: written on a full disk they killed the process
    # with SIGBUS (found on a 3 MB tmpfs); their space is now reserved first
    import os

    monkeypatch.setattr(os, "posix_fallocate", _disk_full)
    with pytest.raises(StorageError, match=r"train_images.npy: .* do not fit on the disk .* free\); "
                       "free some or choose another --data-root"):
        load_cifar10(tiny, tmp_path / "data")
    monkeypatch.undo()
    assert not any((tmp_path / "data" / "cache").iterdir())  # nothing half-built
    assert len(load_cifar10(tiny, tmp_path / "data").labels("test")) == 20


def test_disk_full_while_writing_a_report_keeps_the_previous_one(tmp_path, monkeypatch):
    from cvpipe.compare import report

    out = tmp_path / "reports" / "run"
    with replace_dir(out) as tmp:
        (tmp / "results.json").write_text('{"old": true}')
    monkeypatch.setattr(report, "_figures", lambda results: [])
    monkeypatch.setattr(report, "json_dumps", _disk_full)
    with pytest.raises(StorageError, match="disk is full"):
        report.write_report({"pipelines": [], "dataset": {"classes": []}, "summary": {}}, out)
    assert json.loads((out / "results.json").read_text()) == {"old": True}
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]


def test_disk_full_while_extracting_features_resumes_cleanly(tiny, tmp_path, monkeypatch):
    from cvpipe.featurestore import DatasetSource, extract, load_features
    from cvpipe.featurestore.store import FeatureStore

    ds = load_cifar10(tiny, tmp_path / "data")
    source = DatasetSource(ds, "train_full")
    real = FeatureStore.write_chunk
    calls = {"n": 0}

    def fails_on_the_third(self, index, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise StorageError("could not write: No space left on device (the disk is full)")
        return real(self, index, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_chunk", fails_on_the_third)
    with pytest.raises(StorageError, match="disk is full"):
        extract(source, "color", out=tmp_path / "f", chunk_rows=16, fmt="zarr", n_jobs=1)
    monkeypatch.undo()
    res = extract(source, "color", out=tmp_path / "f", chunk_rows=16, fmt="zarr", n_jobs=1)
    assert res.computed_chunks == res.manifest["n"] // 16 + (res.manifest["n"] % 16 > 0) - 2
    feats, _, _ = load_features(res.path)
    from cvpipe.features import FeatureSpec

    want = FeatureSpec.parse("color").build(n_jobs=1).transform(np.asarray(ds.split("train_full")[0]))
    np.testing.assert_array_equal(np.asarray(feats), want)


def test_a_real_write_error_on_zarr_is_a_clear_storage_error(tiny, tmp_path, monkeypatch):
    import zarr

    from cvpipe.featurestore import DatasetSource, extract

    ds = load_cifar10(tiny, tmp_path / "data")
    monkeypatch.setattr(zarr.Array, "__setitem__", _disk_full)
    with pytest.raises(StorageError, match="run again to resume"):
        extract(DatasetSource(ds, "test"), "color", out=tmp_path / "z", fmt="zarr", n_jobs=1)
    monkeypatch.undo()
    # full before the first chunk, while the empty arrays are declared (a traceback from zarr)
    monkeypatch.setattr(zarr, "open_group", _disk_full)
    with pytest.raises(StorageError, match=r"cannot create the feature folder .*\(the disk is full\)"):
        extract(DatasetSource(ds, "test"), "color", out=tmp_path / "z2", fmt="zarr", n_jobs=1)


# ------------------------------------------------------------------ loading only what is listed

@pytest.mark.parametrize("mutate", ["unlisted", "absolute", "parent", "empty-files"])
def test_loaders_open_only_files_model_json_lists(tiny, tmp_path, mutate):
    models = tmp_path / "models"
    _train(tiny, models)
    meta_path = models / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    outside = tmp_path / "outside.skops"
    outside.write_bytes((models / "m" / "classifier.skops").read_bytes())
    if mutate == "unlisted":  # a file beside the model, never hashed
        (models / "m" / "other.skops").write_bytes(outside.read_bytes())
        meta["classifier"]["file"] = "other.skops"
    elif mutate == "absolute":
        meta["classifier"]["file"] = str(outside)
    elif mutate == "parent":
        meta["classifier"]["file"] = "../../outside.skops"
    else:  # an empty files list verifies nothing, so it vouches for nothing
        meta["files"] = {}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not one of its listed and hashed files"):
        load_model(models / "m")


def test_cnn_weights_must_be_listed(tmp_path):
    from cvpipe.models import get_pipeline

    synthetic.write_image_folder(tmp_path / "src", n_train=4, n_test=2)
    ds = load_cifar10(tmp_path / "src", tmp_path / "data", val_fraction=0.25)
    cnn = get_pipeline("cnn").configure(epochs=1, batch_size=20, width=4, device="cpu", tta=False)
    cnn.train(ds, tmp_path / "models" / "c", progress=False)
    meta_path = tmp_path / "models" / "c" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"]["weights.safetensors"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not one of its listed and hashed files"):
        load_model(tmp_path / "models" / "c")


# ------------------------------------------------------------------ hostile archives and inputs

def test_a_gzip_bomb_in_a_dataset_archive_is_refused_from_its_headers(tmp_path, monkeypatch):
    import io
    import tarfile
    import time

    from cvpipe.data import readers
    from cvpipe.errors import DataError

    monkeypatch.setattr(readers.archives, "MAX_MEMBER_BYTES", 1 << 20)  # the check, at a test's size
    archive = tmp_path / "bomb.tar.gz"
    zeros = b"\0" * (8 << 20)  # 8 MiB of zeros: a few KiB compressed
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            info = tarfile.TarInfo(f"d/{split}/cat/0000.png")
            info.size = len(zeros)
            tar.addfile(info, io.BytesIO(zeros))
    assert archive.stat().st_size < 100_000
    start = time.perf_counter()
    with pytest.raises(DataError, match="over the limit"):
        load_cifar10(archive, tmp_path / "data")
    assert time.perf_counter() - start < 2
    monkeypatch.setattr(readers.archives, "MAX_MEMBER_BYTES", 16 << 20)
    monkeypatch.setattr(readers.archives, "MAX_ARCHIVE_BYTES", 12 << 20)  # two members of 8 MiB: too much
    with pytest.raises(DataError, match="exceed"):
        load_cifar10(archive, tmp_path / "data")


@pytest.mark.parametrize(("line", "says"), [
    ("ftp://example.org/a.png", "protocol 'ftp' is not accepted"),
    ("simplecache::https://example.org/a.png", "chained URLs"),
    ("zip://a.png::file:///tmp/x.zip", "chained URLs"),
])
def test_extraction_inputs_allow_only_listed_protocols(tmp_path, line, says):
    from cvpipe.errors import DataError
    from cvpipe.featurestore import open_input

    listing = tmp_path / "list.txt"
    listing.write_text(f"{line}\n")
    with pytest.raises(DataError, match=says):
        open_input(str(listing), (32, 32))
    with pytest.raises(DataError, match=says):
        open_input(line, (32, 32))


def test_extraction_refuses_a_huge_file(tmp_path, monkeypatch, capsys):
    from cvpipe.featurestore import sources

    synthetic.write_image_folder(tmp_path / "imgs", n_train=1, n_test=1)
    big = tmp_path / "imgs" / "train" / "cat" / "huge.png"
    with open(big, "wb") as f:  # sparse: costs no disk
        f.truncate(sources.MAX_FILE_BYTES + 1)
    code = main(["extract", "--features", "color", "--input", str(tmp_path / "imgs"), "--size", "32",
                 "--data-root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2 and "huge.png" in err and "larger than the limit" in err
