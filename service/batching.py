"""Micro-batching: concurrent requests to one model share a single ``scores`` call.

A model call has a fixed cost (Python dispatch, input validation, feature-extractor set-up)
that dwarfs the per-image cost of a 32x32 image. While one call runs, the requests arriving in
the worker's other threads queue up; the next call takes them all at once.

A request announces itself (:meth:`MicroBatcher.incoming`) as soon as it is routed to the
model, before its images are decoded. A call about to start waits up to ``linger`` seconds
for the requests announced but not yet queued (they are being decoded in other threads), so
that they join it instead of each paying for a call of their own. A lone request never waits.

Only one call per model runs at a time in a process (the model need not be thread-safe), and a
request's own result is returned as soon as the call that contains it ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

ScoreFn = Callable[[np.ndarray], tuple[np.ndarray, str]]


class _Job:
    __slots__ = ("images", "done", "lead", "scores", "kind", "error")

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.done = threading.Event()
        self.lead = False  # woken to run the next call rather than with a result
        self.scores: np.ndarray | None = None
        self.kind = ""
        self.error: BaseException | None = None


class MicroBatcher:
    """Run ``fn`` on the images of every request waiting, concatenated, one call at a time.

    Parameters
    ----------
    fn : callable
        ``fn(images uint8 (N, H, W, 3)) -> (scores (N, C), kind)``.
    max_images : int
        Most images in one call; a single request larger than this still runs whole.
    on_batch : callable, optional
        Called with (requests, images) of every call, e.g. to record batch sizes.
    """

    def __init__(self, fn: ScoreFn, max_images: int = 1024,
                 on_batch: Callable[[int, int], None] | None = None, linger: float = 0.002) -> None:
        self.fn = fn
        self.max_images = max_images
        self.on_batch = on_batch
        self.linger = linger
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: list[_Job] = []
        self._busy = False
        self._coming = 0  # requests announced and not queued yet

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
        """(scores, kind) of ``images``, computed alone or together with other requests'."""
        job = _Job(images)
        with self._lock:
            self._queue.append(job)
            if announced:
                self._coming -= 1
            self._arrived.notify_all()
            lead = not self._busy
            self._busy = True
        if not lead:
            job.done.wait()
            if not job.lead:
                return self._result(job)
        # This thread runs calls until its own job is done, then hands over to a waiting one.
        while job.scores is None and job.error is None:
            self._run_once()
        return self._result(job)

    @staticmethod
    def _result(job: _Job) -> tuple[np.ndarray, str]:
        if job.error is not None:
            raise job.error
        assert job.scores is not None
        return job.scores, job.kind

    def _take(self) -> list[_Job]:
        with self._lock:
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

    def _run_once(self) -> None:
        batch = self._take()
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([j.images for j in batch])
            scores, kind = self.fn(images)
            scores = np.asarray(scores)
            start = 0
            for job in batch:
                job.scores, job.kind = scores[start: start + len(job.images)], kind
                start += len(job.images)
        except BaseException as exc:  # noqa: BLE001 - every request of the call gets the error
            for job in batch:
                job.error = exc
        else:
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch), len(images))
                except Exception:  # noqa: BLE001 - metrics must not fail predictions
                    pass
        with self._lock:
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                nxt.done.set()
            else:
                self._busy = False
        for job in batch:
            if not job.lead:
                job.done.set()
