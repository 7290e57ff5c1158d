"""`cvpipe compare` on tiny data: models, reuse, results and a report checked in a real browser."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cvpipe.cli import main
from cvpipe.compare import runner
from cvpipe.data.dataset import load_dataset
from cvpipe.models import load_model, read_metadata, read_test_scores
from tests import synthetic

CONFIG = """
[compare]
seed = 0
val_fraction = 0.25
pipelines = ["color-linear-svm", "color-tta-linear-svm", "hog+color-mlp", "pixels-softmax", "cnn"]

[profiles.tiny]
limit_per_class = 16
model_prefix = "tiny-"
options = { cnn = { epochs = 2, width = 8, batch_size = 32, eval_batch_size = 64, train_score_images = 50 } }

# scored by the mean of each image's features and those of its four moved copies: the report's
# re-scoring of the saved model (its own path from images) must agree with the stored copies'
[pipelines.color-tta-linear-svm]
features = { name = "color" }
classifier = { type = "linear-svm", params = { C = 0.01 } }
test_time_shifts = 4
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    synthetic.write_image_folder(root / "src", n_train=20, n_test=16)
    (root / "compare.toml").write_text(CONFIG)
    args = ["compare", "--profile", "tiny", "--config", str(root / "compare.toml"),
            "--source", str(root / "src"), "--data-root", str(root / "data"),
            "--models-dir", str(root / "models"), "--reports-dir", str(root / "reports")]
    assert main(args) == 0
    return root, args


def test_compare_trains_every_pipeline_and_writes_the_report(run):
    root, _ = run
    out = root / "reports" / "cifar10-tiny"
    results = json.loads((out / "results.json").read_text())
    rows = {r["pipeline"]: r for r in results["pipelines"]}
    assert set(rows) == {"color-linear-svm", "color-tta-linear-svm", "hog+color-mlp", "pixels-softmax", "cnn"}
    for name, r in rows.items():
        assert (root / "models" / f"cifar10-tiny-{name}" / "model.json").exists()
        # The report re-scores the saved model: it must agree with training-time scoring.
        assert r["test_accuracy"] == pytest.approx(r["stored_test_accuracy"], abs=1e-6), name
        assert r["latency_ms_single"] > 0 and r["model_bytes"] > 0 and not r["reused"]
        assert len(r["test_metrics"]["confusion_matrix"]) == 10
        # every file readable by the service, which may run as another user (safetensors writes 0600)
        model_dir = root / "models" / f"cifar10-tiny-{name}"
        assert {p.name: p.stat().st_mode & 0o777 for p in model_dir.iterdir()} == {
            p.name: 0o644 for p in model_dir.iterdir()}, name
    assert rows["hog+color-mlp"]["test_accuracy"] > 0.5  # learnable synthetic data
    assert results["dataset"]["test"] == 160 and results["dataset"]["limit_per_class"] == 16
    s = results["summary"]
    assert s["best_classic"] in rows and "points" in s["text"]
    assert s["gap_points"] == pytest.approx(
        100 * (rows["cnn"]["test_accuracy"] - rows[s["best_classic"]]["test_accuracy"]))
    for r in rows.values():  # a 95% interval around every test accuracy
        lo, hi = r["test_ci95"]
        assert lo <= r["test_accuracy"] <= hi and 0 < hi - lo < 0.2
    assert [s["family"] for s in results["ladder"]] == ["raw pixels", "colour", "HOG + colour", "CNN"]
    assert all("p_value" in s for s in results["ladder"][1:])
    assert set(results["pareto"]) == {"train_seconds", "latency_ms_per_image_batch"}
    assert results["pareto"]["train_seconds"] and "McNemar" in s["text"]
    assert "time budget" not in s["text"]  # this CNN ran a set number of epochs
    # the CNN's train accuracy comes from a stratified sample of its train split, and says so
    d = results["dataset"]
    assert rows["cnn"]["train_accuracy_images"] == 50
    assert rows["hog+color-mlp"]["train_accuracy_images"] == d["train"] + d["val"]
    md = (out / "report.md").read_text()
    assert md.count("(50 sampled)") == 1
    assert "| hog+color-mlp |" in md and "![" in md and "## The ladder" in md
    assert all((out / f).exists() for f in ("report.html", "fig00-accuracy.png"))


