"""Data functions over runs and epoch metrics; each takes a session, the caller owns the commit."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from importlib import import_module
from operator import itemgetter
from typing import Any, Optional

import numpy as np
import orjson
from numpy.typing import NDArray
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from gdflow.storage.models import EpochMetric, Run, Sweep


class RunStatus(StrEnum):
    """Lifecycle of a run: `running` until it ends in one of the other states."""

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"
    CRASHED = "crashed"
    CANCELLED = "cancelled"
    #: --skip-unchanged: the data and configuration equal a completed run's; nothing trained.
    SKIPPED = "skipped"


@dataclass(frozen=True)
class MetricRow:
    """One epoch's record as plain values: loss before the update, parameters after it."""

    epoch: int
    loss: float
    params: dict[str, float]
    grad_norm: Optional[float] = None
    lr: Optional[float] = None
    val_loss: Optional[float] = None
    val_accuracy: Optional[float] = None


def _finite_or_none(value: Optional[float]) -> Optional[float]:
    """SQL has no NaN or infinity: store them as NULL."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def create_run(
    session: Session,
    *,
    config: dict[str, Any],
    data_source: str,
    parameter_names: Sequence[str],
    device: Optional[str] = None,
    flow_run_id: Optional[str] = None,
    flow_run_name: Optional[str] = None,
    started_at: Optional[datetime] = None,
    sweep_id: Optional[int] = None,
    owner: Optional[dict[str, Any]] = None,
) -> int:
    """Insert a run in status `running` and return its id; `owner` sets host, pid and
    pid_started (the process executing it)."""
    run = Run(
        flow_run_id=flow_run_id,
        flow_run_name=flow_run_name,
        status=RunStatus.RUNNING.value,
        started_at=started_at or datetime.now(UTC),
        data_source=data_source,
        device=device,
        parameter_names=list(parameter_names),
        config=config,
        epochs_done=0,
        sweep_id=sweep_id,
        **(owner or {}),
    )
    session.add(run)
    session.flush()
    return run.id


def restart_run(session: Session, *, run_id: int, owner: Optional[dict[str, Any]] = None) -> None:
    """Start a recorded run over (a retry of its flow run): status `running`, its epoch rows
    and outcome cleared, so the retry writes every epoch exactly once."""
    session.execute(delete(EpochMetric).where(EpochMetric.run_id == run_id))
    cleared = dict.fromkeys(_OUTCOME_COLUMNS)
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(status=RunStatus.RUNNING.value, epochs_done=0, **cleared, **(owner or {}))
    )


#: Columns a run fills in as it trains and ends; a restarted run has none of them.
_OUTCOME_COLUMNS = (
    "finished_at",
    "final_loss",
    "final_params",
    "stop_reason",
    "error",
    "evaluation",
    "best_epoch",
    "best_loss",
)


def running_runs(session: Session) -> list[Run]:
    """Return every run still in status `running`, oldest first."""
    return list(
        session.scalars(select(Run).where(Run.status == RunStatus.RUNNING.value).order_by(Run.id))
    )


def crashed_runs_of_flow_runs(session: Session, *, host: str, limit: int) -> list[Run]:
    """The latest `limit` runs of `host` recorded `crashed` that belong to a flow run (one that
    no run still `running` belongs to: a retry of it is alive), newest first."""
    alive = select(Run.flow_run_id).where(
        Run.status == RunStatus.RUNNING.value, Run.flow_run_id.is_not(None)
    )
    return list(
        session.scalars(
            select(Run)
            .where(
                Run.status == RunStatus.CRASHED.value,
                Run.host == host,
                Run.flow_run_id.is_not(None),
                Run.flow_run_id.not_in(alive),
            )
            .order_by(Run.id.desc())
            .limit(limit)
        )
    )


def update_run(session: Session, *, run_id: int, **fields: Any) -> None:
    """Set the given columns of one run (e.g. its device or parameter names once known)."""
    session.execute(update(Run).where(Run.id == run_id).values(**fields))


@dataclass(frozen=True)
class MetricBatch:
    """Consecutive epochs' records as columns of plain Python numbers (e.g. from `.tolist()`).

    `params` holds one row of values per epoch, in the order of `names` (a list of lists or a
    NumPy matrix); the optional columns are None when not recorded.
    """

    epochs: Sequence[int]
    losses: Sequence[float]
    names: Sequence[str]
    params: Sequence[Sequence[float]] | NDArray[np.floating[Any]]
    grad_norms: Optional[Sequence[float]] = None
    lrs: Optional[Sequence[float]] = None
    val_losses: Optional[Sequence[float]] = None
    val_accuracies: Optional[Sequence[float]] = None


#: Columns of an epoch row, in the order of the tuples `_insert_rows` takes.
_COLUMNS = ("run_id", "epoch", "loss", "params", "grad_norm", "lr", "val_loss", "val_accuracy")


def _sqlite_insert(columns: Sequence[str]) -> str:
    """SQLite's INSERT of epoch rows with these columns, skipping epochs already stored."""
    return (
        f"INSERT INTO {EpochMetric.__tablename__} ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT (run_id, epoch) DO NOTHING"
    )


