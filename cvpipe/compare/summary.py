"""The cross-dataset summary: on which tasks are hand-made features enough?

``cvpipe summary`` reads every comparison run under a reports folder
(``reports/<dataset>-<profile>/results.json``) and sets, per dataset, the best hand-made
pipeline (chosen on validation accuracy, as in each run) against the CNN, train and test, on
one chart ordered by the number of classes and then by difficulty (the best test accuracy,
highest first). A dataset compared more than once is represented by its most telling run:
one with a CNN first, then the one that trained on the most images, then the latest
(``all_runs`` lists every run, each labelled with its folder). It writes
``reports/summary/`` (``index.html`` with the chart inlined, ``summary.md``,
``summary.json``, ``summary.png``), replaced whole.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cvpipe.compare import plots, stats
from cvpipe.errors import ConfigError
from cvpipe.storage import holds, json_dumps, replace_dir

log = logging.getLogger(__name__)

SUMMARY_DIR = "summary"


def _row(run: str, results: dict[str, Any]) -> dict[str, Any] | None:
    """One dataset's line from a run's results, or None when it has no classic pipeline."""
    rows = results.get("pipelines") or []
    classic = [r for r in rows if r.get("family") == "classic"]
    if not classic:
        return None
    best = max(classic, key=lambda r: r["val_accuracy"])  # chosen on validation, as each run does
    cnn = next((r for r in rows if r.get("family") == "cnn"), None)
    ds = results.get("dataset", {})
    test = (results.get("summary") or {}).get("cnn_vs_best_classic")
    return {
        "run": run,
        "dataset": ds.get("name") or "cifar10",
        "title": ds.get("title") or "CIFAR-10",
        "classes": len(ds.get("classes", [])),
        "image_shape": ds.get("image_shape") or [32, 32, 3],
        "train_images": ds.get("train"), "val_images": ds.get("val"), "test_images": ds.get("test"),
        "profile": (results.get("run") or {}).get("profile", {}).get("name"),
        "created": (results.get("run") or {}).get("created") or "",
        "best_classic": {k: best.get(k) for k in ("pipeline", "train_accuracy", "val_accuracy",
                                                  "test_accuracy", "test_ci95", "train_seconds",
                                                  "latency_ms_single")},
        "cnn": None if cnn is None else {k: cnn.get(k) for k in (
            "pipeline", "train_accuracy", "val_accuracy", "test_accuracy", "test_ci95",
            "train_seconds", "latency_ms_single")},
        "gap_points": None if cnn is None else 100 * (cnn["test_accuracy"] - best["test_accuracy"]),
        "mcnemar_p": test.get("p_value") if test else None,
    }


def _telling(line: dict[str, Any]) -> tuple:
    """How well a run represents its dataset: a CNN to compare with, most images, latest."""
    return (line["cnn"] is not None, line["train_images"] or 0, line["created"])


def collect(reports_dir: str | Path, all_runs: bool = False) -> list[dict[str, Any]]:
    """One line per dataset found under ``reports_dir`` (per run with ``all_runs``), ordered by
    number of classes, then by difficulty (best test accuracy, highest first)."""
    reports_dir = Path(reports_dir)
    if not reports_dir.is_dir():
        raise ConfigError(f"{reports_dir}: no such reports folder (run cvpipe compare first)")
    lines = []
    for path in sorted(reports_dir.glob("*/results.json")):
        if path.parent.name == SUMMARY_DIR:
            continue
        try:
            results = json.loads(path.read_text())
            line = _row(path.parent.name, results)
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        except (AttributeError, KeyError, TypeError):  # JSON, but not what cvpipe compare writes
            log.warning("skipping %s: not the results of a cvpipe compare run", path)
            continue
        if line is not None:
            lines.append(line)
    if not lines:
        raise ConfigError(f"{reports_dir}: no comparison results (*/results.json) to summarise")
    if not all_runs:
        chosen: dict[str, dict[str, Any]] = {}
        for line in lines:
            if line["dataset"] not in chosen or _telling(line) > _telling(chosen[line["dataset"]]):
                chosen[line["dataset"]] = line
        skipped = sorted(line["run"] for line in lines if chosen[line["dataset"]] is not line)
        if skipped:
            log.info("one run per dataset; not shown (see --all-runs): %s", ", ".join(skipped))
        lines = list(chosen.values())
    return sorted(lines, key=lambda r: (r["classes"], -_best_test(r)))


def _best_test(line: dict[str, Any]) -> float:
    cnn = line["cnn"]["test_accuracy"] if line["cnn"] else 0.0
    return max(line["best_classic"]["test_accuracy"], cnn)


def verdict(line: dict[str, Any]) -> str:
    """A sentence: are hand-made features enough on this dataset?"""
    best = line["best_classic"]
    if line["cnn"] is None:
        return f"{best['pipeline']} reaches {100 * best['test_accuracy']:.1f}%; no CNN was run."
    gap = line["gap_points"]
    p = line["mcnemar_p"]
    significant = p is not None and p < 0.05
    if gap <= 0 or not significant:
        call = "hand-made features are enough" + ("" if gap <= 0 else " (no significant gap)")
    elif gap < 2:
        call = "hand-made features come close"
    else:
        call = "the CNN is needed"
    p_part = f", {stats.p_text(p)}" if p is not None else ""
    return (f"{best['pipeline']} {100 * best['test_accuracy']:.1f}% vs CNN "
            f"{100 * line['cnn']['test_accuracy']:.1f}% ({gap:+.1f} points{p_part}): {call}.")


def chart(lines: list[dict[str, Any]]) -> bytes:
    """Train (hollow) and test (filled, with its 95% interval) accuracy of the best hand-made
    pipeline and of the CNN, one column per dataset."""
    fig = Figure(figsize=(max(6.0, 1.9 * len(lines) + 2), 4.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(lines))
    for offset, key, label, color in ((-0.12, "best_classic", "best hand-made", "#d9822b"),
                                      (0.12, "cnn", "CNN", "#2f6db5")):
        pts = [(i, line[key]) for i, line in enumerate(lines) if line[key]]
        if not pts:
            continue
        xs = np.array([i for i, _ in pts]) + offset
        test = np.array([100 * m["test_accuracy"] for _, m in pts])
        train = np.array([100 * m["train_accuracy"] for _, m in pts])
        ci = [m.get("test_ci95") or [m["test_accuracy"]] * 2 for _, m in pts]
        err = np.abs(np.array([[100 * lo for lo, _ in ci], [100 * hi for _, hi in ci]]) - test)
        ax.errorbar(xs, test, yerr=err, fmt="o", color=color, capsize=3, label=f"{label}: test")
        ax.scatter(xs, train, facecolors="none", edgecolors=color, marker="s",
                   label=f"{label}: train")
        for xi, t in zip(xs, test, strict=True):
            ax.annotate(f"{t:.1f}", (xi, t), textcoords="offset points", xytext=(6, -3),
                        fontsize=8, color=color)
    runs_of = Counter(line["dataset"] for line in lines)  # a dataset shown twice: name its runs
    ax.set_xticks(x, [line["title"] + (f" ({line['run']})" if runs_of[line["dataset"]] > 1 else "")
                      + f"\n{line['classes']} classes, "
                      f"{'x'.join(map(str, line['image_shape']))}" for line in lines], fontsize=8)
    ax.set_xlim(-0.6, len(lines) - 0.4)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncols=2)
    # short enough for the narrowest figure (two datasets: 6 inches); the page says the order
    ax.set_title("Best hand-made pipeline vs CNN, per dataset", fontsize=10)
    return plots.png(fig)


def _pct(m: dict[str, Any] | None, key: str) -> str:
    return "n/a" if not m or m.get(key) is None else f"{100 * m[key]:.1f}%"


def table(lines: list[dict[str, Any]]) -> list[list[str]]:
    """The summary's rows (one a dataset, the cells of :data:`HEADERS`) as text."""
    out = []
    for line in lines:
        b, c = line["best_classic"], line["cnn"]
        out.append([line["title"], str(line["classes"]), "x".join(map(str, line["image_shape"])),
                    f"{line['train_images']:,} / {line['test_images']:,}", b["pipeline"],
                    _pct(b, "train_accuracy"), _pct(b, "test_accuracy"), _pct(c, "train_accuracy"),
                    _pct(c, "test_accuracy"),
                    "n/a" if line["gap_points"] is None else f"{line['gap_points']:+.1f}",
                    "n/a" if line["mcnemar_p"] is None else stats.p_text(line["mcnemar_p"]),
                    line["run"]])
    return out


