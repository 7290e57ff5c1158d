"""Run the declared pipelines end to end and gather every figure the report shows.

For each pipeline: train it (or reuse the saved model when its configuration, dataset and
seed are unchanged), then load it back from disk as the API would and measure it the same
way for every kind: test metrics from its predictions, prediction latency for one image and
per image in a batch, and model size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cvpipe.classifiers.fitted import ClassicModel
from cvpipe.classifiers.training import planned_store_bytes, score_chunks, scored_rows
from cvpipe.compare import stats
from cvpipe.compare.config import CompareConfig, Profile
from cvpipe.config import models_dir as default_models_dir
from cvpipe.data.dataset import Dataset, load_dataset
from cvpipe.errors import ArtifactError, ConfigError
from cvpipe.features import FeatureSpec
from cvpipe.featurestore.dataset import Learned, StoreSettings, list_stores
from cvpipe.metrics import classification_metrics
from cvpipe.models import (
    ClassicPipeline,
    DataShape,
    Pipeline,
    library_versions,
    load_model,
    model_card,
    read_metadata,
    read_test_scores,
)
from cvpipe.storage import canonical_json, free_bytes, safe_name, size_text, write_json

log = logging.getLogger(__name__)

LATENCY_REPEATS = 30
#: The first test images, scored as one batch: its time per image is a model's batch latency,
#: and a classic model's scores of them from images are checked against those of the stored
#: test features.
BATCH_FOR_LATENCY = 256
#: What a pipeline costs, against which the report plots its accuracy (Pareto fronts).
COSTS = ("train_seconds", "latency_ms_per_image_batch")


def _reuse_key(pipeline: Pipeline, ds: Dataset) -> str:
    payload = canonical_json([pipeline.definition(), ds.checksum, ds.manifest["counts"],
                              ds.val_fraction, ds.seed])
    return hashlib.sha256(payload.encode()).hexdigest()


def _train_one(pipeline: Pipeline, ds: Dataset, model_dir: Path, force: bool,
               store: StoreSettings | None = None) -> tuple[dict[str, Any], bool, float | None]:
    """Train (or reuse) one pipeline's model; returns (metadata, reused, training seconds).

    The seconds are those of the run that trained the model (features, selection, refit),
    kept with the reuse key, so that a later run's report still says what the model cost
    (None for a model trained before they were kept)."""
    key = _reuse_key(pipeline, ds)
    marker = model_dir.parent / ".compare" / f"{model_dir.name}.json"
    if not force and (model_dir / "model.json").exists() and marker.exists():
        try:
            recorded = json.loads(marker.read_text())
            if isinstance(recorded, dict) and recorded.get("key") == key:
                log.info("%s: configuration unchanged, reusing %s", pipeline.name, model_dir)
                return read_metadata(model_dir), True, recorded.get("training_seconds")
        except (OSError, ValueError):
            pass
    log.info("%s: training", pipeline.name)
    start = time.perf_counter()
    meta = pipeline.train(ds, model_dir, store=store)
    seconds = round(time.perf_counter() - start, 1)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"key": key, "pipeline": pipeline.name, "training_seconds": seconds})
    return meta, False, seconds


def _test_scores(model: Any, model_dir: Path, ds: Dataset, store: StoreSettings | None,
                 first: np.ndarray) -> tuple[np.ndarray, str, float | None]:
    """(scores, kind, seconds per image or None) of the test split by a loaded model.

    A classic model scores the test features in the store (the ones training wrote, found
    by the same key: its feature set and what it learned, as loaded from disk), and must
    give the scores its own path from images gives on the first test images (``first``:
    those scores, checked here). A CNN's test scores were recorded in its folder when it
    was trained: they are used where the loaded model gives the same on the first test
    images, else (or where none were recorded) the CNN scores the images.
    """
    x_test = ds.split("test")[0]
    if isinstance(model, ClassicModel):
        learned = Learned(model.feature_extractor, 0.0, True)
        stored, _ = scored_rows(ds, model.features, "test", learned, store or StoreSettings(progress=False),
                                model.test_time_variants)
        _, scores, kind = score_chunks(model.preprocess, model.classifier, stored)
        if not np.allclose(first, scores[:len(first)], rtol=1e-3, atol=1e-4):
            raise ArtifactError(f"{model.metadata.get('pipeline')}: the saved model does not give "
                                "the stored test features' scores; run with --force")
        return scores, kind, None
    recorded = read_test_scores(model_dir, model.metadata, (len(x_test), len(ds.classes)))
    if recorded is not None:
        if np.allclose(first, recorded[:len(first)], rtol=1e-3, atol=1e-4):
            return recorded, "probability", None
        # e.g. trained on a GPU (TF32 convolutions), loaded here on the CPU: score it here
        log.warning("%s: its recorded test scores differ from the loaded model's (by up to %.2g); "
                    "scoring the test split again", model.metadata.get("pipeline"),
                    float(np.abs(first - recorded[:len(first)]).max()))
    start = time.perf_counter()
    parts = [model.scores(np.asarray(x_test[i: i + 2048])) for i in range(0, len(x_test), 2048)]
    seconds = time.perf_counter() - start
    return np.concatenate([p[0] for p in parts]), parts[0][1], seconds / max(len(x_test), 1)


def _measure(model_dir: Path, ds: Dataset, store: StoreSettings | None = None) -> dict[str, Any]:
    """Test predictions and timings of a model loaded from disk."""
    model = load_model(model_dir)
    x_test, y_test = ds.split("test")
    batch = np.asarray(x_test[:BATCH_FOR_LATENCY])
    model.scores(batch[:1])  # warm-up
    t = time.perf_counter()
    first, _ = model.scores(batch)  # timed, and the scores a classic model's check compares
    batch_per_image = (time.perf_counter() - t) / max(len(batch), 1)
    scores, kind, per_image = _test_scores(model, model_dir, ds, store, first)
    single = []
    for i in range(LATENCY_REPEATS):
        t = time.perf_counter()
        model.scores(x_test[i % len(x_test)][None])
        single.append(time.perf_counter() - t)
    size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    return {
        "scores": scores, "score_kind": kind,
        "test_metrics": classification_metrics(y_test, scores.argmax(1), ds.classes, scores, kind),
        "latency_ms_single": 1000 * float(np.median(single)),
        "latency_ms_per_image_batch": 1000 * batch_per_image,
        "test_images_per_second": 1.0 / (per_image or batch_per_image),
        "model_bytes": size,
    }


def peak_rss_bytes() -> int:
    """The most memory this process (or the largest of its child processes, e.g. Dask
    workers) has held so far, in bytes."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return 1024 * max(own, children)  # kilobytes on Linux


