"""Classic pipelines as data: features -> preprocessing -> classifier, plus a selection grid.

A spec is data (a dict, a TOML table), so a report or a user's config file can declare new
pipelines without code::

    [pipelines.my-svm]
    features = { name = "hog+color", params = { } }
    preprocess = { standardize = true, pca = 0 }          # pca: components (0 = none),
                                                          # whiten, pca_rows (rows it is fitted on)
    classifier = { type = "linear-svm", params = { C = 0.01 } }
    grid = { "classifier.C" = [0.001, 0.01, 0.1] }

Grid keys are ``classifier.<param>`` or ``preprocess.<option>``; every combination is fitted
on the training split and scored on the validation split (see :mod:`.training`). A spec is
checked when it is read (every parameter of every grid candidate is one its classifier
takes, with a valid value) and, with :meth:`ClassicSpec.check`, against the number and size
of the images it will be trained on, before any training starts.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA

from cvpipe.classifiers.kernel_svm import RBFSVM
from cvpipe.classifiers.linear_svm import LinearSVM
from cvpipe.classifiers.mlp import MLPClassifier
from cvpipe.classifiers.opencv_svm import OpenCVSVM
from cvpipe.errors import ConfigError
from cvpipe.features import FeatureSpec
from cvpipe.featurestore.sources import test_time_variants, training_variants

#: classifier type -> (estimator class, fixed parameters)
CLASSIFIERS: dict[str, tuple[type[BaseEstimator], dict[str, Any]]] = {
    "linear-svm": (LinearSVM, {}),
    "rbf-svm": (RBFSVM, {}),
    "opencv-svm": (OpenCVSVM, {}),
    "mlp": (MLPClassifier, {}),
    "softmax": (MLPClassifier, {"hidden_sizes": (), "dropout": 0.0, "batch_norm": False}),
}
CLASSIFIER_TYPES = tuple(CLASSIFIERS)
PREPROCESS_OPTIONS = ("standardize", "pca", "whiten", "pca_rows")
SPEC_KEYS = ("features", "classifier", "preprocess", "grid", "augment_flip", "augment_shifts",
             "test_time_shifts", "description")


def build_classifier(classifier: Mapping[str, Any]) -> BaseEstimator:
    """The unfitted estimator a classifier table (``{type, params}``) describes, its
    parameters checked.

    Raises
    ------
    ConfigError
        Unknown type, a parameter the classifier does not take, or an invalid value.
    """
    ctype = classifier.get("type")
    if ctype not in CLASSIFIERS:
        raise ConfigError(f"classifier type {ctype!r} is not one of {', '.join(CLASSIFIER_TYPES)}")
    cls, fixed = CLASSIFIERS[ctype]
    params = dict(classifier.get("params") or {})
    taken = sorted(set(params) & set(fixed))
    unknown = sorted(set(params) - set(cls._get_param_names()))
    if taken or unknown:
        allowed = sorted(set(cls._get_param_names()) - set(fixed))
        raise ConfigError(f"classifier {ctype} takes no parameter {', '.join(map(repr, taken + unknown))}; "
                          f"its parameters: {', '.join(allowed)}")
    if "hidden_sizes" in params and isinstance(params["hidden_sizes"], list):
        params["hidden_sizes"] = tuple(params["hidden_sizes"])
    est = cls(**params, **fixed)
    try:
        est._validate_params()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"classifier {ctype}: {exc}") from None
    return est


@dataclass(frozen=True)
class Preprocessing:
    """A preprocess table, validated: what is done to the features before the classifier.

    The standardisation is fitted from one pass of sums over the rows; the PCA, an unfitted
    estimator, on a seeded sample of at most ``pca_rows`` of the standardised rows
    (:mod:`.training`), so that neither needs the whole matrix in memory.
    """

    standardize: bool
    pca: PCA | None
    pca_rows: int


#: Rows a PCA is fitted on, at most (a seeded sample of the training rows, gathered in
#: memory: 1.1 GB of CIFAR-10's 22,400 patch features). Measured on those features (45,000
#: training images, 1,024 whitened components, then an MLP of 512 units for 10 epochs): fitted
#: on 12,288 rows in 25 s, 76.6% on validation; on all 45,000 (the same randomized method)
#: in 133 s, 76.5%.
PCA_ROWS = 12_288


def build_preprocess(preprocess: Mapping[str, Any]) -> Preprocessing:
    """The standardisation flag and the optional PCA (``pca`` components, whitened with
    ``whiten=true``, fitted on at most ``pca_rows`` rows) of a preprocess table.

    The PCA is randomized (Halko, Martinsson & Tropp 2011), with one power iteration: the
    thousand leading components of tens of thousands of features in seconds, where an exact
    decomposition takes minutes, and accurate where the variance is, on the leading ones.
    """
    unknown = set(preprocess) - set(PREPROCESS_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown preprocess options {sorted(unknown)}; known: "
                          f"{', '.join(PREPROCESS_OPTIONS)}")
    n_pca = preprocess.get("pca", 0) or 0
    if isinstance(n_pca, bool) or not isinstance(n_pca, int) or n_pca < 0:
        raise ConfigError(f"preprocess pca must be a number of components (0: none), not {n_pca!r}")
    rows = preprocess.get("pca_rows", PCA_ROWS)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < max(n_pca, 1):
        raise ConfigError(f"preprocess pca_rows must be a number of rows of at least pca = {n_pca}, "
                          f"not {rows!r}")
    # copy=False: it is fitted on rows gathered for it alone (no second 1.1 GB copy)
    pca = (PCA(n_components=n_pca, whiten=bool(preprocess.get("whiten", False)),
               svd_solver="randomized", iterated_power=1, copy=False, random_state=0)
           if n_pca else None)
    return Preprocessing(bool(preprocess.get("standardize", True)), pca, rows)


@dataclass
class ClassicSpec:
    """One classic pipeline: what to extract, how to preprocess, what to fit, what to search."""

    name: str
    features: FeatureSpec
    classifier: dict[str, Any]
    preprocess: dict[str, Any] = field(default_factory=lambda: {"standardize": True, "pca": 0})
    grid: dict[str, list] = field(default_factory=dict)
    augment_flip: bool = False  # add horizontally flipped training images
    augment_shifts: int = 0  # add copies moved by the first n of featurestore.sources.SHIFTS
    # score each image by the mean of its features and those of its copies moved by the first
    # n of featurestore.sources.SHIFTS (validation, test and prediction; training rows as they are)
    test_time_shifts: int = 0
    description: str = ""

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> ClassicSpec:
        """Parse and check a pipeline table; every error names the pipeline."""
        unknown = set(data) - set(SPEC_KEYS)
        if unknown:
            raise ConfigError(f"pipeline {name!r}: unknown keys {sorted(unknown)}; known: "
                              f"{', '.join(SPEC_KEYS)}")
        for key in ("features", "classifier"):
            if key not in data:
                raise ConfigError(f"pipeline {name!r}: missing {key!r}")
        data = copy.deepcopy(dict(data))
        try:
            features = FeatureSpec.parse(data.pop("features"))
            if not isinstance(data["classifier"], dict):
                raise ConfigError("classifier must be a table {type, params}")
            spec = cls(name=name, features=features, **data)
            spec.validate()
        except ConfigError as exc:
            raise ConfigError(f"pipeline {name!r}: {exc}") from None
        return spec

    def to_dict(self) -> dict[str, Any]:
        # the keys added later are left out at their defaults: older models' specs read the same
        shifts = {"augment_shifts": self.augment_shifts} if self.augment_shifts else {}
        if self.test_time_shifts:
            shifts["test_time_shifts"] = self.test_time_shifts
        return {"features": self.features.to_dict(), "classifier": self.classifier,
                "preprocess": self.preprocess, "grid": self.grid,
                "augment_flip": self.augment_flip, **shifts, "description": self.description}

    def training_variants(self) -> list[tuple[bool, int, int]]:
        """What the training images are augmented with: (mirrored, rows down, columns right)
        per copy, the images themselves first."""
        return training_variants(self.augment_flip, self.augment_shifts)

    def test_time_variants(self) -> list[tuple[bool, int, int]]:
        """The copies an image is scored by (their features averaged), the image first."""
        return test_time_variants(self.test_time_shifts)

    def stored_splits(self, refit: bool) -> list[tuple[str, tuple[bool, int, int]]]:
        """The (split, variant) feature stores a fit reads: the training images and their
        copies, the validation and test images with their test-time copies, and with ``refit``
        the validation images' training copies (see :func:`cvpipe.classifiers.fit_classic`)."""
        test_time = self.test_time_variants()
        copies = self.training_variants()[1:]
        return [("train", (False, 0, 0)), *(("train", v) for v in copies),
                *(("val", v) for v in test_time), *(("val", v) for v in copies if refit),
                *(("test", v) for v in test_time)]

    def validate(self) -> None:
        """Check the grid's keys and build the classifier and preprocessing of every candidate."""
        if not isinstance(self.augment_flip, bool):
            raise ConfigError(f"augment_flip is true or false, not {self.augment_flip!r}")
        if isinstance(self.augment_shifts, bool) or not isinstance(self.augment_shifts, int):
            raise ConfigError(f"augment_shifts is a whole number, not {self.augment_shifts!r}")
        self.training_variants()  # the range
        self.test_time_variants()
        for key, values in self.grid.items():
            part, _, option = key.partition(".")
            if part not in ("classifier", "preprocess") or not option:
                raise ConfigError(f"grid key {key!r} must be 'classifier.<param>' or "
                                  "'preprocess.<option>'")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid {key!r} needs a non-empty list")
        for params in self.candidates():
            cand = self.with_params(params)
            build_classifier(cand.classifier)
            build_preprocess(cand.preprocess)

    def check(self, n_train: int, image_shape: tuple[int, ...]) -> None:
        """Build everything for ``n_train`` training images of ``image_shape``, fitting nothing.

        The kernel SVM is built as it will run at that size (exact or Nystroem); PCA is checked
        against the feature dimension.

        Raises
        ------
        ConfigError
            Naming the pipeline.
        """
        try:
            dim = self.features.check(image_shape)
            for params in self.candidates():
                cand = self.with_params(params)
                clf = build_classifier(cand.classifier)
                if isinstance(clf, RBFSVM):
                    clf.make_estimator(n_train, dim)
                pca = build_preprocess(cand.preprocess).pca
                if pca is not None and pca.n_components > dim:
                    # (fewer training rows than components: fewer components, see .training)
                    raise ConfigError(f"pca = {pca.n_components} components, more than the "
                                      f"{dim} features")
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"pipeline {self.name!r} on {n_train} training images of "
                              f"{'x'.join(map(str, image_shape))}: {exc}") from None

    def candidates(self) -> list[dict[str, Any]]:
        """Every grid combination, as {grid key: value}; one empty dict without a grid."""
        keys = sorted(self.grid)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*(self.grid[k] for k in keys))]

    def with_params(self, params: Mapping[str, Any]) -> ClassicSpec:
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
