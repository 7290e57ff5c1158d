"""The API's contract as JSON Schema, in one place: the request options the handlers parse
and check with :class:`Option`, the response bodies (:data:`SCHEMAS`) that the handlers'
answers are checked against in testing (:func:`check_response`), and from both of which
:mod:`service.openapi` assembles the OpenAPI document.

Schemas are OpenAPI 3.0 schema objects (JSON Schema draft 4 plus ``nullable``, ``example``,
``format``); :func:`json_schema` turns one into plain draft 4 for the validator.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema

from cvpipe.features import FEATURE_NAMES
from service.errors import ApiError
from service.features import feature_names
from service.inputs import MAX_JSON_DEPTH, too_deep


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# --------------------------------------------------------------------------- request options

#: Largest top_k a request may ask for (a model with fewer classes returns them all).
MAX_TOP_K = 1000
#: Image sides (pixels) /v1/features accepts for ``size``.
MIN_SIDE, MAX_SIDE = 8, 512
#: ``size`` as text: "32" (square), "32x48" or "32,48" (height, width).
SIZE_TEXT = r"^([0-9]{1,4})(?:[x,]([0-9]{1,4}))?$"
_DIGITS = re.compile(r"-?[0-9]{1,9}")  # a sign too: "-2" is below the minimum, not "not an integer"


def _size_from_text(text: str) -> list[int]:
    m = re.fullmatch(SIZE_TEXT, text)
    assert m is not None  # the text schema matched
    return [int(m[1]), int(m[2] or m[1])]


def _json_from_text(text: str) -> Any:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("is not JSON text") from None
    if too_deep(value):
        raise ValueError(f"nests more than {MAX_JSON_DEPTH} deep")
    return value


class Option:
    """One request option: the schema of its value and, where a query string or form field
    spells it differently, the schema of that text and how to read the value from it.

    :meth:`parse` is how every handler reads the option, and the OpenAPI document shows
    the same two schemas, so the two cannot disagree.
    """

    def __init__(self, name: str, value: dict[str, Any], text: dict[str, Any] | None = None,
                 from_text: Callable[[str], Any] | None = None) -> None:
        self.name, self.value, self.text, self.from_text = name, value, text, from_text

    def parse(self, raw: Any) -> Any:
        """The option's value from what a request gave (a JSON value, or text to read); a 400
        ``invalid_option`` :class:`ApiError` naming what is wrong if it does not fit."""
        value = raw
        if isinstance(raw, str) and self.text is not None:
            self._check(self.text, self._text_validator, raw)
            try:
                value = self.from_text(raw) if self.from_text else raw
            except ValueError as exc:
                raise ApiError(400, "invalid_option", f"{self.name} {exc}", {"option": self.name}) from None
        elif isinstance(raw, str) and self.value.get("type") == "integer" and _DIGITS.fullmatch(raw):
            value = int(raw)
        self._check(self.value, self._value_validator, value)
        return value

    # compiled once, on first use (the schemas they resolve against are defined below)
    @functools.cached_property
    def _value_validator(self) -> jsonschema.Draft4Validator:
        return validator(json.dumps(self.value, sort_keys=True))

    @functools.cached_property
    def _text_validator(self) -> jsonschema.Draft4Validator:
        return validator(json.dumps(self.text, sort_keys=True))

    def _check(self, schema: dict[str, Any], compiled: jsonschema.Draft4Validator, value: Any) -> None:
        error = jsonschema.exceptions.best_match(compiled.iter_errors(value))
        if error is not None:
            message = error.message if len(error.message) <= 160 else f"{error.message[:157]}..."
            raise ApiError(400, "invalid_option", f"{self.name}: {message}. {schema['description']}",
                           {"option": self.name})


#: Every option an endpoint reads, by name.
OPTIONS: dict[str, Option] = {
    "top_k": Option("top_k", {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K,
                              "description": "Classes per image, best first (at most the "
                              "model's classes)."}),
    "size": Option(
        "size",
        {"type": "array", "minItems": 2, "maxItems": 2,
         "items": {"type": "integer", "minimum": MIN_SIDE, "maximum": MAX_SIDE},
         "description": f"[height, width] to resize to before extracting (sides {MIN_SIDE}.."
                        f"{MAX_SIDE}). Default: the model's input size, else 32x32."},
        {"type": "string", "pattern": SIZE_TEXT, "example": "32x32",
         "description": f"Resize to HxW before extracting (sides {MIN_SIDE}..{MAX_SIDE}); '32' "
                        "means 32x32. Default: the model's input size, else 32x32."},
        _size_from_text),
    "features": Option("features", {"type": "string", "enum": feature_names(), "default": "hog+color",
                                    "description": "Which features."}),
    "params": Option(
        "params",
        {"type": "object", "additionalProperties": True,
         "description": "Feature parameters (see cvpipe.features), e.g. {\"orientations\": 12}."},
        {"type": "string", "description": "Feature parameters as JSON object text, e.g. "
                                          '{"orientations": 12}.'},
        _json_from_text),
    "model": Option("model", {"type": "string", "description": "Use this model's feature "
                              "configuration and input size instead of features/params."}),
}


# --------------------------------------------------------------------------- responses

_NUMBER_OR_NULL = {"type": "number", "nullable": True}
_STRING_OR_NULL = {"type": "string", "nullable": True}

#: Every response body, by name (``#/components/schemas/<name>`` in the document).
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
                "properties": {"name": {"type": "string", "enum": list(FEATURE_NAMES)},
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


# --------------------------------------------------------------------------- validation

def json_schema(schema: Any) -> Any:
    """An OpenAPI 3.0 schema object as plain JSON Schema draft 4: ``nullable: true`` becomes
    a ``null`` type (or an ``anyOf`` with one); everything else is kept."""
    if isinstance(schema, list):
        return [json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: json_schema(v) for k, v in schema.items() if k != "nullable"}
    if schema.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.lru_cache(maxsize=256)
def validator(schema_json: str) -> jsonschema.Draft4Validator:
    """A compiled validator of a schema (given as canonical JSON text, so it can be cached),
    its ``$ref`` s resolved against :data:`SCHEMAS`."""
    root = {**json_schema(json.loads(schema_json)),
            "components": {"schemas": json_schema(SCHEMAS)}}
    return jsonschema.Draft4Validator(root)


def check_response(schema: dict[str, Any], body: Any) -> None:
    """Raise ``AssertionError`` naming the first place ``body`` breaks ``schema`` (an OpenAPI
    response schema, ``$ref`` s into :data:`SCHEMAS`)."""
    error = jsonschema.exceptions.best_match(
        validator(json.dumps(schema, sort_keys=True)).iter_errors(body))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise AssertionError(f"response body breaks its documented schema at {where}: "
                             f"{error.message[:300]}")
