"""benchmarks/scale.py end to end on a tiny synthetic dataset: augmented splits extracted once,
one training process per N, every figure the JSON promises."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_scale_benchmark_smoke_reports_every_n():
    proc = subprocess.run([sys.executable, "benchmarks/scale.py", "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["smoke"] and set(report["results"]) == {"patches-linear-svm", "hog2+color2-linear-svm"}
    for name, result in report["results"].items():
        ns = [f["n"] for f in result["per_n"]]
        assert ns == sorted(ns) and result["extraction"]["rows"] == ns[-1]
        for f in result["per_n"]:
            assert f["fit_seconds"] > 0 and f["peak_rss_bytes"] > 0 and 0 <= f["test_accuracy"] <= 1
            assert f["feature_seconds"] >= 0 and f["C"] in [float(c) for c in f["val_accuracy"]]
        assert result["per_n"][0]["fit_time_ratio"] == 1.0
        assert result["targets"]["peak_rss_gb_max"] > 0, name
