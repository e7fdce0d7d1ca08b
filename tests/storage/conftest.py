"""Every storage test runs twice: on a SQLite file and on a database of a real PostgreSQL server."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.process)])
def database_url(request: pytest.FixtureRequest, tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The metrics database URL of this test on each back end (also GDFLOW_DATABASE_URL)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    monkeypatch.setenv("GDFLOW_DATABASE_URL", url)
    return url
