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


def main(variants: list[str]) -> None:
    ds = load_cifar10()
    (x_train, y_train), (x_val, y_val) = ds.split("train"), ds.split("val")
    start = time.perf_counter()
    scattering = make_features("scattering").fit(np.asarray(x_train[:1]))
    coeffs = [scattering.transform(np.asarray(x)).reshape(len(x), 3, 81, 8, 8)
              for x in (x_train, x_val)]
    print(json.dumps({"n_train": len(y_train), "n_val": len(y_val),
                      "feature_seconds": round(time.perf_counter() - start, 1)}), flush=True)
    for variant in variants:
        kind, pool, C = variant.split(":")
        train, val = (compress_and_pool(c, kind == "log", int(pool) or None).reshape(len(c), -1)
                      for c in coeffs)
        scaler = StandardScaler().fit(train)
        train, val = (scaler.transform(a).astype(np.float32) for a in (train, val))
        start = time.perf_counter()
        svm = LinearSVM(C=float(C), max_iter=300, ftol=1e-4).fit(train, y_train)
        print(json.dumps({"log": kind == "log", "pool": int(pool) or None, "dim": train.shape[1],
                          "C": float(C), "train": round(float((svm.predict(train) == y_train).mean()), 4),
                          "val": round(float((svm.predict(val) == y_val).mean()), 4),
                          "fit_seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or SWEEP)
