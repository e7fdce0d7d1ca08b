"""Markdown building blocks for the Prefect UI artifacts: escaping, table cells, numbers, and the
loss curve (a classifier's validation-accuracy curve after it) embedded as images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

from gdflow.reports.charts import accuracy_curve_svg, loss_curve_svg, svg_data_uri
from gdflow.reports.formatting import format_number

#: What a missing value shows as in markdown.
MISSING = "—"
_MARKDOWN_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    **{c: "\\" + c for c in "\\`*_{}[]()#+-.!|"},
}


def escape_markdown(text: str) -> str:
    """Escape markdown punctuation with backslashes and `& < >` as HTML entities."""
    return "".join(_MARKDOWN_ESCAPES.get(c, c) for c in str(text))


def cell(value: Any) -> str:
    """A table cell: the value as escaped text on one line (pipes cannot break the table)."""
    text = MISSING if value is None else str(value)
    return escape_markdown(" ".join(text.splitlines()))


def num(value: Optional[float], digits: int = 8) -> str:
    """A number in `digits` significant digits; an em dash for a missing value."""
    return format_number(value, digits, missing=MISSING)


def loss_curve_markdown(
    epochs: Sequence[int], losses: Sequence[Optional[float]], *, title: str = "Training loss"
) -> str:
    """A `### title` heading and the loss curve embedded as a data-URI markdown image."""
    svg = loss_curve_svg(epochs, losses, title=title)
    return f"### {escape_markdown(title)}\n\n![loss curve]({svg_data_uri(svg)})\n"


def accuracy_curve_markdown(
    epochs: Sequence[int],
    accuracies: Sequence[Optional[float]],
    *,
    title: str = "Validation accuracy",
) -> str:
    """A `### title` heading and the validation-accuracy curve (0..1) as a data-URI image."""
    svg = accuracy_curve_svg(epochs, accuracies, title=title)
    return f"### {escape_markdown(title)}\n\n![validation accuracy curve]({svg_data_uri(svg)})\n"


def has_finite_values(values: Optional[Sequence[Optional[float]]]) -> bool:
    """Whether any value is a finite number (None, NaN and infinities are not)."""
    return any(v is not None and math.isfinite(float(v)) for v in values or ())


def training_curves_markdown(
    epochs: Sequence[int],
    losses: Sequence[Optional[float]],
    val_accuracies: Optional[Sequence[Optional[float]]] = None,
    *,
    loss_title: str = "Training loss",
    accuracy_title: str = "Validation accuracy",
) -> str:
    """The loss curve, then the validation-accuracy curve when some epoch has an accuracy (a
    classifier with a validation split); otherwise exactly `loss_curve_markdown`'s text."""
    text = loss_curve_markdown(epochs, losses, title=loss_title)
    if val_accuracies is None or not has_finite_values(val_accuracies):
        return text
    if len(val_accuracies) != len(epochs):
        raise ValueError(f"{len(epochs)} epochs but {len(val_accuracies)} accuracies")
    return text + "\n" + accuracy_curve_markdown(epochs, val_accuracies, title=accuracy_title)
