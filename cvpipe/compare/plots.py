"""Figures of a comparison run, as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def accuracy_bars(rows: list[dict[str, Any]]) -> bytes:
    """Test accuracy per pipeline with train accuracy beside it (the over-fitting story)."""
    names = [r["pipeline"] for r in rows]
    y = np.arange(len(rows))
    fig = Figure(figsize=(9, 0.42 * len(rows) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(y - 0.2, [100 * r["train_accuracy"] for r in rows], 0.4, label="train", color="#c7d7ea")
    ax.barh(y + 0.2, [100 * r["test_accuracy"] for r in rows], 0.4, label="test", color="#2f6db5")
    for i, r in enumerate(rows):
        ax.text(100 * r["test_accuracy"] + 0.5, i + 0.2, f"{100 * r['test_accuracy']:.1f}", va="center",
                fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("accuracy (%)")
    ax.legend(loc="lower right")
    ax.set_title("Train vs test accuracy per pipeline")
    return png(fig)


def per_class_chart(rows: list[dict[str, Any]], classes: list[str]) -> bytes:
    """Per-class test accuracy (recall) of every pipeline, as a heat map."""
    data = np.array([[100 * r["test_metrics"]["per_class"][c]["recall"] for c in classes] for r in rows])
    fig = Figure(figsize=(9, 0.4 * len(rows) + 1.6), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(data, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), [r["pipeline"] for r in rows])
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if data[i, j] < 60 else "black")
    fig.colorbar(im, ax=ax, label="per-class accuracy (%)")
    ax.set_title("Per-class test accuracy")
    return png(fig)


def confusion(cm: list[list[int]], classes: list[str], title: str) -> bytes:
    """Row-normalised confusion matrix with counts."""
    cm_arr = np.asarray(cm, dtype=float)
    norm = cm_arr / np.maximum(cm_arr.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(5.6, 5), layout="constrained")
    ax = fig.subplots()
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm_arr[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return png(fig)


def learning_curves(rows: list[dict[str, Any]]) -> bytes | None:
    """Validation accuracy (and loss) per epoch of the models that train in epochs."""
    curves = []
    for r in rows:
        h = r.get("history")
        if isinstance(h, list) and h:  # CNN: a record per epoch
            curves.append((r["pipeline"], [e.get("val_accuracy") for e in h],
                           [e.get("train_loss") for e in h], [e.get("val_loss") for e in h]))
        elif isinstance(h, dict) and h.get("val_accuracy"):  # MLP: lists per quantity
            curves.append((r["pipeline"], h["val_accuracy"], h.get("train_loss"), h.get("val_loss")))
    if not curves:
        return None
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for name, acc, tr, va in curves:
        line = ax_acc.plot(range(1, len(acc) + 1), [100 * a for a in acc], label=name)[0]
        if tr and all(v is not None for v in tr):
            ax_loss.plot(range(1, len(tr) + 1), tr, color=line.get_color(), ls="--")
        if va and all(v is not None for v in va):
            ax_loss.plot(range(1, len(va) + 1), va, color=line.get_color())
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy (%)")
    ax_acc.legend(fontsize=7)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (dashed: train, solid: validation)")
    ax_acc.set_title("Learning curves")
    return png(fig)


def cost_accuracy(rows: list[dict[str, Any]], fronts: dict[str, list[str]]) -> bytes:
    """Test accuracy against training time and against prediction time per image (log axes),
    each pipeline a labelled point with its 95% interval, the Pareto front joined."""
    panels = [("train_seconds", "training time (s): features learnt + described, final fit"),
              ("latency_ms_per_image_batch", "prediction time per image in a batch (ms)")]
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    for ax, (cost, label) in zip(fig.subplots(1, 2), panels, strict=True):
        pts = [r for r in rows if r.get(cost)]
        for r in pts:
            acc = 100 * r["test_accuracy"]
            lo, hi = (100 * v for v in r.get("test_ci95", (r["test_accuracy"],) * 2))
            on_front = r["pipeline"] in fronts.get(cost, [])
            ax.errorbar(r[cost], acc, yerr=[[max(0.0, acc - lo)], [max(0.0, hi - acc)]], fmt="o", ms=5,
                        capsize=2, color="#b5452f" if r["family"] == "cnn" else "#2f6db5",
                        alpha=1.0 if on_front else 0.55)
            ax.annotate(r["pipeline"], (r[cost], acc), textcoords="offset points", xytext=(4, 3),
                        fontsize=7)
        front = sorted((r[cost], 100 * r["test_accuracy"]) for r in pts
                       if r["pipeline"] in fronts.get(cost, []))
        if front:
            ax.step([c for c, _ in front], [a for _, a in front], where="post", color="#444",
                    lw=1, ls="--", label="Pareto front")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%), 95% interval")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("What each pipeline costs and buys (upper left is better)")
    return png(fig)


def misclassified_gallery(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                          classes: list[str], title: str, per_class: int = 2) -> bytes:
    """Misclassified test images drawn across the true classes (``per_class`` of each, the
    first in test order), with predicted and true classes."""
    wrong = np.concatenate([np.flatnonzero((y_true == c) & (y_true != y_pred))[:per_class]
                            for c in range(len(classes))]).astype(int)
    cols = 8
    rows = max(1, -(-len(wrong) // cols))
    fig = Figure(figsize=(cols * 1.25, rows * 1.5 + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, wrong, strict=False):
        image = np.asarray(images[i])
        if image.shape[-1] == 1:  # grayscale
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{classes[y_pred[i]]}\n(true {classes[y_true[i]]})", fontsize=7,
                     color="#b00020")
    fig.suptitle(title, fontsize=10)
    return png(fig)


def feature_pictures(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[tuple[str, bytes]]:
    """HOG glyphs and HSV (gray images: intensity) histograms of one training image of a few
    classes."""
    from cvpipe.features import plot_color_histogram, plot_hog

    out = []
    for c in (0, 3, 7):
        if c >= len(classes):
            continue
        idx = np.flatnonzero(labels == c)
        if not len(idx):
            continue
        img = np.asarray(images[idx[0]])
        out.append((f"HOG of a {classes[c]}", png(plot_hog(img, title=f"{classes[c]}: HOG"))))
        kind = "intensity" if img.shape[-1] == 1 else "HSV"
        out.append((f"{kind} histogram of a {classes[c]}",
                    png(plot_color_histogram(img, title=f"{classes[c]}: {kind} histogram"))))
    return out
