"""The artifacts a finished run publishes, read from a real database and published through the
session's Prefect server (in a flow run of this module's own): a classifier's curve artifact has
its validation accuracy after the loss, a regression run's artifacts are what they were before
classifiers existed."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.sorting import ArtifactSort
from prefect.runtime import flow_run
from sqlalchemy.orm import Session

from gdflow.reports.markdown import loss_curve_markdown
from gdflow.reports.run_report import metrics_table_rows
from gdflow.runs.recording import open_database
from gdflow.storage import (
    MetricRow,
    RunOutcome,
    RunStatus,
    append_metrics,
    create_run,
    finish_run,
    update_run,
)
from gdflow.tasks import dashboard_feed
from gdflow.tasks.artifacts import curves_description, publish_run_report
from gdflow.tasks.dashboard_feed import DashboardFeed, dashboard_reachable

#: (kind, data, key, description) of each artifact of a flow run, in the order of creation.
Published = list[tuple[str, Any, Optional[str], str]]


@pytest.fixture
def reachable_dashboard(prefect_api_url: str) -> Iterator[str]:
    """The session's server, found reachable by a real dashboard feed (a hello it answered),
    as at the end of a run whose progress reached it; the feeds' shared state restored after."""
    before = dashboard_feed._reachable

    def hello(client: SyncPrefectClient, _value: float) -> None:
        client.hello()

    feed = DashboardFeed(hello, what="hello", logger=logging.getLogger("test"))
    feed.put(0.0)
    feed.close(timeout=30)
    assert dashboard_reachable() is True
    yield prefect_api_url
    dashboard_feed._reachable = before


@flow(name="gdflow-test-publish-run-report", persist_result=False)
def publish_in_a_flow(database_url: str, run_id: int, seconds: Optional[float] = None) -> str:
    """Publish run `run_id`'s report in a flow run of its own; return the flow run's id."""
    publish_run_report(database_url, run_id, seconds=seconds)
    return str(flow_run.id)


def publish(api_url: str, database_url: str, run_id: int, **kwargs: Any) -> Published:
    """Publish in a flow run on the server; its artifacts read back, oldest first."""
    flow_run_id = publish_in_a_flow(database_url, run_id, **kwargs)
    with SyncPrefectClient(api=api_url) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            sort=ArtifactSort.CREATED_DESC,
        )
    return [
        (
            str(a.type),
            json.loads(a.data) if isinstance(a.data, str) and a.type == "table" else a.data,
            a.key,
            str(a.description),
        )
        for a in reversed(artifacts)
    ]


def record_run(
    database_url: str,
    *,
    losses: list[float],
    val_accuracies: Optional[list[Optional[float]]] = None,
    evaluation: Optional[dict[str, Any]] = None,
    classes: Optional[list[Any]] = None,
) -> int:
    """A completed run with one metrics row per loss (epochs 1..n)."""
    names = ["w", "b"]
    with Session(open_database(database_url)) as session, session.begin():
        run_id = create_run(
            session,
            config={"lr": 0.1, "epochs": len(losses)},
            data_source="data.csv",
            parameter_names=names,
        )
        if classes is not None:
            update_run(session, run_id=run_id, model="softmax", task="classification")
            update_run(session, run_id=run_id, classes=classes)
        accuracies = val_accuracies or [None] * len(losses)
        append_metrics(
            session,
            run_id=run_id,
            rows=[
                MetricRow(
                    epoch=epoch,
                    loss=loss,
                    params={"w": 1.0 + epoch, "b": 0.5},
                    val_loss=None if accuracy is None else loss * 1.1,
                    val_accuracy=accuracy,
                )
                for epoch, (loss, accuracy) in enumerate(zip(losses, accuracies), start=1)
            ],
        )
        finish_run(
            session,
            run_id=run_id,
            outcome=RunOutcome(
                status=RunStatus.COMPLETED,
                stop_reason="max_epochs",
                epochs_done=len(losses),
                final_loss=losses[-1],
                final_params={"w": 1.0 + len(losses), "b": 0.5},
                evaluation=evaluation,
            ),
        )
    return run_id


def by_description(published: Published) -> dict[str, tuple[str, Any]]:
    return {description: (kind, data) for kind, data, _key, description in published}


