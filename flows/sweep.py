"""The `sweep` flow: one `train` subflow per learning rate, some at a time, then a comparison."""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run as current_run
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.config.errors import GdflowError
from gdflow.config.settings import Settings
from gdflow.config.sweep import (
    DEFAULT_LRS,
    SweepConfig,
    best_run,
    comparison_rows,
    failure_message,
    run_lr,
    sweep_configs,
    sweep_name,
)
from gdflow.config.train import TrainConfig
from gdflow.flows.runners import describe, sweep_runner
from gdflow.flows.train import train_flow
from gdflow.reports.charts import loss_curves_svg, svg_data_uri
from gdflow.reports.comparisons import sweep_markdown
from gdflow.runs.recording import open_database
from gdflow.runs.status import status_of_exception
from gdflow.storage import (
    RunStatus,
    create_sweep,
    finish_sweep,
    get_metrics_sample,
    sweep_runs,
)
from gdflow.storage.retry import in_transaction
from gdflow.tasks.artifacts import CURVE_POINTS

#: Key of the sweep's markdown artifact (Prefect versions it across sweeps).
ARTIFACT_KEY = "gdflow-sweep"
#: Key of the sweep's comparison-table artifact.
TABLE_KEY = "gdflow-sweep-table"


def _sweep_of(parameters: dict[str, Any]) -> SweepConfig:
    """The SweepConfig of a flow run from its parameters (a model, a dict or nothing)."""
    sweep = parameters.get("sweep")
    if isinstance(sweep, SweepConfig):
        return sweep
    return SweepConfig.model_validate(sweep or {"lrs": list(DEFAULT_LRS)})


def _flow_run_name() -> str:
    """Name each sweep's flow run after its size, e.g. lr-sweep-3-runs."""
    return sweep_name(_sweep_of(current_run.parameters))


def train_and_report(config: TrainConfig, sweep_id: int, database: str) -> dict[str, Any]:
    """Run the `train` flow as a subflow; report how it ended, and where, instead of raising.

    `database` is the sweep's (masked) database URL: a worker that would record elsewhere
    (its own GDFLOW_DATABASE_URL) refuses to train rather than scatter the sweep's runs.
    """
    where = f"{socket.gethostname()} pid {os.getpid()}"
    report = {"lr": config.lr, "worker": where}
    mine = Settings.load(database_url=config.database_url).shown_database_url
    if mine != database:
        message = (
            f"the worker on {where} records to {mine}, not to the sweep's database "
            f"{database}: set GDFLOW_DATABASE_URL to the sweep's database on every worker"
        )
        return {**report, "status": "failed", "message": message}
    state = train_flow(config=config, sweep_id=sweep_id, return_state=True)
    if state.is_completed():
        return {**report, "status": "completed", "message": ""}
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        message = str(outcome) or type(outcome).__name__
    else:
        message = state.message or state.name or "the run failed"
    diverged = (
        isinstance(outcome, BaseException) and status_of_exception(outcome) is RunStatus.DIVERGED
    )
    status = "diverged" if diverged else "failed"
    return {**report, "status": status, "message": message.splitlines()[0]}


#: The task around train_and_report. The function keeps its own module-level name so that
#: Dask workers unpickle it by reference, with this module's globals (a function pickled by
#: value loses the names its annotations use, and the `train` flow's validation with them).
train_one = task(
    name="train-one", task_run_name="train-one-lr{config.lr:g}", cache_policy=NO_CACHE
)(train_and_report)


def _outcome(future: PrefectFuture[dict[str, Any]], lr: float) -> dict[str, Any]:
    """The task's report, or a failed one when the task itself failed."""
    future.wait()
    if future.state.is_completed():
        return future.result()
    error = future.state.result(raise_on_failure=False)
    message = str(error) if isinstance(error, BaseException) else future.state.message
    message = (message or "the run failed").splitlines()[0]
    return {"lr": lr, "worker": None, "status": "failed", "message": message}


def _train_all(
    configs: list[TrainConfig], sweep_id: int, sweep: SweepConfig, database: str
) -> list[dict[str, Any]]:
    """Train every config as a subflow on the sweep's runner (threads or Dask workers);
    `database` is the sweep's masked database URL, which each worker checks is its own."""
    with sweep_runner(sweep, len(configs)) as runner:
        futures: list[PrefectFuture[dict[str, Any]]] = [
            # Prefect 3.9's overloads of submit() mistype sync tasks on a typed runner.
            runner.submit(
                train_one,  # type: ignore[arg-type]
                {"config": c, "sweep_id": sweep_id, "database": database},
            )
            for c in configs
        ]
        return [_outcome(future, float(config.lr)) for future, config in zip(futures, configs)]


def _start(engine: Engine, sweep: SweepConfig) -> int:
    """Insert the sweep row (committed at once) and return its id."""

    def write(session: Session) -> int:
        return create_sweep(
            session,
            name=sweep_name(sweep),
            config={**sweep.model_dump(mode="json"), "base": sweep.base.public_dict()},
            flow_run_id=str(current_run.id) if current_run.id else None,
        )

    return in_transaction(engine, write, what="recording the sweep's start")


