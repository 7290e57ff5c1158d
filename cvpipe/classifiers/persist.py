"""The fitted parts of a classic pipeline as data-only files, and back.

* ``preprocess.skops``: StandardScaler / PCA (skops, loaded with an explicit trusted list);
* the classifier: ``classifier.skops`` (linear and kernel SVMs), ``classifier.safetensors``
  (MLP weights; its shape parameters go into the description) or ``classifier.yml``
  (``cv2.ml.SVM`` in OpenCV's own format).

The feature extractor is stateless: its :class:`~cvpipe.features.FeatureSpec` is stored as
a description and rebuilt from it. :func:`save_parts` returns the description of the files it
wrote; :func:`load_parts` reads only the files that description names, and the artifact layer
(:mod:`cvpipe.models`) has checked their hashes before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator

from cvpipe.classifiers.mlp import MLPClassifier, build_mlp
from cvpipe.classifiers.opencv_svm import OpenCVSVM, load_opencv_svm
from cvpipe.errors import ArtifactError

PREPROCESS_FILE = "preprocess.skops"
#: Types outside scikit-learn/numpy that a classic model's skops files may contain.
TRUSTED_TYPES = ["cvpipe.classifiers.linear_svm.LinearSVM", "cvpipe.classifiers.kernel_svm.RBFSVM"]


def save_parts(directory: Path, preprocess: BaseEstimator | None, classifier: BaseEstimator,
               classifier_type: str) -> dict[str, Any]:
    """Write the fitted preprocessing and classifier into ``directory``.

    Returns
    -------
    dict
        ``{"classifier": {type, classes, n_features_in, file, ...}, "preprocess_file": name or
        None}``: what :func:`load_parts` needs, for ``model.json``.
    """
    state: dict[str, Any] = {"type": classifier_type,
                             "classes": np.asarray(classifier.classes_).tolist(),
                             "n_features_in": int(classifier.n_features_in_)}
    if preprocess is not None:
        sio.dump(preprocess, directory / PREPROCESS_FILE)
    if isinstance(classifier, MLPClassifier):
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in classifier.get_params().items()}
        state.update(params=params, file="classifier.safetensors")
        weights = {k: v.contiguous() for k, v in classifier.model_.state_dict().items()}
        save_file(weights, directory / state["file"])
    elif isinstance(classifier, OpenCVSVM):
        state.update(params=classifier.get_params(), gamma=classifier.gamma_, file="classifier.yml")
        classifier.save(directory / state["file"])
    else:
        state.update(file="classifier.skops")
        sio.dump(classifier, directory / state["file"])
    return {"classifier": state, "preprocess_file": PREPROCESS_FILE if preprocess is not None else None}


def _skops_load(path: Path) -> Any:
    untrusted = sio.get_untrusted_types(file=path)
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unexpected:
        raise ArtifactError(f"{path}: refusing to load unexpected types {unexpected}")
    return sio.load(path, trusted=untrusted)


def load_parts(description: dict[str, Any], path_of: Callable[[str], Path]
               ) -> tuple[Any, BaseEstimator]:
    """(preprocess or None, classifier) from the files a :func:`save_parts` description names.

    ``path_of(name)`` gives the path of a named file (and refuses names it does not vouch for).
    """
    state = description["classifier"]
    try:
        pre_file = description.get("preprocess_file")
        preprocess = _skops_load(path_of(pre_file)) if pre_file else None
        path = path_of(state["file"])
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
        raise ArtifactError(f"cannot load the classifier ({type(exc).__name__}: {exc})") from exc
    return preprocess, clf
