"""Feature extraction on a real Dask ``LocalCluster`` of 2 worker processes: the same output as
the single-machine path, resumption, and a worker killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from cvpipe.cli import main  # noqa: E402
from cvpipe.data import load_cifar10  # noqa: E402
from cvpipe.errors import DataError  # noqa: E402
from cvpipe.featurestore import DatasetSource, extract, load_features, open_input  # noqa: E402
from cvpipe.featurestore.dask import connect, extract_dask  # noqa: E402
from cvpipe.featurestore.store import FeatureStore  # noqa: E402
from cvpipe.images import ImageError  # noqa: E402
from tests import synthetic  # noqa: E402

pytestmark = pytest.mark.slow

CHUNK = 16
N = 300


@pytest.fixture(scope="module")
def client():
    with connect(workers=2) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("dask-data")
    synthetic.write_image_folder(base / "tiny", n_train=N // 10, n_test=6)
    return load_cifar10(base / "tiny", base / "root")


@pytest.fixture(scope="module")
def single(dataset, tmp_path_factory):
    """The single-machine output everything is compared with."""
    res = extract(DatasetSource(dataset, "train_full"), "hog+color",
                  out=tmp_path_factory.mktemp("single") / "f", chunk_rows=CHUNK, fmt="zarr")
    feats, labels, _ = load_features(res.path)
    return np.asarray(feats), labels


def _assert_same(path, single):
    feats, labels, manifest = load_features(path)
    np.testing.assert_array_equal(np.asarray(feats), single[0])
    np.testing.assert_array_equal(labels, single[1])
    spans = sorted((json.loads(m.read_text())["start"], json.loads(m.read_text())["stop"])
                   for m in Path(path, "done").glob("*.json"))
    assert spans == [(a, min(a + CHUNK, N)) for a in range(0, N, CHUNK)]  # each row exactly once
    return manifest


def test_two_workers_write_the_single_machine_output(client, dataset, single, tmp_path):
    res = extract_dask(DatasetSource(dataset, "train_full"), "hog+color", client=client,
                       out=tmp_path / "d", chunk_rows=CHUNK, fmt="zarr")
    manifest = _assert_same(res.path, single)
    assert manifest["engine"]["name"] == "dask" and manifest["engine"]["workers"] == 2
    pids = {json.loads(m.read_text())["pid"] for m in Path(res.path, "done").glob("*.json")}
    assert len(pids) == 2 and os.getpid() not in pids  # written by both workers, not the client
    again = extract_dask(DatasetSource(dataset, "train_full"), "hog+color", client=client,
                         out=tmp_path / "d")
    assert again.reused and again.computed_chunks == 0


def test_interrupted_run_resumes(client, dataset, single, tmp_path):
    source = DatasetSource(dataset, "train_full")
    seen = []

    def stop_after_four(meta):
        seen.append(meta["chunk"])
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_dask(source, "hog+color", client=client, out=tmp_path / "r", chunk_rows=CHUNK,
                     fmt="zarr", on_chunk=stop_after_four, task_delay=0.05)
    time.sleep(0.3)  # cancelled tasks already running may still finish: harmless
    store = FeatureStore(tmp_path / "r")
    done = store.done()
    assert store.manifest() is None and 4 <= len(done) < 19
    with pytest.raises(DataError):
        load_features(tmp_path / "r")
    res = extract_dask(source, "hog+color", client=client, out=tmp_path / "r", chunk_rows=CHUNK)
    assert res.computed_chunks == 19 - len(done)
    _assert_same(res.path, single)


def test_killed_client_on_a_running_cluster_resumes(client, dataset, single, tmp_path):
    """``--scheduler tcp://...``: a client process killed half-way, then a new run."""
    from tests.test_extract import _run_until_killed

    out = tmp_path / "c"
    script = (
        "from cvpipe.data import load_cifar10\n"
        "from cvpipe.featurestore import DatasetSource\n"
        "from cvpipe.featurestore.dask import extract_dask\n"
        f"ds = load_cifar10({dataset.manifest['source_path']!r}, {str(dataset.cache_dir.parents[1])!r})\n"
        f"extract_dask(DatasetSource(ds, 'train_full'), 'hog+color', out={str(out)!r},\n"
        f"             scheduler={client.scheduler.address!r}, chunk_rows={CHUNK}, fmt='zarr',\n"
        "             task_delay=0.2)\n"
    )
    _run_until_killed(script, out / "done", at_least=3)
    time.sleep(0.5)  # tasks already running when the client died may still finish: harmless
    done = len(FeatureStore(out).done())
    assert done < 19
    res = extract_dask(DatasetSource(dataset, "train_full"), "hog+color", out=out,
                       scheduler=client.scheduler.address)
    assert res.computed_chunks <= 19 - done
    assert res.manifest["engine"]["scheduler"] == client.scheduler.address
    _assert_same(res.path, single)


