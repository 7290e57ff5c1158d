"""The feature MLP's training speed in float32 and in bfloat16 on this machine.

Trains the product's MLP (:class:`cvpipe.classifiers.mlp.MLPClassifier` with the shipped
``patches-mlp``'s settings, read from ``cvpipe/pipelines.toml``) for one epoch on synthetic
rows of the patch features' width (22,400 values), standardised a block of 1,024 rows at a
time as training reads a feature store, once per precision. What ``precision = "auto"`` takes
here (:func:`cvpipe.device.bfloat16_is_fast`)
is in the JSON, with the rows per second of each precision and their ratio::

    python benchmarks/mlp_precision.py --rows 16384

The first 2,048 rows of each precision are a warm-up (thread pools, first touches of the
weights) and are not timed.
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

from cvpipe.classifiers.chunks import ArrayChunks, Mapped  # noqa: E402
from cvpipe.classifiers.mlp import MLPClassifier  # noqa: E402
from cvpipe.device import bfloat16_is_fast, cpu_has_bfloat16_units, resolve_device  # noqa: E402
from cvpipe.models import get_pipeline  # noqa: E402

#: The shipped patches-mlp's classifier parameters.
SHIPPED = dict(get_pipeline("patches-mlp").spec.classifier["params"])

WARM_UP_ROWS = 2048
BLOCK_ROWS = 1024  # a feature store's block of 22,400-value rows


def rows_per_second(X: np.ndarray, y: np.ndarray, precision: str, device: str) -> float:
    """Rows per second of one training epoch over ``X`` (after a warm-up epoch)."""
    mean, scale = X.mean(0), X.std(0) + np.float32(1e-3)

    def standardise(block: np.ndarray) -> np.ndarray:
        out = np.subtract(block, mean, dtype=np.float32)
        out /= scale
        return out

    def epoch(rows: slice) -> float:
        chunks = Mapped(ArrayChunks(X[rows], y[rows], rows=BLOCK_ROWS), standardise, X.shape[1])
        clf = MLPClassifier(**{**SHIPPED, "max_epochs": 1, "precision": precision, "device": device})
        start = time.perf_counter()
        clf.fit_chunks(chunks)
        return time.perf_counter() - start

    epoch(slice(0, WARM_UP_ROWS))
    return len(X) / epoch(slice(None))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16384, help="training rows timed (default 16384)")
    parser.add_argument("--features", type=int, default=22400,
                        help="row width (default 22400, the full profile's patch features)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.rows, args.features), dtype=np.float32)
    y = rng.integers(0, 10, args.rows)
    device = resolve_device(args.device)
    speed = {p: round(rows_per_second(X, y, p, str(device)), 1) for p in ("float32", "bfloat16")}
    print(json.dumps({
        "device": str(device), "rows": args.rows, "features": args.features,
        "hidden_sizes": list(SHIPPED["hidden_sizes"]),
        "cpu_has_bfloat16_units": cpu_has_bfloat16_units(),
        "auto_takes": "bfloat16" if bfloat16_is_fast(device) else "float32",
        "rows_per_s": speed,
        "bfloat16_over_float32": round(speed["bfloat16"] / speed["float32"], 3),
    }))


if __name__ == "__main__":
    main()
