"""Shared fixtures: a temporary metrics database per test, and no telemetry from Prefect.

Tests that start processes (a Prefect server, the CLI, PostgreSQL, process pools) carry the
`process` marker; `make test-fast` runs the others (`-m 'not process'`). A test that uses one of
PROCESS_FIXTURES is marked automatically; any other unmarked test that starts a process fails
with a message saying to mark it, so the fast selection stays true as tests are added.
"""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gdflow.storage import dispose_engines
from tests.pg_server import PostgresServer, postgres_server

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

#: Fixtures that start real processes (Prefect servers, served deployments, an S3-compatible
#: server, a local Dask cluster), for any test folder.
pytest_plugins = ["tests.processes", "tests.s3_server", "tests.dask_cluster"]

#: Fixtures that start processes: a test using one is marked `process`.
PROCESS_FIXTURES = frozenset(
    {
        "prefect_api_url",
        "prefect_server",
        "own_prefect_server",
        "served",
        "postgres",
        "postgres_url",
        "s3_server",
        "s3_endpoint",
        "s3_bucket",
        "dask_cluster",
    }
)

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `process` every test that uses a process fixture or is `heavy`."""
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if uses & PROCESS_FIXTURES or item.get_closest_marker("heavy"):
            item.add_marker(pytest.mark.process)


#: The test being set up or run, when it is not marked `process` (None otherwise).
_unmarked: list[str] = []


def _refuse(what: str) -> None:
    if _unmarked:
        raise RuntimeError(
            f"{_unmarked[0]} starts a process ({what}) but is not marked `process`: add "
            "@pytest.mark.process, or use a fixture of tests/conftest.py PROCESS_FIXTURES"
        )


def pytest_configure(config: pytest.Config) -> None:
    """Refuse process starts from tests that are not marked `process` (see the module line)."""
    popen_init = subprocess.Popen.__init__
    process_start = multiprocessing.process.BaseProcess.start

    def guarded_popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        _refuse(f"subprocess {args!r:.80}")
        popen_init(self, args, *rest, **kw)

    def guarded_start(self: multiprocessing.process.BaseProcess) -> None:
        _refuse("multiprocessing")
        process_start(self)

    subprocess.Popen.__init__ = guarded_popen  # type: ignore[method-assign]
    multiprocessing.process.BaseProcess.start = guarded_start  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Guard the setup of an unmarked test (session fixtures start here too)."""
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Guard the body of an unmarked test."""
    return (yield from _guarded(item))


def _guarded(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("process"):
        return (yield)
    _unmarked.append(item.nodeid)
    try:
        return (yield)
    finally:
        _unmarked.clear()
