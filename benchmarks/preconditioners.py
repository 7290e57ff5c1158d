"""The linear SVM's preconditioners on stored features: time, peak memory, validation accuracy.

Fits the product's linear SVM (standardised features, a grid of C values on one
preconditioner, warm starts: what ``cvpipe train`` runs) on one feature store's training rows,
read from disk a block at a time, and scores the validation rows, once per preconditioner:

* ``gram``: the D x D Gram matrix and its Cholesky factor (the default up to
  ``MAX_GRAM_FEATURES`` features);
* ``sketch``: a randomized Nystrom sketch of it (``sketch:RANK``; beyond it);
* ``none``: plain L-BFGS.

Each runs in a process of its own, so that its peak RSS is its own. The stores are those
``cvpipe compare`` or ``cvpipe extract`` wrote (``<data root>/features/<key>``; ``cvpipe store
list`` names them)::

    python benchmarks/preconditioners.py TRAIN_STORE VAL_STORE --C 1e-5,3e-5,1e-4 \\
        --modes gram,sketch:512,sketch:1024

One JSON line per fit (C, iterations, validation accuracy, seconds so far) and one per mode
(preparation seconds, total seconds, peak RSS).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Store:
    """A finished store's rows, out of core, read a block at a time as the product reads them
    (ordinary reads, not a memory map: the peak RSS is the solver's own)."""

    def __init__(self, path: str, rows: int = 4096):
        from cvpipe.featurestore.store import NpyRows

        self.X = NpyRows(str(Path(path, "features.npy")))
        self.y = np.load(Path(path, "labels.npy"))
        self.rows = rows
        self.n_rows, self.n_features = self.X.shape

    def refs(self) -> list:
        from cvpipe.classifiers.chunks import ArrayRef

        return [ArrayRef(self.X, self.y, a, min(a + self.rows, self.n_rows))
                for a in range(0, self.n_rows, self.rows)]

    def labels(self) -> np.ndarray:
        return self.y


def run_mode(train: str, val: str, mode: str, Cs: list[float]) -> None:
    from cvpipe.classifiers import linear_svm
    from cvpipe.classifiers.linear_svm import LinearProblem, LinearSVM, fit_path

    kind, _, rank = mode.partition(":")
    if kind == "gram":
        linear_svm.MAX_GRAM_FEATURES = 1 << 30
    elif kind == "sketch":
        linear_svm.MAX_GRAM_FEATURES = 0
        linear_svm.SKETCH_RANK = int(rank or linear_svm.SKETCH_RANK)
    chunks = _Store(train)
    Xv = np.load(Path(val, "features.npy"))
    yv = np.load(Path(val, "labels.npy"))
    start = time.perf_counter()
    problem = LinearProblem.prepare(chunks, standardize=True, precondition=kind != "none")
    prepared = time.perf_counter() - start

    def report(C: float, svm: LinearSVM) -> None:
        accuracy = float((svm.predict(np.asarray(Xv)) == yv).mean())
        print(json.dumps({"mode": mode, "C": C, "iterations": svm.n_iter_, "val": round(accuracy, 4),
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)

    fit_path(problem, LinearSVM(max_iter=300, ftol=1e-4), Cs, on_fit=report)
    print(json.dumps({"mode": mode, "n": chunks.n_rows, "d": chunks.n_features,
                      "prepare_seconds": round(prepared, 1),
                      "total_seconds": round(time.perf_counter() - start, 1),
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}),
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("train", help="the training rows' feature store (a folder)")
    p.add_argument("val", help="the validation rows' feature store")
    p.add_argument("--C", default="1e-5,3e-5,1e-4", help="comma-separated C values")
    p.add_argument("--modes", default="gram,sketch", help="gram, sketch[:RANK], none")
    p.add_argument("--one", help=argparse.SUPPRESS)  # a child process: this mode only
    args = p.parse_args()
    Cs = [float(c) for c in args.C.split(",")]
    if args.one:
        run_mode(args.train, args.val, args.one, Cs)
        return
    for mode in args.modes.split(","):
        subprocess.run([sys.executable, __file__, args.train, args.val, "--C", args.C, "--one", mode],
                       check=True)


if __name__ == "__main__":
    main()
