"""Writing a comparison run: ``results.json``, ``report.md`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from cvpipe.compare import plots
from cvpipe.storage import holds, json_dumps, replace_dir, safe_name, to_jsonable

log = logging.getLogger(__name__)

COLUMNS = [  # (key, header, format)
    ("pipeline", "pipeline", "{}"),
    ("feature_dim", "feature dim", "{}"),
    ("train_accuracy", "train acc", "{:.1%}"),
    ("val_accuracy", "val acc", "{:.1%}"),
    ("test_accuracy", "test acc", "{:.1%}"),
    ("test_ci95", "test 95% CI", "ci"),
    ("seeds", "test over seeds", "seeds"),
    ("macro_precision", "macro P", "{:.3f}"),
    ("macro_recall", "macro R", "{:.3f}"),
    ("macro_f1", "macro F1", "{:.3f}"),
    ("log_loss", "log loss", "{:.3f}"),
    ("extraction_images_per_second", "extract img/s", "{:,.0f}"),
    ("features_status", "features", "{}"),
    ("fit_seconds", "fit s", "{:.1f}"),
    ("train_seconds", "train s", "{:.1f}"),
    # the run that trained the model: this one, or an earlier one whose model this run reused
    ("training_seconds", "training run s", "{:.0f}"),
    ("latency_ms_single", "latency ms (1 img)", "{:.2f}"),
    ("latency_ms_per_image_batch", "ms/img (batch)", "{:.3f}"),
    ("model_bytes", "model size", "{}"),
]


def _fmt(key: str, fmt: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if fmt == "ci":
        return f"{100 * value[0]:.1f}–{100 * value[1]:.1f}%"
    if fmt == "seeds":
        return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}% (n={len(value['seeds'])})"
    if key == "model_bytes":
        for unit in ("B", "KiB", "MiB", "GiB"):
            if value < 1024 or unit == "GiB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024
    return fmt.format(value)


def table_rows(rows: list[dict[str, Any]], train_sizes: set[int] = frozenset()) -> list[list[str]]:
    """The table's cells; a train accuracy scored on fewer images than a whole train split
    (``train_sizes``: train alone, train + validation) -- the CNN's sample -- says on how many."""
    out = []
    for r in rows:
        cells = [_fmt(k, f, r.get(k)) for k, _, f in COLUMNS]
        n = r.get("train_accuracy_images")
        if n and train_sizes and n not in train_sizes and r.get("train_accuracy") is not None:
            cells[[k for k, _, _ in COLUMNS].index("train_accuracy")] += f" ({n:,} sampled)"
        out.append(cells)
    return out


def feature_sets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct feature sets of a run (by key), with the pipelines that use each."""
    sets: dict[str, dict[str, Any]] = {}
    for r in rows:
        fs = r.get("feature_set")
        if fs:
            sets.setdefault(fs["key"], {**fs, "pipelines": []})["pipelines"].append(r["pipeline"])
    return list(sets.values())


def _figures(results: dict[str, Any]) -> list[tuple[str, str, Callable[[], bytes | None]]]:
    """(section, caption, drawing) for every figure of the report; a drawing returns PNG bytes
    (or None: nothing to draw)."""
    rows = results["pipelines"]
    classes = results["dataset"]["classes"]
    arrays = results["_arrays"]
    y_test = arrays["y_test"]
    figs: list[tuple[str, str, Callable[[], bytes | None]]] = [
        ("accuracy", "Test accuracy per pipeline, train accuracy beside it",
         lambda: plots.accuracy_bars(rows)),
        ("costs", "Test accuracy against training time and prediction time per image; the "
         "dashed line is the Pareto front", lambda: plots.cost_accuracy(rows, results.get("pareto", {}))),
        ("per-class", "Per-class test accuracy", lambda: plots.per_class_chart(rows, classes))]
    best = results["summary"].get("best_classic")
    focus = [r for r in rows if r["pipeline"] == best or r["family"] == "cnn"]
    for r in focus:
        figs.append(("confusion", f"Confusion matrix: {r['pipeline']}",
                     lambda r=r: plots.confusion(r["test_metrics"]["confusion_matrix"], classes,
                                                 r["pipeline"])))
    figs.append(("curves", "Learning curves of the CNN and the MLPs (validation split)",
                 lambda: plots.learning_curves(rows)))
    for r in focus:
        def gallery(r: dict[str, Any] = r) -> bytes:
            pred = arrays["scores"][r["pipeline"]].argmax(1)
            return plots.misclassified_gallery(np.asarray(arrays["x_test"]), y_test, pred, classes,
                                               f"{r['pipeline']}: predicted (true)")
        figs.append(("gallery", f"Misclassified test images: {r['pipeline']}", gallery))
    try:
        pictures = plots.feature_pictures(arrays["x_train"], arrays["y_train"], classes)
    except Exception as exc:  # noqa: BLE001 - a figure that cannot be drawn is reported, not fatal
        log.warning("feature pictures: not drawn (%s)", exc)
        pictures = []
    for caption, data in pictures:
        figs.append(("features", caption, lambda data=data: data))
    return figs


def _draw(figures: list[tuple[str, str, Callable[[], bytes | None]]]
          ) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    """The figures drawn, and what could not be drawn (each failure costs its figure only).
    Text is drawn as plain text: a class named ``$\\evil$`` is not TeX for matplotlib."""
    drawn, failed = [], []
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        for section, caption, draw in figures:
            try:
                data = draw()
            except Exception as exc:  # noqa: BLE001 - see above
                log.warning("%s: not drawn (%s)", caption, exc)
                failed.append(f"{caption}: {type(exc).__name__}: {exc}")
                continue
            if data is not None:
                drawn.append((section, caption, data))
    return drawn, failed


def _train_sizes(dataset: dict[str, Any]) -> set[int]:
    train, val = dataset.get("train"), dataset.get("val")
    return {n for n in (train, (train or 0) + (val or 0)) if n}


def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the run's files into ``out_dir`` (replaced whole); returns the path of ``report.html``."""
    out_dir = Path(out_dir)
    public = to_jsonable({k: v for k, v in results.items() if not k.startswith("_")})
    safe_name(out_dir.name, "report name")
    with replace_dir(out_dir, owned=holds("results.json", "report.html")) as tmp:
        (tmp / "results.json").write_text(json_dumps(public))  # before anything can fail to draw
        figures, not_drawn = _draw(_figures(results))
        images = []
        for i, (section, caption, data) in enumerate(figures):
            name = f"fig{i:02d}-{section}.png"
            (tmp / name).write_bytes(data)
            images.append({"section": section, "caption": caption, "file": name,
                           "data_uri": "data:image/png;base64," + base64.b64encode(data).decode()})
        context = {"not_drawn": not_drawn, "r": public, "headers": [h for _, h, _ in COLUMNS],
                   "rows": table_rows(public["pipelines"], _train_sizes(public["dataset"])),
                   "images": images,
                   "classes": public["dataset"]["classes"],
                   "feature_sets": feature_sets(public["pipelines"])}
        env = Environment(loader=PackageLoader("cvpipe.compare", "templates"), trim_blocks=True,
                          lstrip_blocks=True, autoescape=select_autoescape(["html.j2"]))
        (tmp / "report.html").write_text(env.get_template("report.html.j2").render(**context))
        (tmp / "report.md").write_text(env.get_template("report.md.j2").render(**context))
    return out_dir / "report.html"
