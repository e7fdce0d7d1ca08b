"""Content of the Prefect UI artifacts as plain strings: loss-curve SVG, tables and markdown."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional
from xml.sax.saxutils import escape as xml_escape

from gdflow.config.sweep import COLUMNS as SWEEP_COLUMNS

#: Points drawn in a polyline, at most; longer curves are downsampled.
MAX_CURVE_POINTS = 2000
#: Markers are drawn on the points of curves this short or shorter.
MAX_MARKERS = 60
#: max/min ratio above which a positive loss curve gets a log10 y axis.
LOG_SCALE_RATIO = 100.0

_FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 72, 20, 34, 46
_MARKDOWN_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    **{c: "\\" + c for c in "\\`*_{}[]()#+-.!|"},
}


def escape_markdown(text: str) -> str:
    """Escape markdown punctuation with backslashes and `& < >` as HTML entities."""
    return "".join(_MARKDOWN_ESCAPES.get(c, c) for c in str(text))


def _cell(value: Any) -> str:
    """A table cell: the value as escaped text on one line (pipes cannot break the table)."""
    text = "—" if value is None else str(value)
    return escape_markdown(" ".join(text.splitlines()))


def _num(value: Optional[float], digits: int = 8) -> str:
    """A float in `digits` significant digits; an em dash for a missing value."""
    if value is None:
        return "—"
    return f"{float(value):.{digits}g}"


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


def _plottable(
    xs: Sequence[float], losses: Sequence[Optional[float]]
) -> tuple[list[tuple[float, float]], bool]:
    """The finite (x, loss) pairs to plot and whether the y axis is log10."""
    pairs = [
        (float(x), float(v))
        for x, v in zip(xs, losses)
        if v is not None and math.isfinite(float(v)) and math.isfinite(float(x))
    ]
    positive = [v for _, v in pairs if v > 0]
    log_scale = (
        bool(positive)
        and all(v >= 0 for _, v in pairs)
        and max(positive) / min(positive) > LOG_SCALE_RATIO
    )
    if log_scale:
        pairs = [(x, v) for x, v in pairs if v > 0]
    return pairs, log_scale


def _svg_head(width: int, height: int, title: str) -> list[str]:
    """The opening of a chart: the <svg> element, a white background and the escaped title."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="{_FONT}" font-size="11" fill="#333">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14" '
        f'font-weight="bold">{xml_escape(title)}</text>',
    ]


def _axes(
    points: Sequence[tuple[float, float]],
    log_scale: bool,
    box: tuple[float, float, float, float],
) -> tuple[list[str], Callable[[float], float], Callable[[float], float]]:
    """Grid lines and tick labels for `points` (y already log10 on a log axis) inside `box`,
    and the functions that map data coordinates to SVG coordinates."""
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
        y_lo, y_hi, values = _linear_ticks(min(ys), max(ys))
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
        parts.append(f'<text x="{x:.2f}" y="{bottom + 16}" text-anchor="middle">{tick}</text>')
    return parts, sx, sy


def _curve_svg(
    xs: Sequence[float],
    losses: Sequence[Optional[float]],
    *,
    title: str,
    x_label: str,
    width: int,
    height: int,
) -> str:
    """The loss-curve SVG document, with `x_label` under the x axis."""
    if len(xs) != len(losses):
        raise ValueError(f"{len(xs)} x values but {len(losses)} losses")
    if width < 160 or height < 120:
        raise ValueError(f"the chart must be at least 160x120, got {width}x{height}")
    pairs, log_scale = _plottable(xs, losses)
    left, right = _MARGIN_LEFT, width - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, height - _MARGIN_BOTTOM
    parts = [
        *_svg_head(width, height, title),
    ]
    y_title = "loss (log scale)" if log_scale else "loss"
    mid_y = (top + bottom) / 2
    parts.append(
        f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" text-anchor="middle">'
        f"{xml_escape(x_label)}</text>"
    )
    parts.append(
        f'<text x="14" y="{mid_y:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid_y:.1f})">{y_title}</text>'
    )
    if not pairs:
        parts.append(
            f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
            'fill="none" stroke="#999"/>'
        )
        parts.append(
            f'<text x="{(left + right) / 2:.1f}" y="{mid_y:.1f}" text-anchor="middle" '
            'fill="#777">no finite loss values</text>'
        )
        parts.append("</svg>")
        return "\n".join(parts)

    if len(pairs) > MAX_CURVE_POINTS:
        pairs = [pairs[i] for i in downsample_indices(len(pairs), MAX_CURVE_POINTS)]
    plotted = [(x, math.log10(v) if log_scale else v) for x, v in pairs]
    grid, sx, sy = _axes(plotted, log_scale, (left, right, top, bottom))
    parts.extend(grid)
    parts.append(
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="none" stroke="#999"/>'
    )
    points = [(sx(x), sy(y)) for x, y in plotted]
    coordinates = " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
    parts.append(
        '<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" stroke-linejoin="round" '
        f'points="{coordinates}"/>'
    )
    if len(points) <= MAX_MARKERS:
        marker = '<circle cx="{:.2f}" cy="{:.2f}" r="2.5" fill="#1f77b4"/>'
        parts.extend(marker.format(x, y) for x, y in points)
    parts.append("</svg>")
    return "\n".join(parts)


