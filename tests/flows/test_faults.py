"""A `gdflow run` killed, terminated or interrupted mid-training, and a flow run retried: rows
up to the last write survive, the database stays intact, and the run ends in a clear state."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gdflow.config.train import TrainConfig
from gdflow.flows.train import train_flow
from tests.flows.reliability import (
    check_every_epoch_once,
    ephemeral_env,
    epoch_rows,
    query,
    server_env,
    start_gdflow,
    temporary_servers_of,
)
from tests.processes import (
    PrefectServer,
    latest_run,
    seeded_prefect_home,
    stop_process,
    venv_command,
    wait_for,
)

LONG_RUN = ["run", "--epochs", "100000000", "--log-every", "0"]


def _training(env: dict[str, str], workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a long `gdflow run` and wait until its first epochs are in the database."""
    database = Path(env["GDFLOW_DATABASE_URL"].removeprefix("sqlite:///"))
    log = workdir / "run.log"
    process = start_gdflow(LONG_RUN, env=env, cwd=workdir, log=log)

    def written() -> int:
        assert process.poll() is None, log.read_text()[-3000:]
        return epoch_rows(database)

    wait_for(written, timeout=240, what="the run's first epochs in the database")
    return process, database


def _stopped_cleanly(process: subprocess.Popen[bytes], log: Path, code: int) -> str:
    """Wait for the process; check its exit status and its one-line error; return the line."""
    try:
        process.wait(timeout=120)
    finally:
        stop_process(process)
    output = log.read_text()
    assert process.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("gdflow: error:")]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


def test_sigkill_keeps_the_flushed_epochs_and_the_run_is_reconciled_as_crashed(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    env = server_env(prefect_server, tmp_path / "metrics.db")
    process, database = _training(env, tmp_path)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    flushed = epoch_rows(database)
    assert query(database, "SELECT status FROM runs") == [("running",)]
    runs = check_every_epoch_once(database)  # also PRAGMA integrity_check
    assert runs[0][2] == flushed > 0
    listing = prefect_server.cli(venv_command("gdflow"), "runs", cwd=tmp_path, extra_env=env)
    assert listing.returncode == 0, listing.stderr
    assert "recorded it as crashed" in listing.stderr
    assert " crashed " in listing.stdout
    status, reason, error = query(database, "SELECT status, stop_reason, error FROM runs")[0]
    assert (status, reason) == ("crashed", "crashed")
    assert f"process {process.pid} " in error and f"after {flushed} epoch(s)" in error
    print(f"\nobserved (SIGKILL): 1 run crashed, {flushed} epoch rows kept, integrity ok")


def test_sigterm_ends_the_run_cancelled_with_every_epoch_written(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    env = server_env(prefect_server, tmp_path / "metrics.db")
    process, database = _training(env, tmp_path)
    os.kill(process.pid, signal.SIGTERM)
    line = _stopped_cleanly(process, tmp_path / "run.log", 128 + signal.SIGTERM)
    assert "cancelled: stopped by SIGTERM after epoch" in line
    runs = check_every_epoch_once(database)
    ((_id, status, epochs, reason),) = runs
    assert (status, reason) == ("cancelled", "cancelled") and epochs > 0
    assert f"its {epochs} epoch(s) are recorded" in line
    ((flow_run_id,),) = query(database, "SELECT flow_run_id FROM runs")
    with prefect_server.client() as client:
        state = client.read_flow_run(flow_run_id).state
        assert state is not None and state.is_cancelled()
    print(f"\nobserved (SIGTERM): 1 run cancelled, {epochs} epoch rows, exit 143")


@pytest.mark.process
def test_ctrl_c_in_a_terminal_ends_the_run_cancelled_without_a_server(tmp_path: Path) -> None:
    env = ephemeral_env(seeded_prefect_home(tmp_path / "prefect-home"), tmp_path / "metrics.db")
    process, database = _training(env, tmp_path)
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    line = _stopped_cleanly(process, tmp_path / "run.log", 128 + signal.SIGINT)
    assert "cancelled: stopped by SIGINT after epoch" in line
    assert temporary_servers_of(process.pid) == []  # it outlived Ctrl-C, not gdflow
    ((_id, status, epochs, reason),) = check_every_epoch_once(database)
    assert (status, reason) == ("cancelled", "cancelled") and epochs > 0
    print(f"\nobserved (Ctrl-C): 1 run cancelled, {epochs} epoch rows, exit 130")


@pytest.mark.usefixtures("prefect_api_url")
def test_a_retried_flow_run_keeps_one_run_with_every_epoch_once(
    database_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "late.csv"  # missing on the first attempt, written before the retry
    database = Path(database_url.removeprefix("sqlite:///"))

    def write_data_once_the_first_attempt_failed() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if query(database, "SELECT status FROM runs") == [("failed",)]:
                    break
            except Exception:  # noqa: BLE001 - no schema yet
                pass
            time.sleep(0.05)
        data.write_text("x,y\n" + "".join(f"{x},{2 * x}\n" for x in range(1, 6)))

    fixer = threading.Thread(target=write_data_once_the_first_attempt_failed)
    fixer.start()
    config = TrainConfig(data=str(data), epochs=300, log_every=0)
    state = train_flow.with_options(retries=1, retry_delay_seconds=2)(
        config=config, return_state=True
    )
    fixer.join()
    assert state.is_completed(), state.message
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.run_count == 2  # the first attempt failed, the retry completed
    runs = check_every_epoch_once(database)
    assert [(status, epochs) for _id, status, epochs, _reason in runs] == [("completed", 300)]
    run, metrics = latest_run(database_url)
    assert run.error is None and len(metrics) == 300
    print(f"\nobserved (flow retry): {len(runs)} run, {len(metrics)} epoch rows after 2 attempts")
