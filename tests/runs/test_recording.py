"""The bridge to storage under faults: a retried flow run reuses its run, runs of dead processes
are reconciled as crashed, and a chunk written while the database is locked is retried."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import threading

import numpy as np
import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from gdflow.runs.liveness import current_owner, owner_alive, process_started
from gdflow.runs.recording import (
    MetricWriter,
    end_run,
    failure_outcome,
    open_database,
    reconcile_runs,
    start_run,
)
from gdflow.storage import RunStatus, get_metrics, get_run, make_engine, update_run
from gdflow.training.records import EpochChunk


def _start(url: str, flow_run_id: str | None = "flow-run-1") -> tuple[int, bool]:
    return start_run(
        open_database(url),
        config={},
        data_source="toy",
        flow_run_id=flow_run_id,
        flow_run_name="toy",
    )


def _chunk(first: int, last: int) -> EpochChunk:
    epochs = np.arange(first, last + 1)
    return EpochChunk(
        epochs=epochs,
        losses=1.0 / epochs,
        grad_norms=np.ones(len(epochs)),
        params=epochs.reshape(-1, 1).astype(float),
        names=("w",),
        lrs=np.full(len(epochs), 0.01),
    )


def _run(url: str, run_id: int):  # type: ignore[no-untyped-def]
    engine = make_engine(url)
    with Session(engine) as session:
        run = get_run(session, run_id=run_id)
        epochs = [m.epoch for m in get_metrics(session, run_id=run_id)]
        session.expunge_all()
    engine.dispose()
    return run, epochs


def test_a_flow_run_started_again_restarts_its_run(database_url: str) -> None:
    run_id, restarted = _start(database_url)
    assert not restarted
    engine = make_engine(database_url)
    MetricWriter(engine=engine, run_id=run_id)(_chunk(1, 30))
    engine.dispose()
    outcome = failure_outcome(RunStatus.FAILED, "first attempt")
    end_run(open_database(database_url), run_id=run_id, outcome=outcome)
    again, restarted = _start(database_url)
    assert (again, restarted) == (run_id, True)
    run, epochs = _run(database_url, run_id)
    assert run.status == "running" and run.error is None and run.epochs_done == 0
    assert epochs == []
    other, restarted = _start(database_url, flow_run_id="flow-run-2")
    assert other != run_id and not restarted


@pytest.mark.process
def test_runs_of_dead_processes_are_reconciled_as_crashed(database_url: str) -> None:
    engine = make_engine(database_url)
    child = subprocess.Popen(["sleep", "60"])
    dead = {
        "host": socket.gethostname(),
        "pid": child.pid,
        "pid_started": process_started(child.pid),
    }
    ids = {
        name: _start(database_url, flow_run_id=name)[0]
        for name in ("dead", "reused", "alive", "remote")
    }
    with Session(engine) as session, session.begin():
        update_run(session, run_id=ids["dead"], epochs_done=12, **dead)
        # this pid is alive, but it is not the process that started at that time
        update_run(session, run_id=ids["reused"], **{**current_owner(), "pid_started": "boot:1"})
        update_run(session, run_id=ids["remote"], host="elsewhere", pid=child.pid)
    engine.dispose()
    assert owner_alive(**dead)
    assert reconcile_runs(open_database(database_url)) == [ids["reused"]]
    child.kill()
    child.wait()
    assert not owner_alive(**dead)
    assert reconcile_runs(open_database(database_url)) == [ids["dead"]]
    run, _ = _run(database_url, ids["dead"])
    assert run.status == "crashed" and run.stop_reason == "crashed"
    assert f"process {child.pid}" in run.error and "after 12 epoch(s)" in run.error
    assert _run(database_url, ids["alive"])[0].status == "running"
    assert _run(database_url, ids["remote"])[0].status == "running"
    assert reconcile_runs(open_database(database_url)) == []
    assert current_owner()["pid"] == os.getpid()


def test_a_chunk_written_while_another_process_locks_the_database_is_retried(
    database_url: str,
) -> None:
    run_id, _ = _start(database_url)
    engine = make_engine(database_url)

    @event.listens_for(engine, "connect")
    def short_busy_timeout(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.execute("PRAGMA busy_timeout=100")

    engine.dispose()
    writer = MetricWriter(engine=engine, run_id=run_id)
    writer(_chunk(1, 500))
    blocker = sqlite3.connect(
        engine.url.database or "", isolation_level=None, check_same_thread=False
    )
    blocker.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.5, blocker.execute, args=("COMMIT",))
    release.start()
    try:
        writer(_chunk(501, 1000))
    finally:
        release.join()
        blocker.close()
        engine.dispose()
    run, epochs = _run(database_url, run_id)
    assert writer.written == 1000 and epochs == list(range(1, 1001)) and run.epochs_done == 1000
