"""``cvpipe train``, ``evaluate``, ``predict`` and ``models``: every model kind, one interface."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cvpipe.config import MODELS_DIR_DEFAULT, models_dir
from cvpipe.data.cli import add_source_arguments, load_from_args
from cvpipe.errors import ArtifactError, ConfigError
from cvpipe.featurestore.cli import add_engine_arguments, engine
from cvpipe.images import IMAGE_FORMATS, ImageError
from cvpipe.models.artifact import model_card, read_metadata
from cvpipe.storage import recover_all, safe_name

MODELS_DIR_HELP = f"the models folder (default {MODELS_DIR_DEFAULT})"

log = logging.getLogger(__name__)


def _model_path(name_or_path: str, models: str | None) -> Path:
    p = Path(name_or_path)
    if (p / "model.json").exists():
        return p
    return models_dir(models) / name_or_path


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """Run options from --options (JSON), --set KEY=VALUE, --time-budget and --no-refit."""
    options: dict[str, Any] = {}
    if args.options:
        try:
            options = json.loads(args.options)
        except ValueError as exc:
            raise ConfigError(f"--options is not valid JSON: {exc}") from None
        if not isinstance(options, dict):
            raise ConfigError("--options must be a JSON object, e.g. '{\"epochs\": 20}'")
    for item in args.set or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, not {item!r}")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text  # a bare word: a string value
    if args.time_budget is not None:
        options["time_budget"] = args.time_budget
    if args.no_refit:
        options["refit"] = False
    return options


def _train(args: argparse.Namespace) -> int:
    # the pipelines bring scikit-learn and PyTorch: imported by the commands that run them,
    # not by every `cvpipe --help`
    from cvpipe.featurestore.dataset import StoreSettings
    from cvpipe.models.base import DataShape
    from cvpipe.models.pipelines import get_pipeline

    pipeline = get_pipeline(args.pipeline, args.config).configure(_run_options(args))
    # an empty --name is a mistake, not a request for the default
    name = safe_name(args.pipeline if args.name is None else args.name, "model name")
    target = models_dir(args.models_dir) / name
    if args.force and args.retrain:
        raise ConfigError("--force recomputes features and retrains; --retrain retrains only: give one")
    if (target / "model.json").exists() and not (args.force or args.retrain):
        meta = read_metadata(target, verify=False)
        print(f"{target} exists (test accuracy {meta['metrics']['test']['accuracy']:.4f}); "
              "use --retrain to retrain (--force also recomputes its stored features)")
        return 0
    ds = load_from_args(args)
    pipeline.check(DataShape.of(ds))
    start = time.perf_counter()
    with engine(args) as client:
        store = StoreSettings(root=args.data_root, force=args.force, progress=not args.quiet,
                              client=client)
        meta = pipeline.train(ds, target, store=store, progress=not args.quiet)
    m = meta["metrics"]
    print(f"{name}: train {m['train']['accuracy']:.4f}  val {m['val']['accuracy']:.4f}  "
          f"test {m['test']['accuracy']:.4f}  fit {meta['fit_seconds']:.1f} s  "
          f"(total {time.perf_counter() - start:.1f} s)\nsaved to {target}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cvpipe.metrics import classification_metrics, format_metrics
    from cvpipe.models.pipelines import load_model

    path = _model_path(args.model, args.models_dir)
    model = load_model(path)
    meta = model.metadata
    ds = load_from_args(args)
    trained_on = meta.get("dataset", {}).get("checksum")
    if trained_on and trained_on != ds.checksum:
        log.warning("model was trained on dataset %s, evaluating on %s", trained_on, ds.checksum)
    if list(ds.classes) != list(meta["classes"]):
        raise ConfigError(f"model classes {meta['classes']} differ from the dataset's {ds.classes}")
    taken = model.input.shape
    if tuple(ds.image_shape) != taken:  # the features would not fit, deep in the model
        h, w, c = taken
        raise ConfigError(
            f"{meta['name']} takes {h}x{w} images with {c} channel{'s' if c > 1 else ''}; this "
            f"dataset's are {'x'.join(map(str, ds.image_shape[:2]))} with {ds.image_shape[2]}"
            + (f": give --size {h}x{w}" if ds.image_shape[2] == c else ""))
    images, labels = ds.split(args.split)
    if not len(labels):  # a few images per class and a small validation fraction leave none
        raise ConfigError(f"the {args.split} split of this data has no images: nothing to score")
    start = time.perf_counter()
    scores = []
    for i in range(0, len(images), 4096):
        scores.append(model.scores(np.asarray(images[i: i + 4096]))[0])
    kind = model.scores(np.asarray(images[:1]))[1]
    scores = np.concatenate(scores)
    secs = time.perf_counter() - start
    m = classification_metrics(labels, scores.argmax(1), ds.classes, scores, kind)
    m["seconds"] = secs
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        print(f"{meta['name']} on {args.split} ({len(labels)} images, {secs:.1f} s)\n")
        print(format_metrics(m, ds.classes))
    return 0


def _image_rows(given: list[str]) -> list[dict[str, Any]]:
    """A row per file ``cvpipe predict`` classifies: each file given, and every image file
    under each folder given (sorted by path); a folder without one is an error row."""
    from cvpipe.images import IMAGE_EXTENSIONS, is_image_name

    rows: list[dict[str, Any]] = []
    for item in given:
        folder = Path(item)
        if not folder.is_dir():
            rows.append({"image": item})
            continue
        found = sorted(str(p) for p in folder.rglob("*") if p.is_file() and is_image_name(p.name))
        rows.extend({"image": f} for f in found)
        if not found:
            rows.append({"image": item, "error": f"{item}: a folder without image files "
                         f"({', '.join(IMAGE_EXTENSIONS)})"})
    return rows


#: Images scored at once by ``cvpipe predict`` (decoded, they are held together).
PREDICT_BATCH = 1024


def _predict(args: argparse.Namespace) -> int:
    from cvpipe.images import load_images
    from cvpipe.models.pipelines import load_model

    if args.top_k < 1:  # argsort's [:k] would take every class but the last -k, or none
        raise ConfigError(f"--top-k must be at least 1, not {args.top_k}")
    model = load_model(_model_path(args.model, args.models_dir))
    meta = model.metadata
    taken = model.input
    # one unreadable file costs its own line, not the others' answers
    results = _image_rows(args.images)
    for start in range(0, len(results), PREDICT_BATCH):
        read, images = [], []
        for row in results[start:start + PREDICT_BATCH]:
            if "error" in row:
                continue
            try:
                images.append(load_images([row["image"]], taken.size, taken.channels, taken.fit)[0])
                read.append(row)
            except ImageError as exc:
                row["error"] = str(exc)
        if images:
            scores, kind = model.scores(np.stack(images))
            k = min(args.top_k, scores.shape[1])
            for row, s in zip(read, scores, strict=True):
                row.update(score_kind=kind, top=[{"class": meta["classes"][i], "score": float(s[i])}
                                                 for i in np.argsort(-s)[:k]])
    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                continue
            best = ", ".join(f"{t['class']} {t['score']:.3f}" for t in r["top"])
            print(f"{r['image']}: {best}"
                  + ("" if r["score_kind"] == "probability" else "  (decision scores)"))
    for r in failed:
        print(f"cvpipe: error: {r['error']}", file=sys.stderr)
    if failed:
        print(f"cvpipe: {len(failed)} of {len(results)} images could not be read", file=sys.stderr)
    return 2 if failed else 0


def _list(args: argparse.Namespace) -> int:
    root = models_dir(args.models_dir)
    recover_all(root)
    rows = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if (d / "model.json").is_file():
            # every file checked as loading it would (sha256s: milliseconds a model), so a
            # model that cannot be served or used is listed as such, and the others still are
            try:
                meta = read_metadata(d)
            except ArtifactError as exc:
                rows.append((d.name, "-", "-", None, f"unusable: {str(exc).removeprefix(f'{d}/')}"))
                continue
            test = meta.get("metrics", {}).get("test", {}).get("accuracy")
            card = model_card(meta)
            rows.append((d.name, card["features"] or "-", card["classifier"] or "?", test,
                         meta.get("created", "")))
    if not rows:
        print(f"no models in {root}")
    # columns as wide as their longest entry: compare's names carry a prefix
    widths = [max(len(row[i]) for row in rows) for i in range(3)] if rows else []
    for name, features, classifier, test, created in rows:
        acc = f"{test:.4f}" if test is not None else "-"
        print(f"{name:<{widths[0]}}  {features:<{widths[1]}}  {classifier:<{widths[2]}}  "
              f"test {acc}  {created}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train a pipeline (selection on validation, test scored once)",
        description="Train a named pipeline: choose hyperparameters on the validation split, "
        "refit, score train/val/test (test once) and save models/<name>/. Built-in pipelines "
        "are declared in cvpipe/pipelines.toml ('cvpipe models pipelines' lists them; 'cnn' is "
        "the CNN). The pipeline is checked against the dataset before training starts.",
        epilog="Run options: every pipeline takes seed; classic pipelines take refit; the CNN "
        "takes any CNNConfig field (epochs, time_budget, optimizer, lr, batch_size, device, ...). "
        "Example: cvpipe train --pipeline cnn --set epochs=20 --set optimizer=adamw")
    train.add_argument("--pipeline", required=True,
                       help="pipeline name (see 'cvpipe models pipelines')")
    train.add_argument("--config", help="TOML file declaring [pipelines.<name>] tables")
    train.add_argument("--name", help="model name (default: the pipeline name)")
    train.add_argument("--models-dir", help=MODELS_DIR_HELP)
    train.add_argument("--force", action="store_true",
                       help="retrain even if the model exists, recomputing its stored features")
    train.add_argument("--retrain", action="store_true",
                       help="retrain even if the model exists, reusing its stored features")
    opts = train.add_argument_group("run options")
    opts.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="a run option; VALUE is JSON where it parses (20, 0.1, true, [1,2]), "
                      "else a string; repeatable")
    opts.add_argument("--options", "--cnn-options", dest="options", metavar="JSON",
                      help="run options as one JSON object, e.g. '{\"epochs\": 20}'")
    opts.add_argument("--time-budget", type=float, metavar="SECONDS",
                      help="the CNN's training time budget (same as --set time_budget=SECONDS)")
    opts.add_argument("--no-refit", action="store_true",
                      help="classic pipelines: keep the selection fit (train split only) instead "
                      "of refitting on train+val (same as --set refit=false)")
    add_source_arguments(train)
    add_engine_arguments(train)
    train.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="score a saved model on a split",
                        description="Accuracy, per-class precision/recall/F1, log loss and the "
                        "confusion matrix of a saved model on a dataset split.")
    ev.add_argument("model", help="model name in the models folder, or a model folder")
    ev.add_argument("--split", default="test", choices=("train", "val", "train_full", "test"),
                    help="the split to score (default test; train_full is train + val)")
    ev.add_argument("--models-dir", help=MODELS_DIR_HELP)
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_source_arguments(ev)
    ev.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="classify image files with a saved model",
                        description="Classify image files of any size and mode in "
                        f"{', '.join(IMAGE_FORMATS)} format, decoded as the model's training images "
                        "were (EXIF orientation, alpha on white) and resized to its input. A file "
                        "that cannot be read is named on stderr and the others are still "
                        "classified; the exit status is then 2.")
    pr.add_argument("model", help="model name in the models folder, or a model folder")
    pr.add_argument("images", nargs="+", help="image files, or folders (every image file in "
                    "them, sorted by path)")
    pr.add_argument("--top-k", type=int, default=3, metavar="K",
                    help="the K best classes of each image, with their scores (default 3)")
    pr.add_argument("--models-dir", help=MODELS_DIR_HELP)
    pr.add_argument("--json", action="store_true", help="print the results as JSON (an unreadable "
                    "file's entry holds its error)")
    pr.set_defaults(func=_predict)

    models = sub.add_parser("models", help="list saved models and built-in pipelines",
                            description="'list' (the default): the models of the models folder "
                            "with their feature set, classifier and test accuracy; 'pipelines': "
                            "the pipelines 'cvpipe train --pipeline' and 'cvpipe compare' know.")
    # no action lists the saved models, as 'list' does
    models.set_defaults(func=_list, models_dir=None)
    msub = models.add_subparsers(dest="models_command", metavar="<action>")
    ls = msub.add_parser("list", help="saved models with their test accuracy (the default)")
    ls.add_argument("--models-dir", help=MODELS_DIR_HELP)
    ls.set_defaults(func=_list)
    pipes = msub.add_parser("pipelines", help="built-in (or --config) pipeline names")
    pipes.add_argument("--config")
    pipes.set_defaults(func=_pipelines)


def _pipelines(args: argparse.Namespace) -> int:
    from cvpipe.models.pipelines import list_pipelines

    for name, desc in list_pipelines(args.config):
        print(f"{name:<28} {desc}")
    return 0
