"""Markdown building blocks for the Prefect UI artifacts: escaping, table cells, numbers, and a
loss curve embedded as an image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from gdflow.reports.charts import loss_curve_svg, svg_data_uri
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
