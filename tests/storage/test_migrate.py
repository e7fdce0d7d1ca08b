"""Alembic migrations: the revisions build the models' schema, upgrade old databases in place
keeping every row, refuse newer ones, and never race when several processes open one at once."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from gdflow.storage import DatabaseError, make_engine
from gdflow.storage.migrate import alembic_config, current_revision, ensure_current, head_revision
from gdflow.storage.models import Base

FIRST_REVISION = "0001"


def _at_revision(url: str, revision: str) -> None:
    """Make a database exactly as the given revision left it (no gdflow engine involved)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)
    engine.dispose()


def _seed_rows(url: str) -> None:
    """Rows as the first release wrote them: a sweep, a finished run and two epochs."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sweeps (id, name, status, started_at, config) "
                "VALUES (1, 'lr sweep', 'completed', '2026-01-01 00:00:00', '{}')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO runs (id, status, started_at, data_source, parameter_names, config,"
                " epochs_done, final_loss, final_params, stop_reason, best_epoch, sweep_id) "
                "VALUES (1, 'completed', '2026-01-01 00:00:00', 'toy', '[\"w\"]', '{}', 2,"
                " 0.25, '{\"w\": 2.0}', 'max_epochs', 2, 1)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO epoch_metrics (run_id, epoch, loss, params, grad_norm, lr) VALUES "
                "(1, 1, 0.5, '{\"w\": 1.5}', 1.0, 0.01), (1, 2, 0.25, '{\"w\": 2.0}', 0.5, 0.01)"
            )
        )
    engine.dispose()


def _old_rows(url: str) -> tuple[list[tuple], list[tuple], list[tuple]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = (
            connection.execute(text("SELECT id, name, status FROM sweeps")).all(),
            connection.execute(
                text(
                    "SELECT id, status, epochs_done, final_loss, final_params, stop_reason,"
                    " best_epoch, sweep_id FROM runs"
                )
            ).all(),
            connection.execute(
                text("SELECT run_id, epoch, loss, params, grad_norm, lr FROM epoch_metrics")
            ).all(),
        )
    engine.dispose()
    return rows


def test_revisions_build_exactly_the_models_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == [], "storage/models.py changed without an Alembic revision"


def test_a_first_version_database_is_upgraded_with_every_row_intact(database_url: str) -> None:
    url = database_url
    _at_revision(url, FIRST_REVISION)
    _seed_rows(url)
    before = _old_rows(url)

    engine = make_engine(url)  # what every gdflow command does on open
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        if connection.dialect.name == "sqlite":
            assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    engine.dispose()
    assert _old_rows(url) == before
    assert len(before[2]) == 2


REGISTRY_TABLES = ("model_versions", "model_aliases", "model_alias_changes", "prediction_batches")


def _registry_rows(url: str) -> dict[str, int]:
    """How many rows each model registry table holds (fails where a table is missing)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        counts = {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in REGISTRY_TABLES
        }
    engine.dispose()
    return counts


def test_a_database_with_runs_gets_an_empty_model_registry(database_url: str) -> None:
    url = database_url
    _at_revision(url, "0003")
    _seed_rows(url)
    before = _old_rows(url)

    engine = make_engine(url)
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        tables = set(inspect(connection).get_table_names())
    engine.dispose()
    assert tables >= set(REGISTRY_TABLES)
    assert _old_rows(url) == before
    assert len(before[1]) == 1
    assert _registry_rows(url) == dict.fromkeys(REGISTRY_TABLES, 0)


def test_the_model_registry_revision_downgrades_to_its_parent(database_url: str) -> None:
    url = database_url
    make_engine(url).dispose()
    _seed_rows(url)
    before = _old_rows(url)
    engine = create_engine(url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0003")
    with engine.connect() as connection:
        assert current_revision(connection) == "0003"
        assert not set(inspect(connection).get_table_names()) & set(REGISTRY_TABLES)
    engine.dispose()
    assert _old_rows(url) == before


def test_a_database_from_before_alembic_is_adopted_and_stamped(database_url: str) -> None:
    url = database_url
    legacy = create_engine(url)
    Base.metadata.create_all(legacy)  # how the first release created its tables
    legacy.dispose()
    _seed_rows(url)
    before = _old_rows(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
    engine.dispose()
    assert _old_rows(url) == before


def test_a_database_from_a_newer_gdflow_is_refused(database_url: str) -> None:
    url = database_url
    make_engine(url).dispose()
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    engine.dispose()
    with pytest.raises(DatabaseError, match="newer than this gdflow") as info:
        make_engine(url)
    assert "\n" not in str(info.value)


def test_upgrading_twice_changes_nothing(database_url: str) -> None:
    engine = make_engine(database_url)
    assert ensure_current(engine) == (head_revision(), head_revision())
    engine.dispose()


_OPEN_SCRIPT = """
import sys, time
from gdflow.storage import make_engine
from gdflow.storage.migrate import current_revision
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all open at the same instant
engine = make_engine(sys.argv[1])
with engine.connect() as connection:
    print(current_revision(connection))
"""


@pytest.mark.process
@pytest.mark.parametrize("start", ["empty", FIRST_REVISION])
def test_processes_opening_an_old_database_at_once_do_not_race(
    database_url: str, start: str
) -> None:
    url = database_url
    if start != "empty":
        _at_revision(url, start)
        _seed_rows(url)
    before = _old_rows(url) if start != "empty" else None
    start_at = str(time.time() + 4)
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_SCRIPT, url, start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    results = [opener.communicate(timeout=120) for opener in openers]
    for opener, (out, err) in zip(openers, results):
        assert opener.returncode == 0, err
        assert out.strip() == head_revision()
    if before is not None:
        assert _old_rows(url) == before
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()
