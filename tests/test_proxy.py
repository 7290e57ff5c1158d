"""The shipped nginx configuration (docs/nginx.conf) in front of a real `cvpipe serve`: slow
clients are absorbed by nginx and normal requests stay fast."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.test_api import SVM, api_models_dir, encode, test_images
from tests.test_api_server import free_port, serve, stop, wait_ready
from tests.test_hostile import _send_headers

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="Debian's nginx is not installed (.ci/run installs it)")]

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    models = api_models_dir(tmp_path_factory)
    api_port, proxy_port = free_port(), free_port()
    api = serve(models, api_port, "--workers", "1", "--threads", "4", "--no-front")  # nginx buffers
    work = tmp_path_factory.mktemp("nginx")
    site = (ROOT / "docs" / "nginx.conf").read_text()
    assert "listen 80;" in site and "server 127.0.0.1:8000;" in site  # what we rewrite below
    site = site.replace("listen 80;", f"listen 127.0.0.1:{proxy_port};")
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{api_port};")
    (work / "cvpipe.conf").write_text(site)
    temps = " ".join(f"{kind}_temp_path {work / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (work / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\npid {work / 'nginx.pid'};\nerror_log {work / 'error.log'};\n"
        f"daemon off;\nevents {{ worker_connections 512; }}\n"
        f"http {{ access_log off; {temps} include {work / 'cvpipe.conf'}; }}\n")
    proxy = subprocess.Popen([NGINX, "-c", str(work / "nginx.conf"), "-p", str(work)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{proxy_port}"
    try:
        wait_ready(api, f"http://127.0.0.1:{api_port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proxy.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nginx did not start: {proxy.stdout.read()}")
            time.sleep(0.2)
        yield url
    finally:
        proxy.send_signal(signal.SIGQUIT)
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        stop(api)


def test_predictions_through_the_proxy(proxied):
    blob = encode(test_images(1)[0])
    r = requests.post(f"{proxied}/v1/models/{SVM}/predict", files={"images": ("a.png", blob)}, timeout=30)
    assert r.status_code == 200 and r.json()["predictions"][0]["label"]


def test_slow_clients_wait_in_nginx_not_in_the_api(proxied):
    """The API has 4 threads; 40 clients trickling bodies through nginx hold none of them."""
    tricklers = []
    for _ in range(40):
        sock = _send_headers(proxied, f"/v1/models/{SVM}/predict", 10_000)
        sock.sendall(b"\x89PNG")
        tricklers.append(sock)
    stop_at = time.monotonic() + 8

    def trickle(sock) -> None:
        while time.monotonic() < stop_at:
            try:
                sock.sendall(b"\0")
            except OSError:
                return
            time.sleep(0.3)

    blob = encode(test_images(1)[0])
    with ThreadPoolExecutor(len(tricklers)) as pool:
        for sock in tricklers:
            pool.submit(trickle, sock)
        time.sleep(1.0)  # every trickler is mid-body now
        start = time.perf_counter()
        r = requests.post(f"{proxied}/v1/models/{SVM}/predict", files={"images": ("a.png", blob)},
                          timeout=30)
        waited = time.perf_counter() - start
        health = requests.get(f"{proxied}/healthz", timeout=10)
    for sock in tricklers:
        sock.close()
    assert r.status_code == 200 and health.status_code == 200
    assert waited < 2.0, f"a normal request waited {waited:.1f} s behind slow clients"