def append_metrics(session: Session, *, run_id: int, rows: Iterable[MetricRow]) -> int:
    """Insert epoch rows (an epoch already stored is left as it is); return how many were given."""
    values = [
        (
            run_id,
            row.epoch,
            _finite_or_none(row.loss),
            json.dumps({k: _finite_or_none(v) for k, v in row.params.items()}),
            _finite_or_none(row.grad_norm),
            row.lr,
            _finite_or_none(row.val_loss),
            _finite_or_none(row.val_accuracy),
        )
        for row in rows
    ]
    return _insert_rows(session, run_id=run_id, rows=values)


def append_metric_batch(session: Session, *, run_id: int, batch: MetricBatch) -> int:
    """Insert a batch of epoch rows like `append_metrics`, without a Python object per row.
    Columns the batch does not record are left out of the INSERT (stored as NULL)."""
    n = len(batch.epochs)
    optional = {
        "grad_norm": None if batch.grad_norms is None else _finite_column(batch.grad_norms),
        "lr": batch.lrs,
        "val_loss": None if batch.val_losses is None else _finite_column(batch.val_losses),
        "val_accuracy": (
            None if batch.val_accuracies is None else _finite_column(batch.val_accuracies)
        ),
    }
    recorded = {name: column for name, column in optional.items() if column is not None}
    values = list(
        zip(
            (run_id,) * n,
            batch.epochs,
            _finite_column(batch.losses),
            _json_objects(batch.names, batch.params, n),
            *recorded.values(),
        )
    )
    return _insert_rows(session, run_id=run_id, rows=values, columns=_COLUMNS[:4] + tuple(recorded))


def _finite_column(values: Sequence[float]) -> Sequence[Optional[float]]:
    """The column itself when every value is finite (one C-level sum), else NaN/inf as None."""
    if math.isfinite(sum(values)):
        return values
    return [_finite_or_none(v) for v in values]


