"""The OpenAPI 3 document of the API, assembled from :mod:`service.schemas` (the options the
handlers parse and the bodies they answer with) and filled in with this server's settings.

The document describes the running server: its models (the ``name`` path parameter lists
them), its limits (``maxItems`` of ``images`` is ``MAX_IMAGES``) and whether the predict and
features endpoints need a bearer token. What is written here is the prose: summaries,
descriptions and which status codes each operation answers with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cvpipe import __version__
from cvpipe.images import IMAGE_FORMATS
from service.schemas import OPTIONS, SCHEMAS


def _example_png() -> str:
    """Base64 of a small valid PNG (an 8x8 colour gradient), the documented example image."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:8, 0:8]
    img = np.stack([xx * 32, yy * 32, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


EXAMPLE_PNG = _example_png()


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _image_bodies(max_images: int, options: dict[str, Any], form_options: dict[str, Any]
                  ) -> dict[str, Any]:
    """The three ways to send images, with the endpoint's options as body fields."""
    images_json = {"type": "array", "minItems": 1, "maxItems": max_images,
                   "items": {"type": "string", "format": "byte"},
                   "description": "Base64-encoded image files (a data: URL prefix is accepted)."}
    images_form = {"type": "array", "minItems": 1, "maxItems": max_images,
                   "items": {"type": "string", "format": "binary"},
                   "description": "Image files (repeat the field for several)."}
    raw = {"schema": {"type": "string", "format": "binary"}}
    return {
        "required": True,
        "description": f"Images in {', '.join(IMAGE_FORMATS)} format, any size and mode (grayscale, "
                       "RGBA, palette, 16-bit); EXIF orientation is applied. Other formats are refused.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["images"], "additionalProperties": False,
                           "properties": {"images": images_form, **form_options}},
                "encoding": {"images": {"contentType": "image/*, application/octet-stream"}},
            },
            "application/json": {
                "schema": {"type": "object", "required": ["images"], "additionalProperties": False,
                           "properties": {"images": images_json, **options}},
                "example": {"images": [EXAMPLE_PNG]},
            },
            "image/*": raw,
            "application/octet-stream": raw,
        },
    }


