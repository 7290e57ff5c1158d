"""The layer contracts of pyproject.toml hold, and they would catch an import that breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(tree: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail("lint-imports is missing: install the dev extras (make install)")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(exe), "--no-cache"], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_layer_contracts_are_kept(tmp_path):
    result = lint_imports(ROOT, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("cvpipe/features/spec.py", "import cvpipe.models", "layers point one way"),  # upward
    ("cvpipe/storage.py", "import service.app", "layers point one way"),  # library -> app
    ("cvpipe/classifiers/mlp.py", "import cvpipe.cnn.net", "layers point one way"),  # siblings
    ("cvpipe/featurestore/local.py", "import cvpipe.features._common", "private module"),
])
def test_an_import_against_the_layers_is_caught(tmp_path, module, line, contract):
    tree = tmp_path / "tree"
    for part in ("cvpipe", "service"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree)
    target = tree / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tree, tmp_path)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout, result.stdout


def test_the_clis_subcommand_edges_are_in_the_import_graph():
    import grimp

    graph = grimp.build_graph("cvpipe", "service", cache_dir=None)
    commands = {"cvpipe.data.cli", "cvpipe.models.cli", "cvpipe.compare.cli", "cvpipe.extract.cli",
                "cvpipe.featurestore.cli", "service.serve"}
    assert commands <= graph.find_modules_directly_imported_by("cvpipe.cli")


def test_the_command_line_help_imports_no_heavy_library():
    """`cvpipe --help` builds every subcommand's parser: that must not import PyTorch,
    scikit-learn, Flask or Dask (seconds each), only what the parsers name."""
    code = ("import sys; from cvpipe.cli import build_parser; build_parser(); "
            "print(' '.join(m for m in ('torch', 'sklearn', 'flask', 'dask', 'kymatio', 'numba', "
            "'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    # and the lazy names still resolve to the modules' own objects
    from cvpipe.features import FeatureSpec
    from cvpipe.features.spec import FeatureSpec as defined
    from cvpipe.models import ArtifactError, load_model
    from cvpipe.models.pipelines import load_model as loader

    assert FeatureSpec is defined and load_model is loader and issubclass(ArtifactError, Exception)
