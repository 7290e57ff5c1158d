"""The walkthrough notebook runs top to bottom on a tiny dataset, so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import synthetic

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "walkthrough.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.slow
def test_walkthrough_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    synthetic.write_image_folder(tmp_path / "src", n_train=12, n_test=4)
    monkeypatch.setenv("CVPIPE_CIFAR10_SOURCE", str(tmp_path / "src"))
    monkeypatch.setenv("CVPIPE_NOTEBOOK_LIMIT", "10")
    monkeypatch.setenv("CVPIPE_NOTEBOOK_CNN", json.dumps({"epochs": 1, "width": 8, "batch_size": 32}))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "validation accuracy" in outputs
    assert "hog+color-linear-svm ->" in outputs and "cnn ->" in outputs
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