def _json_objects(
    names: Sequence[str], rows: Sequence[Sequence[float]] | NDArray[np.floating[Any]], n: int
) -> list[str]:
    """The `n` rows as JSON objects {name: value}; `rows` may be a NumPy matrix (one row per
    epoch), and is ignored when there are no names. Finite values are written by orjson from
    float64 columns: the shortest text that reads back as the same float64, like json.dumps,
    in a fraction of its time."""
    if not names:
        return ["{}"] * n
    matrix = np.asarray(rows, dtype=np.float64).reshape(n, len(names))
    if n and not np.isfinite(matrix).all():
        return [
            json.dumps({k: _finite_or_none(float(v)) for k, v in zip(names, row)})
            for row in matrix.tolist()
        ]
    columns = [
        orjson.dumps(np.ascontiguousarray(column), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
        .decode()
        .split(",")
        for column in matrix.T
    ]
    keys = [json.dumps(name) for name in names]
    if len(keys) == 1:
        prefix = "{" + keys[0] + ": "
        return [prefix + text + "}" for text in columns[0]] if n else []
    template = "{" + ", ".join(key.replace("%", "%%") + ": %s" for key in keys) + "}"
    return list(map(template.__mod__, zip(*columns))) if n else []


def _insert_rows(
    session: Session,
    *,
    run_id: int,
    rows: list[tuple[Any, ...]],
    columns: tuple[str, ...] = _COLUMNS,
) -> int:
    """Insert tuples of `columns` (by default run_id, epoch, loss, params JSON, grad_norm, lr,
    val_loss, val_accuracy; always starting with the first four), skipping epochs already
    stored (so a retried chunk neither fails nor duplicates), and advance the run's
    `epochs_done`. SQLite gets one DBAPI executemany, PostgreSQL (psycopg) a COPY, other
    databases SQLAlchemy Core."""
    if not rows:
        return 0
    bind = session.get_bind()
    if bind.dialect.name == "sqlite" and bind.dialect.driver == "pysqlite":
        session.connection().exec_driver_sql(_sqlite_insert(columns), rows)
    elif bind.dialect.name == "postgresql" and bind.dialect.driver == "psycopg":
        _copy_rows_postgresql(session, rows, columns)
    else:
        statement = _insert_ignoring_duplicates(bind.dialect.name)
        session.execute(statement, [_as_dict(row, columns) for row in rows])
    last = max(map(itemgetter(1), rows))
    session.execute(
        update(Run).where(Run.id == run_id, Run.epochs_done < last).values(epochs_done=last)
    )
    return len(rows)


#: Session-private staging table of PostgreSQL bulk writes, emptied at every commit.
_PG_STAGING = "gdflow_epoch_staging"


def _copy_rows_postgresql(
    session: Session, rows: list[tuple[Any, ...]], names: tuple[str, ...]
) -> None:
    """COPY the rows into a temporary table, then INSERT ... SELECT ... ON CONFLICT DO NOTHING:
    PostgreSQL's bulk load, idempotent, inside the session's transaction (psycopg 3)."""
    import psycopg

    columns = ", ".join(names)
    connection = session.connection()
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_PG_STAGING} "
        f"(LIKE {EpochMetric.__tablename__}) ON COMMIT DELETE ROWS"
    )
    copy_sql = f"COPY {_PG_STAGING} ({columns}) FROM STDIN"
    driver = connection.connection.driver_connection
    try:
        with driver.cursor() as cursor, cursor.copy(copy_sql) as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as exc:  # the driver's own error, wrapped as SQLAlchemy wraps others
        raise DBAPIError.instance(copy_sql, None, exc, psycopg.Error) from exc
    connection.exec_driver_sql(
        f"INSERT INTO {EpochMetric.__tablename__} ({columns}) "
        f"SELECT {columns} FROM {_PG_STAGING} ON CONFLICT (run_id, epoch) DO NOTHING"
    )
    connection.exec_driver_sql(f"TRUNCATE {_PG_STAGING}")  # several chunks in one transaction


def _as_dict(row: tuple[Any, ...], columns: tuple[str, ...]) -> dict[str, Any]:
    """A row tuple as the column values SQLAlchemy binds (params decoded for the JSON type)."""
    return dict(zip(columns, row), params=json.loads(row[3]))


