"""Prefect artifacts of a run: live progress, and a summary, loss curve, table and trend at the end.

A classifier's summary holds its metrics and confusion matrices as tables, and its loss-curve
artifact the validation-accuracy curve after the loss curve (when it had a validation split).
Rendering lives in `gdflow.reports` (plain strings); this module only reads the database and
hands the strings to Prefect. Publishing never fails a run: problems are logged as warnings.
"""

from __future__ import annotations

import re
from typing import Any, Optional
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.logging import get_logger
from prefect.runtime import flow_run, task_run
from sqlalchemy.orm import Session

from gdflow.reports.comparisons import trend_markdown
from gdflow.reports.markdown import has_finite_values, training_curves_markdown
from gdflow.reports.models import MODEL_REPORT_VERSIONS, model_markdown
from gdflow.reports.run_report import metrics_table_rows, summary_markdown
from gdflow.runs.recording import open_database
from gdflow.storage import (
    alias_history,
    aliases_of,
    get_metrics_sample,
    get_run,
    list_model_versions,
    list_runs,
    mask_url,
)
from gdflow.tasks.dashboard_feed import DashboardFeed, dashboard_reachable

#: Rows of the per-epoch table artifact (the database keeps every epoch).
TABLE_ROWS = 200
#: Points of the loss (and validation-accuracy) curve read back from the database.
CURVE_POINTS = 2000
#: Runs shown in the trend artifact.
TREND_RUNS = 30

logger = get_logger("gdflow.artifacts")


class ProgressArtifact:
    """A progress bar in the Prefect UI: epochs done out of the maximum.

    Updates never wait for the API: a `DashboardFeed` creates the artifact and sends the newest
    percentage from a side thread. `close()` sends the last one (bounded in time).
    """

    def __init__(self, max_epochs: int, description: str, *, logger: Any = logger) -> None:
        self.max_epochs = max_epochs
        self.description = description
        self.artifact_id: Optional[UUID] = None
        self._task_run_id = _uuid(task_run.get_id())
        self._flow_run_id = _uuid(flow_run.get_id())
        self._feed = DashboardFeed(self._send, what="progress", logger=logger)
        self._feed.put(0.0)

    def update(self, epochs_done: int) -> None:
        """Show `epochs_done / max_epochs` as a percentage (sent from the side thread)."""
        self._feed.put(100.0 * min(epochs_done, self.max_epochs) / self.max_epochs)

    def close(self) -> None:
        """Send the last percentage if the API answers within a few seconds; stop the feed."""
        self._feed.close()

    def __enter__(self) -> ProgressArtifact:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send(self, client: SyncPrefectClient, percent: float) -> None:
        """Create the artifact on the first call, update it on the next ones."""
        if self.artifact_id is None:
            created = client.create_artifact(
                ArtifactCreate(
                    type="progress",
                    description=self.description,
                    data=percent,
                    task_run_id=self._task_run_id,
                    flow_run_id=self._flow_run_id,
                )
            )
            self.artifact_id = created.id
        else:
            client.update_artifact(self.artifact_id, ArtifactUpdate(data=percent))


def _uuid(value: Optional[str]) -> Optional[UUID]:
    """A run id of `prefect.runtime` as a UUID (None outside a run)."""
    return UUID(value) if value else None


def trend_key(data_source: str) -> str:
    """The artifact key of a data source's trend: lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", data_source.lower()).strip("-")
    return f"gdflow-trend-{slug[-60:].strip('-') or 'data'}"


def curves_description(run_id: int, val_accuracies: Optional[list[Optional[float]]]) -> str:
    """The loss-curve artifact's description, naming the accuracy curve when it has one."""
    if has_finite_values(val_accuracies):
        return f"gdflow run {run_id}: loss curve and validation accuracy"
    return f"gdflow run {run_id}: loss curve"


