"""benchmarks/rescore.py compares a model only with a score on the same dataset and as many
test images as its recorded one (a quick-profile model among full-profile ones, or an MNIST
model beside CIFAR-10 ones, is named, not called unequal)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.rescore import scored_elsewhere  # noqa: E402

CLASSES = [f"c{i}" for i in range(10)]


def test_a_model_recorded_on_the_images_sent_is_compared():
    assert scored_elsewhere({"dataset": {"test": 10000}, "classes": CLASSES}, 10000) is None


def test_a_model_recorded_on_fewer_images_is_named_with_the_matching_limit():
    reason = scored_elsewhere({"dataset": {"test": 3000}, "classes": CLASSES}, 10000)
    assert reason is not None
    assert "3,000" in reason and "10,000" in reason
    assert "--limit-per-class 300" in reason


def test_no_limit_is_suggested_when_the_count_is_not_per_class():
    reason = scored_elsewhere({"dataset": {"test": 2995}, "classes": CLASSES}, 10000)
    assert reason is not None and "--limit-per-class" not in reason


def test_a_model_without_a_recorded_count_is_compared():
    assert scored_elsewhere({"classes": CLASSES}, 10000) is None


def test_a_model_of_another_dataset_is_named_not_compared():
    meta = {"dataset": {"name": "mnist5k-png", "checksum": "sha256:" + "0" * 64, "test": 10000},
            "classes": CLASSES}
    reason = scored_elsewhere(meta, 10000, "sha256:" + "1" * 64)
    assert reason is not None and "mnist5k-png" in reason
    assert scored_elsewhere(meta, 10000, "sha256:" + "0" * 64) is None
