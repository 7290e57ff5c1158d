"""``cvpipe compare``: every declared pipeline end to end, then the report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPORTS_DIR = "reports"


def _compare(args: argparse.Namespace) -> int:
    from cvpipe.compare.config import load_compare_config
    from cvpipe.compare.report import write_report
    from cvpipe.compare.runner import run_comparison

    cfg = load_compare_config(args.config)
    pipelines = [p.strip() for p in args.pipelines.split(",")] if args.pipelines else None
    start = time.perf_counter()
    results = run_comparison(cfg, args.profile, source=args.source, data_root=args.data_root,
                             models_root=args.models_dir, force=args.force, pipelines=pipelines)
    out = Path(args.reports_dir) / (args.run or args.profile)
    html = write_report(results, out)
    print(_table(results))
    print(f"\n{results['summary'].get('text', '')}\n")
    print(f"report: {html}  (also report.md, results.json)  in {time.perf_counter() - start:.0f} s")
    models = sorted({Path(r['model_dir']).parent for r in results["pipelines"]})
    print(f"models: {', '.join(map(str, models))}; serve them with: "
          f"cvpipe serve --models {models[0]} --host 127.0.0.1 --port 8000")
    return 0


def _table(results: dict) -> str:
    head = f"{'pipeline':<22}{'train':>8}{'val':>8}{'test':>8}{'fit s':>9}{'ms/img':>9}  note"
    lines = [head, "-" * len(head)]
    for r in results["pipelines"]:
        lines.append(f"{r['pipeline']:<22}{r['train_accuracy']:>8.3f}{r['val_accuracy']:>8.3f}"
                     f"{r['test_accuracy']:>8.3f}{r['fit_seconds']:>9.1f}"
                     f"{r['latency_ms_single']:>9.2f}  {'reused' if r['reused'] else 'trained'}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="run every declared pipeline and write the comparison report",
        description="Prepare the data, train (or reuse) every pipeline declared in the comparison "
        "config (colour, HOG and HOG+colour with linear SVM, kernel SVM and MLP; raw pixels; the "
        "CNN), choose hyperparameters on the validation split, score the test split once, save the "
        "models to the models folder and write reports/<run>/report.html, report.md and results.json.")
    p.add_argument("--profile", default="quick",
                   help="'quick' (a subsample, minutes on a CPU) or 'full' (all 60,000 images); "
                   "profiles are declared in the config (default: quick)")
    p.add_argument("--config", help="comparison TOML (default: cvpipe/compare.toml)")
    p.add_argument("--pipelines", help="comma-separated subset of the config's pipelines")
    p.add_argument("--force", action="store_true", help="retrain even unchanged models")
    p.add_argument("--run", help="report folder name under --reports-dir (default: the profile name)")
    p.add_argument("--reports-dir", default=REPORTS_DIR, help="default: ./reports")
    p.add_argument("--models-dir", help="default: $CVPIPE_MODELS_DIR or ./models")
    p.add_argument("--source", help="dataset source (default: $CVPIPE_CIFAR10_SOURCE, else the download)")
    p.add_argument("--data-root", help="default: $CVPIPE_DATA_ROOT or ./data")
    p.set_defaults(func=_compare)
