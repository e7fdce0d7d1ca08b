"""Class labels of a classifier's target column: checked, sorted and encoded as class indices.

Labels may be numbers (integral floats become ints), booleans or text. The classes are the
distinct labels in sorted order (numbers, then booleans, then text), so the same data always gives
the same mapping; each row's target becomes the index of its class. The mapping is stored with
the run and used to name predictions and report per-class results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

from gdflow.config.errors import GdflowError

#: The most classes a softmax model trains on (the parameter count grows with each class).
MAX_CLASSES = 1000
#: A class label as stored (JSON): a number, a boolean or text.
Label = Union[int, float, bool, str]


def _plain(value: Any) -> Label:
    """A label as a plain JSON value: numpy scalars unwrapped, integral floats as ints."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    return str(value)


def _missing(value: Any) -> bool:
    """Whether a target cell holds no label: None, NaN or blank text."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(float(value))
    return isinstance(value, str) and not value.strip()


def _order(label: Label) -> tuple[int, Any]:
    """Sort key of mixed labels: numbers, then booleans, then text."""
    if isinstance(label, bool):
        return (1, label)
    if isinstance(label, (int, float)):
        return (0, label)
    return (2, label)


def shown(labels: Sequence[Label], limit: int = 5) -> str:
    """Labels for a message: `a, b, c` (the first `limit`, then how many more)."""
    text = ", ".join(repr(label) if isinstance(label, str) else str(label) for label in labels)
    if len(labels) > limit:
        first = ", ".join(
            repr(label) if isinstance(label, str) else str(label) for label in labels[:limit]
        )
        text = f"{first}, ... ({len(labels) - limit} more)"
    return text


def encode_labels(
    values: Sequence[Any] | np.ndarray, *, task: str, model: str, column: str, source: str
) -> tuple[np.ndarray, tuple[Label, ...]]:
    """(class index of each row, the classes in order) for a `task` ('binary' or
    'multiclass') target column; raise GdflowError naming the problem and its fix."""
    cells = list(values.tolist() if isinstance(values, np.ndarray) else values)
    missing = [i for i, value in enumerate(cells) if _missing(value)]
    if missing:
        raise GdflowError(
            f"column {column!r} in {source} has {len(missing)} empty or NaN label(s) (first in "
            f"data row {missing[0] + 1}); drop or fill those rows"
        )
    labels = [_plain(value) for value in cells]
    # True == 1 as a set member or dict key: booleans are told apart from numbers by type.
    distinct = {(type(label) is bool, label) for label in labels}
    classes = tuple(sorted((label for _, label in distinct), key=_order))
    if len(classes) < 2:
        raise GdflowError(
            f"column {column!r} in {source} has one class only ({shown(classes)}); a classifier "
            "needs rows of at least two classes"
        )
    if task == "binary" and len(classes) != 2:
        raise GdflowError(
            f"--model {model} needs exactly two classes but column {column!r} in {source} has "
            f"{len(classes)} ({shown(classes)}); use --model softmax for several classes"
        )
    if len(classes) > MAX_CLASSES:
        raise GdflowError(
            f"column {column!r} in {source} has {len(classes)} classes, more than the "
            f"{MAX_CLASSES} gdflow trains on; is it a class label? (use --model linear to "
            "predict a number)"
        )
    typed = {(type(label) is bool, label): i for i, label in enumerate(classes)}
    encoded = np.fromiter(
        (typed[(type(label) is bool, label)] for label in labels), dtype=np.int64, count=len(labels)
    )
    return encoded, classes


def check_validation_classes(
    train: np.ndarray, validation: np.ndarray, classes: Sequence[Label], *, split: float
) -> None:
    """Every class of the validation rows has training rows: else GdflowError with the fix."""
    unseen = sorted(set(np.unique(validation).tolist()) - set(np.unique(train).tolist()))
    if unseen:
        names = shown([classes[i] for i in unseen])
        raise GdflowError(
            f"class(es) {names} appear only in the validation rows (--validation-split "
            f"{split:g}): the model never sees them in training; use a smaller split or more "
            "rows of those classes"
        )
    if len(np.unique(train)) < 2:
        raise GdflowError(
            f"the training rows left by --validation-split {split:g} hold one class only; use "
            "a smaller split or more rows"
        )
