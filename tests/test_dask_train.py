"""Training beyond one machine: the linear models' statistics and passes computed on a real Dask
``LocalCluster`` of 2 worker processes, reading the feature stores where they lie."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed")

from cvpipe.classifiers import ClassicSpec  # noqa: E402
from cvpipe.classifiers.training import fit_classic  # noqa: E402
from cvpipe.data import load_cifar10  # noqa: E402
from cvpipe.featurestore.dask import DaskRunner, connect  # noqa: E402
from cvpipe.featurestore.dataset import StoreSettings  # noqa: E402
from tests import synthetic  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    with connect(workers=2) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("dask-train")
    synthetic.write_image_folder(base / "tiny", n_train=60, n_test=20)
    return load_cifar10(base / "tiny", base / "root")


@pytest.mark.parametrize("classifier,grid", [
    ({"type": "linear-svm", "params": {"max_iter": 200}}, {"classifier.C": [0.01, 0.1]}),
    ({"type": "rbf-svm", "params": {"approximation": "nystroem", "n_components": 40}}, {}),
])
def test_dask_training_equals_the_single_machine_model(dataset, client, tmp_path, classifier, grid):
    spec = ClassicSpec.from_dict("hc", {"features": {"name": "hog+color"}, "classifier": classifier,
                                        "grid": grid})
    root = tmp_path / "root"
    single = fit_classic(dataset, spec, progress=False, store=StoreSettings(root=root, progress=False))
    # the same stores, read by the workers; every statistic and pass summed on the cluster
    store = StoreSettings(root=root, progress=False, client=client)
    on_dask = fit_classic(dataset, spec, progress=False, store=store, runner=DaskRunner(client))
    assert on_dask.features["status"] == "reused"
    assert on_dask.selection["chosen"] == single.selection["chosen"]

    x_test = np.asarray(dataset.split("test")[0])
    a, b = single.model.predict(x_test), on_dask.model.predict(x_test)
    assert (a == b).mean() >= 0.999, (a != b).sum()
    # the same model up to the order in which block sums were added: decision scores within
    # 1% of their spread (the stated tolerance), the same test accuracy
    sa, sb = single.model.scores(x_test)[0], on_dask.model.scores(x_test)[0]
    np.testing.assert_allclose(sb, sa, atol=0.01 * np.ptp(sa))
    assert single.metrics["test"]["accuracy"] == on_dask.metrics["test"]["accuracy"]


def test_features_extracted_on_the_cluster_are_the_local_ones(dataset, client, tmp_path):
    spec = ClassicSpec.from_dict("h", {"features": {"name": "hog"},
                                       "classifier": {"type": "linear-svm", "params": {"C": 0.01}}})
    local = fit_classic(dataset, spec, progress=False,
                        store=StoreSettings(root=tmp_path / "a", progress=False))
    remote = fit_classic(dataset, spec, progress=False, runner=DaskRunner(client),
                         store=StoreSettings(root=tmp_path / "b", progress=False, client=client))
    assert local.features["status"] == remote.features["status"] == "computed"
    x_test = np.asarray(dataset.split("test")[0])
    sa, sb = local.model.scores(x_test)[0], remote.model.scores(x_test)[0]
    np.testing.assert_allclose(sb, sa, atol=0.01 * np.ptp(sa))
