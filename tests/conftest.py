"""Shared fixtures: a temporary metrics database per test, and no telemetry from Prefect."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gdflow.storage import dispose_engines
from tests.pg_server import PostgresServer, postgres_server

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

#: Fixtures that start real processes (Prefect servers, served deployments), for any test folder.
pytest_plugins = ["tests.processes"]

REPO = Path(__file__).resolve().parents[1]
#: The seed's reference trajectory, vendored so the tests run without ../shared.
SEED_TRAJECTORY = REPO / "tests" / "fixtures" / "seed_trajectory.csv"
#: The original beside the checkout, when present (developers' machines and CI).
SHARED_TRAJECTORY = REPO.parent / "shared" / "reference" / "seed_trajectory.csv"


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite file for this test, also set as GDFLOW_DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    monkeypatch.setenv("GDFLOW_DATABASE_URL", url)
    yield url
    dispose_engines()  # the process's engines on this test's files: their connections closed


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on loopback for the whole session (skipped only outside CI)."""
    try:
        with postgres_server() as server:
            yield server
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise  # .ci/run installs PostgreSQL: missing there is a failure, not a skip
        pytest.skip(str(exc))


@pytest.fixture
def postgres_url(postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database of its own on the test server, dropped afterwards; also GDFLOW_DATABASE_URL."""
    name = postgres.create_database()
    url = postgres.url(name)
    monkeypatch.setenv("GDFLOW_DATABASE_URL", url)
    yield url
    dispose_engines()  # before the drop: PostgreSQL refuses to drop a database in use
    postgres.drop_database(name)


def read_trajectory(path: Path = SEED_TRAJECTORY) -> list[dict[str, float]]:
    """The seed trajectory as a list of {epoch, loss, w} rows."""
    import csv

    with path.open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
