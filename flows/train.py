"""The `train` flow: load-data -> initialize-weight -> train -> evaluate-prediction -> persist."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.runtime import flow_run as current_run
from prefect.states import Cancelled, State
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.config.errors import DivergedError
from gdflow.config.settings import Settings
from gdflow.config.train import TrainConfig, safe_label
from gdflow.data.dataset import Dataset
from gdflow.data.drift import profile
from gdflow.flows.orphans import crash_flow_runs
from gdflow.registry import data_checks
from gdflow.runs.recording import (
    RunRef,
    end_run,
    failure_outcome,
    mark_unfinished,
    open_database,
    reconcile_runs,
    record_checks,
    record_data,
    skip_run,
    start_run,
    unchanged_since,
)
from gdflow.runs.status import (
    ends_training_early,
    status_of_exception,
    status_of_state,
    status_of_stop,
)
from gdflow.storage import RunStatus, mask_url
from gdflow.tasks.artifacts import publish_model_report, publish_run_report
from gdflow.tasks.events import emit
from gdflow.tasks.pipeline import (
    evaluate_prediction,
    initialize_weight,
    load_data,
    persist,
    release_data,
    train_model,
)
from gdflow.tasks.retention import prune_after_run
from gdflow.training.devices import resolve_device
from gdflow.training.result import TrainResult


def _config_of(parameters: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a flow run from its parameters (a model, a dict or nothing)."""
    config = parameters.get("config")
    if isinstance(config, TrainConfig):
        return config
    return TrainConfig.model_validate(config or {})


def _flow_run_name() -> str:
    """Name each flow run after its data, learning rate, device and epochs."""
    return _config_of(current_run.parameters).run_name()


def run_tags(config: TrainConfig, device: str) -> list[str]:
    """Tags that tell runs apart in the Prefect UI: data source, learning rate, device."""
    data = safe_label(Path(config.data).name) if config.data else "toy"
    return [f"data:{data}", f"lr:{config.lr_label}", f"device:{device}", "gdflow"]


def _tag_flow_run(tags: list[str]) -> None:
    """Add tags to the current flow run (whatever started it: CLI, deployment or UI): one
    request, its own tags (a deployment's, `prefect.tags`) taken from the run's context."""
    run_id = current_run.id
    if run_id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, tags=sorted(set(current_run.tags) | set(tags)))
    except Exception as exc:  # noqa: BLE001 - tags are a convenience, never a failure
        get_run_logger().warning("Could not tag the flow run: %s", exc)


def _on_unfinished(flow: Any, flow_run: FlowRun, state: State) -> None:
    """State hook: a failed, crashed or cancelled flow run leaves no gdflow run `running`."""
    try:
        config = _config_of(flow_run.parameters or {})
    except Exception:  # noqa: BLE001 - invalid parameters: no gdflow run was started
        return
    settings = Settings.load(database_url=config.database_url)
    mark_unfinished(
        open_database(settings.database_url),
        flow_run_id=str(flow_run.id),
        outcome=failure_outcome(status_of_state(state.type), state.message or state.name or ""),
    )


def _reconcile(engine: Engine) -> None:
    """Record `crashed` the runs of this host whose process is gone (a worker killed with its
    flow run: nothing else would) and tell Prefect, which still shows them Running."""
    crashed = reconcile_runs(engine)
    if crashed:
        get_run_logger().warning(
            "Run(s) %s were left running by a process that is gone: recorded crashed",
            ", ".join(map(str, crashed)),
        )
        crash_flow_runs(engine, crashed, current=str(current_run.id) if current_run.id else None)


def _start(config: TrainConfig, settings: Settings, sweep_id: Optional[int]) -> RunRef:
    """Record the run in status `running` and say where it records; a retry of this flow run
    restarts its run."""
    logger = get_run_logger()
    engine = open_database(settings.database_url)
    _reconcile(engine)
    run_id, restarted = start_run(
        engine,
        config=config.public_dict(),
        data_source=config.data_source,
        flow_run_id=current_run.id,
        flow_run_name=current_run.name,
        sweep_id=sweep_id,
    )
    if restarted:
        logger.info(
            "Run %d restarts for a retry of this flow run; its epochs are rewritten", run_id
        )
    logger.info("Run %d recording to %s", run_id, settings.shown_database_url)
    return RunRef(run_id=run_id, database_url=settings.database_url)


def _device(config: TrainConfig) -> str:
    """The device this run trains on ('auto' resolved and logged): the workers' CPUs for a
    run on a Dask cluster, whatever the driver has."""
    device = "cpu" if config.dask_address else str(resolve_device(config.device))
    if config.device == "auto":
        get_run_logger().info("Device 'auto' resolved to %s", device)
    return device


