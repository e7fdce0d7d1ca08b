"""Scoring a table with a saved model: its feature columns checked, each row predicted, the
result written whole or not at all.

The output holds the input's columns, then `prediction` (a value, or the most probable class)
and, for a classifier, `p_<class>` per class. Rows with a missing, NaN, infinite or non-numeric
feature are an error naming the first of them, or (`skip`) left out and counted.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gdflow.config.errors import GdflowError, one_line
from gdflow.registry.model_file import ModelSpec
from gdflow.registry.predictor import Predictor

if TYPE_CHECKING:
    import pandas as pd

#: The column of the predictions, and the prefix of a classifier's probability columns.
PREDICTION = "prediction"
PROBABILITY_PREFIX = "p_"


@dataclass(frozen=True)
class Features:
    """A table's feature matrix in the model's order, and which rows are usable."""

    x: np.ndarray
    valid: np.ndarray
    problem: str


def features_of(frame: pd.DataFrame, spec: ModelSpec, *, source: str, what: str) -> Features:
    """The model's features from the table, by name: a missing column is an error; each row
    with a missing, NaN, infinite or non-numeric value is marked invalid (the first described)."""
    import pandas as pd

    missing = [name for name in spec.feature_names if name not in frame.columns]
    if missing:
        raise GdflowError(
            f"{source} has no column {', '.join(map(repr, missing[:5]))}"
            f"{f' (and {len(missing) - 5} more)' if len(missing) > 5 else ''}, which {what} "
            f"needs (its features: {', '.join(spec.feature_names[:10])}); add the column(s)"
        )
    x = np.empty((len(frame), len(spec.feature_names)), dtype=np.float64)
    valid = np.ones(len(frame), dtype=bool)
    problem, first = "", len(frame)
    for j, name in enumerate(spec.feature_names):
        column = frame[name]
        if pd.api.types.is_bool_dtype(column):
            column = column.astype(np.float64)
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers)
        row = int(np.argmax(bad)) if bad.any() else len(frame)
        if row < first:  # the file's first bad row (its first bad feature in model order)
            first = row
            value = column.iloc[row]
            if isinstance(value, np.generic):  # nan, not NumPy 2's repr np.float64(nan)
                value = value.item()
            problem = (
                f"column {name!r} has a missing, NaN, infinite or non-numeric value "
                f"({value!r} in data row {row + 1})"
            )
        valid &= ~bad
        x[:, j] = numbers
    return Features(x=x, valid=valid, problem=problem)


@dataclass(frozen=True)
class Scored:
    """The scored table and the counts a prediction batch records."""

    frame: pd.DataFrame
    rows_in: int
    rows_out: int
    skipped: int


def score(
    predictor: Predictor, frame: pd.DataFrame, *, on_invalid: str, source: str, what: str
) -> Scored:
    """Predict every row of the table (or every valid one, with `on_invalid="skip"`)."""
    features = features_of(frame, predictor.spec, source=source, what=what)
    invalid = int((~features.valid).sum())
    if invalid and on_invalid != "skip":
        raise GdflowError(
            f"{source}: {invalid} row(s) cannot be scored: {features.problem}; clean them or "
            "pass --on-invalid skip to score the others"
        )
    kept = frame.loc[features.valid].reset_index(drop=True)
    labels, probabilities = predictor.labelled(features.x[features.valid])
    out = kept.copy()
    out[_free(out, PREDICTION)] = labels
    if probabilities is not None:
        for label, column in zip(predictor.spec.classes or (), probabilities.T):
            out[_free(out, f"{PROBABILITY_PREFIX}{label}")] = column
    return Scored(frame=out, rows_in=len(frame), rows_out=len(out), skipped=invalid)


def _free(frame: pd.DataFrame, name: str) -> str:
    """`name`, or `name_2`, `name_3`... when the input already has such a column."""
    candidate, n = name, 1
    while candidate in frame.columns:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def write_table(frame: pd.DataFrame, path: str) -> Path:
    """Write CSV or Parquet (by suffix) to a temporary file beside `path`, then rename it onto
    `path`: a reader never sees half a file, and a failure leaves no file behind."""
    target = Path(path).expanduser()
    if not target.parent.is_dir():
        raise GdflowError(f"--output {path}: folder {str(target.parent)!r} does not exist")
    descriptor, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(descriptor)
    try:
        if target.suffix.lower() == ".parquet":
            frame.to_parquet(temporary, index=False)
        else:
            frame.to_csv(temporary, index=False)
        os.replace(temporary, target)
    except OSError as exc:
        raise GdflowError(f"cannot write --output {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. pyarrow refusing a column of mixed types
        detail = one_line(str(exc)) or type(exc).__name__
        raise GdflowError(
            f"cannot write --output {path} ({type(exc).__name__}: {detail}); write CSV instead, "
            "or make each column of the input one type"
        ) from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def summary(scored: Scored, output: Path, what: str) -> dict[str, Any]:
    """What a batch did, as the flow returns it and the CLI prints it."""
    return {
        "model": what,
        "rows_in": scored.rows_in,
        "rows_out": scored.rows_out,
        "rows_skipped": scored.skipped,
        "output": str(output),
    }
