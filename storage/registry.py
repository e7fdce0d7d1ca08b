"""Data functions of the model registry: numbered versions of named models, aliases moved by
compare-and-set with their history, and prediction batches. Each takes a session; the caller
owns the commit.

Two writers may race (two retrains of one model finishing at once, on PostgreSQL or on one
SQLite file): a version number is assigned by the INSERT itself and the unique constraint on
(name, version) catches a collision, which is retried; an alias only moves from the version the
caller read (`set_alias` returns False otherwise, and the caller re-reads and decides again), so
a model has one champion and its history is a chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Optional, cast

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction

from gdflow.storage.models import AliasChange, ModelAlias, ModelVersion, PredictionBatch

#: The alias of the version a model serves by default.
CHAMPION = "champion"
#: INSERTs of a version before a number collision is raised. Each collision means another
#: writer committed that number meanwhile, so this bounds the writers racing for one name.
VERSION_ATTEMPTS = 10
#: Columns `add_model_version` takes (the name is its own argument, the number is assigned).
_VERSION_FIELDS = frozenset(ModelVersion.__table__.columns.keys()) - {"id", "name", "version"}


@dataclass(frozen=True)
class ModelSummary:
    """A named model at a glance: how many versions, the newest, and the champion's."""

    name: str
    versions: int
    latest_version: int
    champion_version: Optional[int]
    latest_created_at: datetime


def _is_duplicate(exc: IntegrityError) -> bool:
    """True when the INSERT collided with a unique key (SQLite's and PostgreSQL's wording), not
    when it broke a NOT NULL or foreign key constraint."""
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return "unique" in text or "duplicate key" in text


def _savepoint(session: Session) -> SessionTransaction:
    """`session.begin_nested()`, on SQLite inside a real transaction.

    pysqlite emits no BEGIN before a SAVEPOINT, so SQLite would open the transaction at the
    SAVEPOINT and commit it at its RELEASE, whatever the caller later does with the session;
    an explicit BEGIN first keeps the write in the caller's transaction.
    """
    connection = session.connection()
    dialect = connection.dialect
    if dialect.name == "sqlite" and dialect.driver == "pysqlite":
        driver = connection.connection.driver_connection
        if driver is not None and not driver.in_transaction:
            connection.exec_driver_sql("BEGIN")
    return session.begin_nested()


def add_model_version(session: Session, *, name: str, **fields: Any) -> ModelVersion:
    """Record the next version of `name` (1 for its first) and return the row.

    `fields` are the other columns of `ModelVersion` (`created_at` defaults to now). The number
    is computed by the INSERT itself, in a SAVEPOINT; a concurrent writer that took the same
    number makes the unique constraint refuse it, and the INSERT is tried again.
    """
    unknown = set(fields) - _VERSION_FIELDS
    if unknown:
        raise TypeError(f"add_model_version() got unknown fields: {', '.join(sorted(unknown))}")
    values = {"created_at": datetime.now(UTC), **fields}
    next_version = (
        select(func.coalesce(func.max(ModelVersion.version), 0) + 1)
        .where(ModelVersion.name == name)
        .scalar_subquery()
    )
    statement = (
        insert(ModelVersion)
        .values(name=name, version=next_version, **values)
        .returning(ModelVersion.id)
    )
    for attempt in range(1, VERSION_ATTEMPTS + 1):
        try:
            with _savepoint(session):
                version_id = session.execute(statement).scalar_one()
        except IntegrityError as exc:
            if attempt == VERSION_ATTEMPTS or not _is_duplicate(exc):
                raise
            continue
        row = session.get(ModelVersion, version_id)
        assert row is not None
        return row
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def get_model_version(session: Session, name: str, version: int) -> Optional[ModelVersion]:
    """Return one version of a model, or None."""
    stmt = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    return session.scalars(stmt).one_or_none()


def latest_model_version(session: Session, name: str) -> Optional[ModelVersion]:
    """Return the newest version of a model, or None when it has none."""
    return next(iter(list_model_versions(session, name, limit=1)), None)


