"""Bridge from training to storage: open a run, write epoch chunks, record how the run ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from storage import (
    DatabaseError,
    MetricBatch,
    RunStatus,
    append_metric_batch,
    create_run,
    find_run_id,
    finish_run,
    get_run,
    make_engine,
)
from tasks.errors import GdflowError
from tasks.training import EpochChunk


def open_database(url: str) -> Engine:
    """An engine with the schema in place; DatabaseError becomes a one-line GdflowError."""
    try:
        return make_engine(url)
    except DatabaseError as exc:
        raise GdflowError(str(exc)) from None


def start_run(
    url: str,
    *,
    config: dict[str, Any],
    data_source: str,
    flow_run_id: Optional[str],
    flow_run_name: Optional[str],
    sweep_id: Optional[int] = None,
) -> int:
    """Insert the run in status `running` (committed at once) and return its id."""
    engine = open_database(url)
    try:
        with Session(engine) as session, session.begin():
            return create_run(
                session,
                config=config,
                data_source=data_source,
                parameter_names=[],
                flow_run_id=flow_run_id,
                flow_run_name=flow_run_name,
                sweep_id=sweep_id,
            )
    finally:
        engine.dispose()


@dataclass
class MetricWriter:
    """Chunk callback for `fit`: writes each chunk in its own short transaction."""

    engine: Engine
    run_id: int
    written: int = 0

    def __call__(self, chunk: EpochChunk) -> None:
        """Insert one row per epoch of the chunk (epochs already stored are skipped)."""
        batch = MetricBatch(
            epochs=chunk.epochs.tolist(),
            losses=chunk.losses.tolist(),
            names=chunk.names,
            params=chunk.params.tolist(),
            grad_norms=chunk.grad_norms.tolist(),
            lrs=chunk.lrs.tolist(),
            val_losses=None if chunk.val_losses is None else chunk.val_losses.tolist(),
        )
        with Session(self.engine) as session, session.begin():
            self.written += append_metric_batch(session, run_id=self.run_id, batch=batch)


def end_run(url: str, *, run_id: int, status: RunStatus, **fields: Any) -> None:
    """Record the run's outcome and summary in one transaction."""
    engine = open_database(url)
    try:
        with Session(engine) as session, session.begin():
            finish_run(session, run_id=run_id, status=status, **fields)
    finally:
        engine.dispose()


def status_for(exc: BaseException) -> RunStatus:
    """The run status an exception leaves behind: cancelled for interrupts, else failed."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) or type(exc).__name__ in {
        "TerminationSignal",
        "CancelledRun",
    }:
        return RunStatus.CANCELLED
    return RunStatus.FAILED


def mark_unfinished(url: str, *, flow_run_id: str, state_type: str, message: str) -> None:
    """Give a run still `running` the status of its ended flow run (failed, crashed, cancelled)."""
    status = {
        "crashed": RunStatus.CRASHED,
        "cancelled": RunStatus.CANCELLED,
        "cancelling": RunStatus.CANCELLED,
    }.get(state_type, RunStatus.FAILED)
    engine = open_database(url)
    try:
        with Session(engine) as session, session.begin():
            run_id = find_run_id(session, flow_run_id=flow_run_id)
            run = get_run(session, run_id=run_id) if run_id is not None else None
            if run is None or run.status != RunStatus.RUNNING.value:
                return
            finish_run(
                session,
                run_id=run.id,
                status=status,
                stop_reason="error" if status is RunStatus.FAILED else status.value,
                error=message,
            )
    finally:
        engine.dispose()
