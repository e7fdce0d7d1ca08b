"""The `train` flow: load-data -> initialize-weight -> train -> evaluate-prediction -> persist."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from storage import RunStatus, default_database_url, mask_url
from tasks.config import TrainConfig
from tasks.devices import resolve_device
from tasks.errors import DivergedError
from tasks.pipeline import evaluate_prediction, initialize_weight, load_data, persist, train
from tasks.recording import end_run, start_run, status_for


def _flow_run_name() -> str:
    """Name each flow run after its data, learning rate, device and epochs."""
    config = flow_run.parameters.get("config")
    if not isinstance(config, TrainConfig):
        config = TrainConfig.model_validate(config or {})
    return config.run_name()


def _record_failure(url: str, run_id: int, exc: BaseException) -> None:
    """Mark the run failed or cancelled; never let the bookkeeping hide the original error."""
    try:
        status = status_for(exc)
        end_run(
            url,
            run_id=run_id,
            status=status,
            stop_reason="error" if status is RunStatus.FAILED else status.value,
            error=str(exc) or type(exc).__name__,
        )
    except Exception as bookkeeping:  # noqa: BLE001 - the original error matters more
        get_run_logger().warning("Could not record run %d as failed: %s", run_id, bookkeeping)


@flow(name="train", flow_run_name=_flow_run_name, validate_parameters=True)
def train_flow(config: TrainConfig = TrainConfig()) -> dict[str, Any]:
    """Train a linear model by gradient descent and record every epoch in the database."""
    logger = get_run_logger()
    url = config.database_url or default_database_url()
    run_id = start_run(
        url,
        config=config.model_dump(mode="json"),
        data_source=config.data_source,
        flow_run_id=flow_run.id,
        flow_run_name=flow_run.name,
    )
    logger.info("Run %d recording to %s", run_id, mask_url(url))
    try:
        device = str(resolve_device(config.device))
        if config.device == "auto":
            logger.info("Device 'auto' resolved to %s", device)
        dataset = load_data(config)
        initial = initialize_weight(config, dataset.feature_names)
        result = train(
            config, dataset, initial, device=device, run_id=run_id, database_url=url
        )
        evaluation = None
        if result.stop_reason != "diverged":
            evaluation = evaluate_prediction(config, dataset, result.final_params)
        status = persist(
            run_id=run_id, database_url=url, result=result, evaluation=evaluation
        )
        if status is RunStatus.DIVERGED:
            raise DivergedError(
                f"run {run_id} diverged: the loss became NaN or infinite at epoch "
                f"{result.diverged_at}, so the learning rate {config.lr:g} is too large; "
                f"lower --lr (e.g. --lr {config.lr / 10:g})"
            )
    except DivergedError:
        raise
    except BaseException as exc:
        _record_failure(url, run_id, exc)
        raise
    logger.info(
        "Run %d completed: %d epochs (%s), final loss %.6g; metrics: gdflow metrics %d",
        run_id,
        result.epochs_done,
        result.stop_reason,
        result.final_loss,
        run_id,
    )
    return {
        "run_id": run_id,
        "status": status.value,
        "epochs_done": result.epochs_done,
        "stop_reason": result.stop_reason,
        "final_loss": result.final_loss,
        "final_params": result.final_params,
        "evaluation": evaluation,
        "database_url": mask_url(url),
    }