def test_the_summary_says_what_a_time_budget_gave_the_cnn():
    classic = {"pipeline": "hog-svm", "family": "classic", "val_accuracy": 0.6, "test_accuracy": 0.6,
               "train_accuracy": 0.7, "train_seconds": 10.0, "latency_ms_single": 1.0}
    cnn = {**classic, "pipeline": "cnn", "family": "cnn", "val_accuracy": 0.7, "test_accuracy": 0.66,
           "train_seconds": 92.6,
           "training": {"steps": 70, "steps_per_epoch": 2, "plan": {"time_budget": 90}}}
    text = runner.summarise([classic, cnn])["text"]
    assert text.endswith("The CNN trained 70 steps (35 epochs) in its 90 s time budget at this "
                         "machine's speed; a larger budget trains it further "
                         "(--set cnn.time_budget=SECONDS).")
    cnn["training"] = {"steps": 20, "steps_per_epoch": 2, "plan": {"total_steps": 20}}
    assert "budget" not in runner.summarise([classic, cnn])["text"]  # epochs: nothing to say
    assert "budget" in runner.summarise([{**cnn, "training": {"steps": 7, "steps_per_epoch": 7,
                                                              "plan": {"time_budget": 30.5}}}])["text"]


def test_second_run_reuses_unchanged_models_and_force_retrains(run, capsys):
    root, args = run
    before = (root / "models" / "cifar10-tiny-color-linear-svm" / "model.json").read_text()
    assert main(args + ["--run", "again", "--pipelines", "color-linear-svm,cnn"]) == 0
    results = json.loads((root / "reports" / "again" / "results.json").read_text())
    assert all(r["reused"] for r in results["pipelines"])
    # a reused model's row still says what its training took, and how its features were come by
    first_rows = {r["pipeline"]: r for r in json.loads(
        (root / "reports" / "cifar10-tiny" / "results.json").read_text())["pipelines"]}
    for r in results["pipelines"]:
        trained = first_rows[r["pipeline"]]
        assert r["training_seconds"] == trained["training_seconds"] > 0
        assert r["training_seconds"] <= trained["run_seconds"]
        assert r["trained_features_status"] == trained["features_status"]
        assert r["features_status"] == "model reused"
    assert "computed (then)" in capsys.readouterr().out  # the command's table says so too
    assert (root / "models" / "cifar10-tiny-color-linear-svm" / "model.json").read_text() == before
    assert main(args + ["--run", "forced", "--pipelines", "color-linear-svm", "--force"]) == 0
    forced = json.loads((root / "reports" / "forced" / "results.json").read_text())
    assert not forced["pipelines"][0]["reused"]
    # Same config and seed: the classic pipeline's figures are reproduced exactly.
    first = json.loads((root / "reports" / "cifar10-tiny" / "results.json").read_text())["pipelines"][0]
    assert forced["pipelines"][0]["test_metrics"] == first["test_metrics"]
    # a reuse record that is not cvpipe's (valid JSON, not an object): retrained, no traceback
    (root / "models" / ".compare" / "cifar10-tiny-color-linear-svm.json").write_text("[1]")
    assert main(args + ["--run", "marker", "--pipelines", "color-linear-svm"]) == 0
    marked = json.loads((root / "reports" / "marker" / "results.json").read_text())["pipelines"][0]
    assert not marked["reused"] and marked["test_metrics"] == first["test_metrics"]


def test_a_profile_that_adds_pipelines_reuses_the_models_of_the_one_it_extends(run):
    """Like the shipped frontier profile after the full one: the same model names and options,
    so only the added pipeline trains, after the others."""
    root, args = run
    more = root / "more.toml"
    more.write_text(CONFIG + """
[profiles.tiny-more]
limit_per_class = 16
model_prefix = "tiny-"
add_pipelines = ["hog-linear-svm"]
options = { cnn = { epochs = 2, width = 8, batch_size = 32, eval_batch_size = 64, train_score_images = 50 } }
""")
    at = args.index("--profile")
    more_args = args[:at] + ["--profile", "tiny-more", "--config", str(more)] + args[at + 4:]
    assert main(more_args) == 0
    rows = json.loads((root / "reports" / "cifar10-tiny-more" / "results.json").read_text())["pipelines"]
    assert [r["pipeline"] for r in rows] == ["color-linear-svm", "color-tta-linear-svm", "hog+color-mlp",
                                             "pixels-softmax", "cnn", "hog-linear-svm"]
    assert [r["reused"] for r in rows] == [True] * 5 + [False]
    assert (root / "models" / "cifar10-tiny-hog-linear-svm" / "model.json").exists()


