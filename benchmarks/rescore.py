"""Every trained model re-scored through the prediction API over real HTTP, as JSON.

Starts ``cvpipe serve`` on a loopback port with a models folder (e.g. what ``cvpipe compare``
trained), sends CIFAR-10's test split (10,000 images, lossless PNG of the decoded images the
comparison scored) to ``/v1/models/<name>/predict`` in batches, and compares for each model:

* the API's test accuracy with the one recorded when the model was trained (``model.json``);
* the API's labels with the model's own, loaded in this process (``--no-local`` skips this).

    python benchmarks/rescore.py --models models --source ../shared/datasets/cifar10-jpeg.tar.gz
    python benchmarks/rescore.py --models models --limit-per-class 300     # make demo's models

One JSON line per model (name, recorded and API test accuracy, equal, agreement with the local
predictions, images per second through the API), then a summary line. A model whose accuracy
was recorded on another number of test images (a quick-profile model among full-profile ones)
is not compared: its line says so and which ``--limit-per-class`` matches it; so is a model of
another dataset (its source's checksum differs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.api import Client, Server, free_port, multipart, png_bytes  # noqa: E402
from cvpipe.data import load_cifar10  # noqa: E402
from cvpipe.models import load_model, read_metadata  # noqa: E402


def served_labels(client: Client, name: str, pngs: list[bytes], batch: int) -> list[str]:
    """The API's top label of every image, ``batch`` images per request."""
    labels: list[str] = []
    for start in range(0, len(pngs), batch):
        body, ctype = multipart([(f"{i}.png", pngs[i]) for i in range(start, min(start + batch, len(pngs)))])
        status, data = client.send("POST", f"/v1/models/{name}/predict?top_k=1", body,
                                   {"Content-Type": ctype})
        if status != 200:
            raise RuntimeError(f"{name}: HTTP {status}: {data[:300]!r}")
        labels += [p["label"] for p in json.loads(data)["predictions"]]
    return labels


def scored_elsewhere(meta: dict[str, Any], n_images: int, checksum: str | None = None) -> str | None:
    """Why the model's recorded test accuracy cannot be compared with one on ``n_images``
    test images of the dataset whose source has ``checksum`` (it was recorded on another
    dataset, or on another number of its test images), or None."""
    dataset = meta.get("dataset") or {}
    if checksum and dataset.get("checksum") and dataset["checksum"] != checksum:
        return (f"trained and scored on {dataset.get('name', 'another dataset')} "
                f"({dataset['checksum'][:19]}...), not the CIFAR-10 copy sent ({checksum[:19]}...)")
    recorded_on = dataset.get("test")
    if recorded_on is None or int(recorded_on) == n_images:
        return None
    n_classes = len(meta.get("classes") or []) or 1
    hint = (f"; rerun with --limit-per-class {int(recorded_on) // n_classes}"
            if int(recorded_on) % n_classes == 0 else "")
    return (f"its test accuracy was recorded on {int(recorded_on):,} test images, "
            f"not the {n_images:,} sent{hint}")


def rescore(model_dir: Path, meta: dict[str, Any], client: Client, x: np.ndarray, y: np.ndarray,
            pngs: list[bytes], batch: int, local: bool) -> dict[str, Any]:
    classes = list(meta["classes"])
    start = time.perf_counter()
    labels = served_labels(client, model_dir.name, pngs, batch)
    seconds = time.perf_counter() - start
    served = np.array([classes.index(label) for label in labels])
    recorded = meta["metrics"]["test"]["accuracy"]
    out: dict[str, Any] = {
        "model": model_dir.name, "images": len(y),
        "recorded_test_accuracy": recorded,
        "api_test_accuracy": round(float((served == y).mean()), 6),
        "api_images_per_second": round(len(y) / seconds, 1)}
    out["equal"] = abs(out["api_test_accuracy"] - recorded) < 0.5 / len(y)
    if local:
        own = load_model(model_dir).predict(x)
        out["agreement_with_local"] = round(float((np.asarray(own) == served).mean()), 6)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="folder of trained models (one per subfolder)")
    p.add_argument("--source", help="CIFAR-10 archive or folder (default: the prepared copy)")
    p.add_argument("--limit-per-class", type=int, metavar="N",
                   help="the first N test images of each class (as the comparison's profile did, "
                        "e.g. 300 for the quick one)")
    p.add_argument("--batch", type=int, default=500, help="images per request (at most MAX_IMAGES)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-local", dest="local", action="store_false",
                   help="do not also predict in this process")
    p.add_argument("--out", help="also write the JSON lines here")
    args = p.parse_args(argv)

    models = sorted(d for d in Path(args.models).iterdir() if (d / "model.json").is_file())
    if not models:
        p.error(f"no models in {args.models}")
    options = {"limit_per_class": args.limit_per_class} if args.limit_per_class else {}
    cifar = load_cifar10(args.source, **options)
    x, y = cifar.split("test")
    x, y = np.asarray(x), np.asarray(y)
    pngs = [png_bytes(img) for img in x]
    port = free_port()
    server = Server(Path(args.models), port, args.workers, 4, {})
    lines, skipped = [], []
    try:
        server.wait_ready()
        client = Client(port)
        for model_dir in models:
            meta = read_metadata(model_dir)
            reason = scored_elsewhere(meta, len(y), cifar.checksum)
            if reason is not None:
                skipped.append({"model": model_dir.name, "not_compared": reason})
                print(json.dumps(skipped[-1]), flush=True)
                continue
            line = rescore(model_dir, meta, client, x, y, pngs, args.batch, args.local)
            print(json.dumps(line), flush=True)
            lines.append(line)
    finally:
        server.stop()
    summary = {"models": len(lines), "equal": sum(line["equal"] for line in lines),
               "not_compared": len(skipped), "server": server.command}
    if args.local:
        summary["identical_to_local"] = sum(line["agreement_with_local"] == 1.0 for line in lines)
    print(json.dumps(summary), flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(line) + "\n"
                                          for line in [*lines, *skipped, summary]))
    if not lines:
        print(f"no model in {args.models} was scored on these {len(y):,} test images; "
              "see --limit-per-class", file=sys.stderr)
        return 1
    return 0 if summary["equal"] == len(lines) else 1


if __name__ == "__main__":
    sys.exit(main())
