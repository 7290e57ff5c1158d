"""Hostile requests against a real `cvpipe serve` over HTTP: each is answered with its 4xx JSON
error well within a second (or, for clients that stall, within the body deadline), the server
keeps serving, and its memory stays where it started."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.test_api import MLP, SVM, api_models_dir, encode, test_images
from tests.test_api_server import free_port, serve, stop, wait_ready

pytestmark = pytest.mark.slow

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_TIMEOUT = 2.0
FAST = 1.0  # seconds: "well under a second" for anything refused from what it declares


def png(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    """A valid all-black PNG of any size and bit depth, written without holding its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    channels = {0: 1, 2: 3, 6: 4}[colour]
    row = b"\0" * (1 + width * channels * depth // 8)
    comp = zlib.compressobj(9)
    step = max(1, (1 << 20) // len(row))
    idat = b"".join(comp.compress(row * min(step, height - s)) for s in range(0, height, step))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat + comp.flush())
            + chunk(b"IEND", b""))


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the gunicorn workers), in MiB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    models = api_models_dir(tmp_path_factory)
    port = free_port()
    proc = serve(models, port, "--workers", "2", "--threads", "4",
                 env={"CVPIPE_API_TOKEN": TOKEN, "CVPIPE_BODY_TIMEOUT": str(BODY_TIMEOUT),
                      "CVPIPE_MAX_CONTENT_LENGTH": str(4 << 20),
                      "CVPIPE_MAX_DECODE_BYTES": str(64 << 20), "CVPIPE_MAX_IMAGES": "256"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        good = encode(test_images(1)[0])
        for _ in range(20):  # warm both workers up before the memory baseline
            requests.post(f"{url}/v1/models/{SVM}/predict", headers=AUTH, timeout=30,
                          files={"images": ("a.png", good)})
        state = {"url": url, "proc": proc, "good": good, "rss_start": rss_mib(proc.pid), "times": {}}
        yield state
        # after every hostile request of the module, whatever their order: still serving, and
        # the server's memory within 100 MiB of its start
        still_serving(state)
        state["rss_end"] = rss_mib(proc.pid)
        grown = state["rss_end"] - state["rss_start"]
        state["times"]["rss growth MiB"] = {"status": 0, "seconds": round(grown, 1)}
        report = {k: v for k, v in state.items() if k in ("rss_start", "rss_end", "times")}
        out = os.environ.get("CVPIPE_HOSTILE_REPORT")
        if out:
            Path(out).write_text(json.dumps(report, indent=2))
        assert grown < 100, f"RSS grew by {grown:.0f} MiB"
    finally:
        stop(proc)


def still_serving(server) -> None:
    r = requests.post(f"{server['url']}/v1/models/{SVM}/predict", headers=AUTH, timeout=10,
                      files={"images": ("a.png", server["good"])})
    assert r.status_code == 200, r.text
    assert requests.get(f"{server['url']}/healthz", timeout=5).status_code == 200


def timed(server, name: str, call) -> requests.Response:
    start = time.perf_counter()
    r = call()
    server["times"][name] = {"status": r.status_code, "seconds": round(time.perf_counter() - start, 4)}
    return r


def assert_json_error(r: requests.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text[:300]
    body = r.json()
    assert body["status"] == status and body["message"] and "Traceback" not in r.text
    if code:
        assert body["error"] == code, body
    return body


# ------------------------------------------------------------------ resource exhaustion

@pytest.mark.parametrize(("name", "params", "size", "status", "code"), [
    ("orientations-1e6", {"orientations": 1_000_000}, None, 400, "invalid_features"),
    ("orientations-1e6+1", {"orientations": 1_000_001}, None, 400, "invalid_features"),
    ("bins-huge", {"color__bins": [4096, 4096, 4096]}, None, 400, "invalid_features"),
    ("grid-huge", {"color__grid": 10_000}, None, 400, "invalid_features"),
    ("dim-over-limit", {"hog__orientations": 360, "hog__pixels_per_cell": 2}, "512", 413,
     "result_too_large"),
])
def test_feature_parameters_are_bounded_before_any_allocation(server, name, params, size, status, code):
    data = {"features": "hog+color", "params": json.dumps(params)}
    if size:
        data["size"] = size
    r = timed(server, f"features {name}", lambda: requests.post(
        f"{server['url']}/v1/features", headers=AUTH, timeout=30, data=data,
        files={"images": ("1x1.png", png(1, 1))}))
    assert_json_error(r, status, code)
    assert server["times"][f"features {name}"]["seconds"] < FAST
    still_serving(server)


def test_decoding_memory_is_budgeted_from_the_headers(server):
    # 16-bit, 5000x5000: a few KB on the wire, ~125 MB once decoded and converted
    bomb = png(5000, 5000, depth=16)
    assert len(bomb) < 200_000
    r = timed(server, "16-bit 25 MP image", lambda: requests.post(
        f"{server['url']}/v1/models/{SVM}/predict", headers=AUTH, timeout=30,
        files={"images": ("big16.png", bomb)}))
    assert_json_error(r, 413, "request_too_large")
    # hundreds of tiny images asked for at 512x512: 200 x 768 KiB of output
    tiny = png(1, 1)
    r = timed(server, "features 200 images at 512x512", lambda: requests.post(
        f"{server['url']}/v1/features", headers=AUTH, timeout=30, data={"size": "512", "features": "color"},
        files=[("images", (f"{i}.png", tiny)) for i in range(200)]))
    assert_json_error(r, 413, "request_too_large")
    for key in ("16-bit 25 MP image", "features 200 images at 512x512"):
        assert server["times"][key]["seconds"] < FAST
    still_serving(server)


def test_metrics_labels_come_from_fixed_sets(server):
    url = server["url"]
    sizes = []
    for batch in range(3):  # the first batch may add the "other" series; later ones add none
        for i in range(60):
            requests.request(f"INVENTED{batch}X{i}", f"{url}/healthz", timeout=10)
        text = requests.get(f"{url}/metrics", timeout=10).text
        sizes.append(len(text))
    assert "INVENTED" not in text and 'method="other"' in text
    series = [line for line in text.splitlines() if line.startswith("cvpipe_http_requests_total")]
    assert len(series) < 20, series
    assert sizes[2] - sizes[1] < 100  # counts grow by a digit or two; no new series


def _send_headers(url: str, path: str, length: int, extra: str = "") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                 f"Authorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n{extra}\r\n".encode())
    return sock


def _status_of(sock: socket.socket) -> int | None:
    try:
        head = sock.recv(4096)
    except OSError:
        return None
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else None


def test_a_body_declared_over_the_limit_is_refused_from_the_headers(server):
    sock = _send_headers(server["url"], f"/v1/models/{SVM}/predict", 64 << 20)
    # the refusal has been sent by now: a server that closed at once would reset the connection
    # under the body still coming, and the client would never read the 413
    time.sleep(0.3)
    start = time.perf_counter()
    sock.sendall(b"\0" * (1 << 20))  # 1 MiB of the declared 64 MiB, then nothing
    status = _status_of(sock)
    server["times"]["declared 64 MiB, sent 1 MiB"] = {
        "status": status, "seconds": round(time.perf_counter() - start, 4)}
    sock.close()
    assert status == 413 and server["times"]["declared 64 MiB, sent 1 MiB"]["seconds"] < FAST
    still_serving(server)


def test_slow_clients_get_a_deadline_and_cannot_stop_the_service(server):
    """40 clients trickle bodies; normal requests are still answered and the tricklers are cut
    off after the body deadline."""
    url = server["url"]
    tricklers = []
    for _ in range(40):
        sock = _send_headers(url, f"/v1/models/{SVM}/predict", 10_000)
        sock.sendall(b"\x89PNG")
        tricklers.append(sock)

    def trickle(sock: socket.socket) -> int | None:
        sock.settimeout(0.3)
        deadline = time.monotonic() + 40 / 8 * BODY_TIMEOUT * 3
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"\0")
            except OSError:
                break
            try:
                head = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return None
            return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else None
        return None

    with ThreadPoolExecutor(len(tricklers)) as pool:
        results = pool.map(trickle, tricklers)
        start = time.perf_counter()
        r = requests.post(f"{url}/v1/models/{SVM}/predict", headers=AUTH, timeout=30,
                          files={"images": ("a.png", server["good"])})
        waited = time.perf_counter() - start
        health = requests.get(f"{url}/healthz", timeout=30)
        statuses = list(results)
    for s in tricklers:
        s.close()
    server["times"]["predict beside 40 slow clients"] = {"status": r.status_code,
                                                         "seconds": round(waited, 3)}
    assert r.status_code == 200 and health.status_code == 200
    # 8 threads, each trickler held at most BODY_TIMEOUT: the normal request waits for about
    # 40 / 8 rounds of the deadline (more on a loaded machine), not for ever. Behind the
    # documented nginx it does not wait at all (tests/test_proxy.py).
    assert waited < 40 / 8 * BODY_TIMEOUT * 3
    assert statuses.count(408) >= 30, statuses  # cut off with a 408 (or the socket closed)
    still_serving(server)


def test_deeply_nested_json_is_a_400(server):
    body = "[" * 100_000 + "]" * 100_000
    r = timed(server, "nested JSON 100k deep", lambda: requests.post(
        f"{server['url']}/v1/models/{SVM}/predict", headers={**AUTH, "Content-Type": "application/json"},
        data=body, timeout=30))
    assert_json_error(r, 400, "malformed_json")
    params = '{"a":' * 50 + "1" + "}" * 50
    r = requests.post(f"{server['url']}/v1/features", headers=AUTH, timeout=30,
                      data={"params": params}, files={"images": ("a.png", server["good"])})
    assert_json_error(r, 400, "invalid_option")
    still_serving(server)


# ------------------------------------------------------------------ formats

def test_formats_outside_the_list_are_415(server):
    from io import BytesIO

    from PIL import Image

    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n"
           b"newpath 0 0 moveto 32 32 lineto stroke showpage\n%%EOF\n")
    ico = BytesIO()
    Image.new("RGB", (32, 32), "red").save(ico, "ICO")
    for name, blob in (("x.eps", eps), ("x.ico", ico.getvalue())):
        r = timed(server, f"format {name}", lambda n=name, b=blob: requests.post(
            f"{server['url']}/v1/models/{SVM}/predict", headers=AUTH, timeout=30,
            files={"images": (n, b)}))
        body = assert_json_error(r, 415, "unsupported_image_format")
        assert body["details"]["index"] == 0
    still_serving(server)