def environment() -> dict[str, Any]:
    """Machine and library versions, for the report's environment block."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPU to report
        gpu = None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu or "none",
            "platform": platform.platform(), "versions": library_versions()}


def model_prefix(ds: Dataset, profile: Profile) -> str:
    """Names of a run's models start with the dataset's name and the profile's prefix
    (``cifar10-quick-hog-mlp``), so runs on several datasets share one models folder."""
    return f"{ds.name}-{profile.model_prefix}"


def run_name(ds: Dataset, profile: Profile) -> str:
    """A run's report folder: ``<dataset>-<profile>`` (``reports/cifar10-quick/``)."""
    return f"{ds.name}-{profile.name}"


def prepare(cfg: CompareConfig, profile: Profile, *, source: str | None = None,
            data_root: str | None = None, pipelines: list[str] | None = None,
            seed_pipelines: list[str] | None = None, dataset: str | None = None,
            **data_options: Any) -> tuple[Dataset, list[Pipeline]]:
    """The run's dataset (``dataset``: a name or path, default CIFAR-10; ``data_options``: more
    :func:`cvpipe.data.load_dataset` options) and its pipelines, every one built for that data:
    a mistake in the config fails here, in seconds, not after an hour of training.

    Pipeline names, their options and ``seed_pipelines`` are checked before the data is read
    (a download or a decoding); how each pipeline fits the data, after.
    """
    planned = {p.name for p in cfg.plan(profile, pipelines)}
    unknown = [n for n in seed_pipelines or [] if n not in planned]
    if unknown:
        raise ConfigError(f"--seed-pipelines: {', '.join(unknown)} not in this run "
                          f"({', '.join(sorted(planned))})")
    ds = load_dataset(dataset, data_root, source=source, limit_per_class=profile.limit_per_class,
                      val_fraction=cfg.val_fraction, seed=cfg.seed, **data_options)
    return ds, cfg.check(profile, DataShape.of(ds), pipelines)


