"""A Prefect server that stops mid-run must not slow training down or hold the process: the run
keeps its pace and every epoch, says once that the dashboard is unreachable, and a SIGTERM
still ends it `cancelled` within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flows.reliability import check_every_epoch_once, epoch_rows, query, start_gdflow
from tests.processes import (
    PrefectServer,
    free_port,
    prefect_home_env,
    seeded_prefect_home,
    start_background,
    stop_process,
    venv_command,
    wait_for,
)

#: Timing- or load-sensitive: `make test` runs this module alone, after the parallel part.
pytestmark = pytest.mark.alone

#: The notice of an unreachable dashboard (tasks/dashboard_feed.py).
NOTICE = "Prefect dashboard unreachable at"
#: Seconds over which a training rate is measured, before and after the server stops.
WINDOW = 10.0
#: The rate after the outage must be at least this share of the rate before: slack for a
#: loaded 2-core machine. A run blocked by the dashboard writes at most one 4,096-epoch chunk
#: in a window (its rate drops to almost nothing).
MIN_RATE_SHARE = 0.5
#: Seconds from SIGTERM to the run recorded `cancelled`, and to the process gone.
CANCELLED_WITHIN = 15.0
EXITED_WITHIN = 30.0


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[PrefectServer, subprocess.Popen[bytes]]]:
    """A `prefect server` of this test alone (the test stops it), on a free loopback port."""
    from gdflow.flows.deployments import server_is_healthy

    home = seeded_prefect_home(tmp_path / "prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **prefect_home_env(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    log = home / "server.log"
    process = start_background(
        [venv_command("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=home,
        log=log,
    )
    try:

        def healthy() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return server_is_healthy(api_url)

        wait_for(healthy, timeout=120, what="prefect server to start")
        server = PrefectServer(
            api_url=api_url,
            ui_url=f"http://127.0.0.1:{port}",
            env={**env, "PREFECT_API_URL": api_url},
            home=home,
        )
        yield server, process
    finally:
        stop_process(process)


def _rate(database: Path, process: subprocess.Popen[bytes], log: Path) -> float:
    """Epoch rows written per second over the next WINDOW seconds."""
    assert process.poll() is None, log.read_text()[-3000:]
    start, rows = time.monotonic(), epoch_rows(database)
    time.sleep(WINDOW)
    assert process.poll() is None, log.read_text()[-3000:]
    return (epoch_rows(database) - rows) / (time.monotonic() - start)


@pytest.mark.process
def test_a_server_that_stops_mid_run_neither_slows_training_nor_holds_sigterm(
    own_server: tuple[PrefectServer, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    server, server_process = own_server
    database = tmp_path / "metrics.db"
    env = {**server.env, "GDFLOW_DATABASE_URL": f"sqlite:///{database}"}
    log = tmp_path / "run.log"
    # The default --log-every (10): progress lines go to the API too, as in a user's run.
    process = start_gdflow(["run", "--epochs", "100000000"], env=env, cwd=tmp_path, log=log)
    try:

        def written() -> int:
            assert process.poll() is None, log.read_text()[-3000:]
            return epoch_rows(database)

        wait_for(written, timeout=240, what="the run's first epochs in the database")
        before = _rate(database, process, log)
        stop_process(server_process)
        assert server_process.poll() is not None
        time.sleep(2)  # the next progress update meets the closed port
        after = _rate(database, process, log)
        assert after >= MIN_RATE_SHARE * before, (before, after)
        wait_for(lambda: NOTICE in log.read_text(), timeout=30, what="the unreachable notice")

        terminated = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        wait_for(
            lambda: query(database, "SELECT status FROM runs") == [("cancelled",)],
            timeout=CANCELLED_WITHIN,
            interval=0.2,
            what="the run recorded cancelled",
        )
        cancelled = time.monotonic() - terminated
        wait_for(
            lambda: process.poll() is not None,
            timeout=EXITED_WITHIN - cancelled,
            interval=0.2,
            what="the process to exit",
        )
        exited = time.monotonic() - terminated
    finally:
        stop_process(process)
    output = log.read_text()
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert output.count(NOTICE) == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("gdflow: error:")]
    assert len(errors) == 1, output[-3000:]
    assert errors[0].startswith("gdflow: error: stopped by SIGTERM"), errors
    ((_id, status, epochs, reason),) = check_every_epoch_once(database)
    assert (status, reason) == ("cancelled", "cancelled")
    print(
        f"\nobserved: {before:.0f} epochs/s before the outage, {after:.0f} after; cancelled "
        f"{cancelled:.1f} s and exited {exited:.1f} s after SIGTERM; {epochs} epoch rows"
    )