def _evaluate(
    config: TrainConfig, dataset: Dataset, result: TrainResult
) -> Optional[dict[str, Any]]:
    """The evaluation of the trained parameters; none for a run that diverged or was cancelled."""
    if ends_training_early(status_of_stop(result.stop_reason)):
        return None
    return evaluate_prediction(config, dataset, result.final_params)


def _record_failure(run: RunRef, exc: BaseException) -> None:
    """Mark the run failed or cancelled; never let the bookkeeping hide the original error."""
    try:
        outcome = failure_outcome(status_of_exception(exc), str(exc) or type(exc).__name__)
        end_run(open_database(run.database_url), run_id=run.run_id, outcome=outcome)
    except Exception as bookkeeping:  # noqa: BLE001 - the original error matters more
        get_run_logger().warning("Could not record run %d as failed: %s", run.run_id, bookkeeping)


def _diverged_message(run_id: int, result: TrainResult, dtype: str) -> str:
    """What diverged and what to change: the data when the very first loss overflows (it is
    the initial parameters' loss, before any step), else the learning rate."""
    head = f"run {run_id} diverged ({result.verdict_detail})"
    if result.diverged_at == 1 and result.diverged_because == "nonfinite_loss":
        return (
            f"{head}: the loss of the initial parameters overflows {dtype}, before any step; "
            "divide the data's large columns by a power of ten or use a smaller --init"
        )
    advice = f"e.g. --lr {result.lr / 10:g}"
    if result.max_stable_lr and result.max_stable_lr < result.lr:
        advice = f"below {result.max_stable_lr:.3g}, its stability bound on this data"
    return f"{head}: the learning rate {result.lr:g} is too large; lower --lr ({advice})"


def _cancelled(run_id: int, result: TrainResult) -> State[Any]:
    """The Cancelled state of a run that a signal stopped, its recorded epochs named."""
    message = (
        f"run {run_id} cancelled: {result.verdict_detail}; its {result.epochs_done} "
        f"epoch(s) are recorded: gdflow metrics {run_id}"
    )
    get_run_logger().warning(message[0].upper() + message[1:])
    return Cancelled(message=message)


def _summary(
    run: RunRef, result: TrainResult, evaluation: Optional[dict[str, Any]]
) -> dict[str, Any]:
    """The completed run's summary (the flow's result), logged in one line."""
    get_run_logger().info(
        "Run %d completed: %d epochs (%s), final loss %.6g; metrics: gdflow metrics %d",
        run.run_id,
        result.epochs_done,
        result.stop_reason,
        result.final_loss,
        run.run_id,
    )
    return {
        "run_id": run.run_id,
        "status": RunStatus.COMPLETED.value,
        "epochs_done": result.epochs_done,
        "stop_reason": result.stop_reason,
        "final_loss": result.final_loss,
        "final_params": result.final_params,
        "evaluation": evaluation,
        "database_url": mask_url(run.database_url),
    }


def _check_data(config: TrainConfig, dataset: Dataset, run: RunRef) -> None:
    """Check the data against the champion's training data before anything trains: record
    the checks on the run, log what they found, and fail the run when one fails."""
    x = dataset.x if dataset.x_val is None else np.concatenate([dataset.x, dataset.x_val])
    engine = open_database(run.database_url)
    with Session(engine) as session:
        base = data_checks.baseline(session, config.model_name)
    checks = data_checks.check(
        config,
        base=base,
        columns=list((dataset.fingerprint or {}).get("columns") or []),
        x=x,
        feature_names=dataset.feature_names,
        classes=dataset.classes,
    )
    record_checks(
        engine, run_id=run.run_id, profile=profile(x, dataset.feature_names), checks=checks
    )
    _emit_checks(config.model_name, run.run_id, checks)
    logger = get_run_logger()
    if checks.get("baseline") is None:
        logger.info("Data checks: %s", checks.get("reason"))
    for change in checks.get("schema_changes") or []:
        logger.warning("Schema change against the champion's training data: %s", change)
    for name in checks.get("drifted") or []:
        found = checks["drift"][name]
        logger.warning(
            "Feature %s drifted from the champion's training data: PSI %.3g, mean shift %.3g",
            name,
            found["psi"],
            found["mean_shift"],
        )
    data_checks.raise_if_failed(checks)