@dataclass(frozen=True)
class DiskOutlook:
    """What a run's feature stores need against the disk that holds them (see
    :func:`disk_outlook`): each pipeline's bytes, the run's (a shared store once), those stored
    already, and the free bytes of ``features_dir``."""

    per_pipeline: list[int]
    total: int
    stored: int
    free: int
    features_dir: Path

    @property
    def short(self) -> bool:
        """More may be written than fits: a bound, so a warning, not a refusal."""
        return self.total - self.stored > self.free


def disk_outlook(ds: Dataset, plan: list[Pipeline], data_root: str | None) -> DiskOutlook:
    """The bytes of the feature stores each pipeline of ``plan`` writes on ``ds`` (0 for the
    CNN) and of the run's (a store pipelines share counted once): upper bounds, stores already
    on disk included (a learned dictionary's stores are named only once it is); with the bytes
    stored and free under ``data_root``'s features folder."""
    sizes = [planned_store_bytes(ds, p.seeded_spec(), p.refit) if isinstance(p, ClassicPipeline)
             else {} for p in plan]
    shared = {key: n for size in sizes for key, n in size.items()}
    features_dir = StoreSettings(root=data_root).features_dir
    return DiskOutlook([sum(size.values()) for size in sizes], sum(shared.values()),
                       sum(e["bytes"] for e in list_stores(data_root)), free_bytes(features_dir),
                       features_dir)


def run_comparison(cfg: CompareConfig, profile: Profile | str, *, source: str | None = None,
                   data_root: str | None = None, models_root: str | Path | None = None,
                   force: bool = False, pipelines: list[str] | None = None, seeds: int = 1,
                   seed_pipelines: list[str] | None = None, dataset: str | None = None,
                   retrain: bool = False, client: Any = None, progress: bool = True,
                   **data_options: Any) -> dict[str, Any]:
    """Train/reuse and measure every pipeline; returns the results (arrays under ``_arrays``).

    With ``seeds`` > 1, ``seed_pipelines`` (default: the best classic pipeline and the CNN)
    are trained again with ``seeds - 1`` more seeds, and their rows get the mean and standard
    deviation of test accuracy over all seeds.

    ``force`` retrains every model and recomputes every stored feature; ``retrain`` retrains
    the models but reuses stored features; ``client`` (a ``distributed.Client``): extraction
    and the linear models' statistics run on its cluster.
    """
    profile = cfg.profile(profile) if isinstance(profile, str) else profile
    started = time.perf_counter()
    ds, plan = prepare(cfg, profile, source=source, data_root=data_root, pipelines=pipelines,
                       seed_pipelines=seed_pipelines, dataset=dataset, **data_options)
    models_root = default_models_dir(models_root)
    prefix = model_prefix(ds, profile)
    # every name this run derives, checked before the first model trains, not after
    report_name = safe_name(run_name(ds, profile), "report name")
    for pipeline in plan:
        safe_name(f"{prefix}{pipeline.name}", "model name")
    store = StoreSettings(root=data_root, force=force, progress=progress, client=client)
    disk = disk_outlook(ds, plan, data_root)
    if disk.short:
        log.warning("this run's feature stores take up to %s (%s stored already), more than the %s "
                    "free on the disk of %s; each pipeline checks its own before writing them "
                    "(cvpipe store clear frees some)", size_text(disk.total), size_text(disk.stored),
                    size_text(disk.free), disk.features_dir)
    rows, arrays = [], {}
    for pipeline in tqdm(plan, desc=f"compare ({profile.name})", unit="pipeline", disable=None):
        name = pipeline.name
        model_dir = models_root / f"{prefix}{name}"
        t0 = time.perf_counter()
        meta, reused, training_seconds = _train_one(pipeline, ds, model_dir, force or retrain, store)
        seconds = time.perf_counter() - t0
        measured = _measure(model_dir, ds, store)
        arrays[name] = measured.pop("scores")
        m = meta["metrics"]
        card = model_card(meta)
        features_status = (meta.get("feature_store") or {}).get("status", "pixels")
        rows.append({
            "pipeline": name,
            "model": model_dir.name,
            "model_dir": str(model_dir),
            "kind": meta["kind"],
            "family": card["family"],
            "description": pipeline.description,
            "classifier": card["classifier"],
            "features": card["features"] or "learned (CNN)",
            "feature_set": _feature_set(meta, ds),
            "feature_dim": meta.get("feature_dim"),
            "train_accuracy": m["train"]["accuracy"],
            # images the train accuracy was scored on: the CNN's is a sample (CNNConfig.train_score_images)
            "train_accuracy_images": m["train"].get("n"),
            "val_accuracy": m["val"]["accuracy"],
            "test_accuracy": measured["test_metrics"]["accuracy"],
            "stored_test_accuracy": m["test"]["accuracy"],
            "macro_precision": measured["test_metrics"]["macro_precision"],
            "macro_recall": measured["test_metrics"]["macro_recall"],
            "macro_f1": measured["test_metrics"]["macro_f1"],
            "log_loss": measured["test_metrics"]["log_loss"],
            "extraction_images_per_second": meta.get("extraction_images_per_second"),
            "fit_seconds": meta["fit_seconds"],
            "train_seconds": meta.get("train_seconds", meta["fit_seconds"]),
            "selection_seconds": meta.get("selection_seconds"),
            "selection": meta.get("selection"),
            "history": meta.get("history"),
            "training": meta.get("training"),  # the CNN's steps and the plan its time budget made
            "reused": reused,
            "features_status": ("model reused" if reused else features_status),
            "run_seconds": round(seconds, 1),
            # the run that trained the model (this one, or an earlier one): its features and seconds
            "trained_features_status": features_status,
            "training_seconds": training_seconds,
            **{k: v for k, v in measured.items() if k != "test_metrics"},
            "test_metrics": measured["test_metrics"],
        })
    x_test, y_test = ds.split("test")
    y_test = np.asarray(y_test)
    correct = {name: scores.argmax(1) == y_test for name, scores in arrays.items()}
    for r in rows:
        lo, hi = stats.wilson(int(correct[r["pipeline"]].sum()), len(y_test))
        r["test_ci95"] = [lo, hi]
    if seeds > 1:
        _repeat_with_seeds(rows, plan, ds, models_root, profile, seeds, seed_pipelines, force, store)
    results = {
        "run": {"name": report_name, "profile": asdict(profile), "config_path": str(cfg.path),
                "config": cfg.source_text,
                "seed": cfg.seed, "val_fraction": cfg.val_fraction,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 1),
                "peak_rss_bytes": peak_rss_bytes(),
                "feature_store_bytes": sum(e["bytes"] for e in list_stores(data_root)),
                "engine": "dask" if client is not None else "local"},
        "environment": environment(),
        "dataset": {"name": ds.name, "title": ds.title, "source": ds.manifest["source"],
                    "source_kind": ds.manifest["source_kind"], "checksum": ds.checksum,
                    "image_shape": list(ds.image_shape), "notes": ds.manifest.get("notes", {}),
                    "classes": list(ds.classes), "counts": ds.manifest["counts"],
                    "limit_per_class": profile.limit_per_class,
                    "train": int(len(ds.split("train")[1])), "val": int(len(ds.split("val")[1])),
                    "test": int(len(y_test))},
        "pipelines": rows,
        "summary": summarise(rows, correct),
        "ladder": stats.ladder(rows, correct),
        "ladder_pairs": stats.ladder_pairs(rows, correct),
        "pareto": {cost: stats.pareto(rows, cost) for cost in COSTS},
        "_arrays": {"scores": arrays, "y_test": np.asarray(y_test), "x_test": x_test,
                    "x_train": ds.images("train"), "y_train": np.asarray(ds.labels("train"))},
    }
    return results


