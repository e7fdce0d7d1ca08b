"""The Prefect UI report of one run: its summary in markdown, and the rows of its metrics table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from gdflow.reports.charts import downsample_indices
from gdflow.reports.formatting import rounded
from gdflow.reports.markdown import MISSING, cell, escape_markdown, num


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
        row: dict[str, object] = {"epoch": int(epochs[i]), "loss": rounded(losses[i])}
        row.update({name: rounded(params[i].get(name)) for name in names})
        rows.append(row)
    return rows


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The run's report: status, error, parameters against least squares, predictions, config."""
    evaluation: Mapping[str, Any] = summary.get("evaluation") or {}
    sections = [
        _status(summary),
        _error(summary.get("error")),
        _parameters(summary.get("final_params") or {}, summary.get("evaluation")),
        _losses(summary, evaluation),
        _diagnostics(summary),
        *(f"> **warning:** {escape_markdown(str(w))}" for w in summary.get("warnings") or []),
        _model_metrics(evaluation),
        data_checks_markdown(summary.get("data_checks")),
        _predictions(evaluation.get("predictions") or []),
        _config(summary.get("config") or {}),
        _where_metrics_are(summary),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def data_checks_markdown(checks: Optional[Mapping[str, Any]]) -> str:
    """The checks of the data against the champion's: schema changes, then a table of each
    feature's PSI and mean shift, drifted ones marked; nothing without a baseline."""
    if not checks or not checks.get("baseline"):
        return ""
    base = checks["baseline"]
    out = [
        f"### Data checks against model version {base['version']}'s training data "
        f"(run {base['run_id']})"
    ]
    changes = checks.get("schema_changes") or []
    out.append(
        "\n".join(f"- schema: {escape_markdown(c)}" for c in changes)
        if changes
        else "Schema: unchanged."
    )
    drifted = set(checks.get("drifted") or [])
    rows = ["| feature | PSI | mean shift | drifted |", "|---|---:|---:|---|"]
    for name, found in (checks.get("drift") or {}).items():
        rows.append(
            f"| {cell(name)} | {num(found.get('psi'), 4)} | {num(found.get('mean_shift'), 4)} | "
            f"{'**yes**' if name in drifted else 'no'} |"
        )
    thresholds = checks.get("thresholds") or {}
    out.append(
        "\n".join(rows)
        + f"\n\nThresholds: PSI {thresholds.get('psi')}, mean shift {thresholds.get('mean_shift')}."
    )
    return "\n\n".join(out)


def _status(summary: Mapping[str, Any]) -> str:
    """The heading (run id and status), then how it stopped, after how long, where."""
    status = [
        f"**stop reason:** {cell(summary.get('stop_reason'))}",
        f"**epochs:** {summary.get('epochs_done', 0)} / {summary.get('max_epochs', MISSING)}",
    ]
    if summary.get("device"):
        status.append(f"**device:** {cell(summary['device'])}")
    if summary.get("seconds") is not None:
        status.append(f"**time:** {float(summary['seconds']):.2f} s")
    heading = f"## Run {int(summary['run_id'])}: {cell(summary.get('status'))}"
    return heading + "\n\n" + " · ".join(status)


def _error(error: Any) -> str:
    """The error as a quote, line by line; nothing without one."""
    if not error:
        return ""
    lines = str(error).splitlines() or [""]
    return "\n".join(["> **error:**", *(f"> {escape_markdown(line)}" for line in lines)])


def _parameters(final: Mapping[str, float], evaluation: Optional[Mapping[str, Any]]) -> str:
    """The parameters section; nothing without final parameters or an evaluation."""
    if not (final or evaluation):
        return ""
    return "### Parameters\n\n" + _param_section(final, evaluation)


def _losses(summary: Mapping[str, Any], evaluation: Mapping[str, Any]) -> str:
    """The final loss and, with an evaluation, the least-squares loss, the gap and the distance."""
    losses = [f"**final loss:** {num(summary.get('final_loss'), 6)}"]
    if evaluation and ("classes" in evaluation or "least_squares" not in evaluation):
        optimum = evaluation.get("optimum") or {}
        if optimum.get("loss") is None:
            losses.append(
                f"**exact optimum:** none ({escape_markdown(str(optimum.get('reason')))})"
            )
        else:
            losses.append(f"**exact optimum loss:** {num(optimum['loss'], 6)}")
            losses.append(f"**relative gap:** {num(optimum.get('relative_gap'), 4)}")
    elif evaluation:
        optimum_loss = evaluation.get("least_squares", {}).get("loss")
        losses.append(f"**least-squares loss:** {num(optimum_loss, 6)}")
        losses.append(f"**gap:** {num(evaluation.get('loss_gap'), 6)}")
        losses.append(f"**distance to optimum:** {num(evaluation.get('param_distance'), 6)}")
    return " · ".join(losses)


def _diagnostics(summary: Mapping[str, Any]) -> str:
    """The best epoch, the largest stable learning rate and the condition number, when known."""
    diagnostics = []
    if summary.get("best_epoch") is not None:
        diagnostics.append(
            f"**best epoch:** {summary['best_epoch']} (loss {num(summary.get('best_loss'), 6)})"
        )
    if summary.get("max_stable_lr") is not None:
        diagnostics.append(f"**largest stable lr:** {num(summary['max_stable_lr'], 4)}")
    if summary.get("condition_number") is not None:
        diagnostics.append(f"**condition number:** {num(summary['condition_number'], 4)}")
    return " · ".join(diagnostics)


def _model_metrics(evaluation: Mapping[str, Any]) -> str:
    """MSE, RMSE, MAE and R² (a classifier's metrics and confusion matrices) on the training
    and validation rows that were evaluated."""
    rows = [(key, evaluation[key]) for key in ("train", "validation") if evaluation.get(key)]
    if not rows:
        return ""
    if "classes" in evaluation:
        return _classifier_metrics(rows, [str(c) for c in evaluation["classes"]])
    lines = ["| data | MSE | RMSE | MAE | R² |", "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {label} | " + " | ".join(num(m.get(k), 6) for k in ("mse", "rmse", "mae", "r2")) + " |"
        for label, m in rows
    ]
    return "### Metrics of the trained model\n\n" + "\n".join(lines)


def _classifier_metrics(rows: Sequence[tuple[str, Mapping[str, Any]]], classes: list[str]) -> str:
    """A classifier's metrics per split, then each split's confusion matrix as a table."""
    names = [k for k in CLASSIFIER_COLUMNS if k in rows[0][1]]
    lines = [
        "| data | " + " | ".join(cell(CLASSIFIER_COLUMNS[k]) for k in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    lines += [
        f"| {label} | " + " | ".join(num(m.get(k), 4) for k in names) + " |" for label, m in rows
    ]
    parts = ["### Metrics of the trained model\n\n" + "\n".join(lines)]
    for label, metrics in rows:
        matrix = metrics.get("confusion_matrix")
        if not matrix:
            continue
        head = "| true \\ predicted | " + " | ".join(cell(c) for c in classes) + " |"
        body = [
            f"| {cell(c)} | " + " | ".join(str(int(v)) for v in row) + " |"
            for c, row in zip(classes, matrix)
        ]
        parts.append(
            f"#### Confusion matrix ({label})\n\n"
            + "\n".join([head, "|---|" + "---:|" * len(classes), *body])
        )
    return "\n\n".join(parts)


#: A classifier's metrics (evaluation keys) and their column titles, in the order the report
#: shows those it has.
CLASSIFIER_COLUMNS = {
    "log_loss": "log loss",
    "accuracy": "accuracy",
    "roc_auc": "ROC AUC",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "macro_f1": "macro F1",
}


def _predictions(predictions: Sequence[Mapping[str, Any]]) -> str:
    """The predictions for the configured inputs, as the seed prints them."""
    if not predictions:
        return ""
    return "### Predictions\n\n" + "\n".join(f"- {_prediction(p)}" for p in predictions)


def _config(config: Mapping[str, Any]) -> str:
    """The run's config as a key/value table."""
    if not config:
        return ""
    rows = [f"| {cell(key)} | {cell(_config_value(v))} |" for key, v in config.items()]
    return "### Config\n\n| key | value |\n|---|---|\n" + "\n".join(rows)


def _where_metrics_are(summary: Mapping[str, Any]) -> str:
    """Where the per-epoch metrics are, and the command that prints them."""
    url = escape_markdown(str(summary.get("database_url", "")))
    run_id = int(summary["run_id"])
    return f"### Metrics\n\nPer-epoch metrics are in {url}: `gdflow metrics {run_id}`"


def _param_section(final: Mapping[str, float], evaluation: Optional[Mapping[str, Any]]) -> str:
    """The final parameters, next to the least-squares optimum when there is one (a linear
    regression's; a classifier's exact optimum is a loss, shown with the losses)."""
    if evaluation is None or "least_squares" not in evaluation:
        lines = ["| parameter | trained |", "|---|---:|"]
        lines += [f"| {cell(name)} | {num(value)} |" for name, value in final.items()]
        return "\n".join(lines)
    optimum: Mapping[str, float] = (evaluation.get("least_squares") or {}).get("params", {})
    names = [*final, *(name for name in optimum if name not in final)]
    lines = ["| parameter | trained | least squares | difference |", "|---|---:|---:|---:|"]
    for name in names:
        trained, best = final.get(name), optimum.get(name)
        diff = None if trained is None or best is None else float(trained) - float(best)
        lines.append(f"| {cell(name)} | {num(trained)} | {num(best)} | {num(diff, 3)} |")
    return "\n".join(lines)


def _prediction(prediction: Mapping[str, Any]) -> str:
    """`f(5) = 10.000`, as the seed prints it; a classifier's class and probabilities."""
    args = ", ".join(f"{float(v):g}" for v in prediction["input"])
    if "class" in prediction:
        shown = ", ".join(
            f"{cell(k)} {float(v):.3f}" for k, v in prediction["probabilities"].items()
        )
        return f"f({args}) = {cell(prediction['class'])} (P: {shown})"
    return f"f({args}) = {float(prediction['output']):.3f}"


def _config_value(value: Any) -> str:
    """A config value as text: lists comma-separated (rows of lists by `; `), None as a dash."""
    if isinstance(value, (list, tuple)):
        nested = any(isinstance(v, (list, tuple)) for v in value)
        return ("; " if nested else ", ").join(_config_value(v) for v in value)
    return "—" if value is None else str(value)
