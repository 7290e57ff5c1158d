"""A fitted classic pipeline: images -> features -> preprocessing -> classifier scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from cvpipe.features import FeatureSpec


def decision_scores(classifier: BaseEstimator, x: np.ndarray) -> tuple[np.ndarray, str]:
    """(N, n_classes) probabilities, or decision scores where the classifier has none, and
    their kind ("probability" or "decision")."""
    if hasattr(classifier, "predict_proba"):
        return classifier.predict_proba(x), "probability"
    s = classifier.decision_function(x)
    if s.ndim == 1:  # two classes: one margin
        s = np.stack([-s, s], axis=1)
    return s, "decision"


@dataclass
class ClassicModel:
    """A fitted classic pipeline behind the predictor interface (``scores``, ``predict``).

    Attributes
    ----------
    features : FeatureSpec
        Rebuilt from its description, never deserialised: feature extractors are stateless.
    preprocess : estimator or None
        Fitted StandardScaler / PCA.
    classifier : estimator
        Fitted classifier.
    metadata : dict
        What the model's ``model.json`` holds (empty before it is saved).
    """

    features: FeatureSpec
    preprocess: BaseEstimator | None
    classifier: BaseEstimator
    metadata: dict[str, Any] = field(default_factory=dict)
    extractor: Any = None  # fitted; built from ``features`` when None (stateless features only)

    def __post_init__(self) -> None:
        if self.extractor is None:
            if self.features.stateful:
                raise ValueError(f"features {self.features.name!r} learn from images: pass the "
                                 "fitted extractor")
            self.extractor = self.features.build()
        self.feature_extractor = self.extractor

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed feature vectors of uint8 (N, H, W, C) images."""
        feats = self.feature_extractor.transform(images)
        return self.preprocess.transform(feats) if self.preprocess is not None else feats

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, str]:
        """(N, n_classes) probabilities, or decision scores where the model has none."""
        return decision_scores(self.classifier, self.transform(images))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class indices into the model's classes."""
        return self.scores(images)[0].argmax(axis=1)
