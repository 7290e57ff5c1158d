"""Prometheus metrics of the API: requests, errors, images and latency per endpoint and model.

Under gunicorn with several workers (``PROMETHEUS_MULTIPROC_DIR`` set before
:mod:`prometheus_client` is first imported, as ``cvpipe serve`` does) every worker writes its
samples to memory-mapped files in that folder and ``/metrics`` adds up all workers. Otherwise
each application keeps its own registry, so several apps in one process (tests) do not clash.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Latency buckets in seconds: fine below 50 ms, where single-image predictions fall.
LATENCY_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Label values come from fixed sets only: a client inventing methods must not create series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def multiprocess_dir() -> str | None:
    """The multiprocess folder when multiprocess mode is on, else None."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return path if path and os.path.isdir(path) else None


class ApiMetrics:
    """The API's metrics and their exposition.

    Labels: ``endpoint`` (the Flask endpoint, e.g. ``api.predict``; ``unmatched`` for unknown
    URLs), ``model`` (a loaded model's name or ``""``: unknown names never become labels),
    ``method`` (a standard HTTP method, else ``other``) and, for counters, ``status`` (HTTP
    status) or ``error`` (the JSON error code). Every label takes its value from a fixed set, so
    no request can add series.
    """

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # Multiprocess values live in files whatever the registry; a private one avoids the
        # global registry's duplicate-name checks.
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("cvpipe_http_requests", "HTTP requests answered.",
                                ["endpoint", "model", "method", "status"], registry=reg)
        self.errors = Counter("cvpipe_http_errors", "Requests answered with an error, by error code.",
                              ["endpoint", "model", "error"], registry=reg)
        self.latency = Histogram("cvpipe_http_request_duration_seconds",
                                 "Time from request start to response, in seconds.",
                                 ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=reg)
        self.images = Counter("cvpipe_images", "Images received in requests.",
                              ["endpoint", "model"], registry=reg)
        self.batch_images = Histogram("cvpipe_inference_batch_images",
                                      "Images per model call (requests are batched together).",
                                      ["model"], buckets=BATCH_BUCKETS, registry=reg)
        self.batch_requests = Histogram("cvpipe_inference_batch_requests",
                                        "Requests sharing one model call.", ["model"],
                                        buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=reg)
        self.models_loaded = Gauge("cvpipe_models_loaded", "Models loaded and served.",
                                   registry=reg, multiprocess_mode="max")

    def observe(self, endpoint: str, model: str, method: str, status: int, seconds: float,
                error: str | None, images: int) -> None:
        """Record one answered request."""
        method = method if method in METHODS else "other"
        self.requests.labels(endpoint, model, method, str(status)).inc()
        self.latency.labels(endpoint, model).observe(seconds)
        if error is not None:
            self.errors.labels(endpoint, model, error).inc()
        if images:
            self.images.labels(endpoint, model).inc(images)

    def observe_batch(self, model: str, requests: int, images: int) -> None:
        """Record one model call serving ``requests`` requests with ``images`` images in all."""
        self.batch_images.labels(model).observe(images)
        self.batch_requests.labels(model).observe(requests)

    def exposition(self) -> tuple[bytes, str]:
        """(Prometheus text format of every metric, its content type)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
