"""Classifiers on feature vectors and the classic pipelines built from them.

* :class:`LinearSVM`, :class:`RBFSVM`, :class:`OpenCVSVM`, :class:`MLPClassifier` -- scikit-learn
  estimators (``sklearn.utils.estimator_checks`` pass);
* :class:`ClassicSpec` -- a classic pipeline as data (features, preprocessing, classifier, grid);
* :func:`fit_classic` -- selection on validation, refit, test scored once;
* :class:`ClassicModel` -- the fitted pipeline: images in, class scores out.
"""

from __future__ import annotations

import lazy_loader

# The names below load their module on first use, so that importing one module of the
# package (e.g. `cvpipe --help` building its parsers) does not import every library.
__getattr__, __dir__, _lazy_names = lazy_loader.attach(__name__, submod_attrs={
    "fitted": ["ClassicModel"],
    "kernel_svm": ["RBFSVM"],
    "linear_svm": ["LinearSVM"],
    "mlp": ["MLPClassifier"],
    "opencv_svm": ["OpenCVSVM"],
    "specs": ["CLASSIFIER_TYPES", "ClassicSpec", "build_classifier"],
    "training": ["ClassicFit", "fit_classic"],
})
__all__ = _lazy_names
