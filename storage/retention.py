"""Retention: delete old runs with every row they own, in short transactions, then give the
space back (SQLite `VACUUM`, PostgreSQL `VACUUM (ANALYZE)`).

Which runs go (`plan_prune`): those beyond the `keep_last` newest of their model name (runs
without a model name are one group of their own) and/or started before `older_than`; with both,
only runs that neither rule keeps. Never deleted, whatever the rules say (`protected_runs`):

- a run still `running`;
- the run of a model version that an alias (e.g. `champion`) points at: its row holds the
  training data's profile that the next run's data checks compare against;
- the newest completed run of each model name: what `--skip-unchanged` compares against.

A deleted run takes its epoch rows with it; the model versions it trained stay (their row and
file; `run_id` becomes NULL), so `gdflow models`, `promote`, `rollback` and `predict` work as
before; a sweep left without runs goes too. The work is done in batches of runs, one
transaction each (on SQLite under `BEGIN IMMEDIATE`), bounded by BATCH_RUNS runs and
BATCH_EPOCH_ROWS epoch rows, so concurrent runs wait for a batch at most, not for the whole
prune; each batch checks the protections again inside its own transaction.

These functions take an engine, not a session: they own their transactions (one per batch, and
VACUUM, which must run outside any). No Prefect, no torch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional, cast

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    delete,
    exists,
    func,
    select,
    update,
)
from sqlalchemy.engine import CursorResult

from gdflow.storage.models import EpochMetric, ModelAlias, ModelVersion, Run, Sweep
from gdflow.storage.repository import RunStatus
from gdflow.storage.retry import retry_transient

#: The most runs one delete transaction takes.
BATCH_RUNS = 200
#: The most epoch rows one delete transaction takes (a larger run is a batch of its own).
BATCH_EPOCH_ROWS = 50_000
#: SQLite: the pause between two batches, so writers waiting on the lock get it in between.
PAUSE_SECONDS = 0.05
#: Ids per IN (...) list of a read.
_IDS_PER_QUERY = 500
#: Why a run is protected, as reported.
RUNNING = "running"
ALIASED = "alias"
NEWEST_COMPLETED = "newest completed"


@dataclass(frozen=True)
class PrunePlan:
    """The runs a prune deletes (oldest first) and what goes with them; the runs the rules
    selected but a protection keeps, with the reason."""

    run_ids: tuple[int, ...]
    epoch_rows: dict[int, int]
    versions: int
    sweeps: tuple[int, ...]
    protected: dict[int, str]
    runs_in_scope: int

    @property
    def total_epoch_rows(self) -> int:
        """Epoch rows of the runs to delete."""
        return sum(self.epoch_rows.values())


@dataclass(frozen=True)
class PruneResult:
    """What a prune did (or, for a dry run, would do) and the database's size around it."""

    dry_run: bool
    run_ids: tuple[int, ...]
    runs: int
    epoch_rows: int
    versions_unlinked: int
    sweeps: int
    protected: dict[int, str]
    runs_kept: int
    batches: int
    vacuumed: bool
    bytes_before: Optional[int]
    bytes_after: Optional[int]
    seconds: float
    #: SQLite: bytes of free pages after the prune, which new rows fill before the file grows.
    free_bytes: Optional[int] = None
    criteria: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Every row deleted: runs, epoch rows and sweeps."""
        return self.runs + self.epoch_rows + self.sweeps

    def as_record(self) -> dict[str, Any]:
        """Plain JSON values, for `--format json` and logs."""
        return {
            "dry_run": self.dry_run,
            "criteria": self.criteria,
            "runs_deleted": self.runs,
            "run_ids": list(self.run_ids),
            "epoch_rows_deleted": self.epoch_rows,
            "sweeps_deleted": self.sweeps,
            "rows_deleted": self.rows,
            "versions_unlinked": self.versions_unlinked,
            "runs_kept": self.runs_kept,
            "protected": [{"run_id": k, "reason": v} for k, v in sorted(self.protected.items())],
            "batches": self.batches,
            "vacuumed": self.vacuumed,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "free_bytes": self.free_bytes,
            "seconds": round(self.seconds, 3),
        }


def _is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def _aliased_runs() -> Any:
    """Runs of the versions an alias points at (a SELECT of run ids, no NULL)."""
    return (
        select(ModelVersion.run_id)
        .join(
            ModelAlias,
            and_(ModelAlias.name == ModelVersion.name, ModelAlias.version == ModelVersion.version),
        )
        .where(ModelVersion.run_id.is_not(None))
    )


def _newest_completed_runs() -> Any:
    """The newest completed run of each model name (a SELECT of run ids)."""
    return (
        select(func.max(Run.id))
        .where(Run.status == RunStatus.COMPLETED.value, Run.model_name.is_not(None))
        .group_by(Run.model_name)
    )


def _unprotected() -> tuple[Any, ...]:
    """WHERE conditions on `runs` that leave out every protected run."""
    return (
        Run.status != RunStatus.RUNNING.value,
        Run.id.not_in(_aliased_runs()),
        Run.id.not_in(_newest_completed_runs()),
    )


def protected_runs(connection: Connection, ids: Sequence[int]) -> dict[int, str]:
    """Which of `ids` no prune may delete, and why (`running`, `alias`, `newest completed`)."""
    found: dict[int, str] = {}
    for chunk in _chunks(ids, _IDS_PER_QUERY):
        for name, query in (
            (NEWEST_COMPLETED, select(Run.id).where(Run.id.in_(_newest_completed_runs()))),
            (ALIASED, select(Run.id).where(Run.id.in_(_aliased_runs()))),
            (RUNNING, select(Run.id).where(Run.status == RunStatus.RUNNING.value)),
        ):
            for run_id in connection.scalars(query.where(Run.id.in_(chunk))):
                found[run_id] = name
    return found


def _chunks(ids: Sequence[int], size: int) -> list[Sequence[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def utc(moment: datetime) -> datetime:
    """`moment` in UTC (a naive one is taken as UTC): SQLite stores times without an offset."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def plan_prune(
    connection: Connection,
    *,
    keep_last: Optional[int] = None,
    older_than: Optional[datetime] = None,
    model_name: Optional[str] = None,
) -> PrunePlan:
    """The runs that `keep_last` and/or `older_than` select (of `model_name` only, if given),
    without the protected ones, with their epoch row counts; deletes nothing."""
    if keep_last is None and older_than is None:
        raise ValueError("give keep_last, older_than or both")
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"keep_last must be 0 or more, not {keep_last}")
    rank = (
        func.row_number()
        .over(partition_by=Run.model_name, order_by=(Run.started_at.desc(), Run.id.desc()))
        .label("rank")
    )
    ranked = select(Run.id, Run.started_at, rank)
    if model_name is not None:
        ranked = ranked.where(Run.model_name == model_name)
    runs = ranked.subquery()
    conditions = []
    if keep_last is not None:
        conditions.append(runs.c.rank > keep_last)
    if older_than is not None:
        conditions.append(runs.c.started_at < utc(older_than))
    selected = list(connection.scalars(select(runs.c.id).where(*conditions).order_by(runs.c.id)))
    in_scope = select(func.count()).select_from(Run)
    if model_name is not None:
        in_scope = in_scope.where(Run.model_name == model_name)
    protected = protected_runs(connection, selected)
    doomed = [run_id for run_id in selected if run_id not in protected]
    epoch_rows: dict[int, int] = dict.fromkeys(doomed, 0)
    versions = 0
    sweep_ids: set[int] = set()
    for chunk in _chunks(doomed, _IDS_PER_QUERY):
        counts = select(EpochMetric.run_id, func.count()).where(EpochMetric.run_id.in_(chunk))
        epoch_rows.update(dict(connection.execute(counts.group_by(EpochMetric.run_id)).all()))
        versions += (
            connection.scalar(
                select(func.count()).select_from(ModelVersion).where(ModelVersion.run_id.in_(chunk))
            )
            or 0
        )
        sweep_ids.update(
            connection.scalars(
                select(Run.sweep_id).where(Run.id.in_(chunk), Run.sweep_id.is_not(None))
            )
        )
    return PrunePlan(
        run_ids=tuple(doomed),
        epoch_rows=epoch_rows,
        versions=versions,
        sweeps=_emptied_sweeps(connection, sorted(sweep_ids), set(doomed)),
        protected=protected,
        runs_in_scope=connection.scalar(in_scope) or 0,
    )