def _repeat_with_seeds(rows: list[dict[str, Any]], plan: list[Pipeline], ds: Dataset,
                       models_root: Path, profile: Profile, seeds: int, names: list[str] | None,
                       force: bool, store: StoreSettings) -> None:
    """Train chosen pipelines with more seeds; add mean and std of their test accuracy."""
    by_name = {p.name: p for p in plan}
    if names is None:
        classic = [r for r in rows if r["family"] == "classic"]
        names = [max(classic, key=lambda r: r["val_accuracy"])["pipeline"]] if classic else []
        names += [r["pipeline"] for r in rows if r["family"] == "cnn"]
    y_test = np.asarray(ds.split("test")[1])
    for row in rows:
        if row["pipeline"] not in names:
            continue
        pipeline = by_name[row["pipeline"]]
        accuracies, used = [row["test_accuracy"]], [pipeline.seed]
        for extra in range(1, seeds):
            seeded = pipeline.configure(seed=used[0] + extra)
            model_dir = models_root / f"{model_prefix(ds, profile)}{row['pipeline']}-seed{used[0] + extra}"
            _train_one(seeded, ds, model_dir, force, store)
            scores = _measure(model_dir, ds, store)["scores"]
            accuracies.append(float((scores.argmax(1) == y_test).mean()))
            used.append(used[0] + extra)
        row["seeds"] = {"seeds": used, "test_accuracy": accuracies,
                        "mean": float(np.mean(accuracies)), "std": float(np.std(accuracies, ddof=1))}


