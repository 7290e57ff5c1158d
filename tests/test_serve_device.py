"""`cvpipe serve` keeps CUDA out of the preloading master (a CUDA context does not survive the
fork into the workers) and each worker picks its device itself: the CPU here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from tests.test_api import MLP, SVM, api_models_dir, encode, test_images
from tests.test_api_server import free_port, serve, stop, wait_ready

pytestmark = pytest.mark.slow

PROBE = '''
import os
import torch

_log = os.environ["CVPIPE_CUDA_PROBE_LOG"]


def _record(what):
    with open(_log, "a") as f:
        f.write(f"{os.getpid()} {what}\\n")


_available = torch.cuda.is_available
_init = torch.cuda._lazy_init


def is_available():
    _record("is_available")
    return _available()


def _lazy_init():
    _record("init")
    return _init()


torch.cuda.is_available = is_available
torch.cuda._lazy_init = _lazy_init
'''


def test_master_never_asks_for_cuda_and_workers_use_the_cpu(tmp_path_factory, tmp_path):
    models = api_models_dir(tmp_path_factory)
    (tmp_path / "sitecustomize.py").write_text(PROBE)
    log = tmp_path / "cuda.log"
    port = free_port()
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "CVPIPE_CUDA_PROBE_LOG": str(log)}
    proc = serve(models, port, "--workers", "1", "--threads", "2", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        blob = encode(test_images(1)[0])
        for model in (MLP, SVM):  # the MLP asks for its device ("auto") when it predicts
            r = requests.post(f"{url}/v1/models/{model}/predict", files={"images": ("a.png", blob)},
                              timeout=30)
            assert r.status_code == 200, r.text
        r = requests.post(f"{url}/v1/features", data={"model": SVM},
                          files={"images": ("a.png", blob)}, timeout=30)
        assert r.status_code == 200, r.text
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    finally:
        output = stop(proc)
    calls = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    by_master = [what for pid, what in calls if int(pid) == proc.pid]
    assert by_master == [], f"the master asked CUDA: {by_master}\n{output[-2000:]}"
    by_workers = {int(pid) for pid, _ in calls} & {int(c) for c in children}
    assert by_workers, f"no worker chose its device: {calls}"  # the worker decided: CPU here
    assert "init" not in {what for _, what in calls}  # CUDA never initialised on a CPU host
