"""Engines: SQLite pragmas, schema creation, and one-line errors for unusable URLs."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy.orm import Session

from gdflow.storage import (
    DatabaseError,
    create_run,
    dispose_engines,
    engine_for,
    get_run,
    list_runs,
    make_engine,
    mask_url,
)
from gdflow.storage.migrate import head_revision


def test_sqlite_engine_uses_wal_and_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'm.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    tables = set(inspect(engine).get_table_names())
    assert tables == {
        "runs",
        "epoch_metrics",
        "sweeps",
        "alembic_version",
        "model_versions",
        "model_aliases",
        "model_alias_changes",
        "prediction_batches",
    }
    engine.dispose()


def test_connections_opening_a_new_file_at_once_all_switch_it_to_wal(tmp_path: Path) -> None:
    # Switching a new file to WAL needs an exclusive lock; connections that all hold a shared
    # one get SQLITE_BUSY at once, without the busy timeout. Before the switch was retried,
    # about one round in five here failed with "database is locked".
    import sqlite3
    import threading

    from gdflow.storage.database import _set_sqlite_pragmas

    def open_one(path: Path, barrier: threading.Barrier) -> object:
        connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
        try:
            barrier.wait()
            _set_sqlite_pragmas(connection, None)
            return connection.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            connection.close()

    for round_ in range(50):
        path, barrier = tmp_path / f"{round_}.db", threading.Barrier(6)
        with ThreadPoolExecutor(6) as pool:
            modes = [f.result() for f in [pool.submit(open_one, path, barrier) for _ in range(6)]]
        assert modes == ["wal"] * 6, round_


def test_schema_creation_is_idempotent(tmp_path: Path) -> None:
    """Opening a database that already has the schema changes nothing and keeps its rows."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        run_id = create_run(session, config={"lr": 0.5}, data_source="toy", parameter_names=["w"])
    before = _schema(engine)
    engine.dispose()

    again = make_engine(url)
    assert _schema(again) == before
    with again.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (head_revision(),)
        ]
    with Session(again) as session:
        run = get_run(session, run_id=run_id)
        assert run is not None and run.config == {"lr": 0.5}
        assert list_runs(session) == [run]
    again.dispose()


def _schema(engine: Engine) -> dict[str, list[tuple[str, str]]]:
    """Each table's columns and their types, and its indexes."""
    inspector = inspect(engine)
    return {
        table: [(c["name"], str(c["type"])) for c in inspector.get_columns(table)]
        + [
            (i["name"] or "", ",".join(map(str, i["column_names"])))
            for i in inspector.get_indexes(table)
        ]
        for table in sorted(inspector.get_table_names())
    }


def test_directory_as_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="is a directory"):
        make_engine(f"sqlite:///{tmp_path}")


def test_unwritable_database_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(DatabaseError, match="cannot create the database directory") as info:
        make_engine(f"sqlite:///{blocker / 'sub' / 'm.db'}")
    assert "\n" not in str(info.value)


def test_malformed_url_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="invalid database URL"):
        make_engine("not a url")


def test_missing_driver_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="driver"):
        make_engine("nosuchdialect://host/db")


def test_mask_url_hides_password() -> None:
    masked = mask_url("postgresql+psycopg://user:s3cret@db.example/metrics")
    assert "s3cret" not in masked
    assert masked == "postgresql+psycopg://user:***@db.example/metrics"


def test_a_database_from_an_earlier_schema_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    import sqlite3

    with sqlite3.connect(path) as conn:  # the first released shape of the two tables
        conn.executescript(
            """
            CREATE TABLE runs (id INTEGER PRIMARY KEY, flow_run_id VARCHAR(64),
                flow_run_name VARCHAR(200), status VARCHAR(20) NOT NULL,
                started_at DATETIME NOT NULL, finished_at DATETIME,
                data_source VARCHAR(500) NOT NULL, device VARCHAR(40),
                parameter_names JSON NOT NULL, config JSON NOT NULL, epochs_done INTEGER NOT NULL,
                final_loss FLOAT, final_params JSON, stop_reason VARCHAR(40), error TEXT,
                evaluation JSON);
            CREATE TABLE epoch_metrics (run_id INTEGER NOT NULL REFERENCES runs (id),
                epoch INTEGER NOT NULL, loss FLOAT, params JSON NOT NULL, grad_norm FLOAT,
                lr FLOAT, PRIMARY KEY (run_id, epoch));
            INSERT INTO runs VALUES (1, 'f', 'n', 'completed', '2026-01-01 00:00:00', NULL,
                'toy', 'cpu', '["w"]', '{}', 1, 0.5, '{"w": 2.0}', 'max_epochs', NULL, NULL);
            INSERT INTO epoch_metrics VALUES (1, 1, 0.5, '{"w": 2.0}', 1.0, 0.01);
            """
        )
    engine = make_engine(f"sqlite:///{path}")
    columns = {c["name"] for c in inspect(engine).get_columns("runs")}
    assert {"best_epoch", "condition_number", "warnings", "sweep_id"} <= columns
    assert "val_loss" in {c["name"] for c in inspect(engine).get_columns("epoch_metrics")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status, final_loss FROM runs")).all() == [
            ("completed", 0.5)
        ]
        assert conn.execute(text("SELECT loss, val_loss FROM epoch_metrics")).all() == [(0.5, None)]
    engine.dispose()
    make_engine(f"sqlite:///{path}").dispose()  # and again: nothing left to add


