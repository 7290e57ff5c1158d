"""How training scales with the number of images: out of core, so memory stays flat.

CIFAR-10's training split (45,000 images; the 5,000 validation images held out as in
``cvpipe compare``) is grown by deterministic augmentations of it -- the originals, their
mirror images, then shifts by up to 2 pixels of both
(:class:`cvpipe.featurestore.sources.AugmentedSource`) -- to N rows. The test split is never
augmented or touched before the end. For each feature set, the augmented rows are extracted
once, to N_max, into the feature store (the first N rows of that store are the set of size
N), and then, for every N, a fresh process trains the shipped pipeline's classifier out of
core on the first N rows: C chosen on the validation split over the pipeline's grid, the
chosen C refitted on the N rows + validation, the test split scored once.

Two feature sets:

* ``patches-linear-svm`` (the shipped learned-patch features, 11,200 values per image; the
  dictionary learned from the 45,000 unaugmented training images), N = 50,000, 100,000 and
  200,000 by default;
* ``hog2+color2-linear-svm`` (2,728 values per image: cheap features, so that the training
  path's own scaling shows), N = 50,000 up to 1,000,000.

JSON per N: feature time (the extraction of the first N rows, from the extraction's own
clock), fit time (statistics, factorisations, every candidate and the refit), peak RSS of
the training process, validation and test accuracy, the C chosen. Peak RSS of the
extraction process is reported per feature set. Compared with the N = 50,000 fit in the
same run: the ratio of fit times against the ratio of N (targets: fit time no worse than
linear in N -- 1,000,000 images within 25x the 50,000-image fit -- and peak RSS <= 4 GB at
every N).

Usage::

    python benchmarks/scale.py [--source PATH] [--data-root DIR]
        [--patches-sizes 50000,100000,200000] [--cheap-sizes 50000,100000,200000,500000,1000000]
        [--only patches|cheap] [--smoke]

``--smoke`` runs the whole thing on a tiny synthetic dataset (the test suite does).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PIPELINES = {"patches": "patches-linear-svm", "cheap": "hog2+color2-linear-svm"}
DEFAULT_SIZES = {"patches": [50_000, 100_000, 200_000],
                 "cheap": [50_000, 100_000, 200_000, 500_000, 1_000_000]}


def peak_rss() -> int:
    return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _dataset(args: argparse.Namespace) -> Any:
    from cvpipe.data import load_dataset

    return load_dataset("cifar10", args.data_root, source=args.source)


def _parts(args: argparse.Namespace, key: str) -> tuple[Any, Any, Any, Any, Any]:
    """(dataset, pipeline spec, store settings, fitted extractor, augmented source at N_max)."""
    from cvpipe.featurestore.dataset import StoreSettings, learned_extractor
    from cvpipe.featurestore.sources import AugmentedSource
    from cvpipe.models import get_pipeline

    ds = _dataset(args)
    spec = get_pipeline(PIPELINES[key]).spec
    if args.smoke and key == "patches":  # a dictionary a tiny set can afford
        spec = dataclasses.replace(spec, features=spec.features.with_params({"patches": {
            "n_centroids": 32, "n_patches": 4000, "max_iter": 3}}))
    store = StoreSettings(root=args.data_root, progress=not args.smoke)
    learned = learned_extractor(ds, spec.features, store)
    source = AugmentedSource(ds, "train", max(args.sizes), seed=0)
    return ds, spec, store, learned, source


def extract_child(args: argparse.Namespace) -> dict[str, Any]:
    """Extract the augmented rows to N_max; the time at which each N was reached."""
    from cvpipe.featurestore.dataset import split_features, stored_features

    ds, spec, store, learned, source = _parts(args, args.key)
    start = time.perf_counter()
    done_rows: dict[str, int] = {}
    reached: dict[int, float] = {}
    d_total = sum(1 for _ in spec.features.components)

    def on_chunk(meta: dict[str, Any]) -> None:
        done_rows[meta["component"]] = done_rows.get(meta["component"], 0) + meta["rows"]
        if len(done_rows) == d_total:  # the last component: rows of every component are done
            rows = min(done_rows.values())
            for n in args.sizes:
                if rows >= n and n not in reached:
                    reached[n] = time.perf_counter() - start
    stored = stored_features(source, spec.features, learned, store, "augmented train",
                             on_chunk=on_chunk)
    total = time.perf_counter() - start
    # the validation and test stores (as compare makes them)
    for split in ("val", "test"):
        split_features(ds, spec.features, split, learned, store)
    per_image = sum(r.manifest["seconds"] / max(r.manifest["rows_computed"], 1)
                    for r in stored.results if r.manifest.get("rows_computed"))
    return {"rows": stored.n_rows, "dims": stored.n_features, "seconds": round(total, 1),
            "reused": all(r.reused for r in stored.results),
            "seconds_per_image": per_image,
            "feature_seconds_at": {str(n): round(reached.get(n, n * per_image), 1) for n in args.sizes},
            "dictionary_seconds": round(learned.fit_seconds, 1),
            "store_bytes": stored.nbytes, "peak_rss_bytes": peak_rss()}


def fit_child(args: argparse.Namespace) -> dict[str, Any]:
    """Select C on validation over the first N augmented rows, refit on N + validation, test."""
    from cvpipe.classifiers.linear_svm import LinearProblem, fit_path
    from cvpipe.classifiers.specs import build_classifier
    from cvpipe.classifiers.training import score_chunks
    from cvpipe.featurestore.dataset import split_features, stored_features

    ds, spec, store, learned, source = _parts(args, args.key)
    train = stored_features(source, spec.features, learned, store).head(args.n)
    val = split_features(ds, spec.features, "val", learned, store)
    test = split_features(ds, spec.features, "test", learned, store)
    template = build_classifier(spec.classifier)
    Cs = [float(c) for c in spec.grid.get("classifier.C", [template.C])]
    start = time.perf_counter()
    problem = LinearProblem.prepare(train, standardize=True)
    pre = problem.stats.scaler()
    stats_s = time.perf_counter() - start
    scores = {}

    def on_fit(C: float, clf: Any) -> None:
        y, s, _ = score_chunks(pre, clf, val)
        scores[C] = (float((s.argmax(1) == y).mean()), clf)

    fit_path(problem, template, Cs, on_fit=on_fit, scaled_inputs=True)
    best_C = max(scores, key=lambda c: scores[c][0])
    chosen = scores[best_C][1]
    wider = problem.with_rows(val, standardize=True)
    W, b = wider.from_raw(*problem.raw(chosen.coef_.T, chosen.intercept_))
    W, b, nit = wider.solve(best_C, start=(W, b), max_iter=chosen.max_iter, tol=chosen.tol,
                            ftol=chosen.ftol)
    fit_seconds = time.perf_counter() - start
    y, s, _ = score_chunks(None, _Raw(wider, W, b), test)
    del problem, wider
    return {"n": args.n, "fit_seconds": round(fit_seconds, 3), "statistics_seconds": round(stats_s, 3),
            "C": best_C, "val_accuracy": {str(c): v[0] for c, v in scores.items()},
            "test_accuracy": float((s.argmax(1) == y).mean()), "refit_iterations": nit,
            "rows_fitted": int(args.n + val.n_rows), "peak_rss_bytes": peak_rss()}


class _Raw:
    """Scores of raw rows from a problem's weights."""

    def __init__(self, problem: Any, W: np.ndarray, b: np.ndarray):
        self.Wr, self.c = problem.raw(W, b)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return X @ self.Wr + self.c