def test_worker_killed_mid_run_costs_a_retry_not_a_wrong_result(client, dataset, single, tmp_path):
    pids = client.run(os.getpid)
    killed = {}

    def kill_a_busy_worker(meta):
        if killed:
            return
        for addr, keys in client.processing().items():
            if keys:  # a worker in the middle of a chunk
                killed["pid"] = pids[addr]
                # task keys: cvpipe-extract-<key>-<first chunk>-<last chunk>-<run>
                killed["tasks"] = [range(int(str(k).split("-")[3]), int(str(k).split("-")[4]) + 1)
                                   for k in keys]
                os.kill(pids[addr], signal.SIGKILL)
                return

    res = extract_dask(DatasetSource(dataset, "train_full"), "hog+color", client=client,
                       out=tmp_path / "k", chunk_rows=CHUNK, fmt="zarr",
                       on_chunk=kill_a_busy_worker, task_delay=0.1)
    assert killed, "no worker was busy"
    writers = {}
    for marker in Path(res.path, "done").glob("*.json"):
        info = json.loads(marker.read_text())
        writers[info["chunk"]] = info["pid"]
    # what the dead worker was doing is there: chunks it wrote before dying are kept (a
    # resumed chunk is never written twice), the rest were written by a retry elsewhere
    for task in killed["tasks"]:
        assert all(chunk in writers for chunk in task)
    _assert_same(res.path, single)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it
    assert killed["pid"] not in client.run(os.getpid).values()


def test_image_folder_read_by_the_workers(client, tmp_path):
    synthetic.write_image_folder(tmp_path / "imgs", n_train=4, n_test=1)
    source = open_input(str(tmp_path / "imgs" / "train"), (32, 32))
    local = extract(source, "hog+color", out=tmp_path / "l", chunk_rows=6, fmt="zarr")
    dist = extract_dask(source, "hog+color", client=client, out=tmp_path / "d", chunk_rows=6,
                        fmt="npz")
    a, la, _ = load_features(local.path)
    b, lb, manifest = load_features(dist.path)
    np.testing.assert_array_equal(np.asarray(a), b)
    np.testing.assert_array_equal(la, lb)
    assert manifest["format"] == "npz" and manifest["n"] == 40


def test_a_bad_image_on_a_worker_is_one_clear_error(client, tmp_path):
    synthetic.write_image_folder(tmp_path / "imgs", n_train=1, n_test=1)
    (tmp_path / "imgs" / "train" / "dog" / "0005.png").write_bytes(b"\x89PNG broken")
    source = open_input(str(tmp_path / "imgs" / "train"), (32, 32))
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="dog/0005.png"):
        extract_dask(source, "hog", client=client, out=tmp_path / "o", chunk_rows=3)
    assert time.perf_counter() - t0 < 10  # not retried


def test_cli_on_a_running_cluster(client, dataset, tmp_path, capsys):
    args = ["extract", "--features", "color", "--split", "test", "--scheduler", client.scheduler.address,
            "--chunk-size", "16", "--source", dataset.manifest["source_path"], "--data-root", str(tmp_path)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "Dask dashboard: http" in captured.err and "2 workers" in captured.err
    assert captured.out.startswith("extracted 60 rows x 128 dims") and "dask" in captured.out
    single = extract(DatasetSource(dataset, "test"), "color", root=tmp_path)
    assert single.reused  # same key, same files as the single-machine path


def test_cli_rejects_both_engines(dataset, tmp_path, capsys):
    assert main(["extract", "--features", "color", "--workers", "2", "--scheduler", "tcp://x:1",
                 "--source", dataset.manifest["source_path"], "--data-root", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err


def test_task_groups_spread_the_per_task_cost_but_keep_workers_busy():
    from cvpipe.featurestore.dask import task_groups

    assert task_groups(list(range(13)), 1) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]
    assert task_groups(list(range(13)), 2) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12]]
    assert all(len(g) == 1 for g in task_groups(list(range(13)), 8))
    assert len(task_groups(list(range(245)), 2)) == 62  # 1M CIFAR-sized images: 4 chunks a task
    assert task_groups([3, 7, 9], 1, chunks_per_task=2) == [[3, 7], [9]]


def test_a_task_of_a_replaced_store_writes_nothing(dataset, tmp_path):
    from cvpipe.featurestore.dask import DaskError, _run_task

    source = DatasetSource(dataset, "test")
    res = extract(source, "color", out=tmp_path / "s", chunk_rows=CHUNK, fmt="zarr")
    store = FeatureStore(res.path)
    out = _run_task(store.url, "0123456789abcdef", [(0, 0, source.chunk(0, CHUNK))],
                    {"name": "color", "params": {}}, 0.0)
    assert isinstance(out[0]["error"], DaskError)
    # a retried task skips the chunks that are already done
    assert _run_task(store.url, res.manifest["key"], [(0, 0, source.chunk(0, CHUNK))],
                     {"name": "color", "params": {}}, 0.0)[0]["skipped"]