def _emptied_sweeps(
    connection: Connection, sweep_ids: list[int], doomed: set[int]
) -> tuple[int, ...]:
    """The sweeps among `sweep_ids`, not running, whose every run is in `doomed`."""
    emptied = []
    for sweep_id in sweep_ids:
        status = connection.scalar(select(Sweep.status).where(Sweep.id == sweep_id))
        runs = set(connection.scalars(select(Run.id).where(Run.sweep_id == sweep_id)))
        if status is not None and status != RunStatus.RUNNING.value and runs <= doomed:
            emptied.append(sweep_id)
    return tuple(emptied)


def batches(plan: PrunePlan) -> list[list[int]]:
    """The plan's runs in delete batches: at most BATCH_RUNS runs and BATCH_EPOCH_ROWS epoch
    rows each (a larger run alone), oldest first."""
    out: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for run_id in plan.run_ids:
        size = plan.epoch_rows.get(run_id, 0)
        if current and (len(current) >= BATCH_RUNS or rows + size > BATCH_EPOCH_ROWS):
            out.append(current)
            current, rows = [], 0
        current.append(run_id)
        rows += size
    if current:
        out.append(current)
    return out


@dataclass
class Deleted:
    """What delete transactions removed: runs (their ids), epoch rows, sweeps; versions
    unlinked."""

    runs: int = 0
    epoch_rows: int = 0
    versions: int = 0
    sweeps: int = 0
    run_ids: list[int] = field(default_factory=list)


