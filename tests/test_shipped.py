"""The shipped product end to end: the shipped compare.toml and pipelines.toml, every pipeline
(the CNN included) on a small subset, then `cvpipe serve` on the models it wrote over real HTTP,
then `cvpipe evaluate` and `cvpipe predict` on every model.

With $CVPIPE_CIFAR10_SOURCE set (.ci/run sets it to the shared copy) the subset is real CIFAR-10,
30 images per class; otherwise synthetic images of the same layout.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import requests

from cvpipe.cli import main
from cvpipe.compare.config import load_compare_config
from cvpipe.errors import ConfigError
from cvpipe.features import FeatureSpec
from cvpipe.images import decode
from cvpipe.models import ClassicPipeline, DataShape, load_model
from tests import synthetic
from tests.conftest import _REAL_SOURCE
from tests.test_api import encode
from tests.test_api_server import free_port, serve, stop, wait_ready

# the tests that train or serve the shipped configuration are slow; the config checks are not

PER_CLASS = 30
CNN_SECONDS = 5


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The quick profile of the shipped comparison, on PER_CLASS images per class."""
    root = tmp_path_factory.mktemp("shipped")
    if _REAL_SOURCE and Path(_REAL_SOURCE).exists():
        source = str(_REAL_SOURCE)
    else:
        synthetic.write_image_folder(root / "synthetic", n_train=PER_CLASS, n_test=PER_CLASS)
        source = str(root / "synthetic")
    common = ["--source", source, "--data-root", str(root / "data")]
    args = ["compare", "--profile", "quick", "--limit-per-class", str(PER_CLASS),
            "--set", f"cnn.time_budget={CNN_SECONDS}", "--models-dir", str(root / "models"),
            "--reports-dir", str(root / "reports"), *common]
    assert main(args) == 0
    results = json.loads((root / "reports" / "cifar10-quick" / "results.json").read_text())
    return root, results, common


@pytest.mark.slow
def test_every_shipped_pipeline_trains_and_is_reported(shipped):
    root, results, _ = shipped
    declared = load_compare_config().pipelines
    rows = {r["pipeline"]: r for r in results["pipelines"]}
    assert list(rows) == declared and "cnn" in rows
    for name, r in rows.items():
        assert (root / "models" / f"cifar10-quick-{name}" / "model.json").is_file(), name
        assert r["test_accuracy"] == pytest.approx(r["stored_test_accuracy"], abs=1e-6), name
    assert results["dataset"]["test"] == 10 * PER_CLASS
    assert rows["cnn"]["fit_seconds"] < CNN_SECONDS + 30  # the budget was passed through
    cnn = json.loads((root / "models" / "cifar10-quick-cnn" / "model.json").read_text())
    assert cnn["architecture"]["arch"] == "airbench" and cnn["hyperparameters"]["lookahead"]
    report = (root / "reports" / "cifar10-quick" / "report.html").read_text()
    assert "Feature sets" in report and "hog2+color2" in report
    # each feature set says what it is, from its effective parameters
    assert "learned 6x6 patches: soft threshold 0.25 with polarity split, K=800" in report
    assert "wavelet scattering: J=2, L=8, order 2, log, means over 4x4 cells" in report


@pytest.fixture(scope="module")
def server(shipped):
    root, _, _ = shipped
    port = free_port()
    proc = serve(root / "models", port, "--workers", "1", "--threads", "4")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout=300)
        yield url
    finally:
        stop(proc)