def publish_run_report(database_url: str, run_id: int, *, seconds: Optional[float] = None) -> None:
    """Create the summary, loss-curve, metrics-table and trend artifacts of a finished run
    (not when the dashboard did not answer the run's last progress update). A classifier's
    loss-curve artifact shows its validation accuracy by epoch after the loss."""
    if dashboard_reachable() is False:
        logger.warning(
            "Run %d's report artifacts are not published: the Prefect dashboard is unreachable; "
            "the run is in the database: gdflow metrics %d",
            run_id,
            run_id,
        )
        return
    try:
        _publish(database_url, run_id, seconds)
    except Exception as exc:  # noqa: BLE001 - a report must not turn a good run into a failure
        logger.warning("Could not publish the artifacts of run %d: %s", run_id, exc)


def _publish(database_url: str, run_id: int, seconds: Optional[float]) -> None:
    with Session(open_database(database_url)) as session:
        run = get_run(session, run_id=run_id)
        if run is None:
            return
        curve = get_metrics_sample(session, run_id=run_id, max_rows=CURVE_POINTS)
        history = list_runs(session, limit=TREND_RUNS, data_source=run.data_source)
        names = list(run.parameter_names or [])
        data_source = run.data_source
        summary: dict[str, Any] = {
            "run_id": run.id,
            "status": run.status,
            "stop_reason": run.stop_reason,
            "epochs_done": run.epochs_done,
            "max_epochs": run.config.get("epochs"),
            "final_loss": run.final_loss,
            "final_params": run.final_params,
            "evaluation": run.evaluation,
            "config": run.config,
            "error": run.error,
            "device": run.device,
            "database_url": mask_url(database_url),
            "seconds": seconds,
            "best_epoch": run.best_epoch,
            "best_loss": run.best_loss,
            "max_stable_lr": run.max_stable_lr,
            "condition_number": run.condition_number,
            "warnings": run.warnings,
            "data_checks": run.data_checks,
        }
        trend = [
            {
                "run_id": past.id,
                "started_at": past.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                "status": past.status,
                "epochs_done": past.epochs_done,
                "final_loss": past.final_loss,
                "final_params": past.final_params,
            }
            for past in history
        ]
        epochs = [m.epoch for m in curve]
        losses = [m.loss for m in curve]
        accuracies = [m.val_accuracy for m in curve]
        params: list[dict[str, Optional[float]]] = [dict(m.params) for m in curve]
    create_markdown_artifact(summary_markdown(summary), description=f"gdflow run {run_id}: summary")
    create_markdown_artifact(
        training_curves_markdown(
            epochs,
            losses,
            accuracies,
            loss_title=f"Run {run_id}: training loss",
            accuracy_title=f"Run {run_id}: validation accuracy",
        ),
        description=curves_description(run_id, accuracies),
    )
    create_table_artifact(
        metrics_table_rows(epochs, losses, params, names, max_rows=TABLE_ROWS),
        description=(
            f"gdflow run {run_id}: per-epoch metrics (sampled; all epochs are in the database)"
        ),
    )
    create_markdown_artifact(
        trend_markdown(trend, title=f"Runs on {data_source}"),
        key=trend_key(data_source),
        description="gdflow: final loss and parameters of successive runs on this data",
    )


def model_key(name: str) -> str:
    """The artifact key of a model name's page: `gdflow-model-<name>` in lowercase letters,
    digits and dashes (Prefect's rule for keys)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"gdflow-model-{slug[:80].strip('-') or 'model'}"


def publish_model_report(database_url: str, name: str) -> None:
    """Create (or add a version to) the keyed artifact of a model name: its champion, the
    champion's loss by scheduled date, recent versions and alias history. Never fails a run."""
    if dashboard_reachable() is False:
        return
    try:
        with Session(open_database(database_url)) as session:
            recent = list_model_versions(session, name, limit=MODEL_REPORT_VERSIONS * 5)
            markdown = model_markdown(
                name, recent, aliases_of(session, name), alias_history(session, name)
            )
        create_markdown_artifact(
            markdown,
            key=model_key(name),
            description=f"gdflow model {name}: champion, versions and alias history",
        )
    except Exception as exc:  # noqa: BLE001 - a report must not turn a good run into a failure
        logger.warning("Could not publish the artifact of model %s: %s", name, exc)