def _rowcount(result: Any) -> int:
    return int(cast("CursorResult[Any]", result).rowcount or 0)


def delete_batch(engine: Engine, run_ids: Sequence[int]) -> Deleted:
    """Delete these runs (those still unprotected) with their epoch rows, unlink their model
    versions and delete the sweeps they leave empty: one transaction, retried when the database
    is busy (deleting again deletes nothing twice)."""

    def attempt() -> Deleted:
        with engine.connect() as connection:
            if _is_sqlite(connection):
                connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first, then read
            ids = list(
                connection.scalars(select(Run.id).where(Run.id.in_(run_ids), *_unprotected()))
            )
            counts = Deleted(run_ids=ids)
            if not ids:
                connection.rollback()
                return counts
            sweeps = set(
                connection.scalars(
                    select(Run.sweep_id).where(Run.id.in_(ids), Run.sweep_id.is_not(None))
                )
            )
            counts.epoch_rows = _rowcount(
                connection.execute(delete(EpochMetric).where(EpochMetric.run_id.in_(ids)))
            )
            counts.versions = _rowcount(
                connection.execute(
                    update(ModelVersion).where(ModelVersion.run_id.in_(ids)).values(run_id=None)
                )
            )
            counts.runs = _rowcount(connection.execute(delete(Run).where(Run.id.in_(ids))))
            if sweeps:
                empty = delete(Sweep).where(
                    Sweep.id.in_(sweeps),
                    Sweep.status != RunStatus.RUNNING.value,
                    ~exists().where(Run.sweep_id == Sweep.id),
                )
                counts.sweeps = _rowcount(connection.execute(empty))
            connection.commit()
            return counts

    return retry_transient(attempt, what="pruning runs")


def database_bytes(engine: Engine) -> Optional[int]:
    """The database's size: a SQLite file with its write-ahead log, or PostgreSQL's
    `pg_database_size`; None for an in-memory database or another back end."""
    if _is_sqlite(engine):
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("PRAGMA database_list").all()
        name = next((row[2] for row in rows if row[1] == "main"), "")
        if not name:  # an in-memory database
            return None
        path = Path(name)
        wal = path.with_name(path.name + "-wal")
        return sum(p.stat().st_size for p in (path, wal) if p.exists())
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            size = connection.scalar(select(func.pg_database_size(func.current_database())))
            return int(size) if size is not None else None
    return None


#: The tables a prune deletes from, which PostgreSQL's VACUUM visits.
PRUNED_TABLES = (
    EpochMetric.__tablename__,
    Run.__tablename__,
    ModelVersion.__tablename__,
    Sweep.__tablename__,
)