def build_openapi(settings: Mapping[str, Any], models: list[str]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of a server with these settings and loaded models.

    Parameters
    ----------
    settings : mapping
        The app's configuration (``MAX_IMAGES``, ``API_TOKEN``, ``TOP_K``, ...).
    models : list of str
        Names of the served models; the ``name`` path parameter enumerates them.

    Returns
    -------
    dict
        A JSON-serialisable OpenAPI 3.0.3 document.
    """
    max_images = int(settings["MAX_IMAGES"])
    auth = bool(settings.get("API_TOKEN"))
    security = [{"bearerAuth": []}] if auth else []
    name_schema: dict[str, Any] = {"type": "string"}
    if models:
        name_schema["enum"] = list(models)
    model_param = {"name": "name", "in": "path", "required": True, "schema": name_schema,
                   "description": "A served model (GET /v1/models lists them)."}
    defaults = {"top_k": settings["TOP_K"]}

    def as_json(name: str) -> dict[str, Any]:  # in a JSON body
        value = OPTIONS[name].value
        return {**value, "default": defaults[name]} if name in defaults else value

    def as_text(name: str) -> dict[str, Any]:  # in a query string or a form field
        return OPTIONS[name].text or as_json(name)

    def query(*names: str) -> list[dict[str, Any]]:
        return [{"name": n, "in": "query", "required": False, "schema": as_text(n)} for n in names]

    def bodies(n_images: int, *names: str) -> dict[str, Any]:
        return _image_bodies(n_images, {n: as_json(n) for n in names}, {n: as_text(n) for n in names})

    limits = (f"Limits: {max_images} images per request, {settings['MAX_CONTENT_LENGTH']} bytes per "
              f"body, {settings['MAX_PIXELS']} pixels per image.")
    common_errors = {
        "400": _error("Bad input: empty body, not an image, truncated image, invalid base64, malformed "
                      "JSON or multipart body, unknown field or query parameter, or invalid option."),
        "401": _error("Missing or wrong bearer token (only when the server has CVPIPE_API_TOKEN)."),
        "413": _error("Body, image (pixels) or number of images over the server's limits."),
        "415": _error("Content-Type is not multipart/form-data, application/json, image/* or "
                      "application/octet-stream, or an image is in a format outside "
                      f"{', '.join(IMAGE_FORMATS)} (unsupported_image_format)."),
        "500": _error("Internal error: a generic message; the details are in the server's log."),
    }
    paths: dict[str, Any] = {
        "/v1/models": {"get": {
            "operationId": "listModels", "tags": ["models"], "summary": "Served models",
            "description": "Every loaded model with its features, classifier, classes, test accuracy "
                           "and creation time, and any model that failed to load.",
            "responses": {"200": _json("The models.", "ModelList")},
        }},
        "/v1/models/{name}": {"get": {
            "operationId": "getModel", "tags": ["models"], "summary": "One model in detail",
            "parameters": [model_param],
            "responses": {"200": _json("The model.", "ModelDetail"),
                          "404": _error("No such model.")},
        }},
        "/v1/models/{name}/predict": {"post": {
            "operationId": "predict", "tags": ["predict"], "summary": "Classify images",
            "description": "Top-k classes per image with probabilities, or decision scores where the "
                           "model has no probabilities (score_kind says which), with the model's name "
                           f"and version and the time taken. {limits}",
            "parameters": [model_param, *query("top_k")],
            "requestBody": bodies(max_images, "top_k"),
            "security": security,
            "responses": {"200": _json("Predictions, in the order of the images.", "PredictResponse"),
                          **common_errors, "404": _error("No such model."),
                          "503": _error("The model gave no answer in time (CVPIPE_PREDICT_TIMEOUT); "
                                        "Retry-After says when to try again.")},
        }},
        "/v1/models/{name}/pictures": {"post": {
            "operationId": "pictures", "tags": ["predict"], "summary": "What the features see",
            "description": "For one image: the image as the model receives it (its input size "
                           "and channels, enlarged without smoothing), its HOG glyphs and its "
                           "colour histogram (with the model's HOG and colour parameters where "
                           f"it has them), as PNG data URIs. {limits}",
            "parameters": [model_param],
            "requestBody": bodies(1),
            "security": security,
            "responses": {"200": _json("The pictures.", "PicturesResponse"), **common_errors,
                          "404": _error("No such model.")},
        }},
        "/v1/reports": {"get": {
            "operationId": "listReports", "tags": ["models"], "summary": "Comparison reports",
            "description": "The reports of `cvpipe compare` (and `cvpipe summary`) the server was "
                           "started with (`cvpipe serve --reports DIR`), newest first; empty "
                           "without it.",
            "responses": {"200": _json("The reports.", "ReportList")},
        }},
        "/v1/features": {"post": {
            "operationId": "features", "tags": ["features"], "summary": "Extract feature vectors",
            "description": "Hand-made feature vectors of the images (HOG, colour histograms, "
                           "pixels; with model=, that model's features, learned patch features "
                           f"included), with the feature configuration echoed. {limits}",
            "parameters": query("features", "params", "size", "model"),
            "requestBody": bodies(max_images, "features", "params", "size", "model"),
            "security": security,
            "responses": {"200": _json("One vector per image.", "FeaturesResponse"), **common_errors,
                          "404": _error("The model named by 'model' is not served.")},
        }},
        "/healthz": {"get": {
            "operationId": "healthz", "tags": ["operations"], "summary": "Liveness",
            "responses": {"200": _json("The process answers.", "Health")},
        }},
        "/readyz": {"get": {
            "operationId": "readyz", "tags": ["operations"], "summary": "Readiness",
            "responses": {"200": _json("At least one model is loaded.", "Ready"),
                          "503": _json("No model is loaded.", "Ready")},
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "tags": ["operations"], "summary": "Prometheus metrics",
            "description": "cvpipe_http_requests_total, cvpipe_http_errors_total, "
                           "cvpipe_images_total and the cvpipe_http_request_duration_seconds "
                           "histogram, labelled by endpoint and model.",
            "responses": {"200": {"description": "Prometheus text format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "tags": ["operations"], "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3 document.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        }},
    }
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "cvpipe prediction API",
            "version": __version__,
            "description": "Classify images with hand-made-feature models (HOG, colour histograms, "
                           "learned patches + SVM/MLP) or a CNN, each on the dataset it was trained "
                           "on (an upload is converted to its size and channels), and extract the "
                           "features themselves. "
                           "Errors are JSON {error, message, status}. "
                           + ("The predict and features endpoints need 'Authorization: Bearer <token>'."
                              if auth else "Authentication is off on this server (set "
                              "CVPIPE_API_TOKEN to require a bearer token on predict and features)."),
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
    if auth:
        doc["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "The token the server was started with (CVPIPE_API_TOKEN)."}}
    return doc


def response_schema(document: dict[str, Any], rule: str, method: str, status: int
                    ) -> dict[str, Any] | None:
    """The documented JSON schema of an answer: ``rule`` a Flask URL rule
    (``/v1/models/<name>/predict``), None when the path or its JSON body is not documented.
    An error an operation does not list (the server-wide guards': host not allowed, body over
    the limit) is the Error schema every error has; ``AssertionError`` for another unlisted
    status."""
    path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)
    operation = document["paths"].get(path, {}).get(method.lower())
    if operation is None:
        return None
    answer = operation["responses"].get(str(status))
    if answer is None and status >= 400:
        return _ref("Error")
    if answer is None:
        raise AssertionError(f"{method} {path} answered {status}, which its document does not list")
    return answer.get("content", {}).get("application/json", {}).get("schema")
