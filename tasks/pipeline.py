"""The five Prefect tasks of a training run, each a thin wrapper over a plain function."""

from __future__ import annotations

from typing import Any, Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.orm import Session

from storage import RunStatus, update_run
from tasks.artifacts import ProgressArtifact
from tasks.config import TrainConfig
from tasks.data import Dataset, load_dataset
from tasks.devices import resolve_device
from tasks.errors import GdflowError
from tasks.evaluation import check_predict_rows, evaluate, prediction_line
from tasks.recording import MetricWriter, end_run, open_database
from tasks.training import (
    EpochChunk,
    TrainResult,
    fit,
    initial_parameters,
    parameter_names,
    progress_line,
)


def retry_unless_user_error(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry transient I/O failures only: a GdflowError will fail the same way again."""
    return not isinstance(getattr(state, "data", None), GdflowError)


@task(
    name="load-data",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def load_data(config: TrainConfig) -> Dataset:
    """Load the configured data and check it can train the configured model."""
    dataset = load_dataset(
        config.data, features=config.features, target=config.target, dtype=config.dtype
    )
    check_predict_rows(config.predict, dataset.n_features)
    get_run_logger().info(
        "Loaded %d rows x %d feature(s) %s -> %s from %s",
        dataset.n_rows,
        dataset.n_features,
        list(dataset.feature_names),
        dataset.target_name,
        dataset.source,
    )
    return dataset


@task(name="initialize-weight", cache_policy=NO_CACHE)
def initialize_weight(config: TrainConfig, feature_names: tuple[str, ...]) -> dict[str, float]:
    """Initial parameter values, named after the features."""
    names = parameter_names(feature_names, bias=config.bias)
    return initial_parameters(names, init=config.init, seed=config.seed)


@task(name="train", cache_policy=NO_CACHE)
def train(
    config: TrainConfig,
    dataset: Dataset,
    initial: dict[str, float],
    *,
    device: str,
    run_id: int,
    database_url: str,
) -> TrainResult:
    """Run gradient descent on `device`, writing epoch metrics to the database as it goes."""
    logger = get_run_logger()
    engine = open_database(database_url)
    try:
        with Session(engine) as session, session.begin():
            update_run(session, run_id=run_id, parameter_names=list(initial), device=device)
        writer = MetricWriter(engine=engine, run_id=run_id, lr=config.lr)
        progress = ProgressArtifact(
            config.epochs, description=f"gdflow run {run_id}: epochs done of {config.epochs}"
        )

        def on_chunk(chunk: EpochChunk) -> None:
            writer(chunk)
            _log_progress(logger, chunk, config.log_every)
            progress.update(int(chunk.epochs[-1]))

        result = fit(
            dataset.x,
            dataset.y,
            initial,
            lr=config.lr,
            epochs=config.epochs,
            device=resolve_device(device),
            tolerance=config.tolerance,
            on_chunk=on_chunk,
        )
    finally:
        engine.dispose()
    logger.info(
        "Stopped after %d epoch(s): %s (%.3f s on %s)",
        result.epochs_done,
        result.stop_reason
        if result.diverged_at is None
        else f"diverged at epoch {result.diverged_at}",
        result.seconds,
        result.device,
    )
    return result


def _log_progress(logger: Any, chunk: EpochChunk, every: int) -> None:
    """Log the seed's progress line for epochs 1, 1 + every, 1 + 2 * every, ..."""
    if every <= 0:
        return
    for i, epoch in enumerate(chunk.epochs.tolist()):
        if (epoch - 1) % every == 0:
            params = dict(zip(chunk.names, (float(v) for v in chunk.params[i])))
            logger.info(progress_line(epoch, params, float(chunk.losses[i])))


@task(name="evaluate-prediction", cache_policy=NO_CACHE)
def evaluate_prediction(
    config: TrainConfig, dataset: Dataset, params: dict[str, float]
) -> dict[str, Any]:
    """Predictions for the configured inputs, the training loss and the least-squares gap."""
    evaluation = evaluate(dataset.x, dataset.y, params, predict_rows=config.predict)
    logger = get_run_logger()
    for prediction in evaluation["predictions"]:
        logger.info(prediction_line(prediction))
    optimum = ", ".join(f"{k} = {v:.6g}" for k, v in evaluation["least_squares"]["params"].items())
    logger.info(
        "Least-squares optimum: %s (loss %.6g); distance to it %.3g, loss gap %.3g",
        optimum,
        evaluation["least_squares"]["loss"],
        evaluation["param_distance"],
        evaluation["loss_gap"],
    )
    return evaluation


@task(name="persist", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def persist(
    *,
    run_id: int,
    database_url: str,
    result: TrainResult,
    evaluation: Optional[dict[str, Any]],
) -> RunStatus:
    """Record the run's outcome, summary and evaluation in one transaction."""
    status = RunStatus.DIVERGED if result.stop_reason == "diverged" else RunStatus.COMPLETED
    error = None
    if result.diverged_at is not None:
        error = f"loss became NaN or infinite at epoch {result.diverged_at}"
    end_run(
        database_url,
        run_id=run_id,
        status=status,
        epochs_done=result.epochs_done,
        final_loss=result.final_loss,
        final_params=result.final_params,
        stop_reason=result.stop_reason,
        error=error,
        evaluation=evaluation,
    )
    return status