# ------------------------------------------------------------------ information

def test_details_and_failures_stay_behind_the_token(server):
    url = server["url"]
    public = requests.get(f"{url}/v1/models/{MLP}", timeout=10).json()
    assert "versions" not in public and "dataset" not in public and "selection" not in public
    assert public["test_accuracy"] is not None and public["card"]["family"] == "classic"
    private = requests.get(f"{url}/v1/models/{MLP}", headers=AUTH, timeout=10).json()
    assert {"versions", "dataset", "selection"} <= set(private)
    listed = requests.get(f"{url}/v1/models", timeout=10).json()
    assert listed["unavailable"], "the models folder holds a model that fails to load"
    assert all(set(u) == {"name"} for u in listed["unavailable"])
    with_token = requests.get(f"{url}/v1/models", headers=AUTH, timeout=10).json()
    assert with_token["unavailable"] and all("reason" in u for u in with_token["unavailable"])
    ready = requests.get(f"{url}/readyz", timeout=10).json()
    assert ready["unavailable"] and all(isinstance(u, str) for u in ready["unavailable"])  # names only


def test_the_body_watchdog_never_cuts_a_connection_whose_body_is_in():
    """A request marks its body done under the watchdog's lock: after that, the watchdog cannot
    shut the socket, whose next keep-alive request may be reading already."""
    import time

    from service import guard

    class Socket:
        def __init__(self) -> None:
            self.entry = None
            self.cut_after_done = False

        def shutdown(self, how: int) -> None:
            self.cut_after_done |= self.entry.done

    sockets = []
    for i in range(2000):  # bodies that finish right at their deadline
        sock = Socket()
        sock.entry = guard._WATCHDOG.watch(sock, 0.0003)
        time.sleep(0.0003 if i % 2 else 0.0)
        sock.entry.finish()
        sockets.append(sock)
    time.sleep(0.05)
    assert not any(s.cut_after_done for s in sockets)
    assert all(s.entry.done for s in sockets)


def test_skops_is_required_at_the_trust_model_we_test_with():
    import importlib.metadata
    import re
    import tomllib
    from pathlib import Path

    from packaging.version import Version

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    (floor,) = [re.fullmatch(r"skops>=([\d.]+)", d.split(";")[0].strip())[1]
                for d in project["project"]["dependencies"] if d.startswith("skops")]
    assert Version(floor) >= Version("0.16")  # older versions load types nobody listed as trusted
    assert Version(importlib.metadata.version("skops")) >= Version(floor)
