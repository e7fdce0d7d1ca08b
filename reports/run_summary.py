"""One run as plain data for scripts (`gdflow show --format json`, `gdflow runs --format
json|csv`) and as the aligned text of `gdflow show`. Pure functions of a stored run (any object
with the columns of storage.models.Run); NaN and infinity never leave as such (JSON null, an
empty CSV cell)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Optional

from gdflow.reports.formatting import format_number
from gdflow.reports.tables import CLASSIFIER_METRICS, evaluation_table, format_time, table

#: The model family of a run recorded before families existed (model NULL).
LEGACY_MODEL = "linear"
#: A regression's metrics, in the order the tables show them.
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2")
#: Every headline metric a run may have: the columns `train_<name>` and `validation_<name>` of
#: `gdflow runs --format csv`, whatever runs it lists (a stable header for scripts).
HEADLINE_METRICS = tuple(
    dict.fromkeys(
        [*REGRESSION_METRICS, *CLASSIFIER_METRICS["binary"], *CLASSIFIER_METRICS["multiclass"]]
    )
)
SPLITS = ("train", "validation")
#: The per-run columns of `gdflow runs --format json|csv`, before the metrics.
RUN_COLUMNS = (
    "id",
    "status",
    "model",
    "task",
    "started_at",
    "finished_at",
    "epochs_done",
    "final_loss",
    "stop_reason",
    "data_source",
    "flow_run_name",
)
CSV_COLUMNS = (*RUN_COLUMNS, *(f"{split}_{name}" for split in SPLITS for name in HEADLINE_METRICS))


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float inside it (dicts, lists) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Strict JSON (NaN and infinity as null), indented for people and parsed by any tool."""
    return json.dumps(finite(value), indent=2, allow_nan=False, default=str)


def iso_time(value: Optional[datetime]) -> Optional[str]:
    """An ISO 8601 timestamp with its offset; a naive one (SQLite keeps no zone) is UTC, as
    gdflow records every time in UTC."""
    aware = _aware(value)
    return None if aware is None else aware.isoformat()


def _aware(value: Optional[datetime]) -> Optional[datetime]:
    """A stored time with its zone (UTC when the database kept none)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def run_model(run: Any) -> str:
    """The run's model family; `linear` for a run recorded before families existed."""
    return str(run.model or LEGACY_MODEL)


def run_task(run: Any) -> Optional[str]:
    """The run's task; `regression` for a linear run that does not record it."""
    if run.task:
        return str(run.task)
    return "regression" if run_model(run) == LEGACY_MODEL else None


def split_metrics(evaluation: Optional[Mapping[str, Any]], split: str) -> Optional[dict[str, Any]]:
    """Every metric of one split (names lower case, a classifier's confusion matrix too), or
    None when the split was not evaluated."""
    metrics = (evaluation or {}).get(split)
    if not isinstance(metrics, Mapping):
        return None
    return {str(name).lower(): finite(value) for name, value in metrics.items()}


