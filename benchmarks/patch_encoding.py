"""Throughput of the learned-patch encoding against the same stages written plainly.

The shipped patch features (6x6 patches, whitening, soft threshold 0.25 with polarity split,
flip-invariant, 1x1 + 2x2 + 3x3 sums, square roots) describe CIFAR-10 images two ways:

* ``cvpipe``: ``PatchFeatures.transform`` (one product with the K unit centroids, then one
  compiled pass over it that thresholds each polarity and adds it to its finest cell's sum,
  the pyramid's cells summed from those; chunks of images on every core);
* ``plain``: the stages as the papers write them, on the same fitted dictionary and the same
  chunks and cores: one product with the 2K signed centroids ``[a, -a]``, the threshold, and
  each grid's cells summed from the codes, grid after grid.

Both must give the same features (to float32 rounding: the JSON says how far apart, as the
largest difference over the largest feature; the exit status is 1 past 1e-5). The
dictionary is learned with a small k-means (``--patches``, ``--iterations``): its size, not
its quality, sets the encoding's cost. Prints one JSON document on stdout.

Usage::

    CVPIPE_CIFAR10_SOURCE=../shared/datasets/cifar10-jpeg.tar.gz \\
        python benchmarks/patch_encoding.py [--images 3000] [--centroids 1600]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvpipe.data import load_cifar10  # noqa: E402
from cvpipe.device import n_workers  # noqa: E402
from cvpipe.features._common import run_chunked  # noqa: E402
from cvpipe.features.patch_geometry import (  # noqa: E402
    _cells,
    _mirror_cells,
    _normalise,
    extract_patches,
    pooling_grids,
)
from cvpipe.features.patches import CHUNK_CODES, PatchFeatures  # noqa: E402

SHIPPED = {"encoding": "soft-split", "alpha": 0.25, "flip_invariant": True,
           "pooling": [[1, 1], [2, 2], [3, 3]], "power": 0.5, "whiten_eps": 0.5}


def plain_encode(model: PatchFeatures, images: np.ndarray) -> np.ndarray:
    """The shipped stages written plainly, on ``model``'s dictionary (see the module doc)."""
    size, grids = model.patch_size, pooling_grids(model.pooling)
    oh = ow = images.shape[1] - size + 1
    unit = model.centroids_ / np.linalg.norm(model.centroids_, axis=1, keepdims=True)
    halves = np.split(unit, 2)  # flip-invariant: the learned centroids, then their mirrors
    signed = np.ascontiguousarray(np.hstack([np.hstack([h.T, -h.T]) for h in halves]), np.float32)
    out = np.empty((len(images), model.transform(images[:1]).shape[1]), np.float32)

    def encode(chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        x = _normalise(extract_patches(chunk, size, 1).reshape(n * oh * ow, -1), float(model.norm_eps))
        x -= model.mean_
        codes = (x @ model.whitening_) @ signed
        codes -= np.float32(model.alpha)
        np.maximum(codes, 0, out=codes)
        codes = codes.reshape(n, oh, ow, -1)
        half, cells = codes.shape[-1] // 2, []
        for gh, gw in grids:
            cols = _mirror_cells(ow, gw)
            sums = [[codes[:, r0:r1, c0:c1].sum((1, 2)) for c0, c1 in cols] for r0, r1 in _cells(oh, gh)]
            cells += [row[j][:, :half] + row[gw - 1 - j][:, half:] for row in sums for j in range(gw)]
        return np.concatenate(cells, 1) ** np.float32(model.power)

    chunk = max(1, CHUNK_CODES // (oh * ow * 2 * model.n_centroids))

    def make_worker():
        from threadpoolctl import threadpool_limits

        def work(start: int, stop: int) -> None:
            # as PatchFeatures: one BLAS thread per worker when the chunks run in parallel
            with threadpool_limits(1 if n_workers(model.n_jobs) > 1 else None):
                out[start:stop] = encode(images[start:stop])
        return work

    run_chunked(len(images), chunk, model.n_jobs, make_worker)
    return out


def best_of(repeat: int, fn) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="test images encoded (default 3000)")
    parser.add_argument("--centroids", type=int, default=1600, help="dictionary size K (default 1600)")
    parser.add_argument("--patches", type=int, default=50000, help="patches for the k-means")
    parser.add_argument("--iterations", type=int, default=5, help="k-means iterations")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs each; the best counts")
    args = parser.parse_args(argv)

    ds = load_cifar10()
    train = np.asarray(ds.images("train")[:10000])
    images = np.ascontiguousarray(ds.images("test")[: args.images])
    model = PatchFeatures(n_centroids=args.centroids, n_patches=args.patches,
                          max_iter=args.iterations, random_state=0, **SHIPPED).fit(train)
    model.transform(images[:64]), plain_encode(model, images[:64])  # warm-up
    ours_s, ours = best_of(args.repeat, lambda: model.transform(images))
    plain_s, plain = best_of(args.repeat, lambda: plain_encode(model, images))
    # against the features' scale: square roots of sums near 0 magnify float32 rounding (a
    # difference of 1e-5 in a sum of 1e-4 is 5e-4 after the root), a ratio per value would not
    # tell rounding from a wrong sum
    gap = np.abs(ours - plain) / np.abs(plain).max()
    report = {
        "benchmark": "patch_encoding", "machine": platform.processor() or platform.machine(),
        "images": len(images), "n_centroids": args.centroids, "features": int(ours.shape[1]),
        "cvpipe_images_per_second": round(len(images) / ours_s, 1),
        "plain_images_per_second": round(len(images) / plain_s, 1),
        "speedup": round(plain_s / ours_s, 2),
        "max_difference_over_largest_feature": float(gap.max()),
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0 if gap.max() < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
