"""Classification metrics shared by every model: one dict, JSON-ready."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: Sequence[str],
    scores: np.ndarray | None = None,
    score_kind: str = "probability",
) -> dict:
    """Accuracy, macro and per-class precision/recall/F1, log loss and confusion matrix.

    Parameters
    ----------
    y_true, y_pred : ndarray of int, shape (N,)
        Class indices into ``classes``.
    classes : sequence of str
    scores : ndarray, shape (N, n_classes), optional
        Class probabilities; log loss is reported only when ``score_kind`` is "probability".
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = np.arange(len(classes))
    p, r, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    out = {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "macro_precision": float(p.mean()),
        "macro_recall": float(r.mean()),
        "macro_f1": float(f1.mean()),
        "log_loss": None,
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }
    if scores is not None and score_kind == "probability" and len(y_true):
        probs = np.clip(np.asarray(scores, np.float64), 1e-15, 1.0)
        out["log_loss"] = float(log_loss(y_true, probs / probs.sum(1, keepdims=True), labels=labels))
    return out


def format_metrics(m: dict, classes: Sequence[str]) -> str:
    """A plain-text table of a metrics dict, for the terminal."""
    ll = "n/a (no probabilities)" if m["log_loss"] is None else f"{m['log_loss']:.4f}"
    lines = [
        f"accuracy {m['accuracy']:.4f}   macro P {m['macro_precision']:.4f}  "
        f"R {m['macro_recall']:.4f}  F1 {m['macro_f1']:.4f}   log loss {ll}   (n={m['n']})",
        "",
        f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}",
    ]
    for c in classes:
        pc = m["per_class"][c]
        lines.append(f"{c:<12}{pc['precision']:>10.3f}{pc['recall']:>10.3f}{pc['f1']:>10.3f}"
                     f"{pc['support']:>9}")
    width = max(5, max(len(str(v)) for row in m["confusion_matrix"] for v in row) + 1)
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * 12 + "".join(f"{c[:width - 1]:>{width}}" for c in classes)]
    for c, row in zip(classes, m["confusion_matrix"], strict=True):
        lines.append(f"{c:<12}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
