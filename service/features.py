"""Feature extractors for ``POST /v1/features``, built from a request's configuration and cached."""

from __future__ import annotations

import functools
import itertools
import json
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from cvpipe.errors import CvpipeError
from service.errors import ApiError

#: Extractor parameters about where and how fast to compute, not what: the server decides.
SERVER_PARAMS = frozenset({"n_jobs", "device", "backend", "chunk_size"})
_CACHE_SIZE = 32


@functools.cache
def feature_names() -> list[str]:
    """Every name :func:`cvpipe.features.make_features` builds: each component (``hog``,
    ``color``, ...) and every ordered "+" combination of distinct components."""
    try:
        from cvpipe.features import FEATURE_NAMES as parts
    except ImportError:  # pragma: no cover - the features module is part of cvpipe
        parts = ("hog", "color")
    names = []
    for n in range(1, len(parts) + 1):
        names += ["+".join(p) for p in itertools.permutations(parts, n)]
    return names


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _effective_params(transformer: Any, name: str) -> dict[str, dict[str, Any]]:
    """Every parameter of every component, defaults included: ``{"hog": {...}, "color": {...}}``."""
    parts = getattr(transformer, "transformer_list", None) or [(name, transformer)]
    out = {}
    for part, est in parts:
        try:
            out[part] = {k: v for k, v in est.get_params(deep=False).items() if k not in SERVER_PARAMS}
        except Exception:  # noqa: BLE001 - not a scikit-learn estimator: nothing more to say
            out[part] = {}
    return out


class Extractor:
    """A feature extractor for one configuration and image size, with its output dimension."""

    def __init__(self, name: str, params: dict[str, Any], size: tuple[int, int]) -> None:
        from cvpipe.features import make_features

        self.name = name
        self.size = size
        try:
            self.transformer = make_features(name, **params)
            probe = np.asarray(self.transformer.transform(np.full((1, *size, 3), 127, np.uint8)))
        except (CvpipeError, ValueError, TypeError) as exc:
            raise ApiError(400, "invalid_features", f"features {name!r} with params {params} on "
                           f"{size[0]}x{size[1]} images: {exc}", {"option": "features"}) from None
        self.dim = int(probe.reshape(1, -1).shape[1])
        self.config = {"name": name, "params": _jsonable(params),
                       "effective": _jsonable(_effective_params(self.transformer, name))}

    def transform(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, dim) feature vectors of uint8 (N, H, W, 3) images at ``size``."""
        return np.asarray(self.transformer.transform(images), np.float32).reshape(len(images), -1)


class ExtractorCache:
    """The most recently used extractors by (name, params, size), safe to share across threads."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._items: OrderedDict[str, Extractor] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def get(self, name: str, params: dict[str, Any], size: tuple[int, int]) -> Extractor:
        """The extractor for a configuration; 400 :class:`ApiError` if it is not valid."""
        bad = sorted(k for k in params if k.rpartition("__")[2] in SERVER_PARAMS)
        if bad:
            raise ApiError(400, "invalid_features", f"params {bad} are chosen by the server, not the "
                           "request", {"option": "params"})
        key = json.dumps([name, params, size], sort_keys=True, default=str)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        extractor = Extractor(name, params, size)  # outside the lock: may take a moment
        with self._lock:
            self._items[key] = extractor
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return extractor
