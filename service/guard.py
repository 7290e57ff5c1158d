"""A deadline for receiving a request body, so a slow client cannot hold a worker thread.

gunicorn reads request bodies with blocking socket reads and no overall time limit: a client
that trickles a body a byte at a time keeps the thread that reads it for as long as it likes,
and a few dozen such clients take every thread of every worker. :class:`BodyDeadline` (WSGI
middleware) gives each body ``timeout`` seconds in all: one watchdog thread per process shuts
the socket's read side when a body's time is up, the read returns, and the request is answered
with 408. Bodies read in time cost a heap push and pop.

A body the application did not read (a 401, a 404) is read and dropped after the response has
been sent, within the same deadline, so that the client gets its answer at once and the
connection stays usable; a body declared larger than ``max_drain`` (the API's size limit) is
never read: the API refuses it from its headers and gunicorn closes the connection after
draining a little. ``cvpipe serve`` puts :mod:`service.front` before gunicorn, which reads
whole requests in an event loop first (bodies then arrive at once, and this deadline is a
second line); with ``--no-front``, run behind a buffering reverse proxy (nginx
``proxy_request_buffering on``, the default): see docs/nginx.conf.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import RequestTimeout

log = logging.getLogger(__name__)


class _Entry:
    __slots__ = ("deadline", "sock", "expired", "done", "_lock")

    def __init__(self, deadline: float, sock: socket.socket, lock: threading.Lock) -> None:
        self.deadline = deadline
        self.sock = sock
        self.expired = False
        self.done = False
        self._lock = lock

    def finish(self) -> None:
        """The body is in (or no longer wanted): under the watchdog's lock, so that once this
        returns the watchdog cannot shut the socket -- whose next keep-alive request may
        already be reading."""
        with self._lock:
            self.done = True


class _Watchdog:
    """One thread per process that shuts the read side of sockets whose deadline passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, _Entry]] = []
        self._count = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def watch(self, sock: socket.socket, seconds: float) -> _Entry:
        entry = _Entry(time.monotonic() + seconds, sock, self._lock)
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._heap, self._pid = [], os.getpid()  # forked: the parent's entries are not ours
                self._thread = threading.Thread(target=self._loop, name="cvpipe-body-deadline",
                                                daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (entry.deadline, next(self._count), entry))
            self._wake.notify()
        return entry

    def _loop(self) -> None:
        with self._lock:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, _, entry = self._heap[0]
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._wake.wait(remaining)
                    continue
                heapq.heappop(self._heap)
                if entry.done:
                    continue
                entry.expired = True
                try:
                    entry.sock.shutdown(socket.SHUT_RD)  # the blocked read returns now
                except OSError:
                    pass


_WATCHDOG = _Watchdog()


class _DeadlineInput:
    """``wsgi.input`` whose reads fail with 408 once the body's deadline has passed."""

    def __init__(self, stream: Any, entry: _Entry, length: int | None) -> None:
        self._stream = stream
        self._entry = entry
        self._left = length  # bytes still to come; None: unknown (chunked)

    def _after(self, data: bytes) -> bytes:
        if self._entry.expired:
            raise RequestTimeout("The request body did not arrive in time.")
        if self._left is not None:
            self._left -= len(data)
        if not data or (self._left is not None and self._left <= 0):
            self._entry.finish()  # all in: the watchdog lets this one go
        return data

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self._stream.read() if size is None or size < 0 else self._stream.read(size)
        except Exception:
            if self._entry.expired:
                raise RequestTimeout("The request body did not arrive in time.") from None
            raise
        return self._after(data)

    def readline(self, size: int | None = -1) -> bytes:
        try:
            data = self._stream.readline(size) if size and size > 0 else self._stream.readline()
        except Exception:
            if self._entry.expired:
                raise RequestTimeout("The request body did not arrive in time.") from None
            raise
        return self._after(data)

    def __iter__(self) -> Iterable[bytes]:
        while line := self.readline():
            yield line

    def drain(self, limit: int) -> None:
        """Read and drop what is left of the body (at most ``limit`` bytes), within the deadline."""
        try:
            if self._left is None or self._left > limit:
                return
            while self._left > 0 and not self._entry.done:
                if not self.read(min(1 << 16, self._left)):
                    break
        except Exception:  # noqa: BLE001 - timed out or gone: gunicorn closes the connection
            log.debug("could not drain a request body", exc_info=True)
        finally:
            self._entry.finish()


class _DrainAfter:
    """The application's response, then the unread rest of the request body dropped."""

    def __init__(self, result: Iterable[bytes], body: _DeadlineInput, limit: int) -> None:
        self._result = result
        self._body = body
        self._limit = limit

    def __iter__(self) -> Iterable[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            if hasattr(self._result, "close"):
                self._result.close()
        finally:
            self._body.drain(self._limit)


class BodyDeadline:
    """WSGI middleware: the request body must arrive within ``timeout`` seconds.

    Only requests served by gunicorn (``environ["gunicorn.socket"]``) with a body are watched;
    elsewhere (the test client, other servers) the application runs unchanged. After the
    response, an unread body of at most ``max_drain`` bytes is read and dropped (same deadline).
    """

    def __init__(self, app: Callable, timeout: float, max_drain: int = 0) -> None:
        self.app = app
        self.timeout = timeout
        self.max_drain = max_drain

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        sock = environ.get("gunicorn.socket")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if sock is None or self.timeout <= 0 or not (length > 0 or chunked):
            return self.app(environ, start_response)
        entry = _WATCHDOG.watch(sock, self.timeout)
        body = _DeadlineInput(environ["wsgi.input"], entry, None if chunked else length)
        environ["wsgi.input"] = body
        try:
            result = self.app(environ, start_response)
        except BaseException:
            entry.finish()
            raise
        return _DrainAfter(result, body, self.max_drain)
