"""The OpenAPI 3 document of the API, written by hand and filled in with this server's settings.

The document describes the running server: its models (the ``name`` path parameter lists
them), its limits (``maxItems`` of ``images`` is ``MAX_IMAGES``) and whether the predict and
features endpoints need a bearer token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cvpipe import __version__
from cvpipe.images import IMAGE_FORMATS
from service.api import MAX_SIDE, MAX_TOP_K, MIN_SIDE
from service.features import feature_names


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


_NUMBER_OR_NULL = {"type": "number", "nullable": True}
_STRING_OR_NULL = {"type": "string", "nullable": True}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message", "status"],
        "properties": {
            "error": {"type": "string", "description": "Stable error code, e.g. bad_image, "
                      "unknown_model, too_many_images, unsupported_media_type.",
                      "example": "bad_image"},
            "message": {"type": "string", "description": "What went wrong, for people."},
            "status": {"type": "integer", "description": "The HTTP status again."},
            "details": {"type": "object", "description": "Context, e.g. the index of the bad image.",
                        "additionalProperties": True},
        },
    },
    "ScoredClass": {
        "type": "object",
        "required": ["label", "class_index", "score"],
        "properties": {
            "label": {"type": "string", "example": "cat"},
            "class_index": {"type": "integer", "minimum": 0},
            "score": {"type": "number", "description": "Probability (0..1) or decision score, as "
                      "score_kind says."},
        },
    },
    "Prediction": {
        "type": "object",
        "required": ["index", "name", "label", "class_index", "score", "top_k"],
        "properties": {
            "index": {"type": "integer", "minimum": 0, "description": "Position in the request."},
            "name": {"type": "string", "description": "File name, images[i] (JSON) or body."},
            "label": {"type": "string", "description": "The predicted class."},
            "class_index": {"type": "integer", "minimum": 0},
            "score": {"type": "number"},
            "top_k": {"type": "array", "items": _ref("ScoredClass"),
                      "description": "The best classes, best first."},
        },
    },
    "ModelRef": {
        "type": "object",
        "required": ["name", "version", "kind"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string", "description": "<created UTC>-<sha256 of model.json, 12 hex>",
                        "example": "20250101T120000Z-0123456789ab"},
            "kind": _STRING_OR_NULL,
        },
    },
    "PredictResponse": {
        "type": "object",
        "required": ["model", "score_kind", "top_k", "predictions", "timing_ms"],
        "properties": {
            "model": _ref("ModelRef"),
            "score_kind": {"type": "string", "enum": ["probability", "decision"],
                           "description": "probability: calibrated class probabilities; decision: "
                           "the model has none, scores are classifier margins."},
            "score_note": {"type": "string", "description": "Present for decision scores."},
            "top_k": {"type": "integer", "minimum": 1},
            "predictions": {"type": "array", "items": _ref("Prediction")},
            "timing_ms": {
                "type": "object", "required": ["decode", "inference", "total"],
                "properties": {"decode": {"type": "number"}, "inference": {"type": "number"},
                               "total": {"type": "number", "description": "Server time of the request."}},
            },
        },
    },
    "FeatureConfig": {
        "type": "object",
        "required": ["name", "params", "components", "effective", "key"],
        "properties": {
            "name": {"type": "string", "example": "hog+color"},
            "params": {"type": "object", "additionalProperties": True,
                       "description": "The parameters as requested ({} with model=)."},
            "components": {"type": "array", "items": {
                "type": "object", "required": ["name", "params"],
                "properties": {"name": {"type": "string", "enum": ["hog", "color", "pixels"]},
                               "params": {"type": "object", "additionalProperties": True}}},
                "description": "The feature set: its extractors in output order, with the parameters "
                               "given for each (a model's feature set may repeat a kind)."},
            "effective": {"type": "object", "additionalProperties": {"type": "object"},
                          "description": "Every parameter of every component, defaults included, "
                          "by component (hog, color; hog_0, hog_1, ... when a kind repeats), "
                          "e.g. {\"hog\": {\"orientations\": 9, ...}, \"color\": {...}}."},
            "key": {"type": "string", "pattern": "^[0-9a-f]{16}$",
                    "description": "Stable key of the feature set (its effective parameters)."},
        },
    },
    "FeaturesResponse": {
        "type": "object",
        "required": ["features", "model", "input_size", "dim", "results", "timing_ms"],
        "properties": {
            "features": _ref("FeatureConfig"),
            "model": {**_STRING_OR_NULL, "description": "The model whose features were used, if any."},
            "input_size": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                           "description": "[height, width] the images were resized to."},
            "dim": {"type": "integer", "minimum": 0},
            "results": {"type": "array", "items": {
                "type": "object", "required": ["index", "name", "vector"],
                "properties": {"index": {"type": "integer"}, "name": {"type": "string"},
                               "vector": {"type": "array", "items": {"type": "number"}}}}},
            "timing_ms": {
                "type": "object", "required": ["decode", "extract", "total"],
                "properties": {"decode": {"type": "number"}, "extract": {"type": "number"},
                               "total": {"type": "number"}},
            },
        },
    },
    "ModelSummary": {
        "type": "object",
        "required": ["name", "version", "kind", "classes", "input_size", "features", "classifier",
                     "test_accuracy", "created"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "kind": {**_STRING_OR_NULL, "description": "classic (features + classifier) or cnn."},
            "pipeline": _STRING_OR_NULL,
            "card": {"type": "object", "description": "What the model is, for people.",
                     "properties": {"family": _STRING_OR_NULL, "features": _STRING_OR_NULL,
                                    "classifier": _STRING_OR_NULL, "description": _STRING_OR_NULL}},
            "classes": {"type": "array", "items": {"type": "string"}},
            "input_size": {"type": "array", "items": {"type": "integer"}},
            "channels": {"type": "integer", "enum": [1, 3],
                         "description": "3: RGB; 1: gray (uploads are converted)."},
            "fit": {"type": "string", "enum": ["crop", "pad", "stretch"],
                    "description": "How an upload of another size reaches input_size."},
            "trained_on": {**_STRING_OR_NULL, "description": "The dataset's name."},
            "fit_seconds": {**_NUMBER_OR_NULL, "description": "Time of the final fit."},
            "size_bytes": {"type": "integer", "description": "Bytes of the model's files."},
            "features": {"type": "object", "nullable": True, "additionalProperties": True,
                         "description": "Feature configuration; null for a CNN."},
            "classifier": {"type": "object", "additionalProperties": True},
            "test_accuracy": _NUMBER_OR_NULL,
            "accuracy": {"type": "object", "additionalProperties": _NUMBER_OR_NULL,
                         "description": "Accuracy per split (train, val, test)."},
            "created": _STRING_OR_NULL,
            "score_kind": {"type": "string", "nullable": True, "enum": ["probability", "decision", None]},
        },
    },
    "ModelDetail": {
        "allOf": [_ref("ModelSummary"), {
            "type": "object",
            "properties": {
                "metrics": {"type": "object", "nullable": True, "additionalProperties": True},
                "versions": {"type": "object", "nullable": True, "additionalProperties": True,
                             "description": "Only with the token when authentication is on."},
                "selection": {"type": "object", "nullable": True, "additionalProperties": True,
                              "description": "Only with the token when authentication is on."},
                "dataset": {"type": "object", "nullable": True, "additionalProperties": True,
                            "description": "Only with the token when authentication is on; URLs "
                            "carry no credentials."},
            },
        }],
    },
    "ModelList": {
        "type": "object",
        "required": ["models", "unavailable"],
        "properties": {
            "models": {"type": "array", "items": _ref("ModelSummary")},
            "unavailable": {"type": "array", "description": "Models that failed to load (the reason "
                            "only with the token when authentication is on).", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "reason": {"type": "string"}}}},
        },
    },
    "PicturesResponse": {
        "type": "object",
        "required": ["model", "input_size", "channels", "pictures", "timing_ms"],
        "properties": {
            "model": {"type": "string"},
            "input_size": {"type": "array", "items": {"type": "integer"}},
            "channels": {"type": "integer"},
            "fit": {"type": "string"},
            "features": {"type": "object", "nullable": True, "additionalProperties": True},
            "pictures": {
                "type": "object", "required": ["input", "hog", "histogram"],
                "description": "PNG data URIs: the image as the model receives it (enlarged "
                "without smoothing), its HOG glyphs and its colour (gray: intensity) histogram.",
                "properties": {k: {"type": "string", "pattern": "^data:image/png;base64,"}
                               for k in ("input", "hog", "histogram")}},
            "timing_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "ReportList": {
        "type": "object", "required": ["reports"],
        "properties": {"reports": {"type": "array", "items": {
            "type": "object", "required": ["name", "url", "title"],
            "properties": {"name": {"type": "string"}, "url": {"type": "string"},
                           "title": {"type": "string"}, "dataset": _STRING_OR_NULL,
                           "created": _STRING_OR_NULL}}}},
    },
    "Health": {"type": "object", "required": ["status"],
               "properties": {"status": {"type": "string", "enum": ["ok"]}}},
    "Ready": {
        "type": "object", "required": ["status", "models", "unavailable"],
        "properties": {"status": {"type": "string", "enum": ["ready", "not_ready"]},
                       "models": {"type": "array", "items": {"type": "string"}},
                       "unavailable": {"type": "array", "items": {"type": "string"}}},
    },
}


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
    names = feature_names()
    security = [{"bearerAuth": []}] if auth else []
    name_schema: dict[str, Any] = {"type": "string"}
    if models:
        name_schema["enum"] = list(models)
    model_param = {"name": "name", "in": "path", "required": True, "schema": name_schema,
                   "description": "A served model (GET /v1/models lists them)."}
    top_k_schema = {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": settings["TOP_K"],
                    "description": "Classes per image, best first (at most the model's classes)."}
    size_text = {"type": "string", "pattern": r"^[0-9]{1,4}([x,][0-9]{1,4})?$",
                 "description": f"Resize to HxW before extracting (sides {MIN_SIDE}..{MAX_SIDE}); "
                 "'32' means 32x32. Default: the model's input size, else 32x32.", "example": "32x32"}
    size_json = {"type": "array", "minItems": 2, "maxItems": 2,
                 "items": {"type": "integer", "minimum": MIN_SIDE, "maximum": MAX_SIDE},
                 "description": "[height, width] to resize to before extracting."}
    features_name = {"type": "string", "enum": names, "default": "hog+color",
                     "description": "Which features."}
    params_text = {"type": "string", "description": "Feature parameters as JSON object text, e.g. "
                   '{"orientations": 12}.'}
    params_json = {"type": "object", "additionalProperties": True,
                   "description": "Feature parameters (see cvpipe.features), e.g. {\"orientations\": 12}."}
    model_field = {"type": "string", "description": "Use this model's feature configuration and "
                   "input size instead of features/params."}
    limits = (f"Limits: {max_images} images per request, {settings['MAX_CONTENT_LENGTH']} bytes per "
              f"body, {settings['MAX_PIXELS']} pixels per image.")
    common_errors = {
        "400": _error("Bad input: empty body, not an image, truncated image, invalid base64, malformed "
                      "JSON or multipart body, unknown field or invalid option."),
        "401": _error("Missing or wrong bearer token (only when the server has CVPIPE_API_TOKEN)."),
        "413": _error("Body, image (pixels) or number of images over the server's limits."),
        "415": _error("Content-Type is not multipart/form-data, application/json, image/* or "
                      "application/octet-stream, or an image is in a format outside "
                      f"{', '.join(IMAGE_FORMATS)} (unsupported_image_format)."),
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
            "parameters": [model_param, {"name": "top_k", "in": "query", "required": False,
                                         "schema": top_k_schema}],
            "requestBody": _image_bodies(max_images, {"top_k": top_k_schema},
                                         {"top_k": top_k_schema}),
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
            "requestBody": _image_bodies(1, {}, {}),
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
            "description": "HOG / colour-histogram vectors of the images, with the feature "
                           f"configuration echoed. {limits}",
            "parameters": [
                {"name": "features", "in": "query", "schema": features_name},
                {"name": "params", "in": "query", "schema": params_text},
                {"name": "size", "in": "query", "schema": size_text},
                {"name": "model", "in": "query", "schema": model_field},
            ],
            "requestBody": _image_bodies(
                max_images,
                {"features": features_name, "params": params_json, "size": size_json, "model": model_field},
                {"features": features_name, "params": params_text, "size": size_text, "model": model_field}),
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