def loss_curve_svg(
    epochs: Sequence[int],
    losses: Sequence[Optional[float]],
    *,
    title: str = "Training loss",
    width: int = 640,
    height: int = 320,
) -> str:
    """A standalone SVG line chart of loss by epoch (log10 y axis over more than two decades)."""
    return _curve_svg(epochs, losses, title=title, x_label="epoch", width=width, height=height)


def svg_data_uri(svg: str) -> str:
    """The SVG as a base64 `data:image/svg+xml` URI, to embed as a markdown image."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def loss_curve_markdown(
    epochs: Sequence[int], losses: Sequence[Optional[float]], *, title: str = "Training loss"
) -> str:
    """A `### title` heading and the loss curve embedded as a data-URI markdown image."""
    svg = loss_curve_svg(epochs, losses, title=title)
    return f"### {escape_markdown(title)}\n\n![loss curve]({svg_data_uri(svg)})\n"


def _rounded(value: Optional[float]) -> Optional[float]:
    """The value in 8 significant digits; None stays None."""
    return None if value is None else float(f"{float(value):.8g}")


def metrics_table_rows(
    epochs: Sequence[int],
    losses: Sequence[Optional[float]],
    params: Sequence[dict[str, Optional[float]]],
    names: Sequence[str],
    *,
    max_rows: int = 200,
) -> list[dict[str, object]]:
    """Rows for a table artifact: epoch, loss and each parameter, downsampled to `max_rows`."""
    if not len(epochs) == len(losses) == len(params):
        raise ValueError(f"{len(epochs)} epochs, {len(losses)} losses, {len(params)} params")
    clashes = {"epoch", "loss"}.intersection(names)
    if clashes:
        raise ValueError(f"parameter names clash with the table's columns: {sorted(clashes)}")
    rows: list[dict[str, object]] = []
    for i in downsample_indices(len(epochs), max_rows):
        row: dict[str, object] = {"epoch": int(epochs[i]), "loss": _rounded(losses[i])}
        row.update({name: _rounded(params[i].get(name)) for name in names})
        rows.append(row)
    return rows


def _param_section(final: Mapping[str, float], evaluation: Optional[Mapping[str, Any]]) -> str:
    """The final parameters, next to the least-squares optimum when there is one."""
    if evaluation is None:
        lines = ["| parameter | trained |", "|---|---:|"]
        lines += [f"| {_cell(name)} | {_num(value)} |" for name, value in final.items()]
        return "\n".join(lines)
    optimum: Mapping[str, float] = evaluation.get("least_squares", {}).get("params", {})
    names = [*final, *(name for name in optimum if name not in final)]
    lines = ["| parameter | trained | least squares | difference |", "|---|---:|---:|---:|"]
    for name in names:
        trained, best = final.get(name), optimum.get(name)
        diff = None if trained is None or best is None else float(trained) - float(best)
        lines.append(f"| {_cell(name)} | {_num(trained)} | {_num(best)} | {_num(diff, 3)} |")
    return "\n".join(lines)


def _prediction(prediction: Mapping[str, Any]) -> str:
    """`f(5) = 10.000`, as the seed prints it."""
    args = ", ".join(f"{float(v):g}" for v in prediction["input"])
    return f"f({args}) = {float(prediction['output']):.3f}"


def _config_value(value: Any) -> str:
    """A config value as text: lists comma-separated (rows of lists by `; `), None as a dash."""
    if isinstance(value, (list, tuple)):
        nested = any(isinstance(v, (list, tuple)) for v in value)
        return ("; " if nested else ", ").join(_config_value(v) for v in value)
    return "—" if value is None else str(value)


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The run's report: status, error, parameters against least squares, predictions, config."""
    run_id = int(summary["run_id"])
    status = [
        f"**stop reason:** {_cell(summary.get('stop_reason'))}",
        f"**epochs:** {summary.get('epochs_done', 0)} / {summary.get('max_epochs', '—')}",
    ]
    if summary.get("device"):
        status.append(f"**device:** {_cell(summary['device'])}")
    if summary.get("seconds") is not None:
        status.append(f"**time:** {float(summary['seconds']):.2f} s")
    out = [f"## Run {run_id}: {_cell(summary.get('status'))}", " · ".join(status)]

    error = summary.get("error")
    if error:
        lines = str(error).splitlines() or [""]
        out.append("\n".join(["> **error:**", *(f"> {escape_markdown(line)}" for line in lines)]))

    evaluation: Optional[Mapping[str, Any]] = summary.get("evaluation")
    final = summary.get("final_params")
    if final or evaluation:
        out.append("### Parameters\n\n" + _param_section(final or {}, evaluation))

    losses = [f"**final loss:** {_num(summary.get('final_loss'), 6)}"]
    if evaluation:
        optimum_loss = evaluation.get("least_squares", {}).get("loss")
        losses.append(f"**least-squares loss:** {_num(optimum_loss, 6)}")
        losses.append(f"**gap:** {_num(evaluation.get('loss_gap'), 6)}")
        losses.append(f"**distance to optimum:** {_num(evaluation.get('param_distance'), 6)}")
    out.append(" · ".join(losses))

    diagnostics = []
    if summary.get("best_epoch") is not None:
        diagnostics.append(
            f"**best epoch:** {summary['best_epoch']} (loss {_num(summary.get('best_loss'), 6)})"
        )
    if summary.get("max_stable_lr") is not None:
        diagnostics.append(f"**largest stable lr:** {_num(summary['max_stable_lr'], 4)}")
    if summary.get("condition_number") is not None:
        diagnostics.append(f"**condition number:** {_num(summary['condition_number'], 4)}")
    if diagnostics:
        out.append(" · ".join(diagnostics))
    for warning in summary.get("warnings") or []:
        out.append(f"> **warning:** {escape_markdown(str(warning))}")

    metric_rows: list[tuple[str, Mapping[str, Any]]] = [
        (key, (evaluation or {})[key])
        for key in ("train", "validation")
        if (evaluation or {}).get(key)
    ]
    if metric_rows:
        lines = ["| data | MSE | RMSE | MAE | R² |", "|---|---:|---:|---:|---:|"]
        lines += [
            f"| {label} | "
            + " | ".join(_num(m.get(k), 6) for k in ("mse", "rmse", "mae", "r2"))
            + " |"
            for label, m in metric_rows
        ]
        out.append("### Metrics of the trained model\n\n" + "\n".join(lines))

    predictions = (evaluation or {}).get("predictions") or []
    if predictions:
        out.append("### Predictions\n\n" + "\n".join(f"- {_prediction(p)}" for p in predictions))

    config: Mapping[str, Any] = summary.get("config") or {}
    if config:
        rows = [f"| {_cell(key)} | {_cell(_config_value(v))} |" for key, v in config.items()]
        out.append("### Config\n\n| key | value |\n|---|---|\n" + "\n".join(rows))

    url = escape_markdown(str(summary.get("database_url", "")))
    out.append(f"### Metrics\n\nPer-epoch metrics are in {url}: `gdflow metrics {run_id}`")
    return "\n\n".join(out) + "\n"


