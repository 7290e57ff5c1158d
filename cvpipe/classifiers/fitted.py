"""A fitted classic pipeline: images -> features -> preprocessing -> classifier scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from cvpipe.classifiers.chunks import mean_of
from cvpipe.features import FeatureSpec
from cvpipe.featurestore.sources import augment, test_time_variants


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
    test_time_shifts : int
        Describe each image by the mean of its features and those of its copies moved by the
        first ``test_time_shifts`` of :data:`cvpipe.featurestore.sources.SHIFTS` (0: by its own).
    """

    features: FeatureSpec
    preprocess: BaseEstimator | None
    classifier: BaseEstimator
    metadata: dict[str, Any] = field(default_factory=dict)
    extractor: Any = None  # fitted; built from ``features`` when None (stateless features only)
    test_time_shifts: int = 0

    def __post_init__(self) -> None:
        self.test_time_variants = test_time_variants(self.test_time_shifts)  # checked here
        if self.extractor is None:
            if self.features.stateful:
                raise ValueError(f"features {self.features.name!r} learn from images: pass the "
                                 "fitted extractor")
            self.extractor = self.features.build()
        self.feature_extractor = self.extractor

    def features_of(self, images: np.ndarray) -> np.ndarray:
        """Feature vectors of uint8 (N, H, W[, C]) images: with test-time shifts, the mean of
        the features of each image and of its shifted copies, added in the order the stored
        features' mean (:class:`cvpipe.classifiers.chunks.Mean`) adds them."""
        feats = self.feature_extractor.transform(images)
        if len(self.test_time_variants) == 1:
            return feats
        images = np.asarray(images)
        return mean_of(feats, (self.feature_extractor.transform(augment(images, variant))
                               for variant in self.test_time_variants[1:]))

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed feature vectors of uint8 (N, H, W, C) images."""
        feats = self.features_of(images)
        return self.preprocess.transform(feats) if self.preprocess is not None else feats

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, str]:
        """(N, n_classes) probabilities, or decision scores where the model has none."""
        return decision_scores(self.classifier, self.transform(images))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class indices into the model's classes."""
        return self.scores(images)[0].argmax(axis=1)
