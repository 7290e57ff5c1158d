"""Operational endpoints: ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from service.openapi import build_openapi

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up and answering."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """200 once at least one model is loaded, else 503."""
    reg = current_app.extensions["cvpipe"]["registry"]
    ready = len(reg) > 0
    resp = jsonify({"status": "ready" if ready else "not_ready", "models": list(reg.models),
                    "unavailable": sorted(reg.failed)})
    resp.status_code = 200 if ready else 503
    return resp


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of the request, error, image and latency metrics."""
    body, content_type = current_app.extensions["cvpipe"]["metrics"].exposition()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of this server (its models, limits and authentication)."""
    return jsonify(document())


def document() -> dict:
    """This server's OpenAPI document, built once."""
    ext = current_app.extensions["cvpipe"]
    if "openapi" not in ext:
        ext["openapi"] = build_openapi(current_app.config, list(ext["registry"].models))
    return ext["openapi"]
