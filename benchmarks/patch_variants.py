"""Which learned patch features for a linear SVM: a sweep on CIFAR-10's validation split, as JSON.

How the encoders of issue 26 were compared (the patch pipelines in ``cvpipe/pipelines.toml``).
Each variant is the shipped ``patches-linear-svm`` features (6x6 patches, whitening epsilon
0.5, k-means dictionary, flip-invariant, 1x1 + 2x2 + 3x3 sums, square roots) with some
parameters changed; its dictionary is learned from the 45,000 training images (without labels),
the training and validation images are encoded, and the product's linear SVM (standardised
features, the whole C grid on one preconditioner, as ``cvpipe train``) is fitted for each C. The
test split is never read. The peer figure is Coates & Ng (ICML 2011): soft threshold with
polarity split, 81.5% test with 6,000 atoms (79.1% with random patches as the dictionary).

    CVPIPE_CIFAR10_SOURCE=../shared/datasets/cifar10-jpeg.tar.gz \\
        python benchmarks/patch_variants.py "encoding=soft-split,alpha=0.25:0.0005,0.001" \\
                                            "n_centroids=400:0.002,0.005"

A variant is ``name=value,... : C,C,...`` (values parsed as JSON where they can be). One JSON
line per C: the variant, feature dimension, C, train and validation accuracy, fit seconds; and
one per variant with its dictionary and encoding seconds (CPU, every core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cvpipe.classifiers.chunks import ArrayChunks  # noqa: E402
from cvpipe.classifiers.linear_svm import LinearProblem, LinearSVM, fit_path  # noqa: E402
from cvpipe.data import load_cifar10  # noqa: E402
from cvpipe.errors import ConfigError  # noqa: E402
from cvpipe.features import FeatureSpec, make_features  # noqa: E402

#: The shipped patch features' parameters (cvpipe/pipelines.toml, patches-linear-svm).
SHIPPED = {"flip_invariant": True, "pooling": [[1, 1], [2, 2], [3, 3]], "power": 0.5,
           "whiten_eps": 0.5}


def parse(variant: str) -> tuple[dict, list[float]]:
    params_text, _, cs_text = variant.partition(":")
    params = {}
    for item in filter(None, params_text.split(",")):
        name, _, value = item.partition("=")
        try:
            params[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[name.strip()] = value.strip()
    try:
        Cs = [float(c) for c in cs_text.split(",")] if cs_text else [0.0005, 0.001, 0.002]
    except ValueError:
        Cs = []
    if not Cs or not all(c > 0 for c in Cs):
        raise ValueError(f"{variant!r}: the C values after ':' are numbers above 0, such as 0.001,0.002")
    return params, Cs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split(
        "\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", metavar="VARIANT",
                        default=["encoding=soft-split,alpha=0.25", "encoding=soft-split,alpha=0.5"],
                        help="name=value,...:C,C,... (default: two soft-threshold variants)")
    args = parser.parse_args(argv)
    try:  # every variant read before an hour of encoding, not after
        variants = [parse(v) for v in args.variants]
        for params, _ in variants:
            FeatureSpec.parse("patches", {**SHIPPED, **params})
    except (ConfigError, ValueError) as exc:
        parser.error(f"bad variant: {exc}")
    ds = load_cifar10()
    (x_train, y_train), (x_val, y_val) = ds.split("train"), ds.split("val")
    data = (np.asarray(x_train), np.asarray(y_train), np.asarray(x_val), np.asarray(y_val))
    for params, Cs in variants:
        run_variant(params, Cs, *data)


def run_variant(changed: dict, Cs: list[float], x_train: np.ndarray, y_train: np.ndarray,
                x_val: np.ndarray, y_val: np.ndarray) -> None:
    start = time.perf_counter()
    features = make_features("patches", **{**SHIPPED, **changed}).fit(x_train)
    dictionary = time.perf_counter() - start
    start = time.perf_counter()
    train, val = features.transform(x_train), features.transform(x_val)
    encoding = time.perf_counter() - start
    print(json.dumps({"variant": changed, "dim": train.shape[1], "n_train": len(train),
                      "n_val": len(val), "dictionary_seconds": round(dictionary, 1),
                      "encoding_seconds": round(encoding, 1),
                      "images_per_second": round((len(train) + len(val)) / encoding, 1)}), flush=True)
    start = time.perf_counter()
    problem = LinearProblem.prepare(ArrayChunks(train, y_train), standardize=True)
    val_scaled = problem.stats.scaler().transform(val).astype(np.float32)
    last = start

    def report(C: float, svm: LinearSVM) -> None:
        nonlocal last
        seconds = time.perf_counter() - last
        train_scores = problem.scores(problem.chunks, *_weights(svm))
        print(json.dumps({"variant": changed, "dim": train.shape[1], "C": C,
                          "train": round(float((train_scores.argmax(1) == y_train).mean()), 4),
                          "val": round(float((svm.predict(val_scaled) == y_val).mean()), 4),
                          "iterations": svm.n_iter_, "fit_seconds": round(seconds, 1)}), flush=True)
        last = time.perf_counter()

    fit_path(problem, LinearSVM(max_iter=300, ftol=1e-4), Cs, on_fit=report, scaled_inputs=True)


def _weights(svm: LinearSVM) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a model fitted on the problem's scaled rows, in the problem's coordinates."""
    return svm.coef_.T.astype(np.float64), svm.intercept_.astype(np.float64)


if __name__ == "__main__":
    main()
