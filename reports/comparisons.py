"""Markdown reports that compare runs: the trend of recent runs, and a sweep's runs side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from gdflow.config.sweep import SUMMARY_COLUMNS as SWEEP_COLUMNS
from gdflow.reports.charts import curve_svg, svg_data_uri
from gdflow.reports.markdown import cell, escape_markdown, num


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
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "---:|" + "---|---|" + "---:|---:|" + "---:|" * len(names),
    ]
    for run in reversed(chronological):
        params = run.get("final_params") or {}
        cells = [
            str(int(run["run_id"])),
            cell(run.get("started_at")),
            cell(run.get("status")),
            cell(run.get("epochs_done")),
            num(run.get("final_loss"), 6),
            *(num(params.get(name)) for name in names),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    out.append("\n".join(lines))

    ids = [int(run["run_id"]) for run in chronological]
    losses = [run.get("final_loss") for run in chronological]
    plottable = [v for v in losses if v is not None and math.isfinite(v) and v > 0]
    if len(plottable) >= 2:
        chart_title = "Final loss by run"
        svg = curve_svg(ids, losses, title=chart_title, x_label="run", width=640, height=320)
        out.append(f"### {chart_title}\n\n![final loss by run]({svg_data_uri(svg)})")
    return "\n\n".join(out) + "\n"


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
        "| best | " + " | ".join(cell(h) for h in headers) + " |",
        "|---|" + "".join("---|" if h in text_columns else "---:|" for h in headers),
    ]
    best: Optional[Mapping[str, Any]] = None
    for row in rows:
        is_best = best_run_id is not None and row.get("run") == best_run_id
        best = row if is_best else best
        cells = [
            cell(row.get(h)) if h in text_columns or h in ("run", "epochs") else num(row.get(h))
            for h in headers
        ]
        lines.append("| " + ("★" if is_best else "") + " | " + " | ".join(cells) + " |")
    out.append("\n".join(lines))
    out.append(_best_line(best, headers))
    return "\n\n".join(out) + "\n"


def _best_line(best: Optional[Mapping[str, Any]], headers: Sequence[str]) -> str:
    """The line naming the best run: its lr, its (validation) loss and its parameters."""
    if best is None:
        return "**No run completed**, so there is no best configuration."
    params = [
        f"{escape_markdown(str(h))} = {num(best.get(h))}"
        for h in headers
        if h not in SWEEP_COLUMNS and best.get(h) is not None
    ]
    val = best.get("val loss")
    if val is not None:
        loss = f"validation loss {num(val, 6)}"
    else:
        loss = f"final loss {num(best.get('final loss'), 6)}"
    line = f"**Best:** run {cell(best.get('run'))} with lr {num(best.get('lr'))} ({loss})"
    if params:
        line += ": " + ", ".join(params)
    return line
