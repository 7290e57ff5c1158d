"""The browser side of the API: the page at ``/``, Swagger UI at ``/docs`` and the comparison
reports the server was pointed at, all served by the app itself (no CDN, no build step)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, send_from_directory

from service.errors import ApiError
from service.reports import report_file

STATIC = Path(__file__).with_name("static")
#: Swagger UI's files that /docs needs (from the swagger-ui-bundle package).
DOCS_ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
               "favicon-32x32.png", "favicon-16x16.png")

bp = Blueprint("ui", __name__, static_folder=str(STATIC), static_url_path="/ui")

_DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cvpipe API - interactive documentation</title>
<link rel="icon" href="/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head><body>
<p style="font-family: sans-serif; margin: 8px 16px"><a href="/">&larr; classify images in the browser</a></p>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
<script src="/ui/docs.js"></script>
</body></html>
"""


def _html(text: str) -> Response:
    resp = Response(text, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/")
def page() -> Response:
    """Classify images in the browser with every served model side by side."""
    return _html((STATIC / "index.html").read_text())


@bp.get("/docs")
def docs() -> Response:
    """Swagger UI on /openapi.json; "try it out" calls this server."""
    return _html(_DOCS)


@bp.get("/docs/assets/<path:name>")
def docs_asset(name: str) -> Response:
    from swagger_ui_bundle import swagger_ui_path

    if name not in DOCS_ASSETS:
        raise ApiError(404, "not_found", f"No documentation asset {name!r}.")
    return send_from_directory(swagger_ui_path, name, max_age=3600)


@bp.get("/reports/<name>/<file>")
def report(name: str, file: str) -> Response:
    """A file of a comparison report listed by GET /v1/reports."""
    root = current_app.config.get("REPORTS_DIR")
    path = report_file(root, name, file)
    if path is None:
        raise ApiError(404, "not_found", f"No report file {name}/{file} on this server"
                       + ("" if root else " (start it with cvpipe serve --reports DIR)") + ".")
    return send_from_directory(path.parent, path.name, max_age=0)
