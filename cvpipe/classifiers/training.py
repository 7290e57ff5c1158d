"""Fit a classic pipeline honestly: select on validation, refit, score test once -- out of core.

Stages, in order:

1. **Features**: the extractor (a learned one fitted on the "train" split's images, or
   restored from the store), then the stored features of the train, validation and test
   splits (:mod:`cvpipe.featurestore.dataset`: computed once per component and dataset, and
   reused by every pipeline and run after). Nothing below holds a feature matrix in memory:
   classifiers read the stores a block of rows at a time.
2. **Selection**: every grid candidate is fitted on the training split and scored on the
   validation split. A linear SVM's grid shares one statistics pass and one factorisation,
   each C warm-started from the previous one (:func:`cvpipe.classifiers.linear_svm.fit_path`);
   an MLP streams minibatches; the standardisation comes from the same statistics.
3. **Refit** of the chosen candidate on train + validation (``refit=True``; an MLP keeps the
   number of epochs that early stopping chose; a linear SVM starts from the chosen weights).
4. **Scores** of train, validation (from the selection fit: a true held-out figure) and test,
   the latter exactly once. With ``test_time_shifts``, validation and test are scored on the
   mean of the stored features of each image and of its moved copies (:func:`scored_rows`),
   as the saved model scores the images it is sent; train on its own features.

The exact kernel SVM (small sets only) and OpenCV's SVM need the matrix in memory: for them
the blocks are gathered first. A PCA is fitted on a seeded sample of the rows (at most
``pca_rows``), and the classifier reads the projected rows. Saving the result is the
artifact layer's job (:mod:`cvpipe.models`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from cvpipe.classifiers.chunks import (
    Chunks,
    Concat,
    Mapped,
    Mean,
    gather_rows,
    in_memory,
    materialize,
    read_ahead,
)
from cvpipe.classifiers.fitted import ClassicModel, decision_scores
from cvpipe.classifiers.linear_svm import LinearProblem, LinearSVM, fit_path
from cvpipe.classifiers.mlp import MLPClassifier
from cvpipe.classifiers.row_stats import LOCAL, Runner, compute_stats
from cvpipe.classifiers.specs import ClassicSpec, build_classifier, build_preprocess
from cvpipe.data.dataset import Dataset
from cvpipe.features import FeatureSpec
from cvpipe.featurestore.dataset import (
    Learned,
    StoredFeatures,
    StoreSettings,
    learned_extractor,
    missing_store_bytes,
    split_features,
)
from cvpipe.featurestore.store import rows_bytes
from cvpipe.metrics import classification_metrics
from cvpipe.storage import canonical_json, check_free

log = logging.getLogger(__name__)


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
    features: dict[str, Any] = dataclasses.field(default_factory=dict)  # computed or reused, ...


# --------------------------------------------------------------------------------------------
# scoring and preprocessing on blocks of rows


def score_chunks(pre: BaseEstimator | None, clf: BaseEstimator, chunks: Chunks
                 ) -> tuple[np.ndarray, np.ndarray, str]:
    """(labels, scores, score kind) of every row of ``chunks``, a block at a time."""
    scores, labels, kind = [], [], "decision"
    for X, y in read_ahead(chunks):
        s, kind = decision_scores(clf, pre.transform(X) if pre is not None else X)
        scores.append(np.asarray(s, np.float64))
        labels.append(y)
    return np.concatenate(labels), np.concatenate(scores), kind


def _metrics(pre: BaseEstimator | None, clf: BaseEstimator, chunks: Chunks, classes: list[str]
             ) -> dict[str, Any]:
    y, scores, kind = score_chunks(pre, clf, chunks)
    return classification_metrics(y, scores.argmax(1), classes, scores, kind)


def _scaler_of(rows: Chunks, standardize: bool, runner: Runner) -> StandardScaler | None:
    """The fitted standardisation of ``rows`` (one pass of sums), or None without one."""
    if not standardize:
        return None
    return compute_stats(rows, None, with_gram=False, runner=runner).scaler()


def _scaled(rows: Chunks, pre: StandardScaler | None) -> Chunks:
    """``rows`` standardised a block at a time, as ``pre.transform`` does (the mean and scale
    in float32, subtracted and divided), without its validation and copy: an MLP reads its
    rows this way every epoch."""
    if pre is None:
        return rows
    mean, scale = pre.mean_.astype(np.float32), pre.scale_.astype(np.float32)

    def standardise(X: np.ndarray) -> np.ndarray:
        out = np.subtract(X, mean, dtype=np.float32)
        out /= scale
        return out

    return Mapped(rows, standardise, rows.n_features)


def _fit_pca(pca: PCA, rows: Chunks, max_rows: int) -> PCA:
    """``pca`` fitted on ``rows``, or on a seeded sample of ``max_rows`` of them (sorted, so
    that each block is read once), gathered in memory. Fewer rows than its components give
    one component less than the rows (the rest would be noise, whitened to any size)."""
    n = rows.n_rows
    take = (np.arange(n) if n <= max_rows
            else np.sort(np.random.default_rng(0).choice(n, max_rows, replace=False)))
    if pca.n_components >= len(take):
        log.info("PCA: %d components of %d rows, not %d", len(take) - 1, len(take), pca.n_components)
        pca = clone(pca).set_params(n_components=max(len(take) - 1, 1))
    return pca.fit(gather_rows(rows, take))


def _projected(rows: Chunks, pca: PCA) -> Chunks:
    """``rows`` through the fitted ``pca``, computed once and held in memory where the
    projections fit in :data:`~cvpipe.classifiers.chunks.SMALL_BYTES` (an MLP reads them
    every epoch), else projected a block at a time as they are read."""
    return in_memory(Mapped(rows, pca.transform, pca.n_components_))


def _fit_candidate(spec: ClassicSpec, rows: Chunks, eval_rows: Chunks | None, runner: Runner
                   ) -> tuple[BaseEstimator | None, BaseEstimator, float]:
    """Fit preprocessing and classifier of one candidate on ``rows``; (pre, clf, seconds)."""
    start = time.perf_counter()
    clf = build_classifier(spec.classifier)
    preprocessing = build_preprocess(spec.preprocess)
    pre = _scaler_of(rows, preprocessing.standardize, runner)
    rows = _scaled(rows, pre)
    eval_rows = _scaled(eval_rows, pre) if eval_rows is not None else None
    if preprocessing.pca is not None:
        pca = _fit_pca(preprocessing.pca, rows, preprocessing.pca_rows)
        rows = _projected(rows, pca)
        eval_rows = _projected(eval_rows, pca) if eval_rows is not None else None
        pre = Pipeline([*([("scale", pre)] if pre is not None else []), ("pca", pca)])
    if isinstance(clf, MLPClassifier):
        clf.fit_chunks(rows, eval_rows)
    elif hasattr(clf, "fit_chunks"):
        clf.fit_chunks(rows, runner)
    else:  # OpenCV's SVM: in memory
        clf.fit(*materialize(rows))
    return pre, clf, time.perf_counter() - start


def _linear_grid(spec: ClassicSpec) -> list[float] | None:
    """The C values of a linear SVM whose grid is over C alone (a path), else None."""
    if spec.classifier.get("type") != "linear-svm" or build_preprocess(spec.preprocess).pca is not None:
        return None
    if set(spec.grid) - {"classifier.C"}:
        return None
    return [float(c) for c in spec.grid.get("classifier.C", [])] or None


# --------------------------------------------------------------------------------------------
# the pipeline


def scored_rows(ds: Dataset, features: FeatureSpec, split: str, learned: Learned,
                store: StoreSettings, variants: list[tuple[bool, int, int]]
                ) -> tuple[Chunks, list[StoredFeatures]]:
    """The rows a model is scored on for ``split``, and the stores they come from: the split's
    stored features, or with test-time shifts (``variants``, the images themselves first:
    :meth:`ClassicSpec.test_time_variants`) the mean of those of each copy."""
    stores = [split_features(ds, features, split, learned, store, variant=v) for v in variants]
    return (stores[0] if len(stores) == 1 else Mean(stores)), stores


def planned_store_bytes(ds: Dataset, spec: ClassicSpec, refit: bool = True) -> dict[tuple, int]:
    """The bytes of each feature store :func:`fit_classic` writes for ``spec`` on ``ds``, keyed
    by what names it before any dictionary is learned (component, parameters, split, variant):
    pipelines sharing a store share a key. Stores already on disk are counted too."""
    train, val = ds.split_indices()
    rows = {"train": len(train), "val": len(val), "test": len(ds.labels("test"))}
    image_shape = tuple(int(s) for s in ds.image_shape)
    sizes = {}
    for component in spec.features.components:
        d = FeatureSpec(component.kind, (component,)).n_features(image_shape)
        params = canonical_json(component.effective())
        for split, variant in spec.stored_splits(refit):
            sizes[(component.kind, params, split, variant)] = rows_bytes(rows[split], d)
    return sizes


def fit_classic(ds: Dataset, spec: ClassicSpec, *, refit: bool = True, progress: bool = True,
                store: StoreSettings | None = None, runner: Runner = LOCAL) -> ClassicFit:
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
    store : StoreSettings, optional
        Where features are stored and whether to recompute them (default: the data root).
    runner : Runner
        Where the statistics and passes of linear models run (this machine, or a Dask
        cluster: :class:`cvpipe.featurestore.dask.DaskRunner`).
    """
    store = store or StoreSettings(progress=progress)
    classes = list(ds.classes)
    learned = learned_extractor(ds, spec.features, store)
    # every store this fit will write, checked against the disk before the first is written
    needed = missing_store_bytes(ds, spec.features, learned, store, spec.stored_splits(refit))
    check_free(store.features_dir, needed, f"{spec.name}: its feature stores",
               "free some (cvpipe store clear) or choose another data root")
    train = split_features(ds, spec.features, "train", learned, store)
    # val_eval: the rows candidates are scored on (the mean over the test-time shifts, if any);
    # val: the split's own features, added to the training rows by the refit
    test_time = spec.test_time_variants()
    val_eval, val_stores = scored_rows(ds, spec.features, "val", learned, store, test_time)
    val = val_stores[0]
    parts: list[StoredFeatures] = [train, *val_stores]
    fit_rows: Chunks = train
    variants = spec.training_variants()[1:]  # mirror images and shifted copies, if any
    if variants:
        copies = [split_features(ds, spec.features, "train", learned, store, variant=v)
                  for v in variants]
        parts.extend(copies)
        fit_rows = Concat([train, *copies])

    candidates = spec.candidates()
    records: list[dict[str, Any]] = []
    best: tuple[dict[str, Any], ClassicSpec, Any, BaseEstimator] | None = None
    problem = None

    def record(params: dict[str, Any], cand: ClassicSpec, pre: Any, clf: BaseEstimator,
               secs: float) -> None:
        nonlocal best
        y, scores, _ = score_chunks(pre, clf, val_eval)
        val_acc = float((scores.argmax(1) == y).mean())
        rec = {"params": params, "val_accuracy": val_acc, "fit_seconds": round(secs, 3)}
        if isinstance(clf, MLPClassifier):
            rec["best_epoch"] = clf.best_epoch_
            rec["precision"] = clf.precision_  # "auto" resolved on this machine
        if isinstance(clf, LinearSVM):
            rec["iterations"] = clf.n_iter_
        records.append(rec)
        log.info("%s%s: val accuracy %.4f (%.1f s)", spec.name, f" {params}" if params else "",
                 val_acc, secs)
        if best is None or val_acc > best[0]["val_accuracy"]:
            best = (rec, cand, pre, clf)

    Cs = _linear_grid(spec)
    bar = tqdm(total=len(candidates), desc=f"select {spec.name}", unit="cand",
               disable=(None if progress else True) if len(candidates) > 1 else True, leave=False)
    if Cs is not None:
        start = time.perf_counter()
        template = build_classifier(spec.classifier)
        standardize = build_preprocess(spec.preprocess).standardize
        problem = LinearProblem.prepare(fit_rows, standardize=standardize, runner=runner,
                                        device=template.torch_device())
        pre = problem.stats.scaler() if standardize else None
        shared = time.perf_counter() - start  # statistics and factorisation: counted once
        last = time.perf_counter()

        def on_fit(C: float, clf: LinearSVM) -> None:
            nonlocal last, shared
            secs = time.perf_counter() - last + shared
            shared = 0.0  # with the first candidate only: the selection's sum counts it once
            params = {"classifier.C": C} if "classifier.C" in spec.grid else {}
            record(params, spec.with_params(params), pre, clf, secs)
            bar.update()
            last = time.perf_counter()

        fit_path(problem, template, Cs, on_fit=on_fit, scaled_inputs=pre is not None)
    else:
        for params in candidates:
            cand = spec.with_params(params)
            pre, clf, secs = _fit_candidate(cand, fit_rows, val_eval, runner)
            record(params, cand, pre, clf, secs)
            bar.update()
    bar.close()
    assert best is not None
    rec, chosen, pre, clf = best
    val_metrics = _metrics(pre, clf, val_eval, classes)

    all_rows: Chunks = Concat([fit_rows, val]) if refit else fit_rows
    if refit:
        val_copies = [split_features(ds, spec.features, "val", learned, store, variant=v)
                      for v in variants]
        parts.extend(val_copies)
        more: Chunks = Concat([val, *val_copies]) if val_copies else val
        all_rows = Concat([fit_rows, more])
        start = time.perf_counter()
        if problem is not None:
            # the chosen weights as a start; the same preconditioner
            wider = problem.with_rows(more, standardize=pre is not None)
            chosen_raw = ((clf.coef_.T, clf.intercept_) if pre is None  # scores of raw rows
                          else problem.raw(clf.coef_.T, clf.intercept_))
            W, b = wider.from_raw(*chosen_raw)
            W, b, nit = wider.solve(clf.C, start=(W, b), max_iter=clf.max_iter, tol=clf.tol,
                                    ftol=clf.ftol, fit_intercept=clf.fit_intercept)
            pre = wider.stats.scaler() if pre is not None else None
            clf = clone(clf)._set_weights(wider.classes, W, b, wider.chunks.n_features, nit,
                                          *(() if pre is not None else (wider.scale, wider.mean)))
            fit_seconds = time.perf_counter() - start
        else:
            final = chosen
            if "best_epoch" in rec:
                # No held-out data is left: train for the epochs early stopping chose.
                final = chosen.with_params({"classifier.max_epochs": rec["best_epoch"] + 1,
                                            "classifier.early_stopping": False})
            pre, clf, fit_seconds = _fit_candidate(final, all_rows, None, runner)
        n_fit_images = all_rows.n_rows
        train_split = "train_full"
        # the unaugmented train + validation (without test-time shifts: those would describe
        # every training image again, as many times)
        train_eval: Chunks = Concat([train, val])
    else:
        fit_seconds = rec["fit_seconds"]
        n_fit_images = fit_rows.n_rows
        train_split, train_eval = "train", train

    test, test_stores = scored_rows(ds, spec.features, "test", learned, store, test_time)
    speed = train.images_per_second
    train_seconds = learned.fit_seconds + n_fit_images / speed + fit_seconds
    metrics = {"train": {**_metrics(pre, clf, train_eval, classes), "split": train_split},
               "val": val_metrics,
               "test": _metrics(pre, clf, test, classes)}  # the only look at test
    log.info("%s: train %.4f val %.4f test %.4f, fit %.1f s", spec.name, metrics["train"]["accuracy"],
             metrics["val"]["accuracy"], metrics["test"]["accuracy"], fit_seconds)
    stores = [*parts, *test_stores]
    features = {
        "status": _status(stores, learned.reused),
        "seconds": round(sum(s.seconds for s in stores), 3),
        "bytes": sum(s.nbytes for s in stores),
        "stores": sorted({url for s in stores for url in s.urls}),
    }
    return ClassicFit(
        model=ClassicModel(spec.features, pre, clf, extractor=learned.extractor,
                           test_time_shifts=spec.test_time_shifts),
        chosen=chosen,
        metrics=metrics,
        selection={
            "split": "val", "metric": "accuracy", "chosen": rec["params"], "candidates": records,
            "refit_on": "train_full (train + val)" if refit else "none (fit on train)",
            "test": "scored once, after selection",
            **({"test_time_shifts": spec.test_time_shifts,
                "train_scored": "without the test-time shifts"} if spec.test_time_shifts else {}),
        },
        feature_dim=int(train.n_features),
        fit_seconds=fit_seconds,
        selection_seconds=sum(r["fit_seconds"] for r in records),
        extraction_images_per_second=speed,
        history=getattr(clf, "history_", None),
        feature_fit_seconds=learned.fit_seconds,
        train_seconds=train_seconds,
        features=features,
    )


def _status(stores: list[StoredFeatures], learned_reused: bool) -> str:
    """Whether a pipeline's features were computed in this run or reused from the store."""
    states = {s.status for s in stores}
    if states == {"reused"} and learned_reused:
        return "reused"
    if states == {"computed"}:
        return "computed"
    return "partly reused"