def _feature_set(meta: dict[str, Any], ds: Dataset) -> dict[str, Any] | None:
    """A model's feature set for the report: components with their effective parameters."""
    if not meta.get("features"):
        return None
    spec = FeatureSpec.parse(meta["features"])
    return {"name": spec.name, "key": spec.key(), "components": spec.effective_params(),
            "summary": "; ".join(c.describe() for c in spec.components),
            "dim": spec.n_features(tuple(ds.images("train").shape[1:]))}


def _budget_text(cnn: dict[str, Any]) -> str | None:
    """What a CNN trained on a time budget got from it, or None (an epoch count): its accuracy
    depends on the machine's speed that day, which a reader of the gap should know."""
    training = cnn.get("training") or {}
    budget = (training.get("plan") or {}).get("time_budget")
    if not budget or not training.get("steps"):
        return None
    epochs = training["steps"] / max(training.get("steps_per_epoch") or 1, 1)
    return (f"The CNN trained {training['steps']} steps ({epochs:.0f} epochs) in its {budget:g} s "
            f"time budget at this machine's speed; a larger budget trains it further "
            f"(--set cnn.time_budget=SECONDS).")


def summarise(rows: list[dict[str, Any]], correct: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Best classic pipeline against the CNN: accuracy gap (with McNemar's test on the test
    images when ``correct`` holds each pipeline's per-image correctness) and cost ratios, with
    a sentence."""
    classic = [r for r in rows if r["family"] == "classic"]
    cnn = next((r for r in rows if r["family"] == "cnn"), None)
    out: dict[str, Any] = {}
    if classic:
        best = max(classic, key=lambda r: r["val_accuracy"])  # chosen on validation, not test
        out["best_classic"] = best["pipeline"]
        out["best_classic_test_accuracy"] = best["test_accuracy"]
    if cnn:
        out["cnn_test_accuracy"] = cnn["test_accuracy"]
    if classic and cnn:
        out["gap_points"] = 100 * (cnn["test_accuracy"] - best["test_accuracy"])
        out["fit_time_ratio"] = cnn["train_seconds"] / max(best["train_seconds"], 1e-9)
        out["latency_ratio"] = cnn["latency_ms_single"] / max(best["latency_ms_single"], 1e-9)
        lead = "ahead of" if out["gap_points"] >= 0 else "behind"
        out["text"] = (
            f"The best classic pipeline (chosen on validation accuracy) is {best['pipeline']}: "
            f"{100 * best['test_accuracy']:.1f}% test accuracy "
            f"(train {100 * best['train_accuracy']:.1f}%). The CNN reaches "
            f"{100 * cnn['test_accuracy']:.1f}% (train {100 * cnn['train_accuracy']:.1f}%), "
            f"{abs(out['gap_points']):.1f} points {lead} it. Training the CNN took "
            f"{out['fit_time_ratio']:.1f}x the classic pipeline's training time "
            f"({cnn['train_seconds']:.0f} s vs {best['train_seconds']:.0f} s), and one prediction "
            f"{out['latency_ratio']:.1f}x its latency "
            f"({cnn['latency_ms_single']:.1f} ms vs {best['latency_ms_single']:.1f} ms).")
        if correct is not None:
            test = stats.mcnemar(correct[cnn["pipeline"]], correct[best["pipeline"]])
            out["cnn_vs_best_classic"] = test
            out["text"] += " " + stats.describe_difference("The CNN", best["pipeline"], test) + "."
    elif classic:
        out["text"] = (f"The best classic pipeline is {best['pipeline']} at "
                       f"{100 * best['test_accuracy']:.1f}% test accuracy; no CNN in this run.")
    if cnn and (budget_text := _budget_text(cnn)):
        out["text"] = f"{out.get('text', '')} {budget_text}".strip()
    if correct is not None:
        steps = [r for r in stats.ladder(rows, correct) if "gain_points" in r]
        if steps:
            out["ladder_text"] = "Up the ladder: " + "; ".join(
                f"{r['family']} ({r['pipeline']}) {r['gain_points']:+.1f} points over {r['below']} "
                f"({stats.p_text(r['p_value'])})" for r in steps) + "."
    return out
