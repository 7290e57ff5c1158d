"""A buffering front for the API: whole requests are read in an event loop, then handed over.

gunicorn's threaded workers read a request's headers and body in the thread that serves it,
so a client that trickles a body holds a thread until the body deadline, and a hundred such
clients hold them all. This front does what a buffering reverse proxy (nginx's
``proxy_request_buffering on``) does, in the ``cvpipe serve`` process tree:

1. **Accept and read** in one asyncio event loop: the request line and headers within
   ``header_timeout`` seconds (at most :data:`MAX_HEADER_BYTES`), then the body within
   ``body_timeout`` seconds (declared or chunked, at most ``max_body`` bytes). A slow client
   costs a coroutine and its bytes so far, never a worker thread; one past a deadline gets
   408, one too large 413 (from its ``Content-Length``, before anything is read).
2. **Hand over** the complete request to gunicorn on a local Unix socket (``Content-Length``
   set, ``Connection: close``), and read its whole response (the worker is free as soon as
   it has written it).
3. **Answer** the client with that response, at whatever speed the client reads, and close.
   A refused request's connection is half-closed first and what its client still sends is
   dropped for up to two seconds, so that it reads the answer instead of a reset.

Requests are parsed with h11 (HTTP/1.1, chunked bodies, ``Expect: 100-continue``); the bytes
buffered across all connections are bounded by ``max_buffered`` (past it: 503).

Run by ``cvpipe serve`` (``python -m service.front``); ``--no-front`` binds gunicorn directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass

import h11

log = logging.getLogger("cvpipe.front")

#: Longest request line + headers.
MAX_HEADER_BYTES = 16 * 1024
#: Longest response accepted from the API (reports' figures are the largest: a few MB).
MAX_RESPONSE_BYTES = 256 << 20
#: How long, and how many bytes, a refused request's body is read and dropped before the
#: connection is closed (see ``_linger``).
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20
#: Hop-by-hop headers and framing the front sets itself.
_DROPPED = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"expect",
            b"te", b"trailer", b"upgrade", b"proxy-connection", b"x-forwarded-for"}


@dataclass(frozen=True)
class Limits:
    """What one request may take: seconds for its headers and its body, bytes of body, and
    bytes buffered across all requests at once; seconds to wait for the API's response."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_body: int = 32 * 1024 * 1024
    max_buffered: int = 1 << 30
    response_timeout: float = 300.0


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def _answer(status: int, reason: str, message: str) -> bytes:
    """A response in the API's own error shape (service.errors): error, message, status."""
    body = (json.dumps({"error": reason.lower().replace(" ", "_"), "message": message,
                        "status": status}) + "\n").encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class Front:
    """The event loop's side: ``await Front(backend, limits).serve(host, port)``.

    Parameters
    ----------
    backend : str
        The Unix socket gunicorn listens on.
    limits : Limits
    """

    def __init__(self, backend: str, limits: Limits) -> None:
        self.backend = backend
        self.limits = limits
        self.buffered = 0  # body bytes held now, all connections together
        self._connections: set[asyncio.Task] = set()

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None) -> None:
        server = await asyncio.start_server(self._connection, host, port, limit=MAX_HEADER_BYTES,
                                            reuse_address=True, backlog=1024)
        log.info("front listening on %s:%d, forwarding whole requests to %s", host, port, self.backend)
        if ready is not None:
            ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            # connections still open (a refused body being drained, a slow reader) end with the
            # server, not as tasks the event loop destroys pending when it closes
            for task in self._connections:
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        held = 0
        this = asyncio.current_task()
        self._connections.add(this)
        try:
            try:
                request, body, held = await self._read_request(reader, writer)
            except _Refused as refused:
                writer.write(_answer(refused.status, refused.reason, refused.message))
                await writer.drain()
                await _linger(reader, writer)
                return
            if request is None:  # closed before a request
                return
            response = await self._forward(request, body, peer[0] if peer else "")
            self.buffered -= held
            held = 0
            writer.write(response)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass  # the client left
        finally:
            self._connections.discard(this)
            self.buffered -= held
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                            ) -> tuple[h11.Request | None, bytes, int]:
        """(request, body, bytes counted against the budget) -- or None when the client
        closed first. Stages 1's deadlines and limits; raises :class:`_Refused`."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.header_timeout
        request = None
        chunks: list[bytes] = []
        size = held = 0
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise TimeoutError
                    data = await asyncio.wait_for(reader.read(65536), left)
                    conn.receive_data(data)
                    if not data and request is None:
                        return None, b"", held
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return None, b"", held
                if isinstance(event, h11.Request):
                    request = event
                    declared = _content_length(event.headers)
                    if declared is not None and declared > self.limits.max_body:
                        raise _Refused(413, "Payload Too Large", f"The request body ({declared} bytes) "
                                       f"is over the limit of {self.limits.max_body} bytes.")
                    held = declared or 0
                    if self.buffered + held > self.limits.max_buffered:
                        held = 0
                        raise _Refused(503, "Service Unavailable", "The server is busy; try again.")
                    self.buffered += held
                    if (b"expect", b"100-continue") in [(k.lower(), v.lower()) for k, v in event.headers]:
                        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    deadline = loop.time() + self.limits.body_timeout
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                    size += len(event.data)
                    if size > self.limits.max_body:
                        raise _Refused(413, "Payload Too Large", "The request body is over the "
                                       f"limit of {self.limits.max_body} bytes.")
                    if size > held:  # chunked: counted as it arrives
                        if self.buffered + size - held > self.limits.max_buffered:
                            raise _Refused(503, "Service Unavailable", "The server is busy; try again.")
                        self.buffered += size - held
                        held = size
                elif isinstance(event, h11.EndOfMessage):
                    return request, b"".join(chunks), held
        except TimeoutError:
            self.buffered -= held
            if request is None:
                raise _Refused(408, "Request Timeout",
                               "The request headers did not arrive in time.") from None
            raise _Refused(408, "Request Timeout", "The request body did not arrive in time.") from None
        except h11.RemoteProtocolError as exc:
            self.buffered -= held
            raise _Refused(400, "Bad Request", f"Malformed HTTP request ({exc}).") from None
        except _Refused:
            self.buffered -= held
            raise

    async def _forward(self, request: h11.Request, body: bytes, client: str) -> bytes:
        """Stage 2: the whole request to gunicorn, its whole response back."""
        lines = [request.method + b" " + request.target + b" HTTP/1.1"]
        lines += [k + b": " + v for k, v in request.headers if k.lower() not in _DROPPED]
        lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close",
                  b"X-Forwarded-For: " + client.encode()]
        try:
            reader, writer = await asyncio.open_unix_connection(self.backend, limit=1 << 20)
        except OSError as exc:
            log.warning("the API is not reachable at %s: %s", self.backend, exc)
            return _answer(502, "Bad Gateway", "The API is not reachable; try again.")
        try:
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            await writer.drain()
            response = await asyncio.wait_for(reader.read(MAX_RESPONSE_BYTES + 1),
                                              self.limits.response_timeout)
            parts = [response]
            total = len(response)
            while response:
                response = await asyncio.wait_for(reader.read(1 << 20), self.limits.response_timeout)
                parts.append(response)
                total += len(response)
                if total > MAX_RESPONSE_BYTES:
                    return _answer(502, "Bad Gateway", "The API's response is too large.")
            return b"".join(parts)
        except (TimeoutError, OSError) as exc:
            log.warning("no response from the API: %s", exc)
            return _answer(504, "Gateway Timeout", "The API did not answer in time.")
        finally:
            writer.close()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After a refusal, half-close and drop what the client still sends, for a moment.

    A socket closed with unread bytes resets the connection: a client still sending the body
    it declared (curl, requests) then fails with a broken pipe or a reset and never reads the
    413 or 408 already sent. Closing our side only once the client stops sending (at most
    :data:`LINGER_SECONDS`, :data:`LINGER_BYTES`) lets it read the answer (nginx's lingering
    close); the coroutine costs no worker.
    """
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
    loop = asyncio.get_running_loop()
    deadline, dropped = loop.time() + LINGER_SECONDS, 0
    while dropped < LINGER_BYTES:
        left = deadline - loop.time()
        if left <= 0:
            return
        try:
            data = await asyncio.wait_for(reader.read(65536), left)
        except (TimeoutError, ConnectionError, OSError):
            return
        if not data:
            return
        dropped += len(data)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value)  # h11 has checked it
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m service.front --listen HOST:PORT --backend SOCKET [limits]``."""
    p = argparse.ArgumentParser(prog="python -m service.front", description=__doc__.split("\n")[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", required=True, help="gunicorn's Unix socket")
    p.add_argument("--body-timeout", type=float, default=Limits.body_timeout)
    p.add_argument("--header-timeout", type=float, default=Limits.header_timeout)
    p.add_argument("--max-body", type=int, default=Limits.max_body)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits(header_timeout=args.header_timeout, body_timeout=args.body_timeout or 3600.0,
                    max_body=args.max_body)
    front = Front(args.backend, limits)

    parent = os.getppid()

    async def orphaned(stopping: asyncio.Event) -> None:
        while os.getppid() == parent:  # cvpipe serve gone without stopping us: stop too
            await asyncio.sleep(1.0)
        stopping.set()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        watch = asyncio.create_task(orphaned(stopping))  # noqa: F841 - runs until the loop ends
        task = asyncio.create_task(front.serve(args.host, args.port))
        done, _ = await asyncio.wait([task, asyncio.create_task(stopping.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # a bind error: raise it
        task.cancel()

    try:
        asyncio.run(run())
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover - run by cvpipe serve
    raise SystemExit(main())