def _read_back(engine: Engine, sweep_id: int) -> dict[str, Any]:
    """The sweep's runs from the database: comparison rows, the best run and the loss curves."""
    with Session(engine) as session:
        runs = sweep_runs(session, sweep_id=sweep_id)
        best = best_run(runs)
        curves = []
        for run in sorted(runs, key=lambda r: (run_lr(r), r.id)):
            sample = get_metrics_sample(session, run_id=run.id, max_rows=CURVE_POINTS)
            label = f"run {run.id}: lr {run_lr(run):g} ({run.status})"
            curves.append((label, [m.epoch for m in sample], [m.loss for m in sample]))
        return {
            "rows": comparison_rows(runs),
            "best_run_id": best.id if best else None,
            "best_lr": run_lr(best) if best else None,
            "curves": curves,
        }


def _finish(engine: Engine, sweep_id: int, status: RunStatus, best_run_id: Optional[int]) -> None:
    """Record how the sweep ended and its best run."""

    def write(session: Session) -> None:
        finish_sweep(session, sweep_id=sweep_id, status=status, best_run_id=best_run_id)

    in_transaction(engine, write, what="recording the sweep's end")


def _publish(sweep_id: int, report: dict[str, Any]) -> None:
    """The comparison as a table artifact, and as markdown with the overlaid loss curves."""
    try:
        title = f"Sweep {sweep_id}: learning rates"
        markdown = sweep_markdown(report["rows"], best_run_id=report["best_run_id"], title=title)
        svg = loss_curves_svg(report["curves"], title=f"Sweep {sweep_id}: training loss by run")
        markdown += f"\n### Loss curves\n\n![loss curves]({svg_data_uri(svg)})\n"
        create_table_artifact(
            report["rows"], key=TABLE_KEY, description=f"gdflow sweep {sweep_id}: comparison"
        )
        create_markdown_artifact(
            markdown, key=ARTIFACT_KEY, description=f"gdflow sweep {sweep_id}: comparison"
        )
        # The table itself is not logged: `gdflow sweep` prints it, and would show it twice.
        get_run_logger().info(
            "Sweep %d: the comparison of its %d runs is in the artifacts %r and %r",
            sweep_id,
            len(report["rows"]),
            ARTIFACT_KEY,
            TABLE_KEY,
        )
    except Exception as exc:  # noqa: BLE001 - a report must not fail the sweep
        get_run_logger().warning("Could not publish the artifacts of sweep %d: %s", sweep_id, exc)


@flow(name="sweep", flow_run_name=_flow_run_name, validate_parameters=True)
def sweep_flow(
    sweep: SweepConfig = SweepConfig(lrs=list(DEFAULT_LRS)),  # noqa: B008 - frozen, safe
) -> dict[str, Any]:
    """Train the base config at every learning rate of the sweep and record which did best."""
    logger = get_run_logger()
    settings = Settings.load(database_url=sweep.base.database_url)
    engine = open_database(settings.database_url)
    configs = sweep_configs(sweep)
    sweep_id = _start(engine, sweep)
    logger.info(
        "Sweep %d: %d learning rates (%s) on %s, recording to %s",
        sweep_id,
        len(configs),
        ", ".join(f"{float(c.lr):g}" for c in configs),
        describe(sweep, len(configs)),
        settings.shown_database_url,
    )
    try:
        outcomes = _train_all(configs, sweep_id, sweep, settings.shown_database_url)
        report = _read_back(engine, sweep_id)
        best_id = report["best_run_id"]
        _finish(engine, sweep_id, RunStatus.COMPLETED if best_id else RunStatus.FAILED, best_id)
    except BaseException as exc:
        try:
            _finish(engine, sweep_id, status_of_exception(exc), None)
        except Exception as bookkeeping:  # noqa: BLE001 - the original error matters more
            logger.warning("Could not record sweep %d as failed: %s", sweep_id, bookkeeping)
        raise
    rows = report["rows"]
    for outcome in outcomes:
        where = outcome["worker"] or "an unknown worker"
        if outcome["status"] == "completed":
            logger.info("lr %g completed on %s", outcome["lr"], where)
        else:
            logger.warning(
                "lr %g %s on %s: %s", outcome["lr"], outcome["status"], where, outcome["message"]
            )
    _publish(sweep_id, report)
    if best_id is None:
        errors = [o["message"] for o in outcomes if o["status"] == "failed"]
        errors += [o["message"] for o in outcomes if o["status"] == "diverged"]
        raise GdflowError(failure_message(sweep_id, rows, errors))
    logger.info("Sweep %d: best run %d (lr %g)", sweep_id, best_id, report["best_lr"])
    return {
        "sweep_id": sweep_id,
        "status": RunStatus.COMPLETED.value,
        "best_run_id": best_id,
        "best_lr": report["best_lr"],
        "rows": rows,
        "outcomes": outcomes,
        "database_url": settings.shown_database_url,
    }
