"""The models the API serves: every ``<models dir>/<name>/model.json``, loaded once at start."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cvpipe.errors import CvpipeError
from cvpipe.models import ArtifactError, ModelInput, Predictor, load_model, model_card
from cvpipe.storage import recover_all
from service.batching import MicroBatcher

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """A loaded model and what the API says about it.

    Attributes
    ----------
    name : str
        The model's folder name, used in URLs.
    predictor : Predictor
        The loaded model (any kind: classic, CNN, ...).
    version : str
        ``<created, compact UTC>-<first 12 hex digits of sha256(model.json)>``: changes whenever
        the model is retrained or its description edited.
    classes : list of str
    score_kind : str
        "probability" or "decision", learnt from a warm-up prediction (None before it).
    """

    name: str
    predictor: Predictor
    version: str
    classes: list[str]
    score_kind: str | None = None
    loaded_seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    batcher: MicroBatcher = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.batcher = MicroBatcher(self._call)

    def _call(self, images: np.ndarray) -> tuple[np.ndarray, str]:
        scores, kind = self.predictor.scores(images)
        scores = np.asarray(scores)
        if scores.shape != (len(images), len(self.classes)) or not np.isfinite(scores).all():
            raise ArtifactError(f"model {self.name} returned invalid scores "
                                f"(shape {scores.shape}, finite: {bool(np.isfinite(scores).all())})")
        return scores, kind

    @property
    def metadata(self) -> dict[str, Any]:
        return self.predictor.metadata

    @property
    def input(self) -> ModelInput:
        """What the model takes: uploads are converted to its size, channels and fit policy."""
        return self.predictor.input

    def scores(self, images: np.ndarray, score: Callable | None = None) -> tuple[np.ndarray, str]:
        """(N, n_classes) scores of uint8 (N, H, W, C) images of ``input.shape`` and their kind.

        Concurrent calls are batched into one model call (:mod:`service.batching`); ``score``
        is the function :meth:`MicroBatcher.incoming` yielded for an announced request.
        """
        scores, kind = (score or self.batcher)(images)
        self.score_kind = kind
        return scores, kind

    def warm_up(self) -> None:
        """One prediction on a blank image: fills lazy tables and learns ``score_kind``."""
        start = time.perf_counter()
        self.scores(np.full((1, *self.input.shape), 127, np.uint8))
        self.summary["score_kind"] = self.score_kind
        log.debug("model %s warmed up in %.3f s", self.name, time.perf_counter() - start)


def model_version(meta_bytes: bytes, created: str | None) -> str:
    """``20250101T120000Z-0123456789ab`` from model.json's bytes and its ``created`` field."""
    digest = hashlib.sha256(meta_bytes).hexdigest()[:12]
    stamp = "unknown"
    if created:
        try:
            dt = datetime.fromisoformat(str(created))
            stamp = dt.strftime("%Y%m%dT%H%M%SZ" if dt.utcoffset() is not None and
                                dt.utcoffset().total_seconds() == 0 else "%Y%m%dT%H%M%S")
        except ValueError:
            stamp = "".join(c for c in str(created) if c.isalnum())[:20] or "unknown"
    return f"{stamp}-{digest}"


def _test_accuracy(meta: dict[str, Any]) -> float | None:
    try:
        return float(meta["metrics"]["test"]["accuracy"])
    except (KeyError, TypeError, ValueError):
        return None


def summarise(name: str, meta: dict[str, Any], version: str, model_input: ModelInput
              ) -> dict[str, Any]:
    """The public description of a model (``GET /v1/models``)."""
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    return {
        "name": name,
        "version": version,
        "kind": meta.get("kind"),
        "pipeline": meta.get("pipeline"),
        "card": model_card(meta),
        "classes": list(meta.get("classes", [])),
        **model_input.metadata(),
        "trained_on": (meta.get("dataset") or {}).get("name"),  # the name only: details need the token
        "fit_seconds": meta.get("fit_seconds"),
        "features": meta.get("features"),
        "classifier": {"type": model_card(meta)["classifier"],
                       "params": meta.get("hyperparameters")},
        "test_accuracy": _test_accuracy(meta),
        "accuracy": {split: m.get("accuracy") for split, m in metrics.items()
                     if isinstance(m, dict) and "accuracy" in m},
        "created": meta.get("created"),
        "score_kind": None,
    }


class ModelRegistry:
    """Models by name, loaded from a folder; a model that fails to load is logged and skipped.

    Parameters
    ----------
    models_dir : path
        Folder whose subfolders holding a ``model.json`` are models.
    """

    def __init__(self, models_dir: str | Path) -> None:
        self.models_dir = Path(models_dir)
        self.models: dict[str, ServedModel] = {}
        #: name -> why it could not be loaded (paths made relative to the models folder)
        self.failed: dict[str, str] = {}

    def load_all(self) -> ModelRegistry:
        """Load every model of the folder (a missing folder means no models)."""
        if not self.models_dir.is_dir():
            log.warning("models folder %s does not exist: no models to serve", self.models_dir)
            return self
        try:
            recover_all(self.models_dir)  # a model whose replacement was interrupted comes back
        except OSError as exc:
            log.warning("could not tidy %s: %s", self.models_dir, exc)
        for sub in sorted(self.models_dir.iterdir()):
            if sub.name.startswith(".") or not (sub / "model.json").is_file():
                continue
            self._load_one(sub)
        log.info("serving %d model(s) from %s: %s%s", len(self.models), self.models_dir,
                 ", ".join(self.models) or "none",
                 f"; {len(self.failed)} failed: {', '.join(self.failed)}" if self.failed else "")
        return self

    def _load_one(self, path: Path) -> None:
        start = time.perf_counter()
        try:
            meta_bytes = (path / "model.json").read_bytes()
            predictor = load_model(path)
            meta = predictor.metadata
            classes = [str(c) for c in meta["classes"]]
        except Exception as exc:  # noqa: BLE001 - a broken model must not stop the others
            reason = str(exc).replace(str(path), path.name).replace(str(self.models_dir) + "/", "")
            self.failed[path.name] = f"{type(exc).__name__}: {reason}"
            # A CvpipeError (tampered, unknown kind) says it all; anything else gets its traceback.
            log.error("model %s not loaded: %s", path.name, exc, exc_info=not isinstance(exc, CvpipeError))
            return
        version = model_version(meta_bytes, meta.get("created"))
        summary = summarise(path.name, meta, version, predictor.input)
        summary["size_bytes"] = sum(path.joinpath(f).stat().st_size for f in
                                    (meta.get("files") or {}) if path.joinpath(f).is_file()
                                    ) + len(meta_bytes)
        served = ServedModel(path.name, predictor, version, classes,
                             loaded_seconds=time.perf_counter() - start,
                             summary=summary)
        self.models[path.name] = served
        log.info("model %s (%s, version %s) loaded in %.2f s", path.name, meta.get("kind"), version,
                 served.loaded_seconds)

    def warm_up(self) -> None:
        """Warm every model up; a model whose warm-up fails is moved to ``failed``."""
        for name, model in list(self.models.items()):
            try:
                model.warm_up()
            except Exception as exc:  # noqa: BLE001
                log.exception("model %s failed its warm-up prediction; not serving it", name)
                self.failed[name] = f"warm-up prediction failed: {type(exc).__name__}"
                del self.models[name]

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    def __len__(self) -> int:
        return len(self.models)
