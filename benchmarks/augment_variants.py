"""What mirror and shift augmentation buys a classic pipeline: a sweep on the validation split, as JSON.

How ``augment_flip`` and ``augment_shifts`` of the shipped pipelines (``cvpipe/pipelines.toml``)
were chosen (issue 26). The pipeline's features are extracted through the feature store exactly
as ``cvpipe train`` does (its dictionary, if any, learned from the training images without
labels), once per augmented copy of the training images: the mirror images, and copies of both
moved by the first n of :data:`cvpipe.featurestore.sources.SHIFTS` (2-pixel shifts first, edges
reflected). For each number of shifted copies the product's linear SVM (standardised features,
the whole C grid on one preconditioner) is fitted on the training rows and every copy, and
scored on the validation split. The test split is never read. The copies stay in the store, so
a larger count reuses the smaller one's.

    CVPIPE_CIFAR10_SOURCE=../shared/datasets/cifar10-jpeg.tar.gz \\
        python benchmarks/augment_variants.py scattering-linear-svm --flip --shifts 0,2,4

One JSON line per (shifts, C): training rows, feature seconds of the copies, fit seconds,
validation accuracy; CPU, every core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cvpipe.classifiers.chunks import Concat  # noqa: E402
from cvpipe.classifiers.linear_svm import LinearProblem, LinearSVM, fit_path  # noqa: E402
from cvpipe.classifiers.specs import build_classifier  # noqa: E402
from cvpipe.classifiers.training import score_chunks  # noqa: E402
from cvpipe.data import load_cifar10  # noqa: E402
from cvpipe.featurestore.dataset import StoreSettings, learned_extractor, split_features  # noqa: E402
from cvpipe.featurestore.sources import training_variants  # noqa: E402
from cvpipe.models import all_pipelines  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="a shipped linear-SVM pipeline, e.g. scattering-linear-svm")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="train on the mirror images too (default: as the pipeline says)")
    parser.add_argument("--shifts", default="0,2,4", help="numbers of shifted copies to compare")
    parser.add_argument("--C", default="", help="C values (default: the pipeline's grid)")
    parser.add_argument("--config", help="a pipelines TOML adding to or overriding the shipped ones")
    args = parser.parse_args(argv)

    spec = all_pipelines(args.config)[args.pipeline].spec
    if spec.classifier.get("type") != "linear-svm":
        parser.error(f"{args.pipeline} is not a linear-SVM pipeline")
    flip = spec.augment_flip if args.flip is None else args.flip
    Cs = ([float(c) for c in args.C.split(",")] if args.C
          else [float(c) for c in spec.grid.get("classifier.C")
                or [spec.classifier.get("params", {}).get("C", 1.0)]])
    ds = load_cifar10()
    store = StoreSettings(progress=True)
    learned = learned_extractor(ds, spec.features, store)
    val = split_features(ds, spec.features, "val", learned, store)
    template = build_classifier(spec.classifier)
    assert isinstance(template, LinearSVM)
    for shifts in (int(s) for s in args.shifts.split(",")):
        copies = [split_features(ds, spec.features, "train", learned, store, variant=v)
                  for v in training_variants(flip, shifts)]
        fit_and_score(Concat(copies), val, template, Cs, {
            "pipeline": args.pipeline, "flip": flip, "shifts": shifts,
            # as extracted (also for copies a smaller count stored)
            "feature_seconds": round(sum(c.n_rows / c.images_per_second for c in copies), 1)})


def fit_and_score(rows: Concat, val: Any, template: LinearSVM, Cs: list[float],
                  about: dict[str, Any]) -> None:
    """The C path on ``rows``, each model scored on ``val``: a JSON line per C."""
    start = time.perf_counter()
    problem = LinearProblem.prepare(rows, standardize=True)
    pre = problem.stats.scaler()
    last = start

    def report(C: float, svm: LinearSVM) -> None:
        nonlocal last
        y, scores, _ = score_chunks(pre, svm, val)
        print(json.dumps({**about, "rows": rows.n_rows, "dim": rows.n_features, "C": C,
                          "val": round(float((scores.argmax(1) == y).mean()), 4),
                          "iterations": svm.n_iter_,
                          "fit_seconds": round(time.perf_counter() - last, 1)}), flush=True)
        last = time.perf_counter()

    fit_path(problem, template, Cs, on_fit=report, scaled_inputs=True)


if __name__ == "__main__":
    main()
