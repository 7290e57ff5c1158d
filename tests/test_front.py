"""The buffering front (service.front) against a stand-in backend on a Unix socket: whole
requests forwarded once complete, deadlines, limits and malformed input answered by the front."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from service.front import Front, Limits


class Backend:
    """Answers every request with what it received (the request bytes) as the body."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()


@pytest.fixture
def front(tmp_path):
    """(port, backend, front) with small deadlines, running in a thread of its own."""
    path = tmp_path / "api.sock"
    backend = Backend(path)
    limits = Limits(header_timeout=1.0, body_timeout=1.0, max_body=1000, max_buffered=2500)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    the_front = Front(str(path), limits)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[asyncio.AbstractServer, asyncio.Task]:
        api = await asyncio.start_unix_server(backend.handle, str(path))
        started = asyncio.Event()
        task = asyncio.create_task(the_front.serve("127.0.0.1", port, started))
        await started.wait()
        return api, task

    async def stop() -> None:
        task.cancel()
        api.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    api, task = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield port, backend, the_front
    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def exchange(port: int, data: bytes, pause_after: int | None = None, wait: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if pause_after is None:
            sock.sendall(data)
        else:
            sock.sendall(data[:pause_after])
            time.sleep(wait)
            try:
                sock.sendall(data[pause_after:])
            except OSError:
                pass
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_a_whole_request_is_forwarded_once_complete(front):
    port, backend, _ = front
    body = b"x" * 600
    out = exchange(port, b"POST /v1/models/m/predict?top_k=2 HTTP/1.1\r\nHost: localhost:8000\r\n"
                   b"Content-Type: image/png\r\nContent-Length: 600\r\nConnection: keep-alive\r\n\r\n"
                   + body, pause_after=100, wait=0.3)
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(body)
    (seen,) = backend.requests
    head = seen.split(b"\r\n\r\n")[0].lower()
    assert seen.startswith(b"POST /v1/models/m/predict?top_k=2 HTTP/1.1\r\n")
    assert b"host: localhost:8000" in head and b"content-length: 600" in head
    assert b"connection: close" in head and b"keep-alive" not in head
    assert b"x-forwarded-for: 127.0.0.1" in head


def test_chunked_bodies_and_expect_continue(front):
    port, backend, _ = front
    out = exchange(port, b"POST /p HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                   b"Expect: 100-continue\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert out.endswith(b"hello world")
    head = backend.requests[0].split(b"\r\n\r\n")[0].lower()
    assert b"content-length: 11" in head and b"transfer-encoding" not in head and b"expect" not in head


@pytest.mark.parametrize(("request_bytes", "pause_after", "status"), [
    (b"POST /p HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc", 60, b"408"),  # slow body
    (b"POST /p HTTP/1.1\r\nHost: loc", 20, b"408"),  # slow headers
    (b"POST /p HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n", None, b"413"),
    (b"POST /p HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n", None, b"413"),
    (b"GARBAGE\r\n\r\n", None, b"400"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", None, b"400"),
    (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 20_000 + b"\r\n\r\n", None, b"400"),
])
def test_the_front_answers_what_never_reaches_the_api(front, request_bytes, pause_after, status):
    port, backend, the_front = front
    start = time.monotonic()
    out = exchange(port, request_bytes, pause_after=pause_after, wait=1.5 if pause_after else 0.0)
    assert out.split(b" ")[1] == status, out[:200]
    assert b"application/json" in out and time.monotonic() - start < 5
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])  # the API's own error shape
    assert body["status"] == int(status) and body["error"] and body["message"]
    assert backend.requests == [] and the_front.buffered == 0


def test_bytes_buffered_at_once_are_bounded(front):
    port, backend, the_front = front
    held = []
    for _ in range(2):  # 2 x 1000 declared bytes of the 2500 allowed, bodies still to come
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /p HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
        held.append(sock)
    time.sleep(0.2)
    out = exchange(port, b"POST /p HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n" + b"z" * 1000)
    assert out.startswith(b"HTTP/1.1 503")
    for sock in held:
        sock.close()
    time.sleep(0.3)
    assert the_front.buffered == 0
    assert exchange(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_an_unreachable_api_is_a_502(front, tmp_path):
    port, backend, the_front = front
    Path(backend.path).unlink()
    out = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502")


def test_a_refused_client_still_sending_reads_its_answer_and_a_stopped_front_ends_its_connections(
        tmp_path):
    """After a 413 the front drains what the client still sends (a lingering close) and the
    client reads the answer; stopping the front ends that connection, no task left pending."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> None:
        front = Front(str(tmp_path / "api.sock"), Limits(max_body=1000))
        started = asyncio.Event()
        serving = asyncio.create_task(front.serve("127.0.0.1", port, started))
        await started.wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /p HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000000\r\n\r\n")
        await asyncio.sleep(0.2)  # refused by now
        writer.write(b"\0" * 1_000_000)  # the body still coming: drained, not reset
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 413")
        serving.cancel()  # the client has not closed: its connection lingers until the stop
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        assert asyncio.all_tasks() == {asyncio.current_task()}
        writer.close()

    asyncio.run(scenario())
