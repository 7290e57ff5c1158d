"""Classifiers on feature vectors and the classic pipelines built from them.

* :class:`LinearSVM`, :class:`RBFSVM`, :class:`OpenCVSVM`, :class:`MLPClassifier` -- scikit-learn
  estimators (``sklearn.utils.estimator_checks`` pass);
* :class:`ClassicSpec` -- a classic pipeline as data (features, preprocessing, classifier, grid);
* :func:`fit_classic` -- selection on validation, refit, test scored once;
* :class:`ClassicModel` -- the fitted pipeline: images in, class scores out.
"""

from cvpipe.classifiers.fitted import ClassicModel
from cvpipe.classifiers.kernel_svm import RBFSVM
from cvpipe.classifiers.linear_svm import LinearSVM
from cvpipe.classifiers.mlp import MLPClassifier
from cvpipe.classifiers.opencv_svm import OpenCVSVM
from cvpipe.classifiers.specs import CLASSIFIER_TYPES, ClassicSpec, build_classifier
from cvpipe.classifiers.training import ClassicFit, fit_classic

__all__ = [
    "CLASSIFIER_TYPES",
    "RBFSVM",
    "ClassicFit",
    "ClassicModel",
    "ClassicSpec",
    "LinearSVM",
    "MLPClassifier",
    "OpenCVSVM",
    "build_classifier",
    "fit_classic",
]