@pytest.mark.slow
def test_serve_answers_for_every_model(shipped, server):
    root, results, _ = shipped
    x, _ = synthetic.make_images(1, seed=9)
    blobs = [encode(img) for img in x[:8]]
    session = requests.Session()
    listed = {m["name"]: m for m in session.get(f"{server}/v1/models", timeout=30).json()["models"]}
    assert set(listed) == {r["model"] for r in results["pipelines"]}
    for r in results["pipelines"]:
        name = r["model"]
        local = load_model(root / "models" / name)
        meta = local.metadata
        detail = session.get(f"{server}/v1/models/{name}", timeout=30)
        assert detail.status_code == 200, detail.text
        assert detail.json()["test_accuracy"] == pytest.approx(r["stored_test_accuracy"])
        assert detail.json()["card"]["family"] == r["family"]

        size = tuple(meta["input_size"])
        want = [meta["classes"][i] for i in local.predict(np.stack([decode(b, size=size) for b in blobs]))]
        one = session.post(f"{server}/v1/models/{name}/predict", timeout=60,
                           files=[("images", ("one.png", blobs[0], "image/png"))])
        assert one.status_code == 200, one.text
        assert one.json()["predictions"][0]["label"] == want[0]
        batch = session.post(f"{server}/v1/models/{name}/predict", timeout=60,
                             files=[("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)])
        assert [p["label"] for p in batch.json()["predictions"]] == want, name

        feats = session.post(f"{server}/v1/features", timeout=60,
                             files=[("images", ("0.png", blobs[0], "image/png")),
                                    ("images", ("1.png", blobs[1], "image/png"))],
                             data={"model": name})
        if meta["features"] is None:  # the CNN learns its own
            assert feats.status_code == 400 and feats.json()["error"] == "no_features"
            continue
        assert feats.status_code == 200, f"{name}: {feats.text}"
        body = feats.json()
        assert body["dim"] == meta["feature_dim"] and body["features"]["key"] == \
            FeatureSpec.parse(meta["features"]).key()
        # the model's own extractor: built from its description, its learned part restored
        expected = local.feature_extractor.transform(np.stack([decode(b, size=size) for b in blobs[:2]]))
        # float32 sums in another order (the server's thread count): equal to rounding
        np.testing.assert_allclose([res["vector"] for res in body["results"]], expected, rtol=1e-5,
                                   atol=1e-6 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.slow
def test_evaluate_and_predict_every_model(shipped, capsys, tmp_path):
    root, results, common = shipped
    x, _ = synthetic.make_images(1, seed=9)
    image = tmp_path / "photo.png"
    image.write_bytes(encode(x[2]))
    for r in results["pipelines"]:
        name = r["model"]
        capsys.readouterr()
        assert main(["evaluate", name, "--split", "test", "--json", "--models-dir",
                     str(root / "models"), "--limit-per-class", str(PER_CLASS), *common]) == 0, name
        metrics = json.loads(capsys.readouterr().out)
        assert metrics["accuracy"] == pytest.approx(r["stored_test_accuracy"], abs=1e-6), name
        assert metrics["n"] == 10 * PER_CLASS
        assert main(["predict", name, str(image), "--json", "--models-dir", str(root / "models")]) == 0
        out = json.loads(capsys.readouterr().out)
        local = load_model(root / "models" / name)
        size = tuple(local.metadata["input_size"])
        want = local.metadata["classes"][local.predict(decode(image.read_bytes(), size=size)[None])[0]]
        assert out[0]["top"][0]["class"] == want, name


# ------------------------------------------------------------------ the config, checked first

def test_every_shipped_profile_builds_every_pipeline_for_its_sizes():
    cfg = load_compare_config()
    methods = {}
    for profile in cfg.profiles.values():
        per_class = profile.limit_per_class or 5000  # CIFAR-10: 5,000 training images a class
        shape = DataShape.planned([per_class] * 10, cfg.val_fraction, (32, 32, 3))
        plan = cfg.check(profile, shape)
        assert [p.name for p in plan] == cfg.pipelines + profile.add_pipelines
        for p in plan:
            if isinstance(p, ClassicPipeline) and p.spec.classifier["type"] == "rbf-svm":
                from cvpipe.classifiers import build_classifier

                clf = build_classifier(p.spec.classifier)
                methods[(profile.name, p.name)] = clf.method_for(shape.n_train + shape.n_val)
    # the quick profile runs the exact kernel SVM, the full one its Nystroem approximation
    assert {m for (prof, _), m in methods.items() if prof == "quick"} == {"exact"}
    assert {m for (prof, _), m in methods.items() if prof == "full"} == {"nystroem"}


def test_the_frontier_profile_is_the_full_one_and_the_k6400_pipelines_after_it():
    """Its ladder is the full profile's, model for model (the same names and options: a full
    run's models are reused), then the two K = 6,400 pipelines."""
    cfg = load_compare_config()
    full, frontier = cfg.profiles["full"], cfg.profiles["frontier"]
    assert full.add_pipelines == [] and frontier.model_prefix == full.model_prefix
    assert frontier.options == full.options and frontier.limit_per_class is None
    planned = cfg.plan(frontier)
    assert [p.name for p in planned[:len(cfg.pipelines)]] == cfg.pipelines
    added = {p.name: p for p in planned[len(cfg.pipelines):]}
    assert list(added) == ["patches-k6400-linear-svm", "patches-k6400-tta-linear-svm"]
    specs = [p.spec for p in added.values()]
    assert specs[0].features == specs[1].features  # one dictionary, one set of stores
    assert (specs[0].test_time_shifts, specs[1].test_time_shifts) == (0, 4)


def test_the_full_profile_learns_the_papers_dictionary_and_the_quick_one_a_cheaper_one():
    """The paper's 400,000 patches and 1,600 centroids in the full profile (20 k-means
    iterations, not its 50: the same validation accuracy, pipelines.toml), less in the quick one."""
    from cvpipe.features.patches import PatchFeatures

    cfg = load_compare_config()
    for profile, want in (("quick", (200_000, 15, 800)), ("full", (400_000, 20, 1600))):
        patch_pipelines = [p for p in cfg.plan(cfg.profiles[profile])
                           if isinstance(p, ClassicPipeline) and "patches" in p.spec.features.name]
        assert len(patch_pipelines) == 3, profile
        for p in patch_pipelines:
            declared = next(c["params"] for c in p.spec.features.to_dict()["components"]
                            if c["name"] == "patches")
            patches = PatchFeatures(**declared)  # the declared values over the defaults
            assert (patches.n_patches, patches.max_iter, patches.n_centroids) == want, (profile, p.name)


BAD = """
[compare]
pipelines = ["color-linear-svm", "{name}"]
[profiles.quick]
limit_per_class = 12
[pipelines."{name}"]
{rest}
"""
HOG = 'features = { name = "hog" }\n'


@pytest.mark.parametrize(("name", "rest", "says"), [
    ("mlp-typo", HOG + 'classifier = { type = "mlp", params = { n_components = 10 } }', "n_components"),
    ("svm-bad-c", HOG + 'classifier = { type = "linear-svm" }\ngrid = { "classifier.C" = [0.1, -1] }',
     "'C'"),
    ("too-much-pca", HOG + 'classifier = { type = "linear-svm" }\npreprocess = { pca = 5000 }', "pca"),
    ("tiny-cells", 'features = { name = "hog", params = { pixels_per_cell = 40 } }\n'
                   'classifier = { type = "linear-svm" }', "too small for HOG"),
])
def test_a_bad_config_fails_before_any_training_naming_the_pipeline(tmp_path, capsys, name, rest, says):
    (tmp_path / "c.toml").write_text(BAD.format(name=name, rest=rest))
    synthetic.write_image_folder(tmp_path / "src", n_train=12, n_test=2)
    code = main(["compare", "--config", str(tmp_path / "c.toml"), "--source", str(tmp_path / "src"),
                 "--data-root", str(tmp_path / "data"), "--models-dir", str(tmp_path / "models"),
                 "--reports-dir", str(tmp_path / "reports")])
    err = capsys.readouterr().err
    assert code == 2 and name in err and says in err, err
    assert not (tmp_path / "models").exists()  # not even the valid first pipeline was trained


@pytest.mark.parametrize(("added", "says"), [
    ('"hog-mlp"', "must be a list"),
    ('["color-linear-svm"]', "already in [compare] pipelines"),
    ('["hog-mlp", "hog-mlp"]', "twice"),
    ('["no-such-pipeline"]', "unknown pipeline 'no-such-pipeline'"),
])
def test_a_profile_adds_known_pipelines_once(tmp_path, added, says):
    (tmp_path / "c.toml").write_text('[compare]\npipelines = ["color-linear-svm"]\n'
                                     f'[profiles.more]\nadd_pipelines = {added}\n')
    with pytest.raises(ConfigError, match=re.escape(says)):
        cfg = load_compare_config(tmp_path / "c.toml")
        cfg.plan(cfg.profiles["more"])


def test_a_profile_runs_its_added_pipelines_after_the_comparisons_and_may_set_their_options(tmp_path):
    (tmp_path / "c.toml").write_text(
        '[compare]\npipelines = ["color-linear-svm"]\n[profiles.more]\n'
        'add_pipelines = ["hog-mlp"]\noptions = { "hog-mlp" = { seed = 7 } }\n'
        '[profiles.plain]\noptions = { "hog-mlp" = { seed = 7 } }\n')
    cfg = load_compare_config(tmp_path / "c.toml")
    planned = cfg.plan(cfg.profiles["more"])
    assert [p.name for p in planned] == ["color-linear-svm", "hog-mlp"]
    assert [p.name for p in cfg.plan(cfg.profiles["more"], ["hog-mlp"])] == ["hog-mlp"]
    # options of a pipeline the run leaves out are a mistake, as before
    with pytest.raises(ConfigError, match="does not run"):
        cfg.plan(cfg.profiles["plain"])


def test_compare_check_trains_nothing(tmp_path, capsys):
    synthetic.write_image_folder(tmp_path / "src", n_train=12, n_test=2)
    assert main(["compare", "--check", "--source", str(tmp_path / "src"), "--data-root",
                 str(tmp_path / "data"), "--models-dir", str(tmp_path / "models")]) == 0
    out = capsys.readouterr().out
    assert f"{len(load_compare_config().pipelines)} pipelines checked" in out
    assert not (tmp_path / "models").exists()
    # the frontier's longer names keep the columns aligned: each family starts at one column
    assert main(["compare", "--check", "--profile", "frontier", "--source", str(tmp_path / "src"),
                 "--data-root", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("  ok  ")]
    assert len(rows) == 19 and len({re.match(r"  ok  \S+ +", line).end() for line in rows}) == 1
    # what each pipeline's feature stores take: 12 x 10 images, one a class for validation,
    # 2 x 10 test; K = 6,400 patch codes in 14 cells; training rows once, the others 5 times
    from cvpipe.storage import size_text

    (tta,) = [line for line in rows if "patches-k6400-tta" in line]
    assert tta.endswith(f"stores {size_text((110 + 5 * 10 + 5 * 20) * (6400 * 14 * 4 + 8))}")
    assert "cnn" in rows[16] and "stores" not in rows[16]
    assert re.search(r"feature stores: up to [\d.]+ MB \(those already there included; 0 B stored\), "
                     r"[\d.]+ [KMG]B free on the disk of .*features\n", out)
    assert "may stop for disk space" not in out


def test_compare_check_says_when_the_stores_may_not_fit(tmp_path, capsys, monkeypatch, caplog):
    import cvpipe.compare.runner
    import cvpipe.storage

    synthetic.write_image_folder(tmp_path / "src", n_train=12, n_test=2)
    monkeypatch.setattr(cvpipe.compare.runner, "free_bytes", lambda path: 1000)  # --check's and the run's
    assert main(["compare", "--check", "--source", str(tmp_path / "src"), "--data-root",
                 str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "1.0 KB free" in out and "the run may stop for disk space: free some" in out
    # the run itself says so at its start, in a warning (an upper bound: stores may be there)
    import logging

    from cvpipe.compare.config import load_compare_config
    from cvpipe.compare.runner import run_comparison

    monkeypatch.setattr(cvpipe.storage, "free_bytes", lambda path: 1000)  # the pipeline's refusal
    cfg = load_compare_config()
    with caplog.at_level(logging.WARNING, logger="cvpipe.compare.runner"), pytest.raises(
            cvpipe.storage.StorageError, match="color-linear-svm: its feature stores need"):
        run_comparison(cfg, "quick", source=str(tmp_path / "src"), data_root=str(tmp_path / "data"),
                       models_root=tmp_path / "models", pipelines=["color-linear-svm"], progress=False)
    assert "take up to" in caplog.text and "1.0 KB free" in caplog.text  # before the pipeline's refusal
    # once its stores are there, the same run on the same full disk is not warned about
    monkeypatch.undo()
    run_comparison(cfg, "quick", source=str(tmp_path / "src"), data_root=str(tmp_path / "data"),
                   models_root=tmp_path / "models", pipelines=["color-linear-svm"], progress=False)
    for module in (cvpipe.storage, cvpipe.compare.runner):
        monkeypatch.setattr(module, "free_bytes", lambda path: 1000)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cvpipe.compare.runner"):
        run_comparison(cfg, "quick", source=str(tmp_path / "src"), data_root=str(tmp_path / "data"),
                       models_root=tmp_path / "models", pipelines=["color-linear-svm"], progress=False)
    assert "take up to" not in caplog.text
    assert main(["compare", "--check", "--pipelines", "color-linear-svm", "--source",
                 str(tmp_path / "src"), "--data-root", str(tmp_path / "data")]) == 0
    assert "may stop for disk space" not in capsys.readouterr().out
    # the CNN alone stores no features: nothing to say of the disk
    assert main(["compare", "--check", "--pipelines", "cnn", "--source", str(tmp_path / "src"),
                 "--data-root", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "1 pipeline checked" in out and "feature stores" not in out and "free" not in out


@pytest.mark.slow
def test_shipped_files_are_in_the_built_package(tmp_path):
    """The wheel a user installs holds the configs, templates and page files (the source tree
    having them proves nothing about the package)."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(root)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("cvpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("cvpipe/compare.toml", "cvpipe/pipelines.toml", "cvpipe/compare/templates/report.html.j2",
                    "cvpipe/compare/templates/report.md.j2", "service/static/index.html",
                    "service/static/app.js", "service/static/docs.js", "service/front.py"):
        assert shipped in names, shipped
    assert os.fspath(load_compare_config().path).endswith("compare.toml")