def test_threads_share_one_engine_per_url_and_its_schema_is_checked_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    make_engine(url).dispose()  # at the head: each revision check is one SELECT
    checks: list[str] = []

    def executed(connection: Connection, _cursor, statement: str, *_args) -> None:  # type: ignore[no-untyped-def]
        if "FROM alembic_version" in statement:
            checks.append(statement)

    event.listen(Engine, "before_cursor_execute", executed)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            engines = list(pool.map(lambda _: engine_for(url), range(16)))
    finally:
        event.remove(Engine, "before_cursor_execute", executed)
        dispose_engines()
    assert all(engine is engines[0] for engine in engines) and len(checks) == 1
    assert engine_for(url) is not engines[0]  # disposed engines are forgotten
    dispose_engines()


def test_a_forked_child_opens_its_own_engine(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    parent = engine_for(url)
    with parent.connect() as connection:  # a pooled connection the child must not use
        connection.execute(text("SELECT 1"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running pytest's teardown
        try:
            child = engine_for(url)
            with child.connect() as connection:
                count = connection.execute(text("SELECT count(*) FROM runs")).scalar()
            os.write(write, b"own" if child is not parent and count == 0 else b"shared")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 16)
    os.close(read)
    assert (status, answer) == (0, b"own")
    assert engine_for(url) is parent  # the parent keeps its engine
    dispose_engines()


def _new_run(url: str, source: str) -> int:
    """Record a run through this process's engine for `url`; its id."""
    with Session(engine_for(url)) as session, session.begin():
        return create_run(session, config={}, data_source=source, parameter_names=[])


def _sources(path: Path) -> list[str]:
    """The data sources of the runs in the SQLite file at `path`, read with a fresh engine."""
    engine = make_engine(f"sqlite:///{path}", create_schema=False)
    try:
        with Session(engine) as session:
            return [run.data_source for run in reversed(list_runs(session, limit=10))]
    finally:
        engine.dispose()


def test_a_deleted_database_file_gets_a_new_engine_and_its_schema(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite:///{path}"
    first = engine_for(url)
    _new_run(url, "before.csv")
    with first.connect():  # a pooled connection on the file about to be deleted
        pass
    for leftover in tmp_path.glob("m.db*"):  # the file, its WAL and shared memory
        leftover.unlink()
    assert _new_run(url, "after.csv") == 1  # a new file, with its schema
    assert engine_for(url) is not first
    assert path.exists() and _sources(path) == ["after.csv"]
    dispose_engines()


def test_a_replaced_database_file_gets_a_new_engine(tmp_path: Path) -> None:
    path, other = tmp_path / "m.db", tmp_path / "other.db"
    url = f"sqlite:///{path}"
    first = engine_for(url)
    _new_run(url, "mine.csv")
    engine = make_engine(f"sqlite:///{other}")
    with Session(engine) as session, session.begin():
        for source in ("a.csv", "b.csv"):
            create_run(session, config={}, data_source=source, parameter_names=[])
    engine.dispose()
    os.replace(other, path)  # e.g. a backup restored over it
    for leftover in tmp_path.glob("m.db-*"):
        leftover.unlink()
    assert _new_run(url, "c.csv") == 3  # written into the file now at the path
    assert engine_for(url) is not first
    assert _sources(path) == ["a.csv", "b.csv", "c.csv"]
    assert engine_for(url) is engine_for(url)  # and kept while the file stays
    dispose_engines()
