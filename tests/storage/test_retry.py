"""Transient database errors injected into a real SQLite file: a lock held past the busy
timeout, a full disk, a commit the caller never heard of. Each write is retried and every epoch
is stored once; errors that will not pass are raised at once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from gdflow.storage import (
    MetricRow,
    append_metrics,
    create_run,
    get_metrics,
    get_run,
    is_transient,
    make_engine,
    retry_transient,
)

#: Busy timeout of the writer under test (ms): far below the lock's hold time.
SHORT_BUSY_MS = 100


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """An engine on a fresh file whose connections give up on a lock after SHORT_BUSY_MS."""
    engine = make_engine(f"sqlite:///{tmp_path / 'metrics.db'}")

    @event.listens_for(engine, "connect")
    def short_busy_timeout(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.execute(f"PRAGMA busy_timeout={SHORT_BUSY_MS}")

    engine.dispose()  # drop pooled connections made before the listener
    yield engine
    engine.dispose()


def _run(engine: Engine) -> int:
    with Session(engine) as session, session.begin():
        return create_run(session, config={}, data_source="toy", parameter_names=["w"])


def _chunk(first: int, last: int) -> list[MetricRow]:
    return [MetricRow(e, 1.0 / e, {"w": float(e)}) for e in range(first, last + 1)]


def _writer(engine: Engine, run_id: int, rows: list[MetricRow]):  # type: ignore[no-untyped-def]
    def write() -> int:
        with Session(engine) as session, session.begin():
            return append_metrics(session, run_id=run_id, rows=rows)

    return write


def _epochs(engine: Engine, run_id: int) -> list[int]:
    with Session(engine) as session:
        return [m.epoch for m in get_metrics(session, run_id=run_id)]


def test_a_write_locked_out_past_the_busy_timeout_is_retried_and_stored_once(
    engine: Engine,
) -> None:
    run_id = _run(engine)
    retry_transient(_writer(engine, run_id, _chunk(1, 100)))
    path = engine.url.database
    assert path is not None
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    release = threading.Timer(1.0, blocker.execute, args=("COMMIT",))
    release.start()
    failures: list[str] = []
    try:
        written = retry_transient(
            _writer(engine, run_id, _chunk(101, 200)),
            first_delay=0.1,
            on_retry=lambda _n, exc: failures.append(str(exc)),
        )
    finally:
        release.join()
        blocker.close()
    assert written == 100
    assert failures and all("database is locked" in f for f in failures)
    assert _epochs(engine, run_id) == list(range(1, 201))


def test_a_write_still_locked_after_every_attempt_raises_and_stores_nothing(
    engine: Engine,
) -> None:
    run_id = _run(engine)
    path = engine.url.database
    assert path is not None
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            retry_transient(_writer(engine, run_id, _chunk(1, 10)), attempts=3, first_delay=0.05)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert _epochs(engine, run_id) == []


def test_a_full_disk_is_retried_once_space_is_back(engine: Engine) -> None:
    run_id = _run(engine)
    attempts: list[int] = []

    def write() -> int:
        with Session(engine) as session, session.begin():
            pages = session.execute(text("PRAGMA page_count")).scalar_one()
            # The first attempt may not grow the file by a page: SQLITE_FULL, as on a full disk.
            limit = pages if not attempts else 1_000_000
            attempts.append(limit)
            session.execute(text(f"PRAGMA max_page_count={limit}"))
            return append_metrics(session, run_id=run_id, rows=_chunk(1, 2000))

    failures: list[str] = []
    assert retry_transient(write, first_delay=0.05, on_retry=lambda _n, e: failures.append(str(e)))
    assert len(attempts) == 2
    assert len(failures) == 1 and "database or disk is full" in failures[0]
    assert _epochs(engine, run_id) == list(range(1, 2001))


def test_a_commit_the_caller_never_heard_of_is_sent_again_without_duplicates(
    engine: Engine,
) -> None:
    run_id = _run(engine)
    calls: list[int] = []

    def write() -> int:
        with Session(engine) as session, session.begin():
            written = append_metrics(session, run_id=run_id, rows=_chunk(1, 50))
        calls.append(written)
        if len(calls) == 1:  # committed, then the reply is lost
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("disk I/O error"))
        return written

    assert retry_transient(write, first_delay=0.01) == 50
    assert calls == [50, 50]
    assert _epochs(engine, run_id) == list(range(1, 51))
    with Session(engine) as session:
        run = get_run(session, run_id=run_id)
        assert run is not None and run.epochs_done == 50


def test_errors_that_will_not_pass_are_raised_at_once(engine: Engine) -> None:
    calls: list[int] = []

    def write() -> int:
        calls.append(1)
        return _writer(engine, 999, _chunk(1, 1))()  # no run 999: a foreign-key violation

    with pytest.raises(IntegrityError):
        retry_transient(write, first_delay=0.01)
    assert calls == [1]
    assert not is_transient(ValueError("database is locked"))
