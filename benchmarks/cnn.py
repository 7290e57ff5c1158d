"""CNN baseline benchmark: time-to-accuracy and final accuracy on CIFAR-10, as JSON.

Trains on the "train" split (train minus the seeded 10 % validation split), validates every
epoch, and scores train (un-augmented), val and test once at the end. Time-to-accuracy is
read from the validation curve (the test split is not looked at during training).
"seconds" counts the training loop (steps, per-epoch validation); not data loading, the
warm-up run or the final scoring. No checkpoints are written, so that the figure is the
training itself.

Targets (issue 5): GPU, >= 94 % test accuracy in <= 5 s of training, mean of 5 seeds;
CPU, >= 80 % within a 900 s budget.

    python benchmarks/cnn.py                          # CPU: 900 s budget; GPU: 5 seeds
    python benchmarks/cnn.py --time-budget 180 --out reports/cnn-cpu-180s.json
    python benchmarks/cnn.py --device cuda --seeds 0 1 2 3 4 --set compile=true

Needs ``CVPIPE_CIFAR10_SOURCE`` (or a prepared cache under the data root).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see cvpipe/cnn/__init__.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cvpipe.cnn import CNNConfig, train_cnn  # noqa: E402
from cvpipe.cnn.train import score  # noqa: E402
from cvpipe.data import load_cifar10  # noqa: E402
from cvpipe.device import resolve_device  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.93, 0.94)
TARGETS = {"cuda": {"test_accuracy": 0.94, "train_seconds": 5.0},
           "cpu": {"test_accuracy": 0.80, "train_seconds": 900.0}}


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--time-budget", type=float, help="seconds of training (default: 900 on CPU, none on GPU)")
    p.add_argument("--epochs", type=float, help="epochs (with a budget: the most)")
    p.add_argument("--seeds", type=int, nargs="+", help="default: 0 on CPU, 0 1 2 3 4 on GPU")
    p.add_argument("--width", type=int, help="stem channels (stages: 2x, 4x, 8x)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other CNNConfig field, e.g. --set optimizer=adamw --set cutout=8; "
                        "recipe=airbench (default, as the shipped cnn pipeline) or recipe=resnet")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the short untimed run that warms up kernels (and torch.compile)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--progress", action="store_true", help="progress bar of epochs")
    return p.parse_args(argv)


def time_to_accuracy(history: list[dict]) -> dict[str, float | None]:
    """Training seconds until validation accuracy first reached each threshold."""
    out = {}
    for t in THRESHOLDS:
        hit = next((r["seconds"] for r in history if r["val_accuracy"] >= t), None)
        out[f"{t:.2f}"] = None if hit is None else round(hit, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    device = resolve_device(args.device)
    extra = dict(kv.split("=", 1) for kv in args.set)
    extra.setdefault("recipe", "airbench")  # the shipped CNN pipeline's recipe
    budget = args.time_budget if args.time_budget is not None else (900.0 if device.type == "cpu" else None)
    seeds = args.seeds or ([0] if device.type == "cpu" else [0, 1, 2, 3, 4])
    base = CNNConfig.from_dict({k: _value(v) for k, v in extra.items()}).replace(
        device=str(device), time_budget=budget, epochs=args.epochs, width=args.width)

    load_start = time.perf_counter()
    ds = load_cifar10()
    train, val, test = ds.split("train"), ds.split("val"), ds.split("test")
    load_seconds = time.perf_counter() - load_start

    if not args.no_warmup:  # kernels, allocator, torch.compile: untimed, like airbench's warm-up
        n = min(len(train[1]), 4 * (base.resolved(device).batch_size or 512))
        # A random subset: the splits are sorted by class, their first images are one class.
        pick = np.random.default_rng(12345).permutation(len(train[1]))[:n]
        val_pick = np.random.default_rng(12345).permutation(len(val[1]))[:500]
        train_cnn((train[0][pick], train[1][pick]), (val[0][val_pick], val[1][val_pick]),
                  dataclasses.replace(base, epochs=1.0, time_budget=None, seed=12345),
                  n_classes=len(ds.classes), progress=False)

    runs = []
    for seed in seeds:
        result = train_cnn(train, val, base.replace(seed=seed), n_classes=len(ds.classes),
                           progress=args.progress)
        metrics = {"train": score(result, *train), "val": score(result, *val), "test": score(result, *test)}
        runs.append({
            "seed": seed,
            "train_seconds": round(result.train_seconds, 2),
            "epochs_run": len(result.history),
            "epochs_trained": round(result.total_steps / result.steps_per_epoch, 3),
            "best_epoch": result.best_epoch,
            "stopped": result.stopped,
            "test_accuracy": metrics["test"]["accuracy"],
            "train_accuracy": metrics["train"]["accuracy"],
            "val_accuracy": metrics["val"]["accuracy"],
            "time_to_val_accuracy": time_to_accuracy(result.history),
            "plan": result.plan,
            "history": result.history,
        })
        logging.info("seed %d: test %.4f, train %.4f in %.1f s", seed, runs[-1]["test_accuracy"],
                     runs[-1]["train_accuracy"], result.train_seconds)

    test_acc = [r["test_accuracy"] for r in runs]
    seconds = [r["train_seconds"] for r in runs]
    target = TARGETS[device.type]
    report = {
        "benchmark": "cnn",
        "command": " ".join(["python", "benchmarks/cnn.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dataset": {"checksum": ds.checksum, "train": len(train[1]), "val": len(val[1]),
                    "test": len(test[1])},
        "load_seconds": round(load_seconds, 2),
        "config": result.config.to_dict(),
        "params": sum(p.numel() for p in result.model.parameters()),
        "seconds_count": "training loop incl. per-epoch validation; excludes loading, warm-up, scoring",
        "summary": {
            "runs": len(runs),
            "test_accuracy_mean": statistics.fmean(test_acc),
            "test_accuracy_std": statistics.stdev(test_acc) if len(runs) > 1 else 0.0,
            "train_accuracy_mean": statistics.fmean(r["train_accuracy"] for r in runs),
            "train_seconds_mean": statistics.fmean(seconds),
        },
        "target": {**target, "met": statistics.fmean(test_acc) >= target["test_accuracy"]
                   and statistics.fmean(seconds) <= target["train_seconds"]},
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
