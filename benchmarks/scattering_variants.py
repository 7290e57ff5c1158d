"""Which scattering features for a linear SVM: a sweep on CIFAR-10's validation split, as JSON.

How ``scattering-linear-svm`` in ``cvpipe/pipelines.toml`` was chosen. The scattering
coefficients (kymatio, J = 2, L = 8, order 2) of the train and validation splits are computed
once; each variant is then derived from them by the transformer's own stages 2-3 (``compress_and_pool``) (log
compression, averaging over a grid of cells), standardised, and fitted by the product's linear
SVM on the 45,000 training images for each C; its validation accuracy is printed. The test
split is never read. The peer figure is kymatio's own example (J = 2 and a linear classifier):
about 70%.

    CVPIPE_CIFAR10_SOURCE=../shared/datasets/cifar10-jpeg.tar.gz \\
        python benchmarks/scattering_variants.py log:0:3e-5 raw:0:3e-5 raw:4:1e-4

A variant is ``log|raw : pool (0: none) : C``; without arguments, the sweep the pipeline's
comment reports. One JSON line per variant: dimension, C, train and validation accuracy, fit
seconds; the first line gives the feature time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cvpipe.classifiers.linear_svm import LinearSVM  # noqa: E402
from cvpipe.data import load_cifar10  # noqa: E402
from cvpipe.features import make_features  # noqa: E402
from cvpipe.features.scattering import compress_and_pool  # noqa: E402

SWEEP = ["log:2:1e-4", "log:2:1e-3", "raw:2:1e-3", "raw:4:1e-4", "raw:4:3e-4",
         "raw:0:1e-5", "raw:0:3e-5", "raw:0:1e-4", "log:0:3e-5", "log:0:1e-4", "log:0:1e-3"]


def parse(variant: str) -> tuple[bool, int | None, float]:
    """``log|raw:pool:C`` as (log compression, pooling grid or None, C)."""
    parts = variant.split(":")
    try:
        kind, pool, C = parts[0], int(parts[1]), float(parts[2])
        ok = len(parts) == 3 and kind in ("log", "raw") and pool >= 0 and C > 0
    except (IndexError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{variant!r} is not log|raw:pool:C (a pool of 0 or more, a C above 0)")
    return kind == "log", pool or None, C


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split(
        "\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", metavar="VARIANT", default=SWEEP,
                        help="log|raw:pool:C (default: the sweep the pipeline's comment reports)")
    args = parser.parse_args(argv)
    try:  # every variant read before the coefficients of 50,000 images, not after
        variants = [parse(v) for v in args.variants]
    except ValueError as exc:
        parser.error(f"bad variant: {exc}")
    ds = load_cifar10()
    (x_train, y_train), (x_val, y_val) = ds.split("train"), ds.split("val")
    start = time.perf_counter()
    scattering = make_features("scattering").fit(np.asarray(x_train[:1]))
    coeffs = [scattering.transform(np.asarray(x)).reshape(len(x), 3, 81, x.shape[1] // 4, x.shape[2] // 4)
              for x in (x_train, x_val)]
    print(json.dumps({"n_train": len(y_train), "n_val": len(y_val),
                      "feature_seconds": round(time.perf_counter() - start, 1)}), flush=True)
    for log_compressed, pool, C in variants:
        train, val = (compress_and_pool(c, log_compressed, pool).reshape(len(c), -1)
                      for c in coeffs)
        scaler = StandardScaler().fit(train)
        train, val = (scaler.transform(a).astype(np.float32) for a in (train, val))
        start = time.perf_counter()
        svm = LinearSVM(C=C, max_iter=300, ftol=1e-4).fit(train, y_train)
        print(json.dumps({"log": log_compressed, "pool": pool, "dim": train.shape[1],
                          "C": C, "train": round(float((svm.predict(train) == y_train).mean()), 4),
                          "val": round(float((svm.predict(val) == y_val).mean()), 4),
                          "fit_seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
