"""The comparison's statistics: Wilson intervals, McNemar's test, the ladder, the Pareto front."""

from __future__ import annotations

import numpy as np
import pytest

from cvpipe.compare import stats


def test_wilson_interval_matches_the_formula_and_behaves_at_the_edges():
    lo, hi = stats.wilson(841, 1000)
    # Wilson (1927) for p = 0.841, n = 1000, z = 1.96: 0.817 .. 0.862
    assert lo == pytest.approx(0.8174, abs=5e-4) and hi == pytest.approx(0.8619, abs=5e-4)
    assert stats.wilson(0, 50)[0] == 0.0 and stats.wilson(0, 50)[1] > 0.05  # never an empty interval
    assert stats.wilson(50, 50)[1] == 1.0 and stats.wilson(50, 50)[0] < 0.95
    narrow, wide = stats.wilson(8000, 10000), stats.wilson(80, 100)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 5


def test_mcnemar_counts_only_the_discordant_images():
    a = np.array([1] * 60 + [0] * 10 + [1] * 25 + [0] * 5, bool)
    b = np.array([1] * 60 + [1] * 10 + [0] * 25 + [0] * 5, bool)
    test = stats.mcnemar(a, b)
    assert (test["a_only"], test["b_only"]) == (25, 10)
    assert test["difference"] == pytest.approx(0.15)
    from scipy.stats import binomtest

    assert test["p_value"] == pytest.approx(binomtest(25, 35, 0.5).pvalue)
    assert 0.01 < test["p_value"] < 0.05
    same = stats.mcnemar(a, a)
    assert same["p_value"] == 1.0 and same["difference"] == 0.0
    assert "beats" in stats.describe_difference("A", "B", test) and "p = 0.0" in \
        stats.describe_difference("A", "B", test)
    # a difference that could be chance is never called a win
    weak = {"difference": 0.016, "p_value": 0.089}
    text = stats.describe_difference("The CNN", "patches-linear-svm", weak)
    assert "beats" not in text and text == ("The CNN is ahead of patches-linear-svm by 1.6 points, "
                                            "not significant (McNemar, p = 0.089)")
    assert "behind" in stats.describe_difference("A", "B", {"difference": -0.01, "p_value": 0.5})
    assert "trails" in stats.describe_difference("A", "B", {"difference": -0.05, "p_value": 0.001})


def test_ladder_pairs_cover_every_pair_of_rungs():
    rng = np.random.default_rng(0)
    rows = [_row("px", "classic", ["pixels"], 0.3, 0.3, 0.4, 1, 1),
            _row("hog", "classic", ["hog"], 0.5, 0.5, 0.6, 1, 1),
            _row("cnn", "cnn", None, 0.8, 0.8, 0.9, 1, 1)]
    correct = {r["pipeline"]: rng.random(400) < r["test_accuracy"] for r in rows}
    pairs = stats.ladder_pairs(rows, correct)
    assert [(p["a"], p["b"]) for p in pairs] == [("hog", "px"), ("cnn", "px"), ("cnn", "hog")]
    for p in pairs:
        test = stats.mcnemar(correct[p["a"]], correct[p["b"]])
        assert p["p_value"] == test["p_value"] and p["significant"] == (test["p_value"] < 0.05)


def _row(name, fam, features, val, test, train, cost, lat):
    return {"pipeline": name, "family": fam, "val_accuracy": val, "test_accuracy": test,
            "train_accuracy": train, "train_seconds": cost, "latency_ms_per_image_batch": lat,
            "feature_set": {"components": [{"name": c} for c in features]} if features else None}


def test_ladder_orders_families_and_picks_on_validation():
    rows = [_row("c-svm", "classic", ["color"], 0.28, 0.29, 0.30, 8, 0.01),
            _row("h-svm", "classic", ["hog"], 0.50, 0.50, 0.52, 11, 0.02),
            _row("h-mlp", "classic", ["hog"], 0.60, 0.58, 0.77, 88, 0.03),
            _row("hc-mlp", "classic", ["hog", "color"], 0.65, 0.66, 0.84, 84, 0.07),
            _row("cnn", "cnn", None, 0.83, 0.83, 0.87, 900, 1.8)]
    rng = np.random.default_rng(0)
    correct = {r["pipeline"]: rng.random(1000) < r["test_accuracy"] for r in rows}
    steps = stats.ladder(rows, correct)
    assert [s["family"] for s in steps] == ["colour", "HOG", "HOG + colour", "CNN"]
    assert steps[1]["pipeline"] == "h-mlp"  # the better of the two HOG pipelines on validation
    assert steps[3]["below"] == "hc-mlp" and steps[3]["p_value"] < 0.001
    assert steps[1]["gap"] == pytest.approx(0.77 - 0.58)
    assert stats.pareto(rows, "train_seconds") == ["c-svm", "h-svm", "hc-mlp", "cnn"]


def test_scattering_is_the_rung_between_hog_and_the_learned_patches():
    rows = [_row("h-svm", "classic", ["hog"], 0.50, 0.50, 0.52, 11, 0.02),
            _row("p-svm", "classic", ["patches"], 0.78, 0.78, 0.87, 400, 5.0),
            _row("s-svm", "classic", ["scattering"], 0.68, 0.67, 0.76, 300, 2.0),
            _row("hs", "classic", ["hog", "scattering"], 0.69, 0.68, 0.80, 320, 2.1)]
    correct = {r["pipeline"]: np.random.default_rng(1).random(500) < r["test_accuracy"] for r in rows}
    steps = stats.ladder(rows, correct)
    assert [s["family"] for s in steps] == ["HOG", "scattering", "learned patches"]
    assert steps[1]["pipeline"] == "s-svm" and steps[2]["below"] == "s-svm"  # a mix is no rung
