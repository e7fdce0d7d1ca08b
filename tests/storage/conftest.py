"""Every storage test runs twice: on a SQLite file and on a database of a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gdflow.storage import dispose_engines


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.process)])
def database_url(
    request: pytest.FixtureRequest, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The metrics database URL of this test on each back end (also GDFLOW_DATABASE_URL)."""
    if request.param == "postgresql":
        yield str(request.getfixturevalue("postgres_url"))
        return
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    monkeypatch.setenv("GDFLOW_DATABASE_URL", url)
    yield url
    dispose_engines()
