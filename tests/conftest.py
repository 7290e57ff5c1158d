import os
from pathlib import Path

import pytest

from cvpipe.data.catalog import CATALOG
from tests import synthetic


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the user's data root, models or the real dataset unless it asks."""
    monkeypatch.setenv("CVPIPE_DATA_ROOT", str(tmp_path / "data-root"))
    monkeypatch.setenv("CVPIPE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("CVPIPE_CIFAR10_CHECKSUM", raising=False)
    monkeypatch.delenv("CVPIPE_CIFAR10_SOURCE", raising=False)
    for entry in CATALOG.values():
        monkeypatch.delenv(entry.env, raising=False)


@pytest.fixture(scope="session")
def real_cifar_source() -> Path:
    """The real CIFAR-10 copy named by $CVPIPE_CIFAR10_SOURCE (read before isolation)."""
    if not _REAL_SOURCE:
        pytest.skip("CVPIPE_CIFAR10_SOURCE is not set; .ci/run points it at "
                    "../shared/datasets/cifar10-jpeg.tar.gz")
    if not Path(_REAL_SOURCE).exists():
        pytest.skip(f"CVPIPE_CIFAR10_SOURCE={_REAL_SOURCE} does not exist")
    return Path(_REAL_SOURCE)


_REAL_SOURCE = os.environ.get("CVPIPE_CIFAR10_SOURCE")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "tiny"
    synthetic.write_image_folder(root)
    return root
