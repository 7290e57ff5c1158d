"""Feature extractors for ``POST /v1/features``, built from a request's feature set and cached."""

from __future__ import annotations

import functools
import itertools
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from cvpipe.errors import ConfigError
from cvpipe.features import FEATURE_NAMES, RUNTIME_PARAMS, FeatureSpec, fit_to_shape
from cvpipe.storage import canonical_json, to_jsonable
from service.errors import ApiError

#: Extractor parameters about where and how fast to compute, not what: the server decides.
SERVER_PARAMS = RUNTIME_PARAMS | {"chunk_size"}
_CACHE_SIZE = 32


@functools.cache
def feature_names() -> list[str]:
    """Every feature name a request may give: each component (``hog``, ``color``, ...) and
    every ordered "+" combination of distinct components."""
    names = []
    for n in range(1, len(FEATURE_NAMES) + 1):
        names += ["+".join(p) for p in itertools.permutations(FEATURE_NAMES, n)]
    return names


def parse_spec(features: str | dict[str, Any], params: dict[str, Any] | None = None) -> FeatureSpec:
    """The :class:`FeatureSpec` of a request (a name and params) or of a model; 400 if invalid."""
    bad = sorted(k for k in (params or {}) if k.rpartition("__")[2] in SERVER_PARAMS)
    if bad:
        raise ApiError(400, "invalid_features", f"params {bad} are chosen by the server, not the "
                       "request", {"option": "params"})
    try:
        return FeatureSpec.parse(features, params)
    except ConfigError as exc:
        raise ApiError(400, "invalid_features", str(exc), {"option": "features"}) from None


class Extractor:
    """The transformer of one feature set for one image size, with its output dimension."""

    def __init__(self, spec: FeatureSpec, size: tuple[int, int], params: dict[str, Any] | None = None,
                 fitted: Any = None, channels: int = 3) -> None:
        self.spec = spec
        self.size = size
        self.channels = channels
        if spec.stateful and fitted is None:
            raise ApiError(400, "invalid_features", f"features {spec.name!r} are learned from "
                           "training images: ask for them with model=<a model that has them>",
                           {"option": "features"})
        try:
            self.dim = spec.check((*size, channels))  # from the parameters: nothing is computed yet
        except ConfigError as exc:
            raise ApiError(400, "invalid_features", f"{exc} (images resized to {size[0]}x{size[1]})",
                           {"option": "features"}) from None
        # fitted to the one shape it serves: its parameters are checked here, not per request
        self.transformer = fitted if fitted is not None else fit_to_shape(spec.build(),
                                                                         (*size, channels))
        effective = dict(zip(spec.step_names(), (c["params"] for c in spec.effective_params()),
                             strict=True))
        self.config = {"name": spec.name, "params": to_jsonable(params or {}),
                       "components": spec.to_dict()["components"], "effective": effective,
                       "key": spec.key()}

    def transform(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, dim) feature vectors of uint8 (N, H, W, C) images at ``size``."""
        return np.asarray(self.transformer.transform(images), np.float32).reshape(len(images), -1)


class ExtractorCache:
    """The most recently used extractors by (feature key, size), safe to share across threads."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._items: OrderedDict[str, Extractor] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, spec: FeatureSpec, size: tuple[int, int], params: dict[str, Any] | None = None,
            fitted: Any = None, owner: str = "", channels: int = 3) -> Extractor:
        """The extractor of a feature set at an image size; 400 :class:`ApiError` if invalid.

        ``fitted``: a model's own fitted extractor (learned features), ``owner`` its name.
        """
        key = canonical_json([spec.name, spec.key(), size, channels, params or {},
                              owner if fitted is not None else ""])
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        extractor = Extractor(spec, size, params, fitted, channels)
        with self._lock:
            self._items[key] = extractor
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return extractor
