"""Flow fixtures: one Prefect test-harness server for the whole session (it takes ~8 s to start)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """Run the session's flows against a temporary Prefect server; yield its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def run_cli(
    args: list[str], *, api_url: str, database_url: str, cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run the installed `gdflow` console script as a user would, against the harness server."""
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "GDFLOW_DATABASE_URL": database_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    script = Path(sys.executable).with_name("gdflow")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
