"""Named classic pipelines: features -> preprocessing -> classifier, plus a selection grid.

A spec is data (a dict, a TOML table), so a report or a user's config file can declare new
pipelines without code::

    [pipelines.my-svm]
    features = { name = "hog+color", params = { } }
    preprocess = { standardize = true, pca = 0 }          # pca: components (0 = none)
    classifier = { type = "linear-svm", params = { C = 0.01 } }
    grid = { "classifier.C" = [0.001, 0.01, 0.1] }

Grid keys are ``classifier.<param>`` or ``preprocess.<option>``; every combination is fitted
on the training split and scored on the validation split (see :mod:`.selection`).
"""

from __future__ import annotations

import copy
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from cvpipe.classifiers.linear_svm import LinearSVM
from cvpipe.classifiers.mlp import MLPClassifier
from cvpipe.classifiers.opencv_svm import OpenCVSVM
from cvpipe.errors import ConfigError
from cvpipe.features.transformers import build_features  # noqa: F401 - part of this module's API

CLASSIFIER_TYPES = ("linear-svm", "rbf-svm", "opencv-svm", "mlp", "softmax")
#: Above this many training samples, "rbf-svm" with approximation="auto" uses Nystroem.
EXACT_KERNEL_MAX_SAMPLES = 10_000


@dataclass
class PipelineSpec:
    """One classic pipeline: what to extract, how to preprocess, what to fit, what to search."""

    name: str
    features: dict[str, Any]
    classifier: dict[str, Any]
    preprocess: dict[str, Any] = field(default_factory=lambda: {"standardize": True, "pca": 0})
    grid: dict[str, list] = field(default_factory=dict)
    augment_flip: bool = False  # add horizontally flipped training images
    description: str = ""

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> PipelineSpec:
        unknown = set(data) - {"features", "classifier", "preprocess", "grid", "augment_flip",
                               "description"}
        if unknown:
            raise ConfigError(f"pipeline {name!r}: unknown keys {sorted(unknown)}")
        for key in ("features", "classifier"):
            if key not in data:
                raise ConfigError(f"pipeline {name!r}: missing {key!r}")
        spec = cls(name=name, **copy.deepcopy(data))
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"features": self.features, "classifier": self.classifier,
                "preprocess": self.preprocess, "grid": self.grid,
                "augment_flip": self.augment_flip, "description": self.description}

    def validate(self) -> None:
        ctype = self.classifier.get("type")
        if ctype not in CLASSIFIER_TYPES:
            raise ConfigError(f"pipeline {self.name!r}: classifier type {ctype!r} is not one of "
                              f"{', '.join(CLASSIFIER_TYPES)}")
        if "name" not in self.features:
            raise ConfigError(f"pipeline {self.name!r}: features need a 'name'")
        for key in self.grid:
            part = key.split(".", 1)[0]
            if part not in ("classifier", "preprocess") or "." not in key:
                raise ConfigError(f"pipeline {self.name!r}: grid key {key!r} must be "
                                  "'classifier.<param>' or 'preprocess.<option>'")
            if not isinstance(self.grid[key], list) or not self.grid[key]:
                raise ConfigError(f"pipeline {self.name!r}: grid {key!r} needs a non-empty list")

    def candidates(self) -> list[dict[str, Any]]:
        """Every grid combination, as {grid key: value}; one empty dict without a grid."""
        keys = sorted(self.grid)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*(self.grid[k] for k in keys))]

    def with_params(self, params: dict[str, Any]) -> PipelineSpec:
        """A copy with grid values (``classifier.C`` ...) written into the spec."""
        spec = copy.deepcopy(self)
        for key, value in params.items():
            part, name = key.split(".", 1)
            if part == "classifier":
                spec.classifier.setdefault("params", {})[name] = value
            else:
                spec.preprocess[name] = value
        spec.grid = {}
        return spec


def build_preprocess(preprocess: dict[str, Any]) -> Pipeline | None:
    """StandardScaler and optional PCA (whitened with ``whiten=true``), or None."""
    steps: list[tuple[str, BaseEstimator]] = []
    if preprocess.get("standardize", True):
        steps.append(("scale", StandardScaler()))
    n_pca = preprocess.get("pca", 0) or 0
    if n_pca:
        steps.append(("pca", PCA(n_components=n_pca, whiten=bool(preprocess.get("whiten", False)),
                                 random_state=0)))
    unknown = set(preprocess) - {"standardize", "pca", "whiten"}
    if unknown:
        raise ConfigError(f"unknown preprocess options {sorted(unknown)}")
    return Pipeline(steps) if steps else None


def build_classifier(classifier: dict[str, Any], n_train: int) -> BaseEstimator:
    """The estimator a classifier spec describes (unfitted)."""
    ctype = classifier["type"]
    params = dict(classifier.get("params", {}))
    try:
        if ctype == "linear-svm":
            return LinearSVM(**params)
        if ctype == "opencv-svm":
            return OpenCVSVM(**params)
        if ctype == "mlp":
            if "hidden_sizes" in params:
                params["hidden_sizes"] = tuple(params["hidden_sizes"])
            return MLPClassifier(**params)
        if ctype == "softmax":
            return MLPClassifier(hidden_sizes=(), dropout=0.0, batch_norm=False, **params)
        if ctype == "rbf-svm":
            approx = params.pop("approximation", "auto")
            gamma = params.pop("gamma", "scale")
            C = params.pop("C", 1.0)
            # L-BFGS iterations of the linear SVM on Nystroem features: validation accuracy
            # settles long before the optimum (measured on CIFAR-10), and the cap keeps a
            # 2,000-component fit to seconds. The exact SVC runs to convergence.
            linear_max_iter = params.pop("max_iter", 100)
            if approx == "auto":
                approx = "exact" if n_train <= EXACT_KERNEL_MAX_SAMPLES else "nystroem"
            if approx == "exact":
                return SVC(kernel="rbf", C=C, gamma=gamma, **params)
            if approx == "nystroem":
                n_comp = params.pop("n_components", 2000)
                g = None if gamma == "scale" else gamma  # Nystroem's None is 1 / n_features
                return Pipeline([
                    ("nystroem", Nystroem(kernel="rbf", gamma=g, n_components=n_comp,
                                          random_state=params.pop("random_state", 0))),
                    ("svm", LinearSVM(C=C, max_iter=linear_max_iter, **params)),
                ])
            raise ConfigError(f"rbf-svm approximation must be auto, exact or nystroem, not {approx!r}")
    except TypeError as exc:
        raise ConfigError(f"classifier {ctype}: {exc}") from exc
    raise ConfigError(f"unknown classifier type {ctype!r}")


def load_pipeline_config(path: str | Path) -> dict[str, PipelineSpec]:
    """Pipelines declared in a TOML file's ``[pipelines.<name>]`` tables."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline config {path}: {exc}") from exc
    tables = data.get("pipelines")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: no [pipelines.<name>] tables")
    return {name: PipelineSpec.from_dict(name, t) for name, t in tables.items()}
