"""Bridge from training to storage: open a run, write epoch chunks, record how the run ended.

Each operation takes the process's engine (`open_database`) and owns one short transaction,
retried on transient errors; the data functions of `storage` only ever see its session.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.config.errors import GdflowError
from gdflow.config.train import STEERING, TrainConfig
from gdflow.runs.liveness import current_owner, owner_alive, this_host
from gdflow.runs.status import status_of_stop, stop_reason_of
from gdflow.storage import (
    DatabaseError,
    MetricBatch,
    RunOutcome,
    RunStatus,
    append_metric_batch,
    crashed_runs_of_flow_runs,
    create_run,
    engine_for,
    find_run_id,
    finish_run,
    get_run,
    last_completed_run,
    mask_url,
    restart_run,
    running_runs,
    update_run,
)
from gdflow.storage.retry import in_transaction

if TYPE_CHECKING:  # types only: the read-only commands reconcile runs without importing torch
    from gdflow.training.conditioning import Conditioning
    from gdflow.training.records import EpochChunk
    from gdflow.training.result import TrainResult


#: How many of this host's latest crashed runs `gdflow repair` asks Prefect about again.
RECENT_CRASHES = 20
#: Set once a run of this process has its outcome in the database (see `outcome_recorded`).
_OUTCOME_RECORDED = threading.Event()


def outcome_recorded() -> bool:
    """True once a run of this process has recorded how it ended (whatever Prefect knows):
    from then on, nothing of the run is lost if the process ends."""
    return _OUTCOME_RECORDED.is_set()


@dataclass(frozen=True)
class RunRef:
    """Where a run is recorded: its id and its database (plain values, safe to hand to tasks);
    the repr masks the URL's password."""

    run_id: int
    database_url: str = field(repr=False)

    def __repr__(self) -> str:
        return f"RunRef(run_id={self.run_id}, database_url={mask_url(self.database_url)!r})"


def open_database(url: str) -> Engine:
    """This process's engine for `url`, schema checked; DatabaseError becomes a GdflowError."""
    try:
        return engine_for(url)
    except DatabaseError as exc:
        raise GdflowError(str(exc)) from None


def start_run(
    engine: Engine,
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

    def write(session: Session) -> tuple[int, bool]:
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

    return in_transaction(engine, write, what="recording the run's start")


def record_setup(
    engine: Engine,
    *,
    run_id: int,
    names: list[str],
    device: str,
    conditioning: Conditioning,
    model: str = "linear",
    task: str = "regression",
    classes: Optional[Sequence[Any]] = None,
) -> None:
    """Record what training is about to use: parameter names, device, the model and its task,
    a classifier's classes in order, and the data's conditioning (stability bound, condition
    number, warnings)."""

    def write(session: Session) -> None:
        update_run(
            session,
            run_id=run_id,
            parameter_names=names,
            device=device,
            max_stable_lr=conditioning.max_stable_lr,
            condition_number=conditioning.condition_number,
            warnings=conditioning.warnings,
            model=model,
            task=task,
            classes=None if classes is None else list(classes),
        )

    in_transaction(engine, write, what="recording the run's set-up")


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
            params=chunk.params,
            grad_norms=chunk.grad_norms.tolist(),
            lrs=chunk.lrs.tolist(),
            val_losses=None if chunk.val_losses is None else chunk.val_losses.tolist(),
            val_accuracies=(
                None if chunk.val_accuracies is None else chunk.val_accuracies.tolist()
            ),
        )

        def write(session: Session) -> int:
            return append_metric_batch(session, run_id=self.run_id, batch=batch)

        first, last = (batch.epochs[0], batch.epochs[-1]) if batch.epochs else (0, 0)
        self.written += in_transaction(self.engine, write, what=f"writing epochs {first}-{last}")


def outcome_of(result: TrainResult, evaluation: Optional[dict[str, Any]]) -> RunOutcome:
    """The outcome of a run whose training returned `result`: its status, summary and
    evaluation, with the verdict as the error of a run that did not complete."""
    status = status_of_stop(result.stop_reason)
    error = None if status is RunStatus.COMPLETED else f"{status.value}: {result.verdict_detail}"
    if result.lr_range_test is not None:  # how --lr auto chose a network's rate, kept with it
        evaluation = {**(evaluation or {}), "lr_range_test": result.lr_range_test}
    # How the loss was computed (on the rows, fused, or from their statistics) and whether the
    # rows were in memory or streamed, kept with it.
    evaluation = {
        **(evaluation or {}),
        "loss_path": result.loss_path,
        "data_mode": result.data_mode,
    }
    return RunOutcome(
        status=status,
        stop_reason=result.stop_reason,
        error=error,
        epochs_done=result.epochs_done,
        final_loss=result.final_loss,
        final_params=result.final_params,
        evaluation=evaluation,
        best_epoch=result.best_epoch,
        best_loss=result.best_loss,
    )


