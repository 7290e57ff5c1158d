"""Classic pipelines end to end on tiny data: selection, artifacts, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cvpipe.cli import main
from cvpipe.data import load_cifar10
from cvpipe.errors import ConfigError
from cvpipe.models import ArtifactError, ClassicPipeline, all_pipelines, load_model, load_pipeline_config
from tests import synthetic

FEATURES = {"name": "hog+color", "params": {"hog__pixels_per_cell": [8, 8]}}
CLASSIFIERS = {
    "linear-svm": {"type": "linear-svm", "params": {"C": 0.01}},
    "rbf-svm": {"type": "rbf-svm", "params": {"C": 1.0}},  # exact SVC on a small set
    "nystroem-svm": {"type": "rbf-svm", "params": {"approximation": "nystroem", "n_components": 50}},
    "opencv-svm": {"type": "opencv-svm", "params": {"kernel": "rbf", "C": 1.0}},
    "mlp": {"type": "mlp", "params": {"hidden_sizes": [32], "max_epochs": 15, "lr": 0.01}},
    "softmax": {"type": "softmax", "params": {"max_epochs": 15, "lr": 0.01}},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    synthetic.write_image_folder(root / "src", n_train=20, n_test=5)
    return load_cifar10(root / "src", root / "data", val_fraction=0.25)


@pytest.mark.parametrize("clf", sorted(CLASSIFIERS))
def test_every_classifier_trains_saves_and_reloads(tiny, tmp_path, clf):
    pipeline = ClassicPipeline.from_table(clf, {"features": FEATURES, "classifier": CLASSIFIERS[clf]})
    meta = pipeline.train(tiny, tmp_path / clf, progress=False)
    m = meta["metrics"]
    assert m["test"]["accuracy"] > 0.5, m["test"]["accuracy"]  # chance is 0.1
    assert set(m) == {"train", "val", "test"} and m["train"]["split"] == "train_full"
    assert meta["selection"]["split"] == "val"

    model = load_model(tmp_path / clf)
    x_test, y_test = tiny.split("test")
    scores, kind = model.scores(np.asarray(x_test))
    assert kind == ("probability" if clf in ("mlp", "softmax") else "decision")
    # The reloaded model reproduces the metrics computed before saving.
    assert (scores.argmax(1) == y_test).mean() == pytest.approx(m["test"]["accuracy"])
    on_disk = json.loads((tmp_path / clf / "model.json").read_text())
    assert on_disk["classes"] == list(synthetic.CLASSES) and on_disk["input_size"] == [32, 32]
    assert not any(f.endswith((".pkl", ".pickle", ".joblib")) for f in on_disk["files"])


def test_selection_picks_on_validation_and_records_candidates(tiny, tmp_path):
    pipeline = ClassicPipeline.from_table("grid", {
        "features": {"name": "color"},
        "classifier": {"type": "linear-svm"},
        "grid": {"classifier.C": [1e-6, 1.0]},
    })
    meta = pipeline.train(tiny, tmp_path / "g", progress=False)
    cands = meta["selection"]["candidates"]
    assert [c["params"]["classifier.C"] for c in cands] == [1e-6, 1.0]
    best = max(cands, key=lambda c: c["val_accuracy"])
    assert meta["selection"]["chosen"] == best["params"]
    assert meta["metrics"]["val"]["accuracy"] == pytest.approx(best["val_accuracy"])


def test_flip_augmentation_and_feature_components(tiny, tmp_path):
    pipeline = ClassicPipeline.from_table("multi", {
        "features": {"name": "hog2+color", "components": [
            {"name": "hog", "params": {"pixels_per_cell": [8, 8]}},
            {"name": "hog", "params": {"pixels_per_cell": [16, 16]}},
            {"name": "color"}]},
        "classifier": {"type": "linear-svm", "params": {"C": 0.01}},
        "augment_flip": True,
    })
    meta = pipeline.configure(refit=False).train(tiny, tmp_path / "m", progress=False)
    assert meta["feature_dim"] == 324 + 36 + 128
    assert meta["metrics"]["train"]["split"] == "train"
    model = load_model(tmp_path / "m")
    assert model.predict(np.asarray(tiny.split("test")[0][:3])).shape == (3,)


def test_a_pipeline_table_sets_its_refit_default_and_a_run_option_overrides_it(tiny, tmp_path):
    table = {"features": {"name": "color"}, "classifier": CLASSIFIERS["softmax"], "refit": False}
    pipeline = ClassicPipeline.from_table("no-refit", table)
    assert pipeline.refit is False and pipeline.definition()["refit"] is False
    meta = pipeline.train(tiny, tmp_path / "n", progress=False)
    assert meta["selection"]["refit_on"] == "none (fit on train)"
    assert meta["metrics"]["train"]["split"] == "train"
    assert pipeline.configure(refit=True).refit is True
    with pytest.raises(ConfigError, match="'bad'.*refit must be true or false"):
        ClassicPipeline.from_table("bad", {**table, "refit": "no"})


def test_tampered_and_truncated_artifacts_fail_clearly(tiny, tmp_path):
    pipeline = ClassicPipeline.from_table("t", {"features": FEATURES, "classifier": CLASSIFIERS["mlp"]})
    pipeline.train(tiny, tmp_path / "t", progress=False)
    weights = tmp_path / "t" / "classifier.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="tampered with or truncated"):
        load_model(tmp_path / "t")
    weights.write_bytes(data)
    load_model(tmp_path / "t")
    (tmp_path / "t" / "model.json").write_text('{"format": "cvpipe-model", "files": ')
    with pytest.raises(ArtifactError, match="unreadable or truncated"):
        load_model(tmp_path / "t")
    with pytest.raises(ArtifactError, match="not a cvpipe model"):
        load_model(tmp_path / "nothing")


def test_skops_file_with_foreign_type_is_refused(tiny, tmp_path):
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    pipeline = ClassicPipeline.from_table("s", {"features": FEATURES,
                                                "classifier": CLASSIFIERS["linear-svm"]})
    pipeline.train(tiny, tmp_path / "s", progress=False)
    # Swap in an object that calls a function, and re-sign model.json as an attacker could.
    sio.dump(FunctionTransformer(func=print), tmp_path / "s" / "classifier.skops")
    meta = json.loads((tmp_path / "s" / "model.json").read_text())
    import hashlib

    meta["files"]["classifier.skops"] = hashlib.sha256(
        (tmp_path / "s" / "classifier.skops").read_bytes()).hexdigest()
    (tmp_path / "s" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="refusing to load unexpected types"):
        load_model(tmp_path / "s")


def test_builtin_pipelines_parse_and_bad_configs_are_clear(tmp_path):
    specs = all_pipelines()
    assert {"color-linear-svm", "hog-linear-svm", "hog+color-linear-svm", "hog+color-mlp",
            "pixels-softmax"} <= set(specs)
    bad = tmp_path / "bad.toml"
    bad.write_text('[pipelines.x]\nfeatures = {name = "hog"}\nclassifier = {type = "forest"}\n')
    with pytest.raises(ConfigError, match="forest"):
        load_pipeline_config(bad)
    bad.write_text('[pipelines.x]\nfeatures = {name = "hog"}\nclassifier = {type = "mlp"}\n'
                   'grid = {"C" = [1]}\n')
    with pytest.raises(ConfigError, match="grid key"):
        load_pipeline_config(bad)


def test_cli_train_evaluate_predict(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    synthetic.write_image_folder(src, n_train=12, n_test=4)
    config = tmp_path / "p.toml"
    config.write_text('[pipelines.quick]\nfeatures = {name = "hog+color"}\n'
                      'classifier = {type = "linear-svm", params = {C = 0.01}}\n')
    common = ["--source", str(src), "--models-dir", str(tmp_path / "models")]
    assert main(["train", "--pipeline", "quick", "--config", str(config), *common]) == 0
    assert "test" in capsys.readouterr().out
    assert main(["evaluate", "quick", "--json", *common]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 40 and len(metrics["confusion_matrix"]) == 10
    # 1% of 12 images per class rounds to no validation images: refused in one line, not a trace
    few = ["--val-fraction", "0.01", *common]
    assert main(["evaluate", "quick", "--split", "val", *few]) == 2
    assert "the val split of this data has no images" in capsys.readouterr().err
    assert main(["train", "--pipeline", "quick", "--config", str(config), "--name", "q0", *few]) == 2
    assert "needs training and validation images, the data gives 120 and 0" in capsys.readouterr().err
    assert not (tmp_path / "models" / "q0").exists()
    # images of another size than the model's: one line naming both, not a trace from its features
    assert main(["evaluate", "quick", "--size", "24", *common]) == 2
    assert "quick takes 32x32 images with 3 channels; this dataset's are 24x24 with 3: give " \
        "--size 32x32" in capsys.readouterr().err

    # Any size and format: a 50x70 RGBA PNG and a grayscale JPEG.
    x, _ = synthetic.make_images(1)
    png, jpg = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(x[3]).resize((50, 70)).convert("RGBA").save(png)
    Image.fromarray(x[7]).convert("L").save(jpg)
    assert main(["predict", "quick", str(png), str(jpg), "--json", "--top-k", "2",
                 "--models-dir", str(tmp_path / "models")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [len(r["top"]) for r in out] == [2, 2] and out[0]["top"][0]["class"] == "cat"

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    code = main(["predict", "quick", str(bad), "--models-dir", str(tmp_path / "models")])
    assert code == 2 and "bad.png" in capsys.readouterr().err
    # among good files, a bad one costs its own answer only, in its place in the list
    code = main(["predict", "quick", str(png), str(bad), str(jpg), "--json",
                 "--models-dir", str(tmp_path / "models")])
    captured = capsys.readouterr()
    listed = json.loads(captured.out)
    assert code == 2 and [r["image"] for r in listed] == [str(png), str(bad), str(jpg)]
    assert "top" in listed[0] and "top" in listed[2] and "not an image" in listed[1]["error"]
    assert "1 of 3 images could not be read" in captured.err
    # a folder stands for the image files under it, sorted; one without any is an error line
    photos, empty = tmp_path / "photos", tmp_path / "empty"
    (photos / "sub").mkdir(parents=True)
    empty.mkdir()
    (photos / "sub" / "b.png").write_bytes(png.read_bytes())
    (photos / "a.jpg").write_bytes(jpg.read_bytes())
    (photos / "notes.txt").write_text("not an image")
    code = main(["predict", "quick", str(photos), str(empty), "--json",
                 "--models-dir", str(tmp_path / "models")])
    listed = json.loads(capsys.readouterr().out)
    assert code == 2 and [r["image"] for r in listed] == [
        str(photos / "a.jpg"), str(photos / "sub" / "b.png"), str(empty)]
    assert "top" in listed[0] and "a folder without image files" in listed[2]["error"]
    for top_k in ("0", "-2"):  # [:-2] would list every class but two, [:0] none: refused
        code = main(["predict", "quick", str(png), "--top-k", top_k,
                     "--models-dir", str(tmp_path / "models")])
        assert code == 2 and "--top-k must be at least 1" in capsys.readouterr().err
    assert main([]) == 2  # cvpipe alone: the help, with every command
    assert "compare" in capsys.readouterr().out
    assert main(["data"]) == 2 and "prepare" in capsys.readouterr().out  # its actions, none run
    assert main(["models", "list", "--models-dir", str(tmp_path / "models")]) == 0
    listed = capsys.readouterr().out
    assert listed.split()[:3] == ["quick", "hog+color", "linear-svm"]
    monkeypatch.setenv("CVPIPE_MODELS_DIR", str(tmp_path / "models"))
    assert main(["models"]) == 0 and capsys.readouterr().out == listed  # no action: list
    # a broken model folder is listed as unusable, with why, and hides none of the others
    broken, unreadable = tmp_path / "models" / "broken", tmp_path / "models" / "unreadable"
    shutil.copytree(tmp_path / "models" / "quick", broken)
    victim = next(p for p in sorted(broken.iterdir()) if p.name != "model.json")
    victim.write_bytes(victim.read_bytes()[:-1])
    unreadable.mkdir()
    (unreadable / "model.json").write_text("{")
    assert main(["models"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["quick"].split() == listed.split()
    assert f"unusable: {victim.name}: checksum differs" in rows["broken"]
    assert "unusable: model.json: unreadable" in rows["unreadable"]


def test_feature_params_option_overrides_one_components_parameters():
    from cvpipe.models.pipelines import get_pipeline

    joined = get_pipeline("patches+hog+color-linear-svm")
    cheap = joined.configure(feature_params={"patches": {"n_patches": 1000, "max_iter": 2}})
    declared = {c["name"]: c["params"] for c in joined.spec.features.to_dict()["components"]}
    components = {c["name"]: c["params"] for c in cheap.spec.features.to_dict()["components"]}
    # merged into what the shipped config declares for that component, the others untouched
    assert components["patches"] == {**declared["patches"], "n_patches": 1000, "max_iter": 2}
    assert components["hog"] == declared["hog"] == {}
    assert cheap.definition() != joined.definition()  # a different model, never reused for it
    assert "n_patches" not in str(joined.spec.features.to_dict())  # the original is untouched
    with pytest.raises(ConfigError, match="not a component of 'hog'"):
        get_pipeline("hog-mlp").configure(feature_params={"patches": {"n_patches": 1}})
    with pytest.raises(ConfigError, match="has no parameter 'bogus'"):
        get_pipeline("patches-mlp").configure(feature_params={"patches": {"bogus": 1}})
    with pytest.raises(ConfigError, match="must be a table"):
        get_pipeline("patches-mlp").configure(feature_params={"patches": 3})


@pytest.mark.parametrize("pca_rows", [60, 10_000])
def test_pca_is_fitted_on_at_most_pca_rows_and_saved_with_the_model(tiny, tmp_path, pca_rows):
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from cvpipe.features import FeatureSpec

    pipeline = ClassicPipeline.from_table("pca", {
        "features": FEATURES,
        "preprocess": {"pca": 8, "whiten": True, "pca_rows": pca_rows},
        "classifier": CLASSIFIERS["mlp"],
    })
    meta = pipeline.train(tiny, tmp_path / "pca", progress=False)
    assert meta["metrics"]["test"]["accuracy"] > 0.5, meta["metrics"]["test"]  # chance is 0.1
    model = load_model(tmp_path / "pca")
    pre = model.preprocess
    assert isinstance(pre, Pipeline) and [name for name, _ in pre.steps] == ["scale", "pca"]
    pca = pre.named_steps["pca"]
    # refitted on train + validation: a seeded sample of pca_rows of them, or every row
    n_rows = len(tiny.split("train")[1]) + len(tiny.split("val")[1])
    assert pca.n_components_ == 8 and pca.n_samples_ == min(pca_rows, n_rows)
    if pca_rows >= n_rows:  # every row: the PCA of the standardised matrix
        images = np.concatenate([tiny.split("train")[0], tiny.split("val")[0]])
        X = FeatureSpec.parse(FEATURES).build().fit_transform(images)
        reference = PCA(8, svd_solver="full").fit(StandardScaler().fit_transform(X))
        np.testing.assert_allclose(pca.explained_variance_, reference.explained_variance_, rtol=0.02)
    x_test, y_test = tiny.split("test")
    scores, _ = model.scores(np.asarray(x_test))
    assert (scores.argmax(1) == y_test).mean() == pytest.approx(meta["metrics"]["test"]["accuracy"])


def test_pca_rows_below_the_components_is_a_config_error():
    with pytest.raises(ConfigError, match="pca_rows"):
        ClassicPipeline.from_table("pca", {"features": FEATURES, "classifier": CLASSIFIERS["mlp"],
                                           "preprocess": {"pca": 8, "pca_rows": 4}})


def test_fewer_rows_than_pca_components_give_one_component_less_than_the_rows(tiny, tmp_path):
    pipeline = ClassicPipeline.from_table("pca-wide", {
        "features": FEATURES,  # 452 values, more than the tiny set's rows
        "preprocess": {"pca": 400, "whiten": True},
        "classifier": CLASSIFIERS["linear-svm"],
    })
    pipeline.train(tiny, tmp_path / "pca-wide", progress=False)
    pca = load_model(tmp_path / "pca-wide").preprocess.named_steps["pca"]
    n_rows = len(tiny.split("train")[1]) + len(tiny.split("val")[1])
    assert n_rows < 400 and pca.n_components_ == n_rows - 1
    assert np.all(np.isfinite(pca.explained_variance_)) and pca.explained_variance_.min() > 0
