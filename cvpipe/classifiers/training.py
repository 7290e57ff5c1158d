"""Fit a classic pipeline honestly: select on validation, refit, score test once.

Stages, in order:

1. extract features of the train, validation and test splits (once per feature set and
   dataset; remembered in memory for the next pipeline of the run);
2. fit every grid candidate on the training split and score it on the validation split;
3. refit the chosen candidate on train + validation (``refit=True``; an MLP keeps the number
   of epochs that early stopping chose) and time that fit;
4. score train, validation (from the selection fit, a true held-out figure) and test, the
   latter exactly once.

Saving the result is the artifact layer's job (:mod:`cvpipe.models`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from tqdm.auto import tqdm

from cvpipe.classifiers.fitted import ClassicModel, decision_scores
from cvpipe.classifiers.mlp import MLPClassifier
from cvpipe.classifiers.specs import ClassicSpec, build_classifier, build_preprocess
from cvpipe.data.dataset import Dataset
from cvpipe.features import FeatureSpec
from cvpipe.metrics import classification_metrics

log = logging.getLogger(__name__)

#: (dataset cache dir, feature key, split, flipped) -> (features, images/s)
_FEATURE_MEMO: dict[tuple[str, str, str, bool], tuple[np.ndarray, float]] = {}
#: (dataset cache dir, feature key) -> (extractor fitted on the train split, seconds to fit it)
_EXTRACTORS: dict[tuple[str, str], tuple[Any, float]] = {}
#: dataset cache dir -> fitted learning components, shared by the feature sets that hold them
_COMPONENTS: dict[str, dict[str, Any]] = {}
CHUNK = 4096


def fitted_extractor(ds: Dataset, features: FeatureSpec) -> tuple[Any, float]:
    """The feature extractor of ``features`` for ``ds`` and the seconds its fit took.

    A feature set that learns (patches) learns from the images of the "train" split only --
    neither validation nor test images, and no labels; a stateless one is just built.
    """
    key = (str(ds.cache_dir), features.key())
    if key not in _EXTRACTORS:
        if features.stateful:
            log.info("learning %s from the train split's images", features.name)
            cache = _COMPONENTS.setdefault(str(ds.cache_dir), {})
            extractor = features.fit(np.asarray(ds.split("train")[0]), cache=cache)
            _EXTRACTORS[key] = (extractor, features.fit_seconds(cache))
        else:
            _EXTRACTORS[key] = (features.build(), 0.0)
    return _EXTRACTORS[key]


def extract_features(images: np.ndarray, extractor: Any, desc: str = "features",
                     progress: bool = True) -> tuple[np.ndarray, float]:
    """Feature matrix (N, D) float32 of uint8 images, in chunks, and images per second."""
    start = time.perf_counter()
    chunks = []
    for i in tqdm(range(0, len(images), CHUNK), desc=desc, unit="chunk",
                  disable=None if progress else True, leave=False):
        chunks.append(np.asarray(extractor.transform(np.asarray(images[i: i + CHUNK])), np.float32))
    elapsed = time.perf_counter() - start
    feats = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return feats, len(images) / max(elapsed, 1e-9)


def split_features(ds: Dataset, features: FeatureSpec, split: str, flip: bool = False,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """(features, labels, images/s) of a dataset split, remembered for the process."""
    key = (str(ds.cache_dir), features.key(), split, flip)
    images, labels = ds.split(split)
    if key not in _FEATURE_MEMO:
        imgs = images[:, :, ::-1] if flip else images
        extractor, _ = fitted_extractor(ds, features)
        _FEATURE_MEMO[key] = extract_features(imgs, extractor, f"{features.name} {split}"
                                              f"{' flipped' if flip else ''}", progress)
    feats, speed = _FEATURE_MEMO[key]
    return feats, np.asarray(labels), speed


def _fit(spec: ClassicSpec, X: np.ndarray, y: np.ndarray,
         eval_set: tuple[np.ndarray, np.ndarray] | None = None,
         ) -> tuple[BaseEstimator | None, BaseEstimator, float]:
    """Fit preprocessing and classifier; return them and the seconds taken."""
    start = time.perf_counter()
    pre = build_preprocess(spec.preprocess)
    Xp = pre.fit_transform(X) if pre is not None else X
    clf = build_classifier(spec.classifier)
    if isinstance(clf, MLPClassifier) and eval_set is not None:
        ev = pre.transform(eval_set[0]) if pre is not None else eval_set[0]
        clf.fit(Xp, y, eval_set=(ev, eval_set[1]))
    else:
        clf.fit(Xp, y)
    return pre, clf, time.perf_counter() - start


def _metrics(pre: BaseEstimator | None, clf: BaseEstimator, X: np.ndarray, y: np.ndarray,
             classes: list[str]) -> dict[str, Any]:
    scores, kind = decision_scores(clf, pre.transform(X) if pre is not None else X)
    return classification_metrics(y, scores.argmax(1), classes, scores, kind)


@dataclass
class ClassicFit:
    """A fitted classic pipeline and how it was chosen and scored."""

    model: ClassicModel
    chosen: ClassicSpec  # the spec with the chosen grid values written in
    metrics: dict[str, dict[str, Any]]  # train / val / test
    selection: dict[str, Any]
    feature_dim: int
    fit_seconds: float  # the final classifier fit
    selection_seconds: float
    extraction_images_per_second: float
    history: list[dict[str, float]] | None
    feature_fit_seconds: float = 0.0  # learning the features (patches), from the train split
    train_seconds: float = 0.0  # all it takes to make the model: features learnt, the training
    # images described, the final fit (selection excluded)


def fit_classic(ds: Dataset, spec: ClassicSpec, *, refit: bool = True,
                progress: bool = True) -> ClassicFit:
    """Select, fit and score one classic pipeline on a dataset.

    Parameters
    ----------
    ds : Dataset
        Its "train" split fits, "val" chooses, "test" is scored once at the end.
    spec : ClassicSpec
    refit : bool
        Refit the chosen candidate on train + validation.
    progress : bool
        Progress bars on a terminal.
    """
    classes = list(ds.classes)
    Xtr, ytr, speed = split_features(ds, spec.features, "train", progress=progress)
    Xva, yva, _ = split_features(ds, spec.features, "val", progress=progress)
    Xfit, yfit = Xtr, ytr
    if spec.augment_flip:
        Xfl, _, _ = split_features(ds, spec.features, "train", flip=True, progress=progress)
        Xfit, yfit = np.concatenate([Xtr, Xfl]), np.concatenate([ytr, ytr])

    candidates = spec.candidates()
    records, best = [], None
    for params in tqdm(candidates, desc=f"select {spec.name}", unit="cand",
                       disable=(None if progress else True) if len(candidates) > 1 else True):
        cand = spec.with_params(params)
        pre, clf, secs = _fit(cand, Xfit, yfit, eval_set=(Xva, yva))
        val_acc = float((decision_scores(clf, pre.transform(Xva) if pre is not None else Xva)[0]
                         .argmax(1) == yva).mean())
        rec = {"params": params, "val_accuracy": val_acc, "fit_seconds": round(secs, 3)}
        if isinstance(clf, MLPClassifier):
            rec["best_epoch"] = clf.best_epoch_
        records.append(rec)
        log.info("%s%s: val accuracy %.4f (%.1f s)", spec.name, f" {params}" if params else "", val_acc,
                 secs)
        if best is None or val_acc > best[0]["val_accuracy"]:
            best = (rec, cand, pre, clf)
    rec, chosen, pre, clf = best
    val_metrics = _metrics(pre, clf, Xva, yva, classes)

    if refit:
        Xall, yall = np.concatenate([Xfit, Xva]), np.concatenate([yfit, yva])
        if spec.augment_flip:
            Xvf, _, _ = split_features(ds, spec.features, "val", flip=True, progress=progress)
            Xall, yall = np.concatenate([Xall, Xvf]), np.concatenate([yall, yva])
        final = chosen
        if "best_epoch" in rec:
            # No held-out data is left: train for the epochs early stopping chose.
            final = chosen.with_params({"classifier.max_epochs": rec["best_epoch"] + 1,
                                        "classifier.early_stopping": False})
        pre, clf, fit_seconds = _fit(final, Xall, yall)
        n_fit_images = len(yall)
        train_split = "train_full"
        # the unflipped train + validation: Xall itself unless flips were added (no second copy)
        Xtrain_eval, ytrain_eval = ((Xall, yall) if not spec.augment_flip else
                                    (np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva])))
    else:
        fit_seconds = rec["fit_seconds"]
        n_fit_images = len(yfit)
        train_split, Xtrain_eval, ytrain_eval = "train", Xtr, ytr

    extractor, feature_fit_seconds = fitted_extractor(ds, spec.features)
    train_seconds = feature_fit_seconds + n_fit_images / speed + fit_seconds
    Xte, yte, _ = split_features(ds, spec.features, "test", progress=progress)
    metrics = {"train": {**_metrics(pre, clf, Xtrain_eval, ytrain_eval, classes), "split": train_split},
               "val": val_metrics,
               "test": _metrics(pre, clf, Xte, yte, classes)}  # the only look at test
    log.info("%s: train %.4f val %.4f test %.4f, fit %.1f s", spec.name, metrics["train"]["accuracy"],
             metrics["val"]["accuracy"], metrics["test"]["accuracy"], fit_seconds)
    return ClassicFit(
        model=ClassicModel(spec.features, pre, clf, extractor=extractor),
        chosen=chosen,
        metrics=metrics,
        selection={
            "split": "val", "metric": "accuracy", "chosen": rec["params"], "candidates": records,
            "refit_on": "train_full (train + val)" if refit else "none (fit on train)",
            "test": "scored once, after selection",
        },
        feature_dim=int(Xtr.shape[1]),
        fit_seconds=fit_seconds,
        selection_seconds=sum(r["fit_seconds"] for r in records),
        extraction_images_per_second=speed,
        history=getattr(clf, "history_", None),
        feature_fit_seconds=feature_fit_seconds,
        train_seconds=train_seconds,
    )