def list_model_versions(
    session: Session, name: str, *, limit: Optional[int] = None
) -> list[ModelVersion]:
    """Return the versions of a model, newest first (at most `limit` of them)."""
    stmt = (
        select(ModelVersion)
        .where(ModelVersion.name == name)
        .order_by(ModelVersion.version.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def list_model_names(session: Session) -> list[ModelSummary]:
    """Return every named model with its version count, newest version and champion, by name."""
    stmt = (
        select(
            ModelVersion.name,
            func.count(ModelVersion.id),
            func.max(ModelVersion.version),
            ModelAlias.version,
            func.max(ModelVersion.created_at),
        )
        .outerjoin(
            ModelAlias,
            and_(ModelAlias.name == ModelVersion.name, ModelAlias.alias == CHAMPION),
        )
        .group_by(ModelVersion.name, ModelAlias.version)
        .order_by(ModelVersion.name)
    )
    return [ModelSummary(*row) for row in session.execute(stmt)]


def get_alias(session: Session, name: str, alias: str) -> Optional[int]:
    """Return the version an alias of a model points at, or None when it is not set."""
    stmt = select(ModelAlias.version).where(ModelAlias.name == name, ModelAlias.alias == alias)
    return session.scalars(stmt).one_or_none()


def aliases_of(session: Session, name: str) -> dict[str, int]:
    """Return every alias of a model and its version, e.g. {"champion": 3}."""
    stmt = (
        select(ModelAlias.alias, ModelAlias.version)
        .where(ModelAlias.name == name)
        .order_by(ModelAlias.alias)
    )
    return {alias: version for alias, version in session.execute(stmt)}


def set_alias(
    session: Session,
    *,
    name: str,
    alias: str,
    expected: Optional[int],
    version: int,
    reason: str,
    detail: Optional[str] = None,
    champion_loss: Optional[float] = None,
    challenger_loss: Optional[float] = None,
    run_id: Optional[int] = None,
    flow_run_id: Optional[str] = None,
) -> bool:
    """Point an alias at `version` if it still points at `expected` (None: it must not exist
    yet), recording the change in its history; return False, changing nothing, when another
    writer moved or created it first (re-read it and decide again).

    The alias and its history row are written in the caller's transaction: both or neither.
    """
    now = datetime.now(UTC)
    if expected is None:
        try:
            with _savepoint(session):
                session.execute(
                    insert(ModelAlias).values(
                        name=name, alias=alias, version=version, updated_at=now
                    )
                )
        except IntegrityError as exc:
            if not _is_duplicate(exc):
                raise
            return False
    else:
        result = session.execute(
            update(ModelAlias)
            .where(
                ModelAlias.name == name,
                ModelAlias.alias == alias,
                ModelAlias.version == expected,
            )
            .values(version=version, updated_at=now),
            execution_options={"synchronize_session": False},
        )
        if cast("CursorResult[Any]", result).rowcount != 1:
            return False
    session.add(
        AliasChange(
            name=name,
            alias=alias,
            from_version=expected,
            to_version=version,
            changed_at=now,
            reason=reason,
            detail=detail,
            champion_loss=champion_loss,
            challenger_loss=challenger_loss,
            run_id=run_id,
            flow_run_id=flow_run_id,
        )
    )
    session.flush()
    return True


def alias_history(session: Session, name: str, *, alias: Optional[str] = None) -> list[AliasChange]:
    """Return the alias changes of a model (of one alias if given), oldest first."""
    stmt = select(AliasChange).where(AliasChange.name == name).order_by(AliasChange.id)
    if alias is not None:
        stmt = stmt.where(AliasChange.alias == alias)
    return list(session.scalars(stmt))


def set_promotion(session: Session, *, version_id: int, promotion: dict[str, Any]) -> None:
    """Record how the champion decision about a version went (by the version's row id)."""
    session.execute(
        update(ModelVersion).where(ModelVersion.id == version_id).values(promotion=promotion)
    )


def record_prediction(session: Session, **fields: Any) -> int:
    """Insert a prediction batch (the columns of `PredictionBatch`; `created_at` defaults to
    now) and return its id."""
    batch = PredictionBatch(**{"created_at": datetime.now(UTC), "rows_skipped": 0, **fields})
    session.add(batch)
    session.flush()
    return batch.id


def list_predictions(
    session: Session, name: Optional[str] = None, *, limit: Optional[int] = None
) -> list[PredictionBatch]:
    """Return the prediction batches (of one model if given), newest first."""
    stmt = (
        select(PredictionBatch)
        .order_by(PredictionBatch.created_at.desc(), PredictionBatch.id.desc())
        .limit(limit)
    )
    if name is not None:
        stmt = stmt.where(PredictionBatch.name == name)
    return list(session.scalars(stmt))
