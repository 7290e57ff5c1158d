"""Train a classic pipeline honestly: select on validation, fit, score test once, save.

Stages, in order:

1. extract features of the train, validation and test splits (once per feature
   configuration and dataset; remembered in memory for the next pipeline of the run);
2. fit every grid candidate on the training split and score it on the validation split;
3. refit the chosen candidate on train + validation (``refit=True``; an MLP keeps the number
   of epochs that early stopping chose) and time that fit;
4. score train, validation (from the selection fit, a true held-out figure) and test, the
   latter exactly once;
5. save the artifact with the metrics, the selection record and the timings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from tqdm.auto import tqdm

from cvpipe.classifiers.mlp import MLPClassifier
from cvpipe.classifiers.persist import save_classic_model
from cvpipe.classifiers.specs import PipelineSpec, build_classifier, build_features, build_preprocess
from cvpipe.data.dataset import Dataset
from cvpipe.metrics import classification_metrics
from cvpipe.models.artifact import read_metadata

log = logging.getLogger(__name__)

#: (dataset cache dir, feature config, split, flipped) -> (features, images/s)
_FEATURE_MEMO: dict[tuple[str, str, str, bool], tuple[np.ndarray, float]] = {}
CHUNK = 4096


def extract_features(images: np.ndarray, features: dict[str, Any], desc: str = "features",
                     progress: bool = True) -> tuple[np.ndarray, float]:
    """Feature matrix (N, D) float32 of uint8 images, in chunks, and images per second."""
    extractor = build_features(features)
    start = time.perf_counter()
    chunks = []
    for i in tqdm(range(0, len(images), CHUNK), desc=desc, unit="chunk", disable=None if progress
                  else True, leave=False):
        chunks.append(np.asarray(extractor.transform(np.asarray(images[i: i + CHUNK])), np.float32))
    elapsed = time.perf_counter() - start
    feats = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return feats, len(images) / max(elapsed, 1e-9)


def split_features(ds: Dataset, features: dict[str, Any], split: str, flip: bool = False,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """(features, labels, images/s) of a dataset split, remembered for the process."""
    key = (str(ds.cache_dir), json.dumps(features, sort_keys=True), split, flip)
    images, labels = ds.split(split)
    if key not in _FEATURE_MEMO:
        imgs = images[:, :, ::-1] if flip else images
        _FEATURE_MEMO[key] = extract_features(imgs, features, f"{features['name']} {split}"
                                              f"{' flipped' if flip else ''}", progress)
    feats, speed = _FEATURE_MEMO[key]
    return feats, np.asarray(labels), speed


def _fit(spec: PipelineSpec, X: np.ndarray, y: np.ndarray,
         eval_set: tuple[np.ndarray, np.ndarray] | None = None,
         ) -> tuple[BaseEstimator | None, BaseEstimator, float]:
    """Fit preprocessing and classifier; return them and the seconds taken."""
    start = time.perf_counter()
    pre = build_preprocess(spec.preprocess)
    Xp = pre.fit_transform(X) if pre is not None else X
    clf = build_classifier(spec.classifier, len(y))
    if isinstance(clf, MLPClassifier) and eval_set is not None:
        ev = pre.transform(eval_set[0]) if pre is not None else eval_set[0]
        clf.fit(Xp, y, eval_set=(ev, eval_set[1]))
    else:
        clf.fit(Xp, y)
    return pre, clf, time.perf_counter() - start


def _scores(pre: BaseEstimator | None, clf: BaseEstimator, X: np.ndarray) -> tuple[np.ndarray, str]:
    Xp = pre.transform(X) if pre is not None else X
    if hasattr(clf, "predict_proba"):
        return clf.predict_proba(Xp), "probability"
    s = clf.decision_function(Xp)
    return (np.stack([-s, s], 1) if s.ndim == 1 else s), "decision"


def _metrics(pre, clf, X, y, classes) -> dict:
    scores, kind = _scores(pre, clf, X)
    return classification_metrics(y, scores.argmax(1), classes, scores, kind)


def train_classic(ds: Dataset, spec: PipelineSpec, model_dir: Path, *, refit: bool = True,
                  progress: bool = True) -> dict[str, Any]:
    """Select, fit, score and save one classic pipeline; returns the saved metadata."""
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
        val_acc = float((_scores(pre, clf, Xva)[0].argmax(1) == yva).mean())
        rec = {"params": params, "val_accuracy": val_acc, "fit_seconds": round(secs, 3)}
        if isinstance(clf, MLPClassifier):
            rec["best_epoch"] = clf.best_epoch_
        records.append(rec)
        log.info("%s %s: val accuracy %.4f (%.1f s)", spec.name, params or "", val_acc, secs)
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
        if chosen.classifier["type"] in ("mlp", "softmax"):
            # No held-out data is left: train for the epochs early stopping chose.
            final = chosen.with_params({"classifier.max_epochs": rec["best_epoch"] + 1,
                                        "classifier.early_stopping": False})
        pre, clf, fit_seconds = _fit(final, Xall, yall)
        train_split, (Xtrain_eval, ytrain_eval) = "train_full", (np.concatenate([Xtr, Xva]),
                                                                 np.concatenate([ytr, yva]))
    else:
        fit_seconds = rec["fit_seconds"]
        train_split, (Xtrain_eval, ytrain_eval) = "train", (Xtr, ytr)

    Xte, yte, _ = split_features(ds, spec.features, "test", progress=progress)
    metrics = {"train": _metrics(pre, clf, Xtrain_eval, ytrain_eval, classes),
               "val": val_metrics,
               "test": _metrics(pre, clf, Xte, yte, classes)}  # the only look at test
    metrics["train"]["split"] = train_split
    history = getattr(clf, "history_", None)
    metadata = {
        "pipeline": spec.name,
        "spec": spec.to_dict(),
        "input_size": list(ds.images("train").shape[1:3]),
        "feature_dim": int(Xtr.shape[1]),
        "metrics": metrics,
        "selection": {
            "split": "val", "metric": "accuracy", "chosen": rec["params"],
            "candidates": records,
            "refit_on": "train_full (train + val)" if refit else "none (fit on train)",
            "test": "scored once, after selection",
        },
        "hyperparameters": {**chosen.classifier.get("params", {}), "preprocess": chosen.preprocess},
        "dataset": {"source": ds.manifest["source"], "checksum": ds.checksum,
                    "val_fraction": ds.val_fraction, "seed": ds.seed,
                    "counts": {s: sum(c.values()) for s, c in ds.manifest["counts"].items()}},
        "fit_seconds": round(fit_seconds, 3),
        "selection_seconds": round(sum(r["fit_seconds"] for r in records), 3),
        "extraction_images_per_second": round(speed, 1),
        "history": history,
    }
    save_classic_model(model_dir, features=spec.features, preprocess=pre, classifier=clf,
                       classifier_type=spec.classifier["type"], classes=classes, metadata=metadata)
    log.info("%s: train %.4f val %.4f test %.4f, fit %.1f s -> %s", spec.name,
             metrics["train"]["accuracy"], metrics["val"]["accuracy"], metrics["test"]["accuracy"],
             fit_seconds, model_dir)
    return read_metadata(model_dir, verify=False)  # as written, with kind, files, versions
