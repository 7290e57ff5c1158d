"""The ``/v1`` endpoints: list models, predict, extract features."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, g, jsonify, request

from cvpipe.images import DEFAULT_FIT
from cvpipe.models import ModelInput, model_card
from service.auth import authorised, check_token
from service.batching import BatchTimeout
from service.errors import ApiError
from service.features import ExtractorCache, parse_spec
from service.inputs import decode_images, option, read_images
from service.registry import ModelRegistry, ServedModel
from service.schemas import OPTIONS

bp = Blueprint("api", __name__, url_prefix="/v1")

#: Most feature values (images x dimension) one /v1/features response may hold.
MAX_FEATURE_VALUES = 4_000_000
DECISION_NOTE = ("decision scores, not probabilities: this model has no probability estimates; "
                 "higher means more likely, and scores are not comparable across models")


def registry() -> ModelRegistry:
    return current_app.extensions["cvpipe"]["registry"]


def _decode_for(taken: ModelInput, uploads: list) -> np.ndarray:
    """The uploads converted to what a model takes, within the server's decode limits."""
    cfg = current_app.config
    return decode_images(uploads, taken.size, cfg["MAX_PIXELS"], cfg["MAX_REQUEST_PIXELS"],
                         cfg["MAX_DECODE_BYTES"], taken.channels, taken.fit)


def _model(name: str) -> ServedModel:
    model = registry().get(name)
    if model is None:
        known = ", ".join(registry().models) or "none"
        # a model on disk that failed to load is named as such (why: GET /v1/models, to a
        # client allowed to see it), not left to look like a typo
        why = " (it failed to load: GET /v1/models says why)" if name in registry().failed else ""
        raise ApiError(404, "unknown_model", f"No model called {name!r} is served{why}; models: {known}.",
                       {"model": name})
    g.model_label = name
    return model


def _elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


@bp.get("/models")
def list_models() -> Response:
    """Every served model with its summary, and the models that could not be loaded (why, only
    to a client with the token when authentication is on)."""
    reg = registry()
    show = authorised()
    return jsonify({"models": [m.summary for m in reg.models.values()],
                    "unavailable": [{"name": n, **({"reason": r} if show else {})}
                                    for n, r in reg.failed.items()]})


