"""``cvpipe serve`` as a real server process: gunicorn workers, real HTTP, shutdown."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.test_api import CNN, MLP, SVM, api_models_dir, encode, local_labels, test_images

pytestmark = pytest.mark.slow  # a real server / a few hundred generated requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(models: Path, port: int, *extra: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cvpipe", "serve", "--models", str(models), "--host", "127.0.0.1",
           "--port", str(port), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if requests.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or still loading models
            pass
        time.sleep(0.2)
    raise AssertionError("server not ready in time")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.stdout.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    models = api_models_dir(tmp_path_factory)
    port = free_port()
    proc = serve(models, port, "--workers", "2", "--threads", "2",
                 env={"CVPIPE_API_TOKEN": "tok", "CVPIPE_MAX_IMAGES": "16",
                      "CVPIPE_MAX_CONTENT_LENGTH": "1000000"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        yield url, proc, models
    finally:
        stop(proc)


def test_real_server_predicts_rejects_and_counts(server):
    from cvpipe.models import load_model

    url, _, models = server
    auth = {"Authorization": "Bearer tok"}
    blobs = [encode(img) for img in test_images(8)]
    expected = local_labels(load_model(models / SVM), blobs)
    session = requests.Session()

    r = session.post(f"{url}/v1/models/{SVM}/predict", headers=auth,
                  files=[("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)])
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == expected
    # the CNN: PyTorch in forked workers, warmed up after the fork
    r = session.post(f"{url}/v1/models/{CNN}/predict", headers=auth,
                     files=[("images", (f"{i}.png", b)) for i, b in enumerate(blobs)])
    assert [p["label"] for p in r.json()["predictions"]] == local_labels(load_model(models / CNN), blobs)
    r = session.post(f"{url}/v1/models/{MLP}/predict", headers=auth, params={"top_k": 2},
                  json={"images": [base64.b64encode(b).decode() for b in blobs[:2]]})
    assert r.json()["score_kind"] == "probability" and len(r.json()["predictions"][0]["top_k"]) == 2

    bad = [
        (dict(), 401),
        (dict(headers=auth, data=b""), 400),
        (dict(headers={**auth, "Content-Type": "text/plain"}, data=b"x"), 415),
        (dict(headers={**auth, "Content-Type": "application/json"}, data=b"{oops"), 400),
        (dict(headers=auth, json={"images": ["***"]}), 400),
        (dict(headers=auth, files=[("images", ("x.png", b"not an image"))]), 400),
        (dict(headers=auth, files=[("images", (f"{i}.png", blobs[0])) for i in range(17)]), 413),
    ]
    for kwargs, status in bad:
        r = session.post(f"{url}/v1/models/{SVM}/predict", **kwargs)
        assert r.status_code == status and r.headers["Content-Type"] == "application/json", r.text
        assert {"error", "message"} <= set(r.json()) and "Traceback" not in r.text
    # A body sent to an unknown model or without a token is read and dropped after the answer,
    # so that even a client that sends it all before reading gets the JSON error and the
    # connection goes on. A body declared over the limit is refused from its headers, unread.
    port = int(url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    raw.sendall(f"POST /v1/models/{SVM}/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
                "Content-Type: image/png\r\nContent-Length: 1500000\r\n\r\n".encode() + b"\0" * 100_000)
    head = b""
    while b'"payload_too_large"' not in head:  # head and body may come in separate packets
        chunk = raw.recv(65536)
        if not chunk:
            break
        head += chunk
    raw.close()
    assert head.startswith(b"HTTP/1.1 413") and b'"payload_too_large"' in head, head[:200]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for path, headers, size, status in [
            ("/v1/models/nope/predict", auth, 900_000, 404),
            (f"/v1/models/{SVM}/predict", {}, 900_000, 401)]:
        conn.request("POST", path, b"\0" * size, {**headers, "Content-Type": "image/png"})
        resp = conn.getresponse()
        assert resp.status == status and b'"error"' in resp.read()
    conn.request("GET", "/healthz")  # the same connection goes on
    assert conn.getresponse().status == 200
    conn.close()

    r = session.post(f"{url}/v1/models/nope/predict", data=blobs[0],
                  headers={**auth, "Content-Type": "image/png"})
    assert r.status_code == 404 and r.json()["error"] == "unknown_model"

    # Many clients at once, fresh connections and keep-alive: every answer right.
    def one(i: int) -> str:
        with requests.Session() as s:
            resp = s.post(f"{url}/v1/models/{SVM}/predict", headers={**auth, "Content-Type": "image/png"},
                          data=blobs[i % 8])
            return resp.json()["predictions"][0]["label"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(48))) == [expected[i % 8] for i in range(48)]

    assert session.get(f"{url}/healthz").json() == {"status": "ok"}
    assert {m["name"] for m in session.get(f"{url}/v1/models").json()["models"]} >= {SVM, MLP}
    assert session.get(f"{url}/openapi.json").json()["components"]["securitySchemes"]["bearerAuth"]
    # /metrics adds up both workers (prometheus multiprocess mode)
    text = session.get(f"{url}/metrics").text
    total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("cvpipe_http_requests_total{") and 'endpoint="api.predict"' in line
                and f'model="{SVM}"' in line and 'status="200"' in line)
    assert total == 1 + 48
    assert 'cvpipe_http_request_duration_seconds_bucket{' in text


def test_server_stops_cleanly_on_sigterm(server):
    url, proc, _ = server
    out = stop(proc)
    assert proc.returncode == 0, out
    assert url in out and "gunicorn" in out.lower() and "Traceback" not in out
    # the workers' metrics folder is gone with the server
    prom_dir = re.search(r"gathered in (\S+)", out)
    assert prom_dir and not Path(prom_dir[1]).exists()


def test_serve_refuses_clearly(tmp_path, tmp_path_factory, capsys):
    from cvpipe.cli import main

    models = api_models_dir(tmp_path_factory)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["serve", "--models", str(empty), "--workers", "1", "--port", str(free_port())]) == 2
    assert "no model" in capsys.readouterr().err
    assert main(["serve", "--models", str(tmp_path / "missing"), "--workers", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--models", str(models), "--workers", "1",
                     "--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen" in capsys.readouterr().err
    # an address that is not this machine's: the hint is about --host, not the port
    assert main(["serve", "--models", str(models), "--workers", "1", "--host", "999.1.1.1",
                 "--port", str(free_port())]) == 2
    assert "give an address of this machine as --host" in capsys.readouterr().err
    # a negative timeout or switch interval is refused, --check too (a worker would die of it)
    for flag in ("--timeout", "--switch-interval"):
        assert main(["serve", "--models", str(models), "--check", flag, "-1"]) == 2
        assert f"{flag} -1: must be 0" in capsys.readouterr().err
    assert main(["serve", "--models", str(models), "--check"]) == 0
    assert SVM in capsys.readouterr().out


def test_default_server_holds_against_100_slow_clients(tmp_path_factory):
    """Default settings, no proxy, one worker of 2 threads: 100 clients trickling bodies cost
    the front coroutines, not worker threads; a normal predict answers within 2 s."""
    models = api_models_dir(tmp_path_factory)
    port = free_port()
    proc = serve(models, port, "--workers", "1", "--threads", "2")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        blob = encode(test_images(1)[0])
        tricklers = []
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(f"POST /v1/models/{SVM}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Content-Type: image/png\r\nContent-Length: 10000\r\n\r\n\x89PNG".encode())
            tricklers.append(sock)
        stop_at = time.monotonic() + 8

        def trickle(sock: socket.socket) -> None:
            while time.monotonic() < stop_at:
                try:
                    sock.sendall(b"\0")
                except OSError:
                    return
                time.sleep(0.3)

        with ThreadPoolExecutor(len(tricklers)) as pool:
            for sock in tricklers:
                pool.submit(trickle, sock)
            time.sleep(1.0)  # every trickler is mid-body now
            start = time.perf_counter()
            r = requests.post(f"{url}/v1/models/{SVM}/predict", files={"images": ("a.png", blob)},
                              timeout=30)
            waited = time.perf_counter() - start
            health_start = time.perf_counter()
            health = requests.get(f"{url}/healthz", timeout=5)
            health_waited = time.perf_counter() - health_start
            from tests.test_hostile import rss_mib

            rss = rss_mib(proc.pid)  # the server's processes, 100 bodies half-sent
        for sock in tricklers:
            sock.close()
        figures = {"predict_seconds": round(waited, 3), "healthz_seconds": round(health_waited, 3),
                   "server_rss_mib": round(rss, 1)}
        if os.environ.get("CVPIPE_SLOW_CLIENTS_REPORT"):
            Path(os.environ["CVPIPE_SLOW_CLIENTS_REPORT"]).write_text(json.dumps(figures))
        assert r.status_code == 200 and r.json()["predictions"][0]["label"]
        assert waited < 2.0, f"a normal predict waited {waited:.1f} s behind 100 slow clients"
        assert health.status_code == 200 and health_waited < 2.0
        # over real HTTP: the security headers, and only allowed host names answered
        assert health.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in health.headers["Content-Security-Policy"]
        assert requests.get(f"{url}/healthz", headers={"Host": "evil.example"}, timeout=5).status_code == 400
        # a body declared over the limit is refused by the front from its headers
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"POST /v1/models/{SVM}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Content-Length: {1 << 40}\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    finally:
        out = stop(proc)
    assert "Traceback" not in out, out
