"""JSON errors: every failure reaches the client as ``{"error", "message", "status"}``, never a trace.

Error codes (the ``error`` field) are stable identifiers a client may branch on; the message is
for people.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, g, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

#: Error code of each HTTP status werkzeug raises on its own (routing, body limits).
HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
}
#: Headers of a werkzeug exception's own response worth keeping on the JSON one.
_KEEP_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


class ApiError(Exception):
    """A request the API refuses, with the status and the message the client gets.

    Parameters
    ----------
    status : int
        HTTP status (4xx).
    code : str
        Machine-readable error code, e.g. ``"bad_image"``.
    message : str
        What went wrong and, where useful, how to fix it.
    details : dict, optional
        Extra fields of the error body (e.g. ``{"index": 3}``).
    headers : dict, optional
        Extra response headers (e.g. ``WWW-Authenticate``).
    """

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """A JSON error response; the code is also left in ``g.error_code`` for the metrics."""
    body: dict[str, Any] = {"error": code, "message": message, "status": status}
    if details:
        body["details"] = details
    resp = jsonify(body)
    resp.status_code = status
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    g.error_code = code
    return resp


def register_error_handlers(app: Flask) -> None:
    """Answer :class:`ApiError`, every werkzeug HTTP error and any other exception in JSON."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status >= 500:
            return _internal(exc)
        headers = {}
        try:
            original = exc.get_response()
            headers = {k: original.headers[k] for k in _KEEP_HEADERS if k in original.headers}
        except Exception:  # noqa: BLE001 - the headers are a nicety
            pass
        code = HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        if status == 413:
            limit = current_app.config.get("MAX_CONTENT_LENGTH")
            message = (f"The request body is over the limit of {limit} bytes." if limit else
                       "The request body is larger than this server accepts.")
        return error_response(status, code, message, headers=headers)

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal", "Internal server error; the server log has the details.")
