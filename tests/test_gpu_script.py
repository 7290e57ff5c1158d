"""benchmarks/gpu.sh, the one command that measures every GPU figure: its steps run end to
end here on the CPU in smoke mode (tiny data, tiny settings), so a GPU session only has to run it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import synthetic

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_script_runs_every_step_and_reports_each_target(tmp_path):
    synthetic.write_image_folder(tmp_path / "images", n_train=12, n_test=4)  # a local CIFAR-10 copy
    env = {**os.environ, "CVPIPE_CIFAR10_SOURCE": str(tmp_path / "images"),
           "CVPIPE_DATA_ROOT": str(tmp_path / "data"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    command = ["bash", "benchmarks/gpu.sh", "--device", "cpu", "--smoke", "--out", str(tmp_path / "gpu"),
               "--steps", "cnn,features,compare,frontier"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads(proc.stdout)
    assert report == json.loads((tmp_path / "gpu" / "gpu.json").read_text())
    assert report["smoke"] and report["device"]["gpu"] is None and report["versions"]["torch"]
    assert set(report["steps"]) == {"cnn", "features", "compare", "frontier"}
    assert all(step["returncode"] == 0 for step in report["steps"].values())
    names = [t["name"] for t in report["targets"]]
    assert len(names) == 6 and all(t["value"] is not None and t["met"] in (True, False)
                                   for t in report["targets"])
    assert report["steps"]["cnn"]["runs"][0]["test_accuracy"] is not None
    compared = set(report["steps"]["compare"]["pipelines"])
    assert compared == {"hog-linear-svm", "hog-mlp", "pixels-softmax", "cnn"}
    frontier = report["steps"]["frontier"]["model"]  # issue 26's pipeline, trained from scratch
    assert frontier["pipeline"] == "patches-k6400-tta-linear-svm" and frontier["chosen"]
    assert 0 <= frontier["test_accuracy"] <= 1 and frontier["train_seconds"] > 0


def test_gpu_script_refuses_a_cpu_without_smoke():
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "device must be cuda" in proc.stderr