def test_the_cnn_test_scores_are_recorded_and_used_where_the_loaded_model_gives_them(run, caplog):
    root, _ = run
    model_dir = root / "models" / "cifar10-tiny-cnn"
    meta = read_metadata(model_dir)  # verifies every listed file's hash, the scores' included
    assert meta["test_scores"]["file"] in meta["files"] and meta["test_scores"]["shape"] == [160, 10]
    ds = load_dataset(source=root / "src", root=root / "data", limit_per_class=16, val_fraction=0.25,
                      seed=0)
    model = load_model(model_dir)
    fresh, _ = model.scores(np.asarray(ds.split("test")[0]))
    first = fresh[:runner.BATCH_FOR_LATENCY]
    scores, kind, per_image = runner._test_scores(model, model_dir, ds, None, first)
    assert kind == "probability" and per_image is None  # read back, not scored again
    np.testing.assert_allclose(scores, fresh, rtol=1e-3, atol=1e-4)
    # a model that does not give its recorded scores is scored again, and says so
    off = np.roll(first, 1, axis=1)
    scores, _, per_image = runner._test_scores(model, model_dir, ds, None, off)
    assert per_image is not None and "scoring the test split again" in caplog.text
    np.testing.assert_allclose(scores, fresh, rtol=1e-5, atol=1e-6)
    # recorded for another test split (other shape): not used
    assert read_test_scores(model_dir, meta, (161, 10)) is None


def test_seeds_repeat_chosen_pipelines(run):
    root, args = run
    assert main(args + ["--run", "seeds", "--pipelines", "color-linear-svm,hog+color-mlp", "--seeds", "3",
                        "--seed-pipelines", "hog+color-mlp"]) == 0
    results = json.loads((root / "reports" / "seeds" / "results.json").read_text())
    rows = {r["pipeline"]: r for r in results["pipelines"]}
    seeds = rows["hog+color-mlp"]["seeds"]
    assert seeds["seeds"] == [0, 1, 2] and len(seeds["test_accuracy"]) == 3
    assert seeds["mean"] == pytest.approx(np.mean(seeds["test_accuracy"]))
    assert seeds["test_accuracy"][0] == rows["hog+color-mlp"]["test_accuracy"]
    assert "seeds" not in rows["color-linear-svm"]
    assert (root / "models" / "cifar10-tiny-hog+color-mlp-seed2" / "model.json").exists()


def test_unknown_pipeline_fails_before_training(run, capsys):
    root, args = run
    assert main(args + ["--pipelines", "color-linear-svm,nope"]) == 2
    assert "unknown pipeline 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [(["--seeds", "0"], "--seeds must be at least 1"),
                                            (["--force", "--retrain"], "give one"),
                                            (["--pipelines", ""], "an empty name"),
                                            (["--pipelines", "nope"], "unknown pipeline 'nope'"),
                                            (["--set", "hog-mlp.bogus=1"], "no option 'bogus'"),
                                            (["--seeds", "2", "--seed-pipelines", "nope"],
                                             "--seed-pipelines: nope not in this run"),
                                            (["--seed-pipelines", "hog-mlp"], "--seeds 2 or more")])
def test_bad_flags_fail_before_the_data_is_read_and_under_check(tmp_path, capsys, flags, message):
    # the source does not exist: the flags' error, not the source's, shows they come first,
    # and --check refuses what the run itself would refuse
    args = ["compare", "--check", "--source", str(tmp_path / "missing"), "--data-root", str(tmp_path)]
    assert main(args + flags) == 2
    assert message in capsys.readouterr().err
    assert main(args) == 2 and "missing" in capsys.readouterr().err


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
def test_report_renders_in_headless_chromium(run, tmp_path):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    root, _ = run
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", "--window-size=1300,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get((root / "reports" / "cifar10-tiny" / "report.html").as_uri())
        rows = driver.execute_script(
            "return document.querySelectorAll('#summary-table tbody tr').length")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
        summary = driver.find_element("id", "summary").text
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1300, min(height, 16000))
        shot = root / "reports" / "cifar10-tiny" / "screenshot.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert rows == 5  # one per pipeline
    assert len(images) >= 8 and all(done and width > 100 for done, width, _ in images), images
    words = {w for _, _, alt in images for w in alt.replace(":", " ").split()}
    assert {"accuracy", "Confusion", "Misclassified", "HOG"} <= words
    assert "points" in summary
    assert shot.stat().st_size > 10_000