def _emit_checks(name: str, run_id: int, checks: dict[str, Any]) -> None:
    """The alerts of the data checks: schema changed, features drifted (with their figures)."""
    common = {"run_id": run_id, "baseline": checks.get("baseline"), "failed": checks.get("failed")}
    if checks.get("schema_changes"):
        emit(
            "gdflow.data.schema-changed",
            name=name,
            payload={**common, "changes": checks["schema_changes"]},
        )
    if checks.get("drifted"):
        features = {f: checks["drift"][f] for f in checks["drifted"]}
        emit(
            "gdflow.data.drift",
            name=name,
            payload={**common, "features": features, "thresholds": checks.get("thresholds")},
        )


def _skipped(run: RunRef, same_as: int, name: str) -> dict[str, Any]:
    """--skip-unchanged found nothing new: the run is recorded skipped, pointing at `same_as`."""
    skip_run(open_database(run.database_url), run_id=run.run_id, same_as=same_as)
    emit("gdflow.run.skipped", name=name, payload={"run_id": run.run_id, "same_as": same_as})
    get_run_logger().info(
        "Run %d skipped: the data and the training options are those of run %d "
        "(--skip-unchanged); nothing to train",
        run.run_id,
        same_as,
    )
    publish_run_report(run.database_url, run.run_id)
    return {
        "run_id": run.run_id,
        "status": RunStatus.SKIPPED.value,
        "same_as": same_as,
        "epochs_done": 0,
        "database_url": mask_url(run.database_url),
    }


@flow(
    name="train",
    flow_run_name=_flow_run_name,
    validate_parameters=True,
    on_failure=[_on_unfinished],
    on_crashed=[_on_unfinished],
    on_cancellation=[_on_unfinished],
)
def train_flow(
    config: TrainConfig = TrainConfig(),  # noqa: B008 - a frozen model, safe as a default
    sweep_id: Optional[int] = None,
) -> dict[str, Any] | State[Any]:
    """Train a linear model by gradient descent and record every epoch in the database;
    return the run's summary, or a Cancelled state when a signal stopped training."""
    settings = Settings.load(database_url=config.database_url, model_store=config.model_store)
    run = _start(config, settings, sweep_id)
    result: Optional[TrainResult] = None
    dataset: Optional[Dataset] = None
    try:
        device = _device(config)
        _tag_flow_run(run_tags(config, device))
        dataset = load_data(config)
        if dataset.fingerprint is not None:
            record_data(
                open_database(run.database_url),
                run_id=run.run_id,
                fingerprint=dataset.fingerprint,
                model_name=config.model_name,
            )
        if config.skip_unchanged:
            same_as = unchanged_since(
                open_database(run.database_url),
                run_id=run.run_id,
                config=config,
                data_hash=(dataset.fingerprint or {}).get("sha256"),
            )
            if same_as is not None:
                skipped = _skipped(run, same_as, config.model_name)
                prune_after_run(config, run, in_sweep=sweep_id is not None)
                return skipped
        _check_data(config, dataset, run)
        initial = initialize_weight(
            config, dataset.feature_names, dataset.classes, database_url=run.database_url
        )
        result = train_model(config, dataset, initial, device=device, run=run)
        evaluation = _evaluate(config, dataset, result)
        persisted = persist(
            run=run,
            result=result,
            evaluation=evaluation,
            config=config,
            dataset=dataset,
            model_store=settings.model_store,
            flow_run_id=str(current_run.id) if current_run.id else None,
            scheduled_at=current_run.scheduled_start_time,
        )
    except BaseException as exc:
        _record_failure(run, exc)
        if isinstance(exc, Exception):
            publish_run_report(
                run.database_url, run.run_id, seconds=result.seconds if result else None
            )
        raise
    finally:
        release_data(dataset)  # a Dask cluster's rows, and a local cluster started for the run
    publish_run_report(run.database_url, run.run_id, seconds=result.seconds)
    prune_after_run(config, run, in_sweep=sweep_id is not None)
    if persisted.model is not None:
        publish_model_report(run.database_url, persisted.model["name"])
    if persisted.status is RunStatus.DIVERGED:
        message = _diverged_message(run.run_id, result, config.dtype)
        emit(
            "gdflow.run.diverged",
            name=config.model_name,
            payload={
                "run_id": run.run_id,
                "lr": result.lr,
                "max_stable_lr": result.max_stable_lr,
                "epoch": result.diverged_at,
                "message": message,
            },
        )
        raise DivergedError(message)
    if persisted.status is RunStatus.CANCELLED:
        return _cancelled(run.run_id, result)
    return {**_summary(run, result, evaluation), "model": persisted.model}
