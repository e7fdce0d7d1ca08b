"""Axes of the SVG charts: which points to plot, linear or log10 scales, ticks and grid lines."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional
from xml.sax.saxutils import escape as xml_escape

#: max/min ratio above which a positive loss curve gets a log10 y axis.
LOG_SCALE_RATIO = 100.0


def _nice_step(raw: float) -> float:
    """The 1, 2 or 5 times a power of ten closest above `raw` (> 0)."""
    exponent = math.floor(math.log10(raw))
    fraction = raw / 10.0**exponent
    nice = 1.0 if fraction < 1.5 else 2.0 if fraction < 3.0 else 5.0 if fraction < 7.0 else 10.0
    return nice * 10.0**exponent


def _linear_ticks(lo: float, hi: float, count: int = 5) -> tuple[float, float, list[float]]:
    """Axis limits widened to nice values and about `count` ticks between them."""
    if lo == hi:
        pad = abs(lo) * 0.1 if lo != 0 else 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_step((hi - lo) / max(count - 1, 1))
    start, stop = math.floor(lo / step), math.ceil(hi / step)
    ticks = [k * step for k in range(start, stop + 1)]
    return ticks[0], ticks[-1], ticks


def _linear_label(value: float, lo: float, hi: float, step: float) -> str:
    """A tick label with just enough significant digits to tell neighbours apart."""
    if abs(value) < step * 1e-9:
        return "0"
    scale = max(abs(lo), abs(hi))
    digits = min(15, max(1, math.ceil(math.log10(scale / step)) + 1))
    return f"{value:.{digits}g}"


def _log_ticks(lo_exp: int, hi_exp: int, max_ticks: int) -> list[int]:
    """Decade exponents between `lo_exp` and `hi_exp`, thinned to at most `max_ticks`."""
    step = max(1, math.ceil((hi_exp - lo_exp + 1) / max(max_ticks, 2)))
    return [k for k in range(lo_exp, hi_exp + 1) if k % step == 0]


def _x_ticks(lo: float, hi: float, count: int = 6) -> list[int]:
    """Integer ticks (epochs or run ids) inside [lo, hi]."""
    if lo == hi:
        return [round(lo)]
    step = max(1, round(_nice_step((hi - lo) / max(count - 1, 1))))
    first = math.ceil(lo / step) * step
    return list(range(int(first), int(math.floor(hi)) + 1, step))


def finite_pairs(
    xs: Sequence[float], values: Sequence[Optional[float]]
) -> list[tuple[float, float]]:
    """The (x, y) pairs whose x and y are both finite numbers (None and NaN are skipped)."""
    return [
        (float(x), float(v))
        for x, v in zip(xs, values)
        if v is not None and math.isfinite(float(v)) and math.isfinite(float(x))
    ]


def plottable(
    xs: Sequence[float], losses: Sequence[Optional[float]]
) -> tuple[list[tuple[float, float]], bool]:
    """The finite (x, loss) pairs to plot and whether the y axis is log10."""
    pairs = finite_pairs(xs, losses)
    positive = [v for _, v in pairs if v > 0]
    log_scale = (
        bool(positive)
        and all(v >= 0 for _, v in pairs)
        and max(positive) / min(positive) > LOG_SCALE_RATIO
    )
    if log_scale:
        pairs = [(x, v) for x, v in pairs if v > 0]
    return pairs, log_scale


def axes(
    points: Sequence[tuple[float, float]],
    log_scale: bool,
    box: tuple[float, float, float, float],
    *,
    y_range: Optional[tuple[float, float]] = None,
    x_label_of: Optional[Callable[[int], str]] = None,
) -> tuple[list[str], Callable[[float], float], Callable[[float], float]]:
    """Grid lines and tick labels for `points` (y already log10 on a log axis) inside `box`,
    and the functions that map data coordinates to SVG coordinates. A linear axis spans at
    least `y_range` when one is given (an accuracy's 0..1), the data's own range otherwise.
    `x_label_of` writes an x tick's label (e.g. a date from a day number; default: the number)."""
    left, right, top, bottom = box
    x_lo, x_hi = min(x for x, _ in points), max(x for x, _ in points)
    x_ticks = _x_ticks(x_lo, x_hi)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    ys = [y for _, y in points]
    y_ticks: list[tuple[float, str]]
    if log_scale:
        y_lo, y_hi = float(math.floor(min(ys))), float(math.ceil(max(ys)))
        if y_lo == y_hi:
            y_hi += 1
        exponents = _log_ticks(int(y_lo), int(y_hi), max(2, int(bottom - top) // 22))
        y_ticks = [(float(k), f"1e{k:+03d}") for k in exponents]
    else:
        lo, hi = min(ys), max(ys)
        if y_range is not None:
            lo, hi = min(lo, y_range[0]), max(hi, y_range[1])
        y_lo, y_hi, values = _linear_ticks(lo, hi)
        step = values[1] - values[0]
        y_ticks = [(t, _linear_label(t, y_lo, y_hi, step)) for t in values]

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (right - left)

    def sy(y: float) -> float:
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    parts: list[str] = []
    for value, label in y_ticks:
        y = sy(value)
        parts.append(f'<line x1="{left}" y1="{y:.2f}" x2="{right}" y2="{y:.2f}" stroke="#e5e5e5"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.2f}" text-anchor="end">{xml_escape(label)}</text>'
        )
    for tick in x_ticks:
        x = sx(tick)
        parts.append(f'<line x1="{x:.2f}" y1="{top}" x2="{x:.2f}" y2="{bottom}" stroke="#e5e5e5"/>')
        label = xml_escape(x_label_of(tick) if x_label_of is not None else str(tick))
        parts.append(f'<text x="{x:.2f}" y="{bottom + 16}" text-anchor="middle">{label}</text>')
    return parts, sx, sy