def optimum(evaluation: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The loss of the exact optimum of the training objective and the training loss's relative
    gap to it, and why there is none; derived from the least-squares summary of runs recorded
    before `optimum` was (nulls where none exists)."""
    evaluation = evaluation or {}
    stored = evaluation.get("optimum")
    if isinstance(stored, Mapping):
        found = {k: stored.get(k) for k in ("loss", "relative_gap", "reason")}
    else:
        least_squares = evaluation.get("least_squares") or {}
        found = {
            "loss": least_squares.get("loss"),
            "relative_gap": evaluation.get("relative_loss_gap"),
            "reason": None,
        }
    return finite(found)  # type: ignore[no-any-return]


def run_classes(run: Any) -> Optional[list[Any]]:
    """A classifier's classes in order (a class index is a position in it); None otherwise."""
    classes = run.classes or (run.evaluation or {}).get("classes")
    return list(classes) if classes else None


def run_details(run: Any) -> dict[str, Any]:
    """Everything about one run, as `gdflow show --format json` prints it."""
    evaluation: Mapping[str, Any] = run.evaluation or {}
    least_squares = evaluation.get("least_squares")
    details = {
        "id": run.id,
        "status": run.status,
        "stop_reason": run.stop_reason,
        "model": run_model(run),
        "task": run_task(run),
        "classes": run_classes(run),
        "data_source": run.data_source,
        "data_fingerprint": getattr(run, "data_fingerprint", None),
        "model_name": getattr(run, "model_name", None),
        "skipped_for": getattr(run, "skipped_for", None),
        "data_checks": getattr(run, "data_checks", None),
        "device": run.device,
        "started_at": iso_time(run.started_at),
        "finished_at": iso_time(run.finished_at),
        "flow_run_id": run.flow_run_id,
        "flow_run_name": run.flow_run_name,
        "sweep_id": run.sweep_id,
        "epochs_done": run.epochs_done,
        "final_loss": run.final_loss,
        "best_epoch": run.best_epoch,
        "best_loss": run.best_loss,
        "final_params": dict(run.final_params) if run.final_params else None,
        "parameter_names": list(run.parameter_names or []),
        "metrics": {split: split_metrics(evaluation, split) for split in SPLITS},
        "optimum": optimum(evaluation),
        "least_squares": least_squares if isinstance(least_squares, Mapping) else None,
        "predictions": list(evaluation.get("predictions") or []),
        "max_stable_lr": run.max_stable_lr,
        "condition_number": run.condition_number,
        "warnings": list(run.warnings or []),
        "error": run.error,
        "config": dict(run.config or {}),
    }
    return finite(details)  # type: ignore[no-any-return]


def _headline(evaluation: Optional[Mapping[str, Any]], split: str) -> Optional[dict[str, Any]]:
    """A split's headline metrics (no confusion matrix), or None when it was not evaluated."""
    metrics = split_metrics(evaluation, split)
    if metrics is None:
        return None
    return {name: metrics[name] for name in HEADLINE_METRICS if name in metrics}


def run_summary(run: Any) -> dict[str, Any]:
    """One run as a line of `gdflow runs --format json`: its outcome and headline metrics."""
    summary: dict[str, Any] = {
        "id": run.id,
        "status": run.status,
        "model": run_model(run),
        "task": run_task(run),
        "started_at": iso_time(run.started_at),
        "finished_at": iso_time(run.finished_at),
        "epochs_done": run.epochs_done,
        "final_loss": run.final_loss,
        "stop_reason": run.stop_reason,
        "data_source": run.data_source,
        "data_sha256": getattr(run, "data_hash", None),
        "flow_run_name": run.flow_run_name,
        "metrics": {split: _headline(run.evaluation, split) for split in SPLITS},
        "final_params": dict(run.final_params) if run.final_params else None,
    }
    return finite(summary)  # type: ignore[no-any-return]


def runs_json(runs: Sequence[Any]) -> str:
    """`gdflow runs --format json`: a JSON array of `run_summary` objects, newest first."""
    return to_json([run_summary(run) for run in runs])


def runs_csv(runs: Sequence[Any]) -> str:
    """`gdflow runs --format csv`: one row per run, the CSV_COLUMNS (a metric a run does not
    have, or a missing or non-finite value, is an empty cell); floats in full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run in runs:
        summary = run_summary(run)
        row = {name: summary[name] for name in RUN_COLUMNS}
        for split in SPLITS:
            for name, value in (summary["metrics"][split] or {}).items():
                row[f"{split}_{name}"] = value
        writer.writerow([_csv_cell(row.get(column)) for column in CSV_COLUMNS])
    return out.getvalue()


def _csv_cell(value: Any) -> str:
    """A CSV cell: empty for None, repr for floats (round-trips exactly), str otherwise."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _key_values(pairs: Sequence[tuple[str, str]]) -> str:
    """Aligned `key  value` lines (a multi-line value continues under its first line)."""
    width = max(len(key) for key, _ in pairs)
    lines = []
    for key, value in pairs:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{key.ljust(width)}  {first}".rstrip())
        lines += [f"{' ' * width}  {line}".rstrip() for line in rest]
    return "\n".join(lines)


def _shown(value: Any) -> str:
    """A value in the text summary: numbers in 8 significant digits, lists comma-separated."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else ""
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_shown(v) for v in value)
    return str(value)


def checks_line(checks: Optional[Mapping[str, Any]]) -> str:
    """`against version 1 (run 1): new column 'c'; drifted: a (PSI 8.28, mean shift 5.33)`."""
    if not checks:
        return ""
    base = checks.get("baseline")
    if not base:
        return f"none: {checks.get('reason') or 'nothing to compare with'}"
    changes = checks.get("schema_changes") or []
    drift = checks.get("drift") or {}
    moved = [
        f"{name} (PSI {format_number(drift[name].get('psi'), 3)}, mean shift "
        f"{format_number(drift[name].get('mean_shift'), 3)})"
        for name in checks.get("drifted") or []
        if name in drift
    ]
    parts = ["; ".join(changes) if changes else "schema unchanged"]
    parts.append(f"drifted: {', '.join(moved)}" if moved else "no drift")
    if checks.get("failed"):
        parts.append("failed the run")
    return f"against version {base['version']} (run {base['run_id']}): {'; '.join(parts)}"


def data_line(fingerprint: Optional[Mapping[str, Any]]) -> str:
    """`sha256:3f2a… (150 rows, 5 columns: a double, b double, ...)`, or empty."""
    if not fingerprint:
        return ""
    columns = fingerprint.get("columns") or []
    shown = ", ".join(f"{c.get('name')} {c.get('type')}" for c in columns[:8])
    more = f", … {len(columns) - 8} more" if len(columns) > 8 else ""
    size = f", {fingerprint['bytes']:,} bytes" if fingerprint.get("bytes") else ""
    described = f"{fingerprint.get('rows')} rows{size}, {len(columns)} columns: {shown}{more}"
    return f"{fingerprint.get('sha256')} ({described})"


def show_text(run: Any) -> str:
    """`gdflow show`: an aligned summary of the run, its evaluation table, its final
    parameters (all of them, aligned; beside least squares for a linear model), its
    predictions and its configuration."""
    details = run_details(run)
    model = details["model"] + (f" ({details['task']})" if details["task"] else "")
    flow_run = details["flow_run_name"] or ""
    if details["flow_run_id"]:
        flow_run = f"{flow_run} ({details['flow_run_id']})".strip()
    pairs: list[tuple[str, str]] = [
        ("run", str(details["id"])),
        ("status", details["status"]),
        ("stop reason", details["stop_reason"] or ""),
        ("model", model),
    ]
    if details["classes"]:
        pairs.append(("classes", _shown(details["classes"])))
    pairs += [
        ("data", details["data_source"] or ""),
        ("data fingerprint", data_line(details["data_fingerprint"])),
        ("skipped for", f"run {details['skipped_for']}" if details["skipped_for"] else ""),
        ("data checks", checks_line(details["data_checks"])),
        ("model name", details["model_name"] or ""),
        ("device", details["device"] or ""),
        ("flow run", flow_run),
        ("started", format_time(_aware(run.started_at))),
        ("finished", format_time(_aware(run.finished_at))),
        ("epochs", str(details["epochs_done"])),
        ("final loss", format_number(details["final_loss"])),
    ]
    if details["best_epoch"] is not None:
        best = f"epoch {details['best_epoch']}, loss {format_number(details['best_loss'])}"
        pairs.append(("best", best))
    evaluated = bool(run.evaluation and run.evaluation.get("train"))
    found = details["optimum"]
    if found["loss"] is not None:
        line = format_number(found["loss"])
        if found["relative_gap"] is not None:
            line += f" (final loss {100 * found['relative_gap']:.3g}% above it)"
        pairs.append(("optimum loss", line))
    elif found["reason"]:  # the evaluation table, when shown, says why
        pairs.append(("optimum loss", "none" if evaluated else f"none: {found['reason']}"))
    optional = [
        ("largest stable lr", details["max_stable_lr"]),
        ("condition number", details["condition_number"]),
        ("sweep", details["sweep_id"]),
    ]
    pairs += [(key, _shown(value)) for key, value in optional if value is not None]
    if details["warnings"]:
        pairs.append(("warnings", "\n".join(str(w) for w in details["warnings"])))
    if details["error"]:
        pairs.append(("error", str(details["error"])))
    sections = [_key_values([(key, value) for key, value in pairs if value])]
    if evaluated:
        sections.append(_evaluation(run.evaluation, details))
    sections.append(_params_table(run, details))
    if details["predictions"]:
        sections.append(_predictions(details["predictions"]))
    config = [(str(k), _shown(v)) for k, v in details["config"].items() if v is not None]
    if config:
        sections.append("config\n" + _key_values(config))
    return "\n\n".join(section for section in sections if section)


def _evaluation(evaluation: dict[str, Any], details: Mapping[str, Any]) -> str:
    """The evaluation table `gdflow run` prints; for an evaluation it cannot read (a partial
    one, or a model family it predates), the headline metrics present per split."""
    try:
        return evaluation_table(evaluation)
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    metrics = details["metrics"]
    splits = [split for split in SPLITS if metrics[split]]
    names = [name for name in HEADLINE_METRICS if any(name in metrics[s] for s in splits)]
    rows = [
        [split, *(format_number(metrics[split].get(name)) for name in names)] for split in splits
    ]
    return table(["data", *names], rows, [False, *([True] * len(names))])


def _params_table(run: Any, details: Mapping[str, Any]) -> str:
    """Every final parameter, aligned, beside its least-squares value when there is one."""
    params: Mapping[str, Any] = run.final_params or {}  # as stored: NaN shows as nan
    if not params:
        return "final parameters: none recorded"
    optimum_params = (details["least_squares"] or {}).get("params") or {}
    headers = ["parameter", "final value"]
    rows: list[list[Any]] = [
        [name, format_number(value, missing="null")] for name, value in params.items()
    ]
    if optimum_params:
        headers.append("least squares")
        for row in rows:
            row.append(format_number(optimum_params.get(row[0])))
    return table(headers, rows, [False, *([True] * (len(headers) - 1))])


def _predictions(predictions: Sequence[Mapping[str, Any]]) -> str:
    """Each prediction made after training: its input and output (a classifier's class)."""
    rows = []
    for prediction in predictions:
        inputs = ", ".join(format_number(v) for v in prediction.get("input") or [])
        output = prediction["class"] if "class" in prediction else prediction.get("output")
        rows.append([f"f({inputs})", output if isinstance(output, str) else _shown(output)])
    return table(["prediction", "output"], rows, [False, False])