def reclaim_space(engine: Engine) -> bool:
    """Give the space of deleted rows back: SQLite `VACUUM` (the file rewritten, then the log
    checkpointed and truncated, so the file shrinks), PostgreSQL `VACUUM (ANALYZE)` of the
    pruned tables (space reusable, statistics fresh; no table lock that stops writers). Runs
    outside any transaction; returns False for a back end it does not know."""
    backend = engine.dialect.name
    if backend not in ("sqlite", "postgresql"):
        return False

    def attempt() -> None:
        with engine.connect() as connection:
            auto = connection.execution_options(isolation_level="AUTOCOMMIT")
            if backend == "sqlite":
                auto.exec_driver_sql("VACUUM")
                auto.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                auto.exec_driver_sql(f"VACUUM (ANALYZE) {', '.join(PRUNED_TABLES)}")

    retry_transient(attempt, what="reclaiming space")
    return True


def prune(
    engine: Engine,
    *,
    keep_last: Optional[int] = None,
    older_than: Optional[datetime] = None,
    model_name: Optional[str] = None,
    dry_run: bool = False,
    vacuum: bool = True,
) -> PruneResult:
    """Plan the prune, then (unless `dry_run`) delete in batches and (if `vacuum`) reclaim
    the space; return what was done and the database's size before and after."""
    started = time.monotonic()
    criteria: dict[str, Any] = {
        "keep_last": keep_last,
        "older_than": utc(older_than).isoformat() if older_than is not None else None,
        "model": model_name,
    }
    before = database_bytes(engine)
    with engine.connect() as connection:
        plan = plan_prune(
            connection, keep_last=keep_last, older_than=older_than, model_name=model_name
        )
    if dry_run:
        return PruneResult(
            dry_run=True,
            run_ids=plan.run_ids,
            runs=len(plan.run_ids),
            epoch_rows=plan.total_epoch_rows,
            versions_unlinked=plan.versions,
            sweeps=len(plan.sweeps),
            protected=plan.protected,
            runs_kept=plan.runs_in_scope - len(plan.run_ids),
            batches=len(batches(plan)),
            vacuumed=False,
            bytes_before=before,
            bytes_after=before,
            seconds=time.monotonic() - started,
            free_bytes=sqlite_free_bytes(engine),
            criteria=criteria,
        )
    total = Deleted()
    groups = batches(plan)
    for index, group in enumerate(groups):
        if index and _is_sqlite(engine):
            time.sleep(PAUSE_SECONDS)
        done = delete_batch(engine, group)
        total.runs += done.runs
        total.epoch_rows += done.epoch_rows
        total.versions += done.versions
        total.sweeps += done.sweeps
        total.run_ids += done.run_ids
    vacuumed = bool(vacuum and total.runs and reclaim_space(engine))
    if total.runs and not vacuumed and _is_sqlite(engine):
        checkpoint(engine)
    return PruneResult(
        dry_run=False,
        run_ids=tuple(total.run_ids),
        runs=total.runs,
        epoch_rows=total.epoch_rows,
        versions_unlinked=total.versions,
        sweeps=total.sweeps,
        protected=plan.protected,
        runs_kept=plan.runs_in_scope - total.runs,
        batches=len(groups),
        vacuumed=vacuumed,
        bytes_before=before,
        bytes_after=database_bytes(engine),
        seconds=time.monotonic() - started,
        free_bytes=sqlite_free_bytes(engine),
        criteria=criteria,
    )


def checkpoint(engine: Engine) -> None:
    """SQLite: copy the write-ahead log into the database file and truncate it, so the deletes'
    pages do not stay in the log file; retried when the database is busy."""

    def attempt() -> None:
        with engine.connect() as connection:
            auto = connection.execution_options(isolation_level="AUTOCOMMIT")
            auto.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    retry_transient(attempt, what="checkpointing the write-ahead log")


def sqlite_free_bytes(engine: Engine) -> Optional[int]:
    """SQLite: the bytes of free pages (`freelist_count` x `page_size`) that new rows reuse
    before the file grows; None for other back ends."""
    if not _is_sqlite(engine):
        return None
    with engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
        size = connection.exec_driver_sql("PRAGMA page_size").scalar() or 0
        return int(pages) * int(size)
