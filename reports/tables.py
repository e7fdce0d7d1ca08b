"""Plain-text presentation for the terminal: aligned tables and CSV of runs, metrics, sweeps."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Optional

from gdflow.reports.formatting import format_number


def format_time(value: Optional[datetime]) -> str:
    """A timestamp to the second in local time, e.g. 2026-11-25 13:05:09."""
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone()
    return value.strftime("%Y-%m-%d %H:%M:%S")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool]) -> str:
    """An aligned text table: numeric columns right-aligned, others left-aligned."""
    cells = [[str(c) for c in headers]] + [
        ["" if v is None else str(v) for v in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if is_num else cell.ljust(width)
            for cell, width, is_num in zip(row, widths, numeric)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def format_params(params: Optional[dict[str, Optional[float]]]) -> str:
    """Parameters as `name=value` pairs, e.g. `w_a=3.00012 b=0.99871`."""
    if not params:
        return ""
    return " ".join(f"{name}={format_number(value) or 'null'}" for name, value in params.items())


def runs_table(runs: Sequence[Any]) -> str:
    """The `gdflow runs` table: id, flow run, status, started, epochs, loss, reason, parameters."""
    headers = [
        "id",
        "flow run",
        "status",
        "started",
        "epochs",
        "final loss",
        "stop reason",
        "data",
        "final params",
    ]
    rows = [
        [
            run.id,
            run.flow_run_name or "",
            run.status,
            format_time(run.started_at),
            run.epochs_done,
            format_number(run.final_loss),
            run.stop_reason or "",
            short_hash(getattr(run, "data_hash", None)),
            format_params(run.final_params),
        ]
        for run in runs
    ]
    return table(headers, rows, [True, False, False, False, True, True, False, False, False])


def short_hash(data_hash: Optional[str]) -> str:
    """The first 8 hex digits of a `sha256:` fingerprint: enough to tell data apart."""
    return data_hash.split(":", 1)[-1][:8] if data_hash else ""


def metrics_rows(metrics: Sequence[Any], names: Sequence[str]) -> list[list[Optional[float]]]:
    """One list per epoch: epoch, loss, then each parameter in `names` order."""
    return [[m.epoch, m.loss, *(m.params.get(name) for name in names)] for m in metrics]


def metrics_table(metrics: Sequence[Any], names: Sequence[str]) -> str:
    """The per-epoch metrics as an aligned table."""
    rows = [[row[0], *(format_number(v) for v in row[1:])] for row in metrics_rows(metrics, names)]
    headers = ["epoch", "loss", *names]
    return table(headers, rows, [True] * len(headers))


def metrics_csv(metrics: Sequence[Any], names: Sequence[str]) -> str:
    """The per-epoch metrics as CSV with full float precision (round-trips exactly)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", "loss", *names])
    for row in metrics_rows(metrics, names):
        writer.writerow(["" if v is None else repr(v) for v in row])
    return out.getvalue()


#: A classifier's metrics as the tables show them, by task (binary: two classes).
CLASSIFIER_METRICS = {
    "binary": ("log_loss", "accuracy", "roc_auc", "precision", "recall", "f1"),
    "multiclass": ("log_loss", "accuracy", "macro_f1"),
}


def classifier_metric_names(evaluation: dict[str, Any]) -> tuple[str, ...]:
    """The metrics a classifier's evaluation holds (binary or multiclass)."""
    return CLASSIFIER_METRICS["binary" if "roc_auc" in evaluation["train"] else "multiclass"]


def classifier_table(evaluation: dict[str, Any]) -> str:
    """A classifier's metrics per split, its confusion matrices, and the gap to the exact
    optimum of its training objective (or why there is none)."""
    names = classifier_metric_names(evaluation)
    rows = [
        [split, *(format_number(evaluation[split].get(k)) for k in names)]
        for split in ("train", "validation")
        if evaluation.get(split)
    ]
    parts = [table(["data", *names], rows, [False, *([True] * len(names))])]
    classes = [str(label) for label in evaluation.get("classes", [])]
    for split in ("train", "validation"):
        matrix = (evaluation.get(split) or {}).get("confusion_matrix")
        if matrix and classes:
            cells = [
                [f"true {label}", *(str(v) for v in row)] for label, row in zip(classes, matrix)
            ]
            headers = [f"{split} confusion", *(f"predicted {label}" for label in classes)]
            parts.append(table(headers, cells, [False, *([True] * len(classes))]))
    optimum = evaluation.get("optimum") or {}
    if optimum.get("loss") is None:
        parts.append(f"no exact optimum: {optimum.get('reason')}")
    else:
        loss = format_number(optimum["loss"])
        line = f"exact optimum of the training loss (Newton, float64): {loss}"
        if optimum.get("relative_gap") is not None:
            line += f"; training loss is {100 * optimum['relative_gap']:.3g}% above it"
        parts.append(line)
    return "\n\n".join(parts)


def evaluation_table(evaluation: dict[str, Any]) -> str:
    """MSE, RMSE, MAE and R^2 on the training (and validation) rows beside least squares; a
    classifier's metrics (`classifier_table`)."""
    if "classes" in evaluation:
        return classifier_table(evaluation)
    if "least_squares" not in evaluation:  # a network: no exact optimum
        rows = [
            [split, *(format_number(evaluation[split][k]) for k in ("mse", "rmse", "mae", "r2"))]
            for split in ("train", "validation")
            if evaluation.get(split)
        ]
        text = table(["data", "mse", "rmse", "mae", "r2"], rows, [False, True, True, True, True])
        return f"{text}\n\nno exact optimum: {(evaluation.get('optimum') or {}).get('reason')}"
    optimum = evaluation["least_squares"]
    rows = [
        ["train", *(format_number(evaluation["train"][k]) for k in ("mse", "rmse", "mae", "r2"))],
        ["least squares (train)", format_number(optimum["loss"]), "", "", ""],
    ]
    if "validation" in evaluation:
        metrics = evaluation["validation"]
        rows.append(
            ["validation", *(format_number(metrics[k]) for k in ("mse", "rmse", "mae", "r2"))]
        )
        rows.append(
            ["least squares (validation)", format_number(optimum.get("validation_mse")), "", "", ""]
        )
    text = table(["data", "mse", "rmse", "mae", "r2"], rows, [False, True, True, True, True])
    gap = evaluation.get("relative_loss_gap")
    if gap is not None:
        text += f"\ntraining loss is {100 * gap:.3g}% above the least-squares optimum"
    elif evaluation.get("loss_gap") is not None:
        text += (
            f"\ntraining loss is {evaluation['loss_gap']:.3g} above the least-squares optimum "
            "(an exact fit)"
        )
    return text


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """A sweep's comparison rows as an aligned text table, one line per run."""
    if not rows:
        return "no runs recorded"
    headers = list(rows[0])
    cells = [
        [v if isinstance(v, (str, int)) or v is None else format_number(v) for v in row.values()]
        for row in rows
    ]
    return table(headers, cells, [h not in ("status", "stop reason") for h in headers])
