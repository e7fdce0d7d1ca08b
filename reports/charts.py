"""Loss curves as standalone SVG documents (one curve, or several overlaid with a legend), a
classifier's validation-accuracy curve on a fixed 0..1 axis, and the data URI that embeds one in
markdown."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from typing import Optional
from xml.sax.saxutils import escape as xml_escape

from gdflow.reports.axes import axes, finite_pairs, plottable

#: Points drawn in a polyline, at most; longer curves are downsampled.
MAX_CURVE_POINTS = 2000
#: Markers are drawn on the points of curves this short or shorter.
MAX_MARKERS = 60

_FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 72, 20, 34, 46

#: Colours of overlaid curves, in order (they repeat, dashed, beyond ten series).
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_LEGEND_LINE = 16
#: The y range an accuracy curve always shows, whatever its values.
ACCURACY_RANGE = (0.0, 1.0)


def downsample_indices(n: int, max_rows: int) -> list[int]:
    """Evenly spaced indices of `n` rows, at most `max_rows`, always keeping the first and last."""
    if max_rows < 2:
        raise ValueError(f"max_rows must be at least 2, got {max_rows}")
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    if n <= max_rows:
        return list(range(n))
    span, steps = n - 1, max_rows - 1
    return [(i * span + steps // 2) // steps for i in range(max_rows)]


def svg_data_uri(svg: str) -> str:
    """The SVG as a base64 `data:image/svg+xml` URI, to embed as a markdown image."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _svg_head(width: int, height: int, title: str) -> list[str]:
    """The opening of a chart: the <svg> element, a white background and the escaped title."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="{_FONT}" font-size="11" fill="#333">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14" '
        f'font-weight="bold">{xml_escape(title)}</text>',
    ]


def curve_svg(
    xs: Sequence[float],
    losses: Sequence[Optional[float]],
    *,
    title: str,
    x_label: str,
    width: int,
    height: int,
    y_label: str = "loss",
    y_range: Optional[tuple[float, float]] = None,
    colour: str = PALETTE[0],
    x_label_of: Optional[Callable[[int], str]] = None,
) -> str:
    """The SVG document of one curve (a loss by default), with `x_label` under the x axis and
    `y_label` beside the y axis. Without `y_range` the y axis fits the values (log10 over more
    than two decades of positive ones); with it the axis is linear and spans at least it."""
    if len(xs) != len(losses):
        raise ValueError(f"{len(xs)} x values but {len(losses)} {y_label} values")
    if width < 160 or height < 120:
        raise ValueError(f"the chart must be at least 160x120, got {width}x{height}")
    if y_range is None:
        pairs, log_scale = plottable(xs, losses)
    else:
        pairs, log_scale = finite_pairs(xs, losses), False
    box = (_MARGIN_LEFT, width - _MARGIN_RIGHT, _MARGIN_TOP, height - _MARGIN_BOTTOM)
    parts = [
        *_svg_head(width, height, title),
        *_axis_titles(box, height, x_label, log_scale, y_label),
    ]
    if not pairs:
        return "\n".join([*parts, _frame(box), _no_data(box, y_label), "</svg>"])
    if len(pairs) > MAX_CURVE_POINTS:
        pairs = [pairs[i] for i in downsample_indices(len(pairs), MAX_CURVE_POINTS)]
    plotted = [(x, math.log10(v) if log_scale else v) for x, v in pairs]
    grid, sx, sy = axes(plotted, log_scale, box, y_range=y_range, x_label_of=x_label_of)
    points = [(sx(x), sy(y)) for x, y in plotted]
    coordinates = " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
    parts += [
        *grid,
        _frame(box),
        f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" stroke-linejoin="round" '
        f'points="{coordinates}"/>',
    ]
    if len(points) <= MAX_MARKERS:
        marker = f'<circle cx="{{:.2f}}" cy="{{:.2f}}" r="2.5" fill="{colour}"/>'
        parts.extend(marker.format(x, y) for x, y in points)
    parts.append("</svg>")
    return "\n".join(parts)


def _axis_titles(
    box: tuple[float, float, float, float],
    height: int,
    x_label: str,
    log_scale: bool,
    y_label: str = "loss",
) -> list[str]:
    """The x axis's title under the plot and the y axis's (the loss), turned, left of it."""
    left, right, top, bottom = box
    mid_y = (top + bottom) / 2
    y_title = f"{y_label} (log scale)" if log_scale else y_label
    return [
        f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" text-anchor="middle">'
        f"{xml_escape(x_label)}</text>",
        f'<text x="14" y="{mid_y:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid_y:.1f})">{xml_escape(y_title)}</text>',
    ]


def _frame(box: tuple[float, float, float, float]) -> str:
    """The plot area's border."""
    left, right, top, bottom = box
    return (
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="none" stroke="#999"/>'
    )


def _no_data(box: tuple[float, float, float, float], what: str = "loss") -> str:
    """The note in the middle of a plot with nothing to draw."""
    left, right, top, bottom = box
    return (
        f'<text x="{(left + right) / 2:.1f}" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
        f'fill="#777">no finite {xml_escape(what)} values</text>'
    )


