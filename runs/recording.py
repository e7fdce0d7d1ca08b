"""Bridge from training to storage: open a run, write epoch chunks, record how the run ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.config.errors import GdflowError
from gdflow.runs.liveness import current_owner, owner_alive
from gdflow.storage import (
    DatabaseError,
    MetricBatch,
    RunStatus,
    append_metric_batch,
    create_run,
    find_run_id,
    finish_run,
    get_run,
    make_engine,
    restart_run,
    retry_transient,
    running_runs,
)
from gdflow.training.records import EpochChunk


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
) -> tuple[int, bool]:
    """Record the run in status `running` (committed at once); return its id and whether it
    restarts a run already recorded for this flow run (a retry: its epochs are cleared)."""
    owner = current_owner()

    def write() -> tuple[int, bool]:
        with Session(engine) as session, session.begin():
            existing = find_run_id(session, flow_run_id=flow_run_id) if flow_run_id else None
            if existing is not None:
                restart_run(session, run_id=existing, owner=owner)
                return existing, True
            run_id = create_run(
                session,
                config=config,
                data_source=data_source,
                parameter_names=[],
                flow_run_id=flow_run_id,
                flow_run_name=flow_run_name,
                sweep_id=sweep_id,
                owner=owner,
            )
            return run_id, False

    engine = open_database(url)
    try:
        return retry_transient(write, what="recording the run's start")
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

        def write() -> int:
            with Session(self.engine) as session, session.begin():
                return append_metric_batch(session, run_id=self.run_id, batch=batch)

        first, last = (batch.epochs[0], batch.epochs[-1]) if batch.epochs else (0, 0)
        self.written += retry_transient(write, what=f"writing epochs {first}-{last}")


def end_run(url: str, *, run_id: int, status: RunStatus, **fields: Any) -> None:
    """Record the run's outcome and summary in one transaction."""
    engine = open_database(url)

    def write() -> None:
        with Session(engine) as session, session.begin():
            finish_run(session, run_id=run_id, status=status, **fields)

    try:
        retry_transient(write, what="recording the run's outcome")
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


def reconcile_runs(url: str) -> list[int]:
    """Mark `crashed` every run left `running` by a process of this host that is gone (killed,
    or died without recording its end); return their ids. Runs of other hosts are left alone."""
    engine = open_database(url)
    try:
        with Session(engine) as session, session.begin():
            crashed = []
            for run in running_runs(session):
                if owner_alive(run.host, run.pid, run.pid_started):
                    continue
                finish_run(
                    session,
                    run_id=run.id,
                    status=RunStatus.CRASHED,
                    stop_reason=RunStatus.CRASHED.value,
                    error=f"crashed: its process {run.pid} on {run.host} ended without "
                    f"recording an outcome (killed?) after {run.epochs_done} epoch(s)",
                )
                crashed.append(run.id)
            return crashed
    finally:
        engine.dispose()