def _run_child(argv: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=os.environ.get("CVPIPE_CIFAR10_SOURCE"))
    p.add_argument("--data-root", default=os.environ.get("CVPIPE_DATA_ROOT"))
    p.add_argument("--patches-sizes", default=",".join(map(str, DEFAULT_SIZES["patches"])))
    p.add_argument("--cheap-sizes", default=",".join(map(str, DEFAULT_SIZES["cheap"])))
    p.add_argument("--only", choices=("patches", "cheap"))
    p.add_argument("--smoke", action="store_true", help="a tiny synthetic dataset, small sizes")
    p.add_argument("--child", choices=("extract", "fit"), help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sizes", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.sizes = [int(s) for s in args.sizes.split(",")]
        result = extract_child(args) if args.child == "extract" else fit_child(args)
        print(json.dumps(result))
        return

    tmp = None
    if args.smoke:
        from tests import synthetic

        tmp = tempfile.TemporaryDirectory()
        synthetic.write_image_folder(Path(tmp.name) / "src", n_train=40, n_test=10)
        args.source, args.data_root = str(Path(tmp.name) / "src"), str(Path(tmp.name) / "root")
        sizes = {"patches": [360, 720], "cheap": [360, 1080, 2160]}
    else:
        sizes = {"patches": [int(s) for s in args.patches_sizes.split(",")],
                 "cheap": [int(s) for s in args.cheap_sizes.split(",")]}
    common = [*(["--source", args.source] if args.source else []),
              *(["--data-root", args.data_root] if args.data_root else []),
              *(["--smoke"] if args.smoke else [])]
    report: dict[str, Any] = {"benchmark": "scale", "machine": _machine(), "smoke": args.smoke,
                              "results": {}}
    for key in ([args.only] if args.only else ["patches", "cheap"]):
        ns = sizes[key]
        base = ["--key", key, "--sizes", ",".join(map(str, ns)), *common]
        extraction = _run_child(["--child", "extract", *base])
        print(f"{key}: extracted {extraction['rows']} x {extraction['dims']} in "
              f"{extraction['seconds']} s", file=sys.stderr, flush=True)
        fits = []
        for n in ns:
            fit = _run_child(["--child", "fit", "--n", str(n), *base])
            fit["feature_seconds"] = extraction["feature_seconds_at"][str(n)]
            fits.append(fit)
            print(f"{key} N={n}: fit {fit['fit_seconds']} s, test {fit['test_accuracy']:.4f}, "
                  f"peak RSS {fit['peak_rss_bytes'] / 1e9:.2f} GB", file=sys.stderr, flush=True)
        first = fits[0]
        for fit in fits:
            fit["n_ratio"] = fit["n"] / first["n"]
            fit["fit_time_ratio"] = fit["fit_seconds"] / max(first["fit_seconds"], 1e-9)
            fit["test_gain_points"] = 100 * (fit["test_accuracy"] - first["test_accuracy"])
        report["results"][PIPELINES[key]] = {
            "extraction": extraction, "per_n": fits,
            "targets": {"fit_time_ratio_max_over_n_ratio": max(f["fit_time_ratio"] / f["n_ratio"]
                                                                for f in fits),
                        "peak_rss_gb_max": max([f["peak_rss_bytes"] for f in fits]
                                               + [extraction["peak_rss_bytes"]]) / 1e9}}
    print(json.dumps(report, indent=2))
    if tmp is not None:
        tmp.cleanup()


def _machine() -> dict[str, Any]:
    import platform

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)}


if __name__ == "__main__":
    main()
