"""Checks of new data against the data the champion was trained on: schema and drift.

A profile summarises training rows per feature: mean, standard deviation, and the decile edges
with the share of rows between them. Against it, new rows give per feature the shift of the
mean in units of the profile's standard deviation, and the population stability index (PSI)
over the profile's bins: sum over bins of (new - old) * ln(new / old), shares floored at
1e-4 so an empty bin stays finite. Identical data gives zero drift; a constant column compares
its value (no division by zero). The schema check compares the files' columns (names, order,
types) and a classifier's classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

#: Inner bin edges of a profile: the deciles.
QUANTILES = tuple(i / 10 for i in range(1, 10))
#: Smallest share of rows a bin counts with in the PSI (an empty bin would be infinite).
MIN_SHARE = 1e-4


def profile(x: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per feature: mean, standard deviation, decile edges and each bin's share of rows."""
    data = np.asarray(x, dtype=np.float64)
    found: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        column = data[:, j]
        with np.errstate(over="ignore", invalid="ignore"):  # e.g. 1e300: std overflows
            spread = float(column.std()) if column.size else 0.0
        if not math.isfinite(spread):  # no usable statistics: the feature is not compared
            found[name] = {"mean": None, "std": None, "edges": [], "shares": [1.0]}
            continue
        edges = np.unique(np.quantile(column, QUANTILES)) if column.size else np.array([])
        found[name] = {
            "mean": float(column.mean()) if column.size else 0.0,
            "std": spread,
            "edges": edges.tolist(),
            "shares": _shares(column, edges).tolist(),
        }
    return found


def _shares(column: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values in each bin (-inf, e1], (e1, e2], ..., (ek, inf)."""
    if column.size == 0:
        return np.zeros(len(edges) + 1)
    counts = np.bincount(np.searchsorted(edges, column, side="left"), minlength=len(edges) + 1)
    return counts / column.size


def drift(reference: Mapping[str, Mapping[str, Any]], x: np.ndarray, names: Sequence[str]) -> dict:
    """Per feature of the reference present in `names`: `mean_shift` (|new mean - old mean| in
    old standard deviations; 0 or infinity for a constant column) and `psi`."""
    data = np.asarray(x, dtype=np.float64)
    found: dict[str, dict[str, float]] = {}
    for name, ref in reference.items():
        if name not in names or ref.get("mean") is None or ref.get("std") is None:
            continue
        column = data[:, list(names).index(name)]
        with np.errstate(over="ignore", invalid="ignore"):
            mean = float(column.mean()) if column.size else 0.0
        delta = abs(mean - float(ref["mean"]))
        std = float(ref["std"])
        if std > 0:
            shift = delta / std
        else:
            shift = 0.0 if delta == 0 else math.inf
        old = np.maximum(np.asarray(ref["shares"], dtype=np.float64), MIN_SHARE)
        new = np.maximum(_shares(column, np.asarray(ref["edges"], dtype=np.float64)), MIN_SHARE)
        psi = float(np.sum((new - old) * np.log(new / old)))
        found[name] = {"mean": mean, "mean_shift": shift, "psi": max(psi, 0.0)}
    return found


def schema_changes(
    before: Sequence[Mapping[str, Any]],
    after: Sequence[Mapping[str, Any]],
    *,
    classes_before: Optional[Sequence[Any]] = None,
    classes_after: Optional[Sequence[Any]] = None,
) -> list[str]:
    """What changed between two files' columns (names and types) and classes, one phrase each:
    `missing column 'b'`, `new column 'c'`, `column 'a' retyped double -> string`,
    `columns reordered`, `classes changed: a, b -> a, b, c`."""
    old = {c["name"]: c.get("type") for c in before}
    new = {c["name"]: c.get("type") for c in after}
    changes = [f"missing column {name!r}" for name in old if name not in new]
    changes += [f"new column {name!r}" for name in new if name not in old]
    changes += [
        f"column {name!r} retyped {old[name]} -> {new[name]}"
        for name in old
        if name in new and old[name] != new[name] and old[name] and new[name]
    ]
    common_old = [n for n in old if n in new]
    common_new = [n for n in new if n in old]
    if common_old != common_new:
        changes.append("columns reordered")
    if classes_before is not None and classes_after is not None:
        if list(map(str, classes_before)) != list(map(str, classes_after)):
            shown_before = ", ".join(map(str, classes_before))
            shown_after = ", ".join(map(str, classes_after))
            changes.append(f"classes changed: {shown_before} -> {shown_after}")
    return changes


def drifted(
    found: Mapping[str, Mapping[str, float]], *, psi: float, mean_shift: float
) -> list[str]:
    """The features whose PSI or mean shift passes its threshold."""
    return [
        name
        for name, values in found.items()
        if values["psi"] > psi or values["mean_shift"] > mean_shift
    ]
