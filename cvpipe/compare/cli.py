"""``cvpipe compare``: every declared pipeline end to end, then the report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from cvpipe.config import MODELS_DIR_DEFAULT
from cvpipe.errors import ConfigError
from cvpipe.featurestore.cli import add_engine_arguments, engine
from cvpipe.storage import safe_name, size_text

REPORTS_DIR = "reports"


def parse_set(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["cnn.time_budget=30", ...]`` -> ``{"cnn": {"time_budget": 30}}``; values are JSON where
    they parse, else strings."""
    options: dict[str, dict[str, Any]] = {}
    for item in items or []:
        target, sep, text = item.partition("=")
        pipeline, dot, key = target.rpartition(".")
        if not sep or not dot or not pipeline or not key:
            raise ConfigError(f"--set takes PIPELINE.OPTION=VALUE (e.g. cnn.time_budget=60), not {item!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        options.setdefault(pipeline, {})[key] = value
    return options


def _name_list(text: str | None, flag: str) -> list[str] | None:
    """Comma-separated pipeline names; None when the flag is not given (an empty one is a
    mistake: it would have run the whole comparison)."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if "" in names:
        raise ConfigError(f"{flag} {text!r}: an empty name; give pipeline names separated by "
                          "commas (cvpipe models pipelines lists them)")
    return names


def _compare(args: argparse.Namespace) -> int:
    from cvpipe.compare.config import load_compare_config
    from cvpipe.compare.report import write_report
    from cvpipe.compare.runner import disk_outlook, prepare, run_comparison
    from cvpipe.data.cli import dataset_options

    cfg = load_compare_config(args.config)
    # every flag checked before the data is read and before --check says "ok": a check that
    # passes must not leave the run itself to refuse its flags
    if args.run:
        safe_name(args.run, "--run")  # before hours of work, not after
    if args.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if args.force and args.retrain:
        raise ConfigError("--force recomputes features and retrains; --retrain retrains only: give one")
    data = dataset_options(args)
    data["data_root"] = data.pop("root")
    if args.limit_per_class is not None and args.limit_per_class < 2:
        raise ConfigError("--limit-per-class must be at least 2")
    profile = cfg.profile(args.profile).with_overrides(args.limit_per_class, parse_set(args.set))
    pipelines = _name_list(args.pipelines, "--pipelines")
    seed_pipelines = _name_list(args.seed_pipelines, "--seed-pipelines")
    if seed_pipelines and args.seeds < 2:
        raise ConfigError("--seed-pipelines names what --seeds repeats: give --seeds 2 or more")
    if args.check:
        ds, plan = prepare(cfg, profile, pipelines=pipelines, seed_pipelines=seed_pipelines, **data)
        train, val = ds.split_indices()
        shape = "x".join(map(str, ds.image_shape))
        print(f"{ds.title} ({ds.name}), profile {profile.name}: {len(train)} training, "
              f"{len(val)} validation, {len(ds.labels('test'))} test images of {shape}")
        cards = [(p.name, p.card()) for p in plan]
        width = max(len(name) for name, _ in cards)  # the frontier's names pass 26 characters
        features_width = max(len(card["features"] or "-") for _, card in cards)
        classifier_width = max(len(card["classifier"]) for _, card in cards)
        disk = disk_outlook(ds, plan, data["data_root"])
        for (name, card), size in zip(cards, disk.per_pipeline, strict=True):
            stores = f"stores {size_text(size)}" if size else ""
            print(f"  ok  {name:<{width}} {card['family']:<8} {card['features'] or '-':<{features_width}} "
                  f"{card['classifier']:<{classifier_width}} {stores}".rstrip())
        print(f"{len(plan)} pipeline{'s' if len(plan) > 1 else ''} checked; nothing trained")
        if not disk.total:  # the CNN alone stores no features
            return 0
        print(f"feature stores: up to {size_text(disk.total)} (those already there included; "
              f"{size_text(disk.stored)} stored), {size_text(disk.free)} free on the disk of "
              f"{disk.features_dir}")
        if disk.short:
            print("  the run may stop for disk space: free some (cvpipe store clear) or choose "
                  "another --data-root; each pipeline checks its own stores before writing them")
        return 0
    start = time.perf_counter()
    with engine(args) as client:
        results = run_comparison(cfg, profile, models_root=args.models_dir, force=args.force,
                                 retrain=args.retrain, pipelines=pipelines, seeds=args.seeds,
                                 seed_pipelines=seed_pipelines, client=client,
                                 progress=not args.quiet, **data)
    run = args.run or results["run"]["name"]
    out = Path(args.reports_dir) / safe_name(run, "--run")
    html = write_report(results, out)
    print(_table(results))
    print(f"\n{results['summary'].get('text', '')}")
    if results["summary"].get("ladder_text"):
        print(results["summary"]["ladder_text"])
    print()
    run = results["run"]
    print(f"report: {html}  (also report.md, results.json)  in {time.perf_counter() - start:.0f} s, "
          f"peak memory {run['peak_rss_bytes'] / 1e9:.2f} GB; feature store "
          f"{size_text(run['feature_store_bytes'])} on disk (cvpipe store list)")
    models = sorted({Path(r['model_dir']).parent for r in results["pipelines"]})
    print(f"models: {', '.join(map(str, models))}; serve them with: "
          f"cvpipe serve --models {models[0]} --reports {out.parent} --host 127.0.0.1 --port 8000"
          " (a page to try them at http://127.0.0.1:8000/)")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from cvpipe.compare.summary import HEADERS, collect, table, verdict, write_summary

    lines = collect(args.reports_dir, all_runs=args.all_runs)
    page = write_summary(lines, args.reports_dir)
    for line, row in zip(lines, table(lines), strict=True):
        print(f"{row[0]:<28}{row[1]:>8}  {row[2]:<9}best {row[4]:<30} test {row[6]:>6} | CNN "
              f"{row[8]:>6}  {row[9]:>6} points ({row[10]})")
        print(f"    {verdict(line)}")
    print(f"\nsummary: {page}  (also summary.md, summary.json, summary.png); columns: "
          f"{', '.join(HEADERS[:4])}, ...")
    return 0


def _table(results: dict) -> str:
    # "run s": this run's seconds for the pipeline; "trained s": those of the run that trained
    # its model (this one, or an earlier one whose model was reused), features as they were then
    head = (f"{'pipeline':<30}{'train':>7}{'val':>7}{'test':>7}{'fit s':>8}{'trained s':>10}"
            f"{'run s':>7}{'ms/img':>8}  model    features")
    lines = [head, "-" * len(head)]
    for r in results["pipelines"]:
        trained = r.get("training_seconds")
        features = r.get("trained_features_status", "")
        lines.append(f"{r['pipeline']:<30}{r['train_accuracy']:>7.3f}{r['val_accuracy']:>7.3f}"
                     f"{r['test_accuracy']:>7.3f}{r['fit_seconds']:>8.1f}"
                     f"{'n/a' if trained is None else f'{trained:.0f}':>10}{r.get('run_seconds', 0):>7.0f}"
                     f"{r['latency_ms_single']:>8.2f}  {'reused ' if r['reused'] else 'trained'}  "
                     f"{features + ' (then)' if r['reused'] and features else features}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="run every declared pipeline and write the comparison report",
        description="Prepare the data, check every pipeline declared in the comparison config "
        "against it (colour, HOG and HOG+colour with linear SVM, kernel SVM and MLP; raw pixels; "
        "the CNN), then train (or reuse) each, choose hyperparameters on the validation split, "
        "score the test split once, save the models to the models folder (named "
        "<dataset>-<profile prefix><pipeline>) and write reports/<dataset>-<profile>/report.html, "
        "report.md and results.json. Any dataset: --dataset mnist, --dataset path/to/images/.",
        epilog="Examples: cvpipe compare --profile quick; cvpipe compare --profile full --check; "
        "cvpipe compare --profile quick --limit-per-class 50 --set cnn.time_budget=30; "
        "cvpipe compare --dataset ../shared/datasets/mnist5k-png.tar.gz --profile full")
    p.add_argument("--profile", default="quick",
                   help="'quick' (a subsample, minutes on a CPU), 'full' (all 60,000 images) or "
                   "'frontier' (the full run, then the K = 6,400 patch pipelines); profiles are "
                   "declared in the config (default: quick)")
    p.add_argument("--config", help="comparison TOML (default: cvpipe/compare.toml)")
    p.add_argument("--pipelines", help="comma-separated pipelines to run instead of the config's "
                   "and the profile's (any of `cvpipe models pipelines`)")
    p.add_argument("--limit-per-class", type=int, metavar="N",
                   help="use the first N images of each class in train and test (overrides the profile)")
    p.add_argument("--set", action="append", metavar="PIPELINE.OPTION=VALUE",
                   help="a run option of one pipeline, e.g. cnn.time_budget=60 or hog-mlp.seed=1; "
                   "repeatable (overrides the profile's options)")
    p.add_argument("--check", action="store_true",
                   help="only check every pipeline against the data it would get, train nothing")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train --seed-pipelines with N seeds in all and report the mean and standard "
                   "deviation of their test accuracy (default 1: no repeats)")
    p.add_argument("--seed-pipelines", metavar="LIST",
                   help="comma-separated pipelines for --seeds (default: the best classic one, "
                   "chosen on validation, and the CNN)")
    p.add_argument("--force", action="store_true",
                   help="recompute stored features and retrain every model, changed or not")
    p.add_argument("--retrain", action="store_true",
                   help="retrain every model but reuse the stored features (what the classifiers "
                   "cost alone)")
    add_engine_arguments(p)
    p.add_argument("--run", help="report folder name under --reports-dir (default: "
                   "<dataset>-<profile>, e.g. cifar10-quick)")
    p.add_argument("--reports-dir", default=REPORTS_DIR, help="default: ./reports")
    p.add_argument("--models-dir", help=f"default: {MODELS_DIR_DEFAULT}")
    from cvpipe.data.cli import add_dataset_arguments

    add_dataset_arguments(p)
    p.set_defaults(func=_compare)

    s = sub.add_parser(
        "summary", help="one cross-dataset summary of every comparison run in a reports folder",
        description="Read reports/<dataset>-<profile>/results.json of every comparison run and "
        "set the best hand-made pipeline (chosen on validation) against the CNN, train and test, "
        "per dataset, ordered by number of classes: on which tasks are hand-made features "
        "enough? Writes reports/summary/index.html, summary.md, summary.json and summary.png.",
        epilog="Example: cvpipe compare --dataset mnist --profile full; cvpipe compare --profile "
        "full; cvpipe summary")
    s.add_argument("--reports-dir", default=REPORTS_DIR, help="default: ./reports")
    s.add_argument("--all-runs", action="store_true",
                   help="one line per run; by default one per dataset: the run with a CNN that "
                   "trained on the most images, the latest if several")
    s.set_defaults(func=_summary)