def failure_outcome(status: RunStatus, message: str) -> RunOutcome:
    """The outcome of a run ended by an error: its status, stop reason and message."""
    return RunOutcome(status=status, stop_reason=stop_reason_of(status), error=message)


def end_run(
    engine: Engine,
    *,
    run_id: int,
    outcome: RunOutcome,
    also: Optional[Callable[[Session], Any]] = None,
) -> Any:
    """Record the run's outcome and summary in one transaction, with `also(session)` (e.g. the
    record of the model the run saved) in the same transaction; return what `also` returns."""

    def write(session: Session) -> Any:
        finish_run(session, run_id=run_id, outcome=outcome)
        return also(session) if also is not None else None

    done = in_transaction(engine, write, what="recording the run's outcome")
    _OUTCOME_RECORDED.set()
    return done


def mark_unfinished(engine: Engine, *, flow_run_id: str, outcome: RunOutcome) -> None:
    """Give the run of a flow run the outcome of its ended flow run, if it is still `running`."""

    def write(session: Session) -> None:
        run_id = find_run_id(session, flow_run_id=flow_run_id)
        run = get_run(session, run_id=run_id) if run_id is not None else None
        if run is not None and run.status == RunStatus.RUNNING.value:
            finish_run(session, run_id=run.id, outcome=outcome)

    in_transaction(engine, write, what="recording the flow run's end")


def reconcile_runs(engine: Engine) -> list[int]:
    """Mark `crashed` every run left `running` by a process of this host that is gone (killed,
    or died without recording its end); return their ids. Runs of other hosts are left alone."""

    def write(session: Session) -> list[int]:
        crashed = []
        for run in running_runs(session):
            if owner_alive(run.host, run.pid, run.pid_started):
                continue
            message = (
                f"crashed: its process {run.pid} on {run.host} ended without "
                f"recording an outcome (killed?) after {run.epochs_done} epoch(s)"
            )
            finish_run(session, run_id=run.id, outcome=failure_outcome(RunStatus.CRASHED, message))
            crashed.append(run.id)
        return crashed

    return in_transaction(engine, write, what="reconciling runs of ended processes")


def crashed_earlier(engine: Engine, *, limit: int = RECENT_CRASHES) -> list[int]:
    """The latest runs of this host recorded `crashed` that belong to a Prefect flow run, newest
    first: a command that reconciled them while no Prefect server answered left their flow runs
    Running there (`gdflow repair` asks Prefect about them again)."""
    with Session(engine) as session:
        runs = crashed_runs_of_flow_runs(session, host=this_host(), limit=limit)
        return [run.id for run in runs]


def record_data(
    engine: Engine, *, run_id: int, fingerprint: dict[str, Any], model_name: str
) -> None:
    """Store the run's data fingerprint and the model name it trains."""

    def write(session: Session) -> None:
        update_run(
            session,
            run_id=run_id,
            data_fingerprint=fingerprint,
            data_hash=fingerprint.get("sha256"),
            model_name=model_name,
        )

    in_transaction(engine, write, what="recording the data's fingerprint")


def unchanged_since(
    engine: Engine, *, run_id: int, config: TrainConfig, data_hash: Optional[str]
) -> Optional[int]:
    """The id of the model name's last completed run when its data hash and training options
    equal this run's (--skip-unchanged), else None."""
    with Session(engine) as session:
        last = last_completed_run(session, model_name=config.model_name, before=run_id)
        if last is None or data_hash is None or last.data_hash != data_hash:
            return None
        stored = dict(last.config or {})
    known = {k: v for k, v in stored.items() if k in TrainConfig.model_fields and k not in STEERING}
    try:
        identity = TrainConfig.model_validate(known).training_identity()
    except ValueError:  # a configuration this gdflow no longer reads: not the same
        return None
    return last.id if identity == config.training_identity() else None


def skip_run(engine: Engine, *, run_id: int, same_as: int) -> None:
    """Record the run as skipped: its data and options equal completed run `same_as`'s."""
    outcome = RunOutcome(
        status=RunStatus.SKIPPED,
        stop_reason="unchanged",
        epochs_done=0,
    )

    def write(session: Session) -> None:
        finish_run(session, run_id=run_id, outcome=outcome)
        update_run(session, run_id=run_id, skipped_for=same_as)

    in_transaction(engine, write, what="recording the skipped run")
    _OUTCOME_RECORDED.set()


def record_checks(
    engine: Engine, *, run_id: int, profile: dict[str, Any], checks: dict[str, Any]
) -> None:
    """Store the run's feature profile and its data checks (whatever they decide)."""

    def write(session: Session) -> None:
        update_run(session, run_id=run_id, data_profile=profile, data_checks=checks)

    in_transaction(engine, write, what="recording the data checks")