def _insert_ignoring_duplicates(dialect: str) -> Any:
    """An INSERT into epoch_metrics that skips rows whose (run_id, epoch) is already stored."""
    if dialect in ("sqlite", "postgresql"):
        module = import_module(f"sqlalchemy.dialects.{dialect}")
        return module.insert(EpochMetric).on_conflict_do_nothing(index_elements=["run_id", "epoch"])
    return insert(EpochMetric)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its status and, where known, its summary; None keeps the stored value."""

    status: RunStatus
    stop_reason: Optional[str] = None
    error: Optional[str] = None
    epochs_done: Optional[int] = None
    final_loss: Optional[float] = None
    final_params: Optional[dict[str, float]] = None
    evaluation: Optional[dict[str, Any]] = None
    best_epoch: Optional[int] = None
    best_loss: Optional[float] = None
    finished_at: Optional[datetime] = None


def finish_run(session: Session, *, run_id: int, outcome: RunOutcome) -> None:
    """Record how a run ended; fields of the outcome left as None keep their stored value."""
    values: dict[str, Any] = {
        "status": outcome.status.value,
        "finished_at": outcome.finished_at or datetime.now(UTC),
    }
    optional = {
        "epochs_done": outcome.epochs_done,
        "final_loss": _finite_or_none(outcome.final_loss),
        "final_params": outcome.final_params,
        "stop_reason": outcome.stop_reason,
        "error": outcome.error,
        "evaluation": outcome.evaluation,
        "best_epoch": outcome.best_epoch,
        "best_loss": _finite_or_none(outcome.best_loss),
    }
    values.update({k: v for k, v in optional.items() if v is not None})
    session.execute(update(Run).where(Run.id == run_id).values(**values))


def get_run(session: Session, *, run_id: int) -> Optional[Run]:
    """Return one run, or None."""
    return session.get(Run, run_id)


def last_completed_run(
    session: Session, *, model_name: str, before: Optional[int] = None
) -> Optional[Run]:
    """The latest completed run that trained `model_name` (before run id `before`)."""
    stmt = select(Run).where(Run.model_name == model_name, Run.status == RunStatus.COMPLETED.value)
    if before is not None:
        stmt = stmt.where(Run.id < before)
    return session.scalars(stmt.order_by(Run.id.desc()).limit(1)).first()


def latest_run_id(session: Session) -> Optional[int]:
    """Return the id of the most recently started run, or None when there is none."""
    return session.scalars(select(Run.id).order_by(Run.started_at.desc(), Run.id.desc())).first()


def list_runs(session: Session, *, limit: int = 20, data_source: Optional[str] = None) -> list[Run]:
    """Return the latest runs (optionally of one data source), newest first."""
    stmt = select(Run).order_by(Run.started_at.desc(), Run.id.desc()).limit(limit)
    if data_source is not None:
        stmt = stmt.where(Run.data_source == data_source)
    return list(session.scalars(stmt))


def find_run_id(session: Session, *, flow_run_id: str) -> Optional[int]:
    """Return the id of the run recorded for a Prefect flow run, or None."""
    stmt = select(Run.id).where(Run.flow_run_id == flow_run_id).order_by(Run.id.desc())
    return session.scalars(stmt).first()


def get_metrics(session: Session, *, run_id: int) -> list[EpochMetric]:
    """Return every epoch row of a run in epoch order."""
    stmt = select(EpochMetric).where(EpochMetric.run_id == run_id).order_by(EpochMetric.epoch)
    return list(session.scalars(stmt))


def get_metrics_sample(session: Session, *, run_id: int, max_rows: int) -> list[EpochMetric]:
    """Return at most about `max_rows` evenly spaced epochs of a run, always with the last one."""
    last = session.scalar(select(func.max(EpochMetric.epoch)).where(EpochMetric.run_id == run_id))
    if last is None:
        return []
    stride = max(1, -(-(last - 1) // max(1, max_rows - 1)))  # ceil((last-1)/(max_rows-1))
    stmt = (
        select(EpochMetric)
        .where(EpochMetric.run_id == run_id)
        .where(or_((EpochMetric.epoch - 1) % stride == 0, EpochMetric.epoch == last))
        .order_by(EpochMetric.epoch)
    )
    return list(session.scalars(stmt))


def create_sweep(
    session: Session,
    *,
    name: str,
    config: dict[str, Any],
    flow_run_id: Optional[str] = None,
) -> int:
    """Insert a sweep in status `running` and return its id."""
    sweep = Sweep(
        name=name,
        config=config,
        flow_run_id=flow_run_id,
        status=RunStatus.RUNNING.value,
        started_at=datetime.now(UTC),
    )
    session.add(sweep)
    session.flush()
    return sweep.id


def finish_sweep(
    session: Session, *, sweep_id: int, status: RunStatus, best_run_id: Optional[int]
) -> None:
    """Record how a sweep ended and its best run."""
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id)
        .values(status=status.value, best_run_id=best_run_id, finished_at=datetime.now(UTC))
    )


def get_sweep(session: Session, *, sweep_id: int) -> Optional[Sweep]:
    """Return one sweep, or None."""
    return session.get(Sweep, sweep_id)


def sweep_runs(session: Session, *, sweep_id: int) -> list[Run]:
    """Return the runs of a sweep in the order they were recorded."""
    return list(session.scalars(select(Run).where(Run.sweep_id == sweep_id).order_by(Run.id)))
