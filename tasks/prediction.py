"""The four Prefect tasks of a prediction batch (load-model -> load-input -> predict -> write),
each a thin wrapper over `gdflow.registry`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.orm import Session

from gdflow.config.errors import one_line
from gdflow.config.predict import PredictConfig
from gdflow.data.dataset import read_table
from gdflow.data.fingerprint import file_fingerprint
from gdflow.data.sources import local_copy
from gdflow.registry.predictor import Predictor
from gdflow.registry.scoring import Scored, score, summary, write_table
from gdflow.registry.versions import ModelRef, describe, load_predictor, resolve
from gdflow.runs.recording import open_database
from gdflow.storage import ModelVersion, record_prediction
from gdflow.storage.retry import in_transaction
from gdflow.tasks.pipeline import retry_unless_user_error


@dataclass(frozen=True)
class LoadedModel:
    """A version's record and its model."""

    name: str
    version: int
    what: str
    predictor: Predictor


@task(name="load-model", cache_policy=NO_CACHE)
def load_model(config: PredictConfig, *, database_url: str) -> LoadedModel:
    """Resolve NAME[@ALIAS|:VERSION] and load the version's file (checksum verified)."""
    ref = ModelRef.parse(config.model)
    with Session(open_database(database_url)) as session:
        version: ModelVersion = resolve(session, ref)
        session.expunge(version)
    predictor = load_predictor(version, store_url=config.model_store)
    get_run_logger().info(
        "Loaded %s (%s, %s on %d feature(s)) for %s",
        describe(version),
        version.family,
        version.task,
        len(version.feature_names),
        ref,
    )
    return LoadedModel(version.name, version.version, describe(version), predictor)


@task(
    name="load-input",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def load_input(config: PredictConfig) -> InputTable:
    """The table to score, as read from --data (local or an fsspec URL), and its fingerprint."""
    with local_copy(config.data) as local:
        frame = read_table(str(local), delimiter=config.delimiter)
        found = file_fingerprint(local)
    get_run_logger().info("Read %d row(s) x %d column(s) from %s", *frame.shape, config.data)
    return InputTable(frame, found)


@dataclass(frozen=True)
class InputTable:
    """The rows of --data to score, and the fingerprint of what was read."""

    frame: Any
    fingerprint: str


@task(name="predict", cache_policy=NO_CACHE)
def predict_rows(config: PredictConfig, model: LoadedModel, frame: Any) -> Scored:
    """Score the rows; invalid ones fail the batch, or are skipped and counted."""
    scored = score(
        model.predictor, frame, on_invalid=config.on_invalid, source=config.data, what=model.what
    )
    if scored.skipped:
        get_run_logger().warning(
            "Skipped %d of %d row(s) with invalid features", scored.skipped, scored.rows_in
        )
    return scored


@task(name="write", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def write_predictions(
    config: PredictConfig,
    model: LoadedModel,
    scored: Scored,
    *,
    database_url: str,
    flow_run_id: Optional[str],
    input_fingerprint: str,
) -> dict[str, Any]:
    """Write the scored rows (whole or not at all) and record the batch."""
    output = write_table(scored.frame, config.output_path)
    batch = _record_batch(
        config,
        model,
        database_url=database_url,
        flow_run_id=flow_run_id,
        input_fingerprint=input_fingerprint,
        output_path=str(output),
        rows_in=scored.rows_in,
        rows_out=scored.rows_out,
        rows_skipped=scored.skipped,
        status="completed",
    )
    get_run_logger().info(
        "Wrote %d prediction(s) of %s to %s (batch %d)", scored.rows_out, model.what, output, batch
    )
    return {**summary(scored, output, model.what), "batch_id": batch}


def record_failed_batch(
    config: PredictConfig,
    model: LoadedModel,
    exc: BaseException,
    *,
    database_url: str,
    flow_run_id: Optional[str],
) -> None:
    """Record a batch that failed after its model was loaded: nothing was written."""
    try:
        _record_batch(
            config,
            model,
            database_url=database_url,
            flow_run_id=flow_run_id,
            rows_in=0,
            rows_out=0,
            status="failed",
            error=one_line(str(exc) or type(exc).__name__),
        )
    except Exception as bookkeeping:  # noqa: BLE001 - the batch's own error matters more
        get_run_logger().warning("Could not record the failed batch: %s", bookkeeping)


def _record_batch(
    config: PredictConfig,
    model: LoadedModel,
    *,
    database_url: str,
    flow_run_id: Optional[str],
    **fields: Any,
) -> int:
    """Record one batch of `model` on `config.data` (its outcome in `fields`); its id."""

    def write(session: Session) -> int:
        return record_prediction(
            session,
            name=model.name,
            version=model.version,
            flow_run_id=flow_run_id,
            input_path=config.data,
            **fields,
        )

    return in_transaction(open_database(database_url), write, what="recording the batch")
