"""Throughput of the scattering features against kymatio's own Scattering2D, as JSON.

Both contenders compute the same transform (J = 2, L = 8, order 2, the shipped
``scattering-linear-svm`` settings) of the same CIFAR-10 training images held in memory:

* ``cvpipe``: ``ScatteringTransformer`` (kymatio's NumPy front end with its Fourier
  subsampling done by ``cvpipe.features.scattering.periodise``; chunks on every core);
* ``kymatio``: kymatio's ``ScatteringNumPy2D`` with its own backend, the same chunks on the
  same threads (``run_chunked``): the library as shipped.

Neither takes the log (the shipped pipeline's stage 2, the same on both sides), so the two
outputs compare value for value.

Each figure is the best of ``--repeat`` runs, the contenders interleaved round by round; the
largest difference between the two outputs is printed too.

Usage::

    CVPIPE_CIFAR10_SOURCE=../shared/datasets/cifar10-jpeg.tar.gz python benchmarks/scattering.py --limit 4096
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvpipe.compare.runner import environment  # noqa: E402
from cvpipe.data import load_cifar10  # noqa: E402
from cvpipe.features._common import run_chunked  # noqa: E402
from cvpipe.features.scattering import CHUNK, ScatteringTransformer  # noqa: E402

PARAMS = {"J": 2, "L": 8, "max_order": 2}


def kymatio_as_shipped(images: np.ndarray, width: int) -> np.ndarray:
    """kymatio's own NumPy front end on the images, chunk by chunk on every core; ``width``:
    the values per image (the transformer's, which knows the layout)."""
    from kymatio.scattering2d.frontend.numpy_frontend import ScatteringNumPy2D

    scattering = ScatteringNumPy2D(shape=images.shape[1:3], **PARAMS)
    out = np.empty((len(images), width), np.float32)

    def make_worker():
        def work(start: int, stop: int) -> None:
            x = np.moveaxis(images[start:stop], -1, 1).astype(np.float32) / np.float32(255)
            out[start:stop] = scattering(x).reshape(stop - start, -1)
        return work

    run_chunked(len(images), CHUNK, -1, make_worker)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=None,
                    help="CIFAR-10 archive or folder (default: the copy load_cifar10 finds, "
                         "e.g. $CVPIPE_CIFAR10_SOURCE's)")
    ap.add_argument("--limit", type=int, default=4096, help="training images timed (default 4096)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    args = ap.parse_args(argv)
    images = np.ascontiguousarray(load_cifar10(source=args.source).images("train")[: args.limit])
    ours = ScatteringTransformer(**PARAMS, backend="numpy", device="cpu").fit(images[:1])
    width = ours.transform(images[:1]).shape[1]
    contenders = {"cvpipe": lambda: ours.transform(images),
                  "kymatio": lambda: kymatio_as_shipped(images, width)}
    for fn in contenders.values():  # warm-up: filters built, pages touched
        fn()
    best = {name: float("inf") for name in contenders}
    outputs = {}
    for _ in range(args.repeat):
        for name, fn in contenders.items():
            start = time.perf_counter()
            outputs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    per_second = {name: round(len(images) / s, 1) for name, s in best.items()}
    print(json.dumps({
        "benchmark": "scattering", "params": PARAMS, "n_images": len(images),
        "cpu": environment()["cpu"], "cores": environment()["cores"],
        "images_per_s": per_second,
        "ratio_vs_kymatio": round(per_second["cvpipe"] / per_second["kymatio"], 2),
        "max_abs_difference": float(np.abs(outputs["cvpipe"] - outputs["kymatio"]).max()),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