@bp.get("/models/<name>")
def get_model(name: str) -> Response:
    """One model's summary and metrics; with the token (or without authentication) also how it
    was selected, the dataset it was trained on and the library versions."""
    model = _model(name)
    meta = model.metadata
    body = {**model.summary, "metrics": meta.get("metrics")}
    if authorised():
        body.update(versions=meta.get("versions"), selection=meta.get("selection"),
                    dataset=meta.get("dataset"))
    return jsonify(body)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of the ``k`` best classes per row, best first; ties keep the lower
    class index first, as ``argmax`` does."""
    k = min(k, scores.shape[1])
    if k == 1:
        idx = scores.argmax(axis=1)[:, None]
    else:
        idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(scores, idx, axis=1)


@bp.post("/models/<name>/predict")
def predict(name: str) -> Response:
    """Top-k classes of each image with probabilities (or decision scores), model and timings."""
    start = g.get("start", time.perf_counter())
    check_token()
    model = _model(name)
    cfg = current_app.config
    uploads, options = read_images(request, cfg["MAX_IMAGES"], ("top_k",))
    k = option(options, "top_k", OPTIONS["top_k"].parse, cfg["TOP_K"])
    g.n_images = len(uploads)
    # Announced once the body is in (only CPU work left before scoring), so that a call about
    # to start may wait for this request rather than for the network.
    with model.batcher.incoming() as score:
        t0 = time.perf_counter()
        images = _decode_for(model.input, uploads)
        t1 = time.perf_counter()
        try:
            scores, kind = model.scores(images, score)
        except BatchTimeout:
            raise ApiError(503, "model_timeout", f"Model {name!r} gave no answer within "
                           f"{model.batcher.timeout:g} s; try again later.", {"model": name},
                           headers={"Retry-After": "5"}) from None
        t2 = time.perf_counter()
    idx, best = top_k(scores, k)
    best = np.round(best.astype(np.float64), 6).tolist()
    classes = model.classes
    predictions = []
    for i, (up, row, vals) in enumerate(zip(uploads, idx.tolist(), best, strict=True)):
        predictions.append({
            "index": i,
            "name": up.name,
            "label": classes[row[0]],
            "class_index": row[0],
            "score": vals[0],
            "top_k": [{"label": classes[c], "class_index": c, "score": v}
                      for c, v in zip(row, vals, strict=True)],
        })
    body: dict[str, Any] = {
        "model": {"name": model.name, "version": model.version, "kind": model.metadata.get("kind")},
        "score_kind": kind,
        "top_k": min(k, len(classes)),
        "predictions": predictions,
        "timing_ms": {"decode": round((t1 - t0) * 1000, 3), "inference": round((t2 - t1) * 1000, 3),
                      "total": _elapsed_ms(start)},
    }
    if kind != "probability":
        body["score_note"] = DECISION_NOTE
    return jsonify(body)


@bp.post("/features")
def features() -> Response:
    """Feature vectors of the uploaded images (a named feature set, or a model's own), with
    the configuration used."""
    start = g.get("start", time.perf_counter())
    check_token()
    cfg = current_app.config
    uploads, options = read_images(request, cfg["MAX_IMAGES"], ("features", "params", "size", "model"))
    name, params, size, model_name = (option(options, n, OPTIONS[n].parse)
                                      for n in ("features", "params", "size", "model"))
    size = tuple(size) if size is not None else None
    if model_name is not None:
        if name is not None or params is not None:
            raise ApiError(400, "invalid_option", "give either model (use its features) or "
                           "features/params, not both", {"option": "model"})
        served = _model(model_name)
        taken = served.input
        if taken.features is None:
            raise ApiError(400, "no_features", f"model {model_name!r} "
                           f"({model_card(served.metadata)['family']}) has no hand-made features",
                           {"model": model_name})
        spec = taken.features
        fitted = taken.extractor if spec.stateful else None
        if fitted is not None and size is not None and tuple(size) != taken.size:
            raise ApiError(400, "invalid_option", f"model {model_name!r} learned its features on "
                           f"{taken.size[0]}x{taken.size[1]} images: leave size out",
                           {"option": "size"})
        taken = dataclasses.replace(taken, size=size or taken.size)
    else:
        spec, fitted = parse_spec(name or OPTIONS["features"].value["default"], params), None
        taken = ModelInput(size or (32, 32), 3, DEFAULT_FIT)
    size = taken.size
    cache: ExtractorCache = current_app.extensions["cvpipe"]["extractors"]
    extractor = cache.get(spec, size, params, fitted=fitted, owner=model_name or "",
                          channels=taken.channels)
    if len(uploads) * extractor.dim > MAX_FEATURE_VALUES:
        raise ApiError(413, "result_too_large", f"{len(uploads)} images x {extractor.dim} values is "
                       f"over the limit of {MAX_FEATURE_VALUES} values per response: send fewer "
                       "images or a smaller size")
    g.n_images = len(uploads)
    t0 = time.perf_counter()
    images = _decode_for(taken, uploads)
    t1 = time.perf_counter()
    vectors = extractor.transform(images)
    t2 = time.perf_counter()
    return jsonify({
        "features": extractor.config,
        "model": model_name,
        "input_size": list(size),
        "dim": extractor.dim,
        "results": [{"index": i, "name": up.name, "vector": vec}
                    for i, (up, vec) in enumerate(zip(uploads, vectors.tolist(), strict=True))],
        "timing_ms": {"decode": round((t1 - t0) * 1000, 3), "extract": round((t2 - t1) * 1000, 3),
                      "total": _elapsed_ms(start)},
    })


@bp.post("/models/<name>/pictures")
def pictures(name: str) -> Response:
    """What a hand-made pipeline sees of one image: the image as the model receives it
    (enlarged without smoothing), its HOG glyphs and its colour histogram, as PNG data URIs."""
    from service.pictures import pictures as draw

    start = g.get("start", time.perf_counter())
    check_token()
    model = _model(name)
    uploads, _ = read_images(request, 1, ())
    g.n_images = 1
    t0 = time.perf_counter()
    image = _decode_for(model.input, uploads)[0]
    t1 = time.perf_counter()
    drawn = draw(image, model.metadata.get("features"))
    return jsonify({"model": name, **model.input.metadata(),
                    "features": model.metadata.get("features"), "pictures": drawn,
                    "timing_ms": {"decode": round((t1 - t0) * 1000, 3),
                                  "draw": _elapsed_ms(t1), "total": _elapsed_ms(start)}})


@bp.get("/reports")
def list_reports() -> Response:
    """The comparison reports the server was pointed at (``cvpipe serve --reports``), each with
    the URL of its page."""
    from service.reports import list_reports as found

    return jsonify({"reports": found(current_app.config.get("REPORTS_DIR"))})
