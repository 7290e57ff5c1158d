"""Tiny synthetic CIFAR-like datasets, written in every layout cvpipe reads.

Images carry a learnable signal: each class has its own base colour and stripe
orientation, so colour histograms and HOG both separate the classes.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")  # fmt: skip


def make_images(n_per_class: int, classes=CLASSES, size: int = 32, seed: int = 0):
    """(images uint8 (N, size, size, 3), labels int64 (N,)) with a per-class signal."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels = [], []
    for c in range(len(classes)):
        base = np.array([(37 * c) % 256, (91 * c + 60) % 256, (151 * c + 120) % 256], float)
        angle = np.pi * c / len(classes)
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 0.8)
        for _ in range(n_per_class):
            img = base * 0.6 + 60 * stripes[..., None] + rng.normal(0, 12, (size, size, 3))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels, dtype=np.int64)


def write_image_folder(root: Path, n_train: int = 6, n_test: int = 3, classes=CLASSES,
                       fmt: str = "png", size: int = 32) -> dict:
    """Write ``root/{train,test}/<class>/NNNN.<fmt>``; return the arrays written."""
    out = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = make_images(n, classes, size, seed)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            d = root / split / classes[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.{fmt}")
        out[split] = (x, y)
    return out


def tar_folder(src: Path, dest: Path, arcname: str = "tiny") -> Path:
    mode = "w:gz" if dest.name.endswith(".gz") else "w"
    with tarfile.open(dest, mode) as tar:
        tar.add(src, arcname=arcname)
    return dest


def write_official_archive(dest: Path, n_per_class: int = 4, folder_only: bool = False):
    """A fake ``cifar-10-python.tar.gz`` (Python pickles, as the real release).

    Returns (path, md5, arrays) where arrays maps split -> (images NHWC, labels).
    """
    batches = {f"data_batch_{i}": i for i in range(1, 6)} | {"test_batch": 6}
    files, arrays = {}, {"train": ([], []), "test": ([], [])}
    for name, seed in batches.items():
        x, y = make_images(n_per_class, seed=seed)
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        files[name] = pickle.dumps({"batch_label": name, "labels": y.tolist(), "data": rows,
                                    "filenames": [f"{i}.png" for i in range(len(x))]}, protocol=2)
        split = "test" if name == "test_batch" else "train"
        arrays[split][0].append(x)
        arrays[split][1].append(y)
    files["batches.meta"] = pickle.dumps({"label_names": list(CLASSES), "num_vis": 3072},
                                         protocol=2)
    arrays = {s: (np.concatenate(xs), np.concatenate(ys)) for s, (xs, ys) in arrays.items()}
    if folder_only:
        folder = dest / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return folder, None, arrays
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest, hashlib.md5(dest.read_bytes()).hexdigest(), arrays