HEADERS = ["dataset", "classes", "image", "train / test", "best hand-made (on val)", "its train",
           "its test", "CNN train", "CNN test", "CNN - best (points)", "McNemar", "report"]


def write_summary(lines: list[dict[str, Any]], reports_dir: str | Path) -> Path:
    """Write ``<reports_dir>/summary/``; returns the path of its ``index.html``."""
    out = Path(reports_dir) / SUMMARY_DIR
    picture = chart(lines)
    rows = table(lines)
    verdicts = [f"{line['title']}: {verdict(line)}" for line in lines]
    md = ["# On which tasks are hand-made features enough?", "",
          "Best hand-made pipeline (chosen on validation accuracy) against the CNN, per dataset, "
          "ordered by number of classes. Test accuracy scored once per model.", "",
          "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    md += ["", *[f"- {v}" for v in verdicts], "", "![summary chart](summary.png)", ""]
    cells = "".join("<tr>" + "".join(
        f"<td><a href=\"../{html.escape(row[-1])}/report.html\">{html.escape(row[-1])}</a></td>"
        if i == len(row) - 1 else f"<td>{html.escape(v)}</td>" for i, v in enumerate(row))
        + "</tr>\n" for row in rows)
    data_uri = "data:image/png;base64," + base64.b64encode(picture).decode()
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cvpipe: hand-made features vs CNN across datasets</title>
<style>body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ddd; padding: 4px 8px; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; }}</style></head><body>
<h1>On which tasks are hand-made features enough?</h1>
<p>Best hand-made pipeline (chosen on validation accuracy) against the CNN, per dataset, ordered by
number of classes. Test accuracy scored once per model; bars are Wilson 95% intervals.</p>
<figure><img id="summary-chart" alt="summary chart" src="{data_uri}"></figure>
<table id="summary-table"><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in HEADERS)}</tr></thead>
<tbody>
{cells}</tbody></table>
<ul>{''.join(f'<li>{html.escape(v)}</li>' for v in verdicts)}</ul>
</body></html>
"""
    with replace_dir(out, owned=holds("summary.json", "index.html")) as tmp:
        (tmp / "summary.png").write_bytes(picture)
        (tmp / "summary.json").write_text(json_dumps({"datasets": lines, "verdicts": verdicts}))
        (tmp / "summary.md").write_text("\n".join(md))
        (tmp / "index.html").write_text(page)
    return out / "index.html"
