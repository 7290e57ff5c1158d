"""Saving and loading classic (features + classifier) models as data-only artifacts.

Files in ``models/<name>/`` besides ``model.json``:

* ``preprocess.skops``: StandardScaler / PCA (skops, loaded with an explicit trusted list);
* the classifier: ``classifier.skops`` (linear and kernel SVMs), ``classifier.safetensors``
  (MLP weights; its shape parameters live in ``model.json``) or ``classifier.yml``
  (``cv2.ml.SVM`` in OpenCV's own format).

The feature extractor is stateless: ``model.json`` stores its configuration and it is rebuilt
from that, never deserialised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator

from cvpipe.classifiers.mlp import MLPClassifier, build_mlp
from cvpipe.classifiers.opencv_svm import OpenCVSVM, load_opencv_svm
from cvpipe.models.artifact import ArtifactError, register_kind, write_artifact

KIND = "classic"
#: Types outside scikit-learn/numpy that a classic model's skops files may contain.
TRUSTED_TYPES = ["cvpipe.classifiers.linear_svm.LinearSVM"]


def save_classic_model(model_dir: Path, *, features: dict, preprocess: BaseEstimator | None,
                       classifier: BaseEstimator, classifier_type: str, classes: list[str],
                       metadata: dict[str, Any]) -> Path:
    """Write a fitted classic pipeline to ``model_dir`` (atomically)."""
    clf_state: dict[str, Any] = {"type": classifier_type,
                                 "classes": np.asarray(classifier.classes_).tolist(),
                                 "n_features_in": int(classifier.n_features_in_)}
    if isinstance(classifier, MLPClassifier):
        clf_state.update(params=_jsonable(classifier.get_params()), file="classifier.safetensors")
    elif isinstance(classifier, OpenCVSVM):
        clf_state.update(params=classifier.get_params(), gamma=classifier.gamma_,
                         file="classifier.yml")
    else:
        clf_state.update(file="classifier.skops")

    def write(tmp: Path) -> None:
        if preprocess is not None:
            sio.dump(preprocess, tmp / "preprocess.skops")
        if isinstance(classifier, MLPClassifier):
            state = {k: v.contiguous() for k, v in classifier.model_.state_dict().items()}
            save_file(state, tmp / "classifier.safetensors")
        elif isinstance(classifier, OpenCVSVM):
            classifier.save(tmp / "classifier.yml")
        else:
            sio.dump(classifier, tmp / "classifier.skops")

    meta = {**metadata, "kind": KIND, "classes": list(classes), "features": features,
            "classifier": clf_state, "preprocess_file": "preprocess.skops" if preprocess else None}
    return write_artifact(model_dir, meta, write)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _skops_load(path: Path) -> Any:
    untrusted = sio.get_untrusted_types(file=path)
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unexpected:
        raise ArtifactError(f"{path}: refusing to load unexpected types {unexpected}")
    return sio.load(path, trusted=untrusted)


class ClassicPredictor:
    """A loaded classic model: raw images -> features -> preprocessing -> classifier."""

    def __init__(self, metadata: dict[str, Any], preprocess: Any, classifier: BaseEstimator):
        from cvpipe.classifiers.specs import build_features

        self.metadata = metadata
        self.preprocess = preprocess
        self.classifier = classifier
        self.feature_extractor = build_features(metadata["features"])

    def features(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed feature vectors of uint8 (N, H, W, 3) images."""
        feats = self.feature_extractor.transform(images)
        return self.preprocess.transform(feats) if self.preprocess is not None else feats

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, str]:
        """(N, n_classes) probabilities, or decision scores where the model has none."""
        x = self.features(images)
        if hasattr(self.classifier, "predict_proba"):
            return self.classifier.predict_proba(x), "probability"
        s = self.classifier.decision_function(x)
        if s.ndim == 1:  # two classes: one margin
            s = np.stack([-s, s], axis=1)
        return s, "decision"

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class indices into ``metadata["classes"]``."""
        return self.scores(images)[0].argmax(axis=1)


def load(model_dir: Path, meta: dict[str, Any]) -> ClassicPredictor:
    """Loader registered for kind "classic" (called by :func:`cvpipe.models.load_model`)."""
    state = meta["classifier"]
    try:
        preprocess = _skops_load(model_dir / meta["preprocess_file"]) if meta.get(
            "preprocess_file") else None
        path = model_dir / state["file"]
        if state["file"].endswith(".safetensors"):
            params = dict(state["params"])
            params["hidden_sizes"] = tuple(params["hidden_sizes"])
            clf = MLPClassifier(**params)
            model = build_mlp(state["n_features_in"], len(state["classes"]), params["hidden_sizes"],
                              params["dropout"], params["batch_norm"], params["input_dropout"])
            model.load_state_dict(load_file(path))
            clf.model_ = model.eval()
            clf.classes_ = np.asarray(state["classes"])
            clf.n_features_in_ = state["n_features_in"]
        elif state["file"].endswith(".yml"):
            clf = load_opencv_svm(path, state["params"], np.asarray(state["classes"]),
                                  state["n_features_in"], state["gamma"])
        else:
            clf = _skops_load(path)
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a broken artifact
        raise ArtifactError(f"{model_dir}: cannot load classifier ({exc})") from exc
    return ClassicPredictor(meta, preprocess, clf)


register_kind(KIND, "cvpipe.classifiers.persist:load")
