"""How sure each figure of a comparison is, and what it costs: intervals, paired tests, the
ladder of families, the Pareto front.

* :func:`wilson` -- the Wilson score interval of an accuracy (Wilson 1927; Brown, Cai &
  DasGupta, "Interval estimation for a binomial proportion", 2001), better behaved than the
  normal approximation near 0 and 1;
* :func:`mcnemar` -- the exact McNemar test of two classifiers scored on the same test
  images: only the images one gets right and the other wrong count, and under "equally
  accurate" they split as a fair coin (a two-sided binomial test);
* :func:`ladder` -- the best pipeline of each family (chosen on validation), in order;
* :func:`pareto` -- the pipelines no other beats on both accuracy and cost.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

Z95 = 1.959963984540054
#: A difference is called one (a pipeline "beats" another) only below this p-value.
ALPHA = 0.05
#: The families, from the least to the most learned, and what places a pipeline in each.
FAMILIES = ("raw pixels", "colour", "HOG", "HOG + colour", "scattering", "learned patches", "CNN")


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% (by default) Wilson score interval of the proportion ``correct / n``."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of two classifiers' per-image correctness on the same images.

    Returns
    -------
    dict
        ``a_only`` and ``b_only`` (images only one gets right), ``p_value`` (two-sided) and
        ``difference`` (accuracy of a minus that of b).
    """
    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    a_only = int((a_right & ~b_right).sum())
    b_only = int((b_right & ~a_right).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p,
            "difference": float(a_right.mean() - b_right.mean())}


def family(row: dict[str, Any]) -> str | None:
    """The rung of the ladder a result row belongs to, from its model card and feature set."""
    if row.get("family") == "cnn":
        return "CNN"
    components = {c["name"] for c in (row.get("feature_set") or {}).get("components", [])}
    if "patches" in components:
        return "learned patches"
    if components == {"scattering"}:
        return "scattering"
    if components == {"hog", "color"}:
        return "HOG + colour"
    if components == {"hog"}:
        return "HOG"
    if components == {"color"}:
        return "colour"
    if components == {"pixels"}:
        return "raw pixels"
    return None


def rungs(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(family, best row) of each family present, chosen on validation accuracy, in the order
    of :data:`FAMILIES`."""
    out = []
    for fam in FAMILIES:
        members = [r for r in rows if family(r) == fam]
        if members:
            out.append((fam, max(members, key=lambda r: r["val_accuracy"])))
    return out


def ladder(rows: list[dict[str, Any]], correct: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The best pipeline of each family present (by validation accuracy), in the order of
    :data:`FAMILIES`, with the gain over the rung below and McNemar's test of the two."""
    rungs_ = rungs(rows)
    out = []
    for i, (fam, r) in enumerate(rungs_):
        entry = {"family": fam, "pipeline": r["pipeline"], "train_accuracy": r["train_accuracy"],
                 "test_accuracy": r["test_accuracy"],
                 "gap": r["train_accuracy"] - r["test_accuracy"]}
        if i:
            below = rungs_[i - 1][1]
            test = mcnemar(correct[r["pipeline"]], correct[below["pipeline"]])
            entry.update(gain_points=100 * test["difference"], below=below["pipeline"],
                         p_value=test["p_value"])
        out.append(entry)
    return out


def ladder_pairs(rows: list[dict[str, Any]], correct: dict[str, np.ndarray]
                 ) -> list[dict[str, Any]]:
    """McNemar's test of every pair of rungs of the ladder (not only neighbours): for each
    higher rung against each lower one, the difference in points and its p-value."""
    rungs_ = rungs(rows)
    out = []
    for i, (fam_a, a) in enumerate(rungs_):
        for fam_b, b in rungs_[:i]:
            test = mcnemar(correct[a["pipeline"]], correct[b["pipeline"]])
            out.append({"a": a["pipeline"], "a_family": fam_a, "b": b["pipeline"], "b_family": fam_b,
                        "points": 100 * test["difference"], "p_value": test["p_value"],
                        "significant": test["p_value"] < ALPHA})
    return out


def pareto(rows: list[dict[str, Any]], cost: str) -> list[str]:
    """Pipelines on the Pareto front of test accuracy (higher) against ``cost`` (lower)."""
    points = [(r[cost], r["test_accuracy"], r["pipeline"]) for r in rows if r.get(cost) is not None]
    front = []
    for c, acc, name in points:
        if not any((c2 <= c and a2 >= acc) and (c2 < c or a2 > acc) for c2, a2, _ in points):
            front.append(name)
    return front


def p_text(p: float) -> str:
    """A p-value as a report prints it."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def describe_difference(a: str, b: str, test: dict[str, Any]) -> str:
    """The automatic summary's sentence: "A beats B by x points (McNemar, p = ...)" only where
    the difference is significant (p < :data:`ALPHA`); otherwise "A is ahead of B by x points,
    not significant (McNemar, p = ...)"."""
    points = 100 * test["difference"]
    p = p_text(test["p_value"])
    if test["p_value"] < ALPHA and points != 0:
        verdict = "beats" if points > 0 else "trails"
        return f"{a} {verdict} {b} by {abs(points):.1f} points (McNemar, {p})"
    if points == 0:
        return f"{a} and {b} are level (McNemar, {p})"
    side = "ahead of" if points > 0 else "behind"
    return f"{a} is {side} {b} by {abs(points):.1f} points, not significant (McNemar, {p})"