def trend_markdown(runs: Sequence[Mapping[str, Any]], *, title: str) -> str:
    """A newest-first table of runs and, from two finite losses on, a chart of final loss by run."""
    out = [f"## {escape_markdown(title)}"]
    if not runs:
        out.append("No runs recorded yet.")
        return "\n\n".join(out) + "\n"
    chronological = sorted(runs, key=lambda run: int(run["run_id"]))
    names: list[str] = []
    for run in chronological:
        names += [name for name in (run.get("final_params") or {}) if name not in names]
    headers = ["run", "started", "status", "epochs", "final loss", *names]
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "|" + "---:|" + "---|---|" + "---:|---:|" + "---:|" * len(names),
    ]
    for run in reversed(chronological):
        params = run.get("final_params") or {}
        cells = [
            str(int(run["run_id"])),
            _cell(run.get("started_at")),
            _cell(run.get("status")),
            _cell(run.get("epochs_done")),
            _num(run.get("final_loss"), 6),
            *(_num(params.get(name)) for name in names),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    out.append("\n".join(lines))

    ids = [int(run["run_id"]) for run in chronological]
    losses = [run.get("final_loss") for run in chronological]
    plottable = [v for v in losses if v is not None and math.isfinite(v) and v > 0]
    if len(plottable) >= 2:
        chart_title = "Final loss by run"
        svg = _curve_svg(ids, losses, title=chart_title, x_label="run", width=640, height=320)
        out.append(f"### {chart_title}\n\n![final loss by run]({svg_data_uri(svg)})")
    return "\n\n".join(out) + "\n"


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
    _, log_scale = _plottable(flat_x, flat_y)
    curves: list[tuple[str, list[tuple[float, float]]]] = []
    for label, epochs, losses in series:
        pairs, _ = _plottable(epochs, losses)
        if log_scale:
            pairs = [(x, math.log10(v)) for x, v in pairs if v > 0]
        if len(pairs) > MAX_CURVE_POINTS:
            pairs = [pairs[i] for i in downsample_indices(len(pairs), MAX_CURVE_POINTS)]
        curves.append((label, pairs))

    legend_chars = max((len(label) for label, _ in curves), default=0)
    legend_width = min(width // 3, 34 + 6 * legend_chars) if curves else 0
    left, right = _MARGIN_LEFT, width - _MARGIN_RIGHT - legend_width
    top, bottom = _MARGIN_TOP, height - _MARGIN_BOTTOM
    mid_y = (top + bottom) / 2
    parts = [
        *_svg_head(width, height, title),
        f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" text-anchor="middle">epoch</text>',
        f'<text x="14" y="{mid_y:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid_y:.1f})">{"loss (log scale)" if log_scale else "loss"}'
        "</text>",
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="none" stroke="#999"/>',
    ]
    points = [p for _, pairs in curves for p in pairs]
    if not points:
        parts.append(
            f'<text x="{(left + right) / 2:.1f}" y="{mid_y:.1f}" text-anchor="middle" '
            'fill="#777">no finite loss values</text>'
        )
    else:
        parts.extend(_overlay(curves, points, log_scale, (left, right, top, bottom)))
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
    parts, sx, sy = _axes(points, log_scale, box)
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


def sweep_markdown(
    rows: Sequence[Mapping[str, Any]], *, best_run_id: Optional[int], title: str
) -> str:
    """A table comparing a sweep's runs (the best one starred) and a line naming the best."""
    out = [f"## {escape_markdown(title)}"]
    if not rows:
        out.append("No runs recorded.")
        return "\n\n".join(out) + "\n"
    headers = list(rows[0])
    text_columns = {"status", "stop reason"}
    lines = [
        "| best | " + " | ".join(_cell(h) for h in headers) + " |",
        "|---|" + "".join("---|" if h in text_columns else "---:|" for h in headers),
    ]
    best: Optional[Mapping[str, Any]] = None
    for row in rows:
        is_best = best_run_id is not None and row.get("run") == best_run_id
        best = row if is_best else best
        cells = [
            _cell(row.get(h)) if h in text_columns or h in ("run", "epochs") else _num(row.get(h))
            for h in headers
        ]
        lines.append("| " + ("★" if is_best else "") + " | " + " | ".join(cells) + " |")
    out.append("\n".join(lines))
    if best is None:
        out.append("**No run completed**, so there is no best configuration.")
    else:
        params = [
            f"{escape_markdown(str(h))} = {_num(best.get(h))}"
            for h in headers
            if h not in SWEEP_COLUMNS and best.get(h) is not None
        ]
        val = best.get("val loss")
        if val is not None:
            loss = f"validation loss {_num(val, 6)}"
        else:
            loss = f"final loss {_num(best.get('final loss'), 6)}"
        line = f"**Best:** run {_cell(best.get('run'))} with lr {_num(best.get('lr'))} ({loss})"
        if params:
            line += ": " + ", ".join(params)
        out.append(line)
    return "\n\n".join(out) + "\n"