def loss_curve_svg(
    epochs: Sequence[int],
    losses: Sequence[Optional[float]],
    *,
    title: str = "Training loss",
    width: int = 640,
    height: int = 320,
) -> str:
    """A standalone SVG line chart of loss by epoch (log10 y axis over more than two decades)."""
    return curve_svg(epochs, losses, title=title, x_label="epoch", width=width, height=height)


def accuracy_curve_svg(
    epochs: Sequence[int],
    accuracies: Sequence[Optional[float]],
    *,
    title: str = "Validation accuracy",
    width: int = 640,
    height: int = 320,
) -> str:
    """A classifier's validation accuracy by epoch: the loss curve's chart on a linear y axis
    from 0 to 1 (epochs without an accuracy are skipped), drawn in the palette's second colour."""
    return curve_svg(
        epochs,
        accuracies,
        title=title,
        x_label="epoch",
        width=width,
        height=height,
        y_label="validation accuracy",
        y_range=ACCURACY_RANGE,
        colour=PALETTE[1],
    )


def loss_curves_svg(
    series: Sequence[tuple[str, Sequence[int], Sequence[Optional[float]]]],
    *,
    title: str,
    width: int = 640,
    height: int = 360,
) -> str:
    """Several (label, epochs, losses) curves on shared axes, one colour each, with a legend."""
    if width < 240 or height < 120:
        raise ValueError(f"the chart must be at least 240x120, got {width}x{height}")
    for label, epochs, losses in series:
        if len(epochs) != len(losses):
            raise ValueError(f"{label!r}: {len(epochs)} epochs but {len(losses)} losses")
    flat_x = [x for _, epochs, _ in series for x in epochs]
    flat_y = [v for _, _, losses in series for v in losses]
    _, log_scale = plottable(flat_x, flat_y)
    curves: list[tuple[str, list[tuple[float, float]]]] = []
    for label, epochs, losses in series:
        pairs, _ = plottable(epochs, losses)
        if log_scale:
            pairs = [(x, math.log10(v)) for x, v in pairs if v > 0]
        if len(pairs) > MAX_CURVE_POINTS:
            pairs = [pairs[i] for i in downsample_indices(len(pairs), MAX_CURVE_POINTS)]
        curves.append((label, pairs))

    legend_chars = max((len(label) for label, _ in curves), default=0)
    legend_width = min(width // 3, 34 + 6 * legend_chars) if curves else 0
    left, right = _MARGIN_LEFT, width - _MARGIN_RIGHT - legend_width
    top, bottom = _MARGIN_TOP, height - _MARGIN_BOTTOM
    box = (left, right, top, bottom)
    parts = [
        *_svg_head(width, height, title),
        *_axis_titles(box, height, "epoch", log_scale),
        _frame(box),
    ]
    points = [p for _, pairs in curves for p in pairs]
    parts.extend(_overlay(curves, points, log_scale, box) if points else [_no_data(box)])
    parts.extend(_legend(curves, x=right + 12, top=top, bottom=bottom))
    parts.append("</svg>")
    return "\n".join(parts)


def _style(index: int) -> str:
    """Stroke attributes of the `index`-th curve: a palette colour, dashed after the first round."""
    colour = PALETTE[index % len(PALETTE)]
    dash = ' stroke-dasharray="6 3"' if (index // len(PALETTE)) % 2 else ""
    return f'stroke="{colour}"{dash}'


def _overlay(
    curves: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    points: Sequence[tuple[float, float]],
    log_scale: bool,
    box: tuple[float, float, float, float],
) -> list[str]:
    """Grid, ticks and one polyline per curve with points (y already log10 on a log axis)."""
    parts, sx, sy = axes(points, log_scale, box)
    for index, (_, pairs) in enumerate(curves):
        if not pairs:
            continue
        scaled = [(sx(x), sy(y)) for x, y in pairs]
        coordinates = " ".join(f"{x:.2f},{y:.2f}" for x, y in scaled)
        parts.append(
            f'<polyline fill="none" {_style(index)} stroke-width="1.5" stroke-linejoin="round" '
            f'points="{coordinates}"/>'
        )
        if len(scaled) == 1:
            colour = PALETTE[index % len(PALETTE)]
            parts.append(
                f'<circle cx="{scaled[0][0]:.2f}" cy="{scaled[0][1]:.2f}" r="2.5" fill="{colour}"/>'
            )
    return parts


def _legend(
    curves: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    x: float,
    top: float,
    bottom: float,
) -> list[str]:
    """One swatch and escaped label per curve, beside the plot; '+ N more' when they overflow."""
    room = max(1, int((bottom - top) // _LEGEND_LINE))
    shown = curves if len(curves) <= room else curves[: room - 1]
    parts: list[str] = []
    for index, (label, pairs) in enumerate(shown):
        y = top + 8 + index * _LEGEND_LINE
        text = label if pairs else f"{label} (no finite loss)"
        parts.append(
            f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 18:.1f}" y2="{y:.1f}" {_style(index)} '
            'stroke-width="2.5"/>'
        )
        parts.append(f'<text x="{x + 24:.1f}" y="{y + 4:.1f}">{xml_escape(text)}</text>')
    if len(shown) < len(curves):
        y = top + 8 + len(shown) * _LEGEND_LINE
        parts.append(f'<text x="{x:.1f}" y="{y + 4:.1f}">+ {len(curves) - len(shown)} more</text>')
    return parts