def decoded_images(markdown: str) -> list[str]:
    return [
        base64.b64decode(data).decode("utf-8")
        for data in re.findall(r"\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    ]


def test_regression_run_publishes_the_same_artifacts_as_before(
    database_url: str, reachable_dashboard: str
) -> None:
    losses = [11.0 * 0.75**k for k in range(30)]
    run_id = record_run(database_url, losses=losses)
    published = publish(reachable_dashboard, database_url, run_id, seconds=1.5)
    artifacts_ = by_description(published)
    assert [kind for kind, *_ in published] == ["markdown", "markdown", "table", "markdown"]
    kind, curve = artifacts_[f"gdflow run {run_id}: loss curve"]
    epochs = list(range(1, 31))
    expected = loss_curve_markdown(epochs, losses, title=f"Run {run_id}: training loss")
    assert kind == "markdown" and curve == expected
    assert len(decoded_images(curve)) == 1
    params: list[dict[str, Optional[float]]] = [{"w": 1.0 + e, "b": 0.5} for e in epochs]
    kind, rows = next(
        v
        for d, v in artifacts_.items()
        if d.endswith("per-epoch metrics (sampled; all epochs are in the database)")
    )
    assert kind == "table"
    assert rows == metrics_table_rows(epochs, losses, params, ["w", "b"], max_rows=200)
    summary = artifacts_[f"gdflow run {run_id}: summary"][1]
    assert "Confusion matrix" not in summary and "accuracy" not in summary
    kind, trend, key, _description = published[-1]
    assert key == "gdflow-trend-data-csv"
    assert trend.startswith("## Runs on data\\.csv\n")


def test_classifier_run_has_the_accuracy_curve_and_confusion_matrices(
    database_url: str, reachable_dashboard: str
) -> None:
    classes = ["<b>", "a|b", "c"]
    losses = [1.1 * 0.9**k for k in range(12)]
    accuracies: list[Optional[float]] = [min(1.0, 0.3 + 0.07 * k) for k in range(12)]
    accuracies[3] = None  # an epoch without a recorded accuracy is skipped, not drawn at 0
    evaluation = {
        "classes": classes,
        "train_loss": losses[-1],
        "train": {"log_loss": 0.35, "accuracy": 0.9, "macro_f1": 0.88,
                  "confusion_matrix": [[5, 1, 0], [0, 4, 1], [0, 0, 9]]},
        "validation": {"log_loss": 0.4, "accuracy": 0.8, "macro_f1": 0.79,
                       "confusion_matrix": [[2, 0, 1], [1, 1, 0], [0, 0, 3]]},
        "optimum": {"loss": 0.3, "relative_gap": 0.05, "reason": None},
        "predictions": [],
    }  # fmt: skip
    run_id = record_run(
        database_url,
        losses=losses,
        val_accuracies=accuracies,
        evaluation=evaluation,
        classes=classes,
    )
    published = publish(reachable_dashboard, database_url, run_id)
    artifacts_ = by_description(published)
    assert f"gdflow run {run_id}: loss curve" not in artifacts_
    kind, curve = artifacts_[f"gdflow run {run_id}: loss curve and validation accuracy"]
    assert kind == "markdown"
    assert curve.startswith(f"### Run {run_id}: training loss\n")
    assert f"\n### Run {run_id}: validation accuracy\n" in curve
    loss_svg, accuracy_svg = decoded_images(curve)
    assert ">loss<" in loss_svg or ">loss (log scale)<" in loss_svg
    assert ">validation accuracy<" in accuracy_svg and ">1<" in accuracy_svg
    points = re.search(r'<polyline [^>]*points="([^"]+)"', accuracy_svg)
    assert points is not None and len(points.group(1).split()) == 11
    summary = artifacts_[f"gdflow run {run_id}: summary"][1]
    assert "#### Confusion matrix (validation)" in summary
    assert "| &lt;b&gt; | 2 | 0 | 1 |" in summary and "| a\\|b | 1 | 1 | 0 |" in summary
    assert "<b>" not in summary
    assert [kind for kind, *_ in published] == ["markdown", "markdown", "table", "markdown"]


def test_classifier_without_a_validation_split_has_only_the_loss_curve(
    database_url: str, reachable_dashboard: str
) -> None:
    losses = [0.7, 0.6, 0.5]
    run_id = record_run(database_url, losses=losses, classes=[0, 1])
    published = publish(reachable_dashboard, database_url, run_id)
    kind, curve = by_description(published)[f"gdflow run {run_id}: loss curve"]
    expected = loss_curve_markdown([1, 2, 3], losses, title=f"Run {run_id}: training loss")
    assert curve == expected


def test_curves_description() -> None:
    assert curves_description(4, None) == "gdflow run 4: loss curve"
    assert curves_description(4, [None, None]) == "gdflow run 4: loss curve"
    assert curves_description(4, [None, 0.5]) == "gdflow run 4: loss curve and validation accuracy"
