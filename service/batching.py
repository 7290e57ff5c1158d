"""Micro-batching: concurrent requests to one model share a single ``scores`` call.

A model call has a fixed cost (Python dispatch, input validation, feature-extractor set-up)
that dwarfs the per-image cost of a 32x32 image. Each model has one thread that runs its calls,
one at a time (the model need not be thread-safe); while a call runs, the requests arriving in
the worker's other threads queue up, and the next call takes them all at once.

A request announces itself (:meth:`MicroBatcher.incoming`) as soon as it is routed to the
model, before its images are decoded. A call about to start waits up to ``linger`` seconds
for the requests announced but not yet queued (they are being decoded in other threads), so
that they join it instead of each paying for a call of their own. A lone request never waits.

Faults stay with the request that caused them:

* a request waits at most ``timeout`` seconds for its result, then gets
  :class:`BatchTimeout` (a hung model call makes its model's requests fail, not hang);
* when a call holding several requests fails, each request is scored again on its own, so only
  the request whose input broke the model gets the error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

log = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray], tuple[np.ndarray, str]]


class BatchTimeout(Exception):
    """A request's result did not come within the batcher's timeout."""


class _Job:
    __slots__ = ("images", "done", "scores", "kind", "error")

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.done = threading.Event()
        self.scores: np.ndarray | None = None
        self.kind = ""
        self.error: BaseException | None = None


class MicroBatcher:
    """Run ``fn`` on the images of every request waiting, concatenated, one call at a time.

    Parameters
    ----------
    fn : callable
        ``fn(images uint8 (N, H, W, C)) -> (scores (N, n_classes), kind)``.
    max_images : int
        Most images in one call; a single request larger than this still runs whole.
    on_batch : callable, optional
        Called with (requests, images) of every call, e.g. to record batch sizes.
    linger : float
        Seconds a call waits for announced requests to join it.
    timeout : float
        Seconds a request waits for its result before :class:`BatchTimeout`.
    """

    def __init__(self, fn: ScoreFn, max_images: int = 1024,
                 on_batch: Callable[[int, int], None] | None = None, linger: float = 0.002,
                 timeout: float = 30.0) -> None:
        self.fn = fn
        self.max_images = max_images
        self.on_batch = on_batch
        self.linger = linger
        self.timeout = timeout
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: list[_Job] = []
        self._coming = 0  # requests announced and not queued yet
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    @contextmanager
    def incoming(self) -> Iterator[Callable[[np.ndarray], tuple[np.ndarray, str]]]:
        """Announce a request; yields the function that scores its images (call it at most once).

        Leaving the block without scoring (bad input) withdraws the announcement.
        """
        state = {"queued": False}
        with self._lock:
            self._coming += 1

        def score(images: np.ndarray) -> tuple[np.ndarray, str]:
            state["queued"] = True
            return self(images, announced=True)

        try:
            yield score
        finally:
            if not state["queued"]:
                with self._lock:
                    self._coming -= 1
                    self._arrived.notify_all()

    def __call__(self, images: np.ndarray, announced: bool = False) -> tuple[np.ndarray, str]:
        """(scores, kind) of ``images``, computed alone or together with other requests'.

        Raises
        ------
        BatchTimeout
            No result within ``timeout`` seconds (the model is stuck or overloaded).
        """
        job = _Job(images)
        with self._lock:
            self._start_thread()
            self._queue.append(job)
            if announced:
                self._coming -= 1
            self._arrived.notify_all()
        if not job.done.wait(self.timeout):
            with self._lock:
                if job in self._queue:  # not started: it will never run
                    self._queue.remove(job)
            if not job.done.is_set():
                raise BatchTimeout(f"no result within {self.timeout:g} s")
        if job.error is not None:
            raise job.error
        assert job.scores is not None
        return job.scores, job.kind

    def _start_thread(self) -> None:
        """The model's thread, started on first use in each process (gunicorn forks after the
        models are loaded, and threads do not survive a fork). Called with the lock held."""
        if self._pid != os.getpid():  # a forked child: nothing of the parent's queue is ours
            self._queue, self._coming, self._thread = [], 0, None
            self._pid = os.getpid()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="cvpipe-model", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = self._take()
            self._run(batch)

    def _take(self) -> list[_Job]:
        with self._lock:
            while not self._queue:
                self._arrived.wait()
            # Wait (briefly, GIL released) for requests already on their way to this model.
            deadline = time.monotonic() + self.linger
            while self._coming > 0 and sum(len(j.images) for j in self._queue) < self.max_images:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
            batch, n = [], 0
            while self._queue and (not batch or n + len(self._queue[0].images) <= self.max_images):
                job = self._queue.pop(0)
                batch.append(job)
                n += len(job.images)
            return batch

    def _score(self, batch: list[_Job]) -> None:
        images = batch[0].images if len(batch) == 1 else np.concatenate([j.images for j in batch])
        scores, kind = self.fn(images)
        scores = np.asarray(scores)
        start = 0
        for job in batch:
            job.scores, job.kind = scores[start: start + len(job.images)], kind
            start += len(job.images)
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), len(images))
            except Exception:  # noqa: BLE001 - metrics must not fail predictions
                log.debug("on_batch failed", exc_info=True)

    def _run(self, batch: list[_Job]) -> None:
        try:
            self._score(batch)
        except Exception as exc:  # noqa: BLE001 - handed to the requests, never raised here
            if len(batch) == 1:
                batch[0].error = exc
            else:  # find the request(s) that broke the call: each one alone
                for job in batch:
                    try:
                        self._score([job])
                    except Exception as own:  # noqa: BLE001
                        job.error = own
        for job in batch:
            job.done.set()
