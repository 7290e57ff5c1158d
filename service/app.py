"""The Flask application factory of the prediction API."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request

from service import api, health, ui
from service.config import host_allowed, load_settings
from service.errors import ApiError, register_error_handlers
from service.features import ExtractorCache
from service.guard import BodyDeadline
from service.metrics import ApiMetrics
from service.openapi import response_schema
from service.registry import ModelRegistry
from service.schemas import check_response

log = logging.getLogger(__name__)

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "no-referrer"}
#: The page, /docs and the API: scripts and styles from this server only (Swagger UI sets
#: inline styles), images also as data: URLs (the page shows what it uploads).
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
               "frame-ancestors 'none'")
#: A comparison report: its figures are data: URLs, its styles inline; nothing else.
REPORT_POLICY = ("sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                 "frame-ancestors 'none'")


def create_app(config: Mapping[str, Any] | None = None, registry: ModelRegistry | None = None) -> Flask:
    """Build the API: settings from the environment and ``config``, models loaded from the folder.

    Parameters
    ----------
    config : mapping, optional
        Settings overriding the environment (see :mod:`service.config`), e.g.
        ``{"MODELS_DIR": "models", "API_TOKEN": "secret", "MAX_IMAGES": 64}``; other keys go to
        Flask's configuration as they are.
    registry : ModelRegistry, optional
        Already loaded models (tests share one between apps); default: load ``MODELS_DIR``.

    With Flask's ``TESTING`` (or ``CHECK_RESPONSES``) set, every JSON answer of a documented
    operation is checked against its schema in the OpenAPI document (``AssertionError`` if not).

    Returns
    -------
    flask.Flask
        The application; ``app.extensions["cvpipe"]`` holds its ``registry``, ``metrics`` and
        feature ``extractors``.
    """
    settings = load_settings(config)
    app = Flask(__name__)
    app.config.update(settings)
    app.config["MAX_FORM_PARTS"] = max(1000, 2 * settings["MAX_IMAGES"] + 16)
    app.json.sort_keys = False  # keep the documented field order

    if registry is None:
        registry = ModelRegistry(settings["MODELS_DIR"]).load_all()
        if settings["WARMUP"]:
            registry.warm_up()
    metrics = ApiMetrics()
    metrics.models_loaded.set(len(registry))
    for name, model in registry.models.items():
        model.batcher.on_batch = functools.partial(metrics.observe_batch, name)
        model.batcher.linger = settings["BATCH_LINGER_MS"] / 1000.0
        model.batcher.timeout = settings["PREDICT_TIMEOUT"]
    app.extensions["cvpipe"] = {"registry": registry, "metrics": metrics,
                                "extractors": ExtractorCache()}

    app.register_blueprint(api.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(ui.bp)
    register_error_handlers(app)

    @app.before_request
    def _start_timer() -> None:
        g.start = time.perf_counter()
        # a page elsewhere whose name resolves here (DNS rebinding) gives its own name
        if not host_allowed(request.environ.get("HTTP_HOST"), settings["ALLOWED_HOSTS"]):
            raise ApiError(400, "host_not_allowed", "This server does not answer to that host name; "
                           "allow it with CVPIPE_ALLOWED_HOSTS.")
        # Refuse an over-long body from its declared length, before reading any of it.
        length = request.content_length
        if length is not None and length > settings["MAX_CONTENT_LENGTH"]:
            raise ApiError(413, "payload_too_large", f"The request body ({length} bytes) is over "
                           f"the limit of {settings['MAX_CONTENT_LENGTH']} bytes.",
                           {"limit": settings["MAX_CONTENT_LENGTH"]})

    @app.after_request
    def _protect(resp: Response) -> Response:
        # no page of another origin frames these, no type sniffing; reports (self-contained
        # HTML written from dataset names) are sandboxed: no script, an origin of their own
        for name, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(name, value)
        policy = REPORT_POLICY if request.path.startswith("/reports/") else PAGE_POLICY
        resp.headers.setdefault("Content-Security-Policy", policy)
        return resp

    @app.after_request
    def _record(resp: Response) -> Response:
        start = g.get("start")
        if start is not None:
            endpoint = (request.endpoint or "unmatched") if request.url_rule else "unmatched"
            metrics.observe(endpoint=endpoint,
                            model=g.get("model_label", ""), method=request.method,
                            status=resp.status_code, seconds=time.perf_counter() - start,
                            error=g.get("error_code"), images=g.get("n_images", 0))
        return resp

    if app.testing or app.config.get("CHECK_RESPONSES"):
        @app.after_request
        def _check(resp: Response) -> Response:
            # every JSON answer of a documented operation matches its documented schema: the
            # handlers and the OpenAPI document share service.schemas, this keeps them honest
            if request.url_rule is not None and resp.is_json:
                schema = response_schema(health.document(), request.url_rule.rule, request.method,
                                         resp.status_code)
                if schema is not None:
                    check_response(schema, resp.get_json())
            return resp

    # A body must arrive within BODY_TIMEOUT seconds under gunicorn (service.guard).
    app.wsgi_app = BodyDeadline(app.wsgi_app, settings["BODY_TIMEOUT"],  # type: ignore[method-assign]
                                settings["MAX_CONTENT_LENGTH"])
    log.info("cvpipe API ready: %d model(s), authentication %s", len(registry),
             "on" if settings["API_TOKEN"] else "off")
    return app
