"""Many `gdflow run` processes on one SQLite file at once, and a sweep's concurrent runs, with
a reader polling throughout: every run completes, every epoch is stored once, nothing locks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.flows.reliability import (
    CONCURRENT_RUNS,
    Reader,
    check_every_epoch_once,
    check_one_champion,
    ephemeral_env,
    epoch_rows,
    server_env,
    start_gdflow,
)
from tests.processes import PrefectServer, stop_process

EPOCHS = 4500  # with a flush every 2 s or 4096 epochs: two chunks or more per run, interleaved
#: A temporary Prefect server's failed start, as its log records it.
SERVER_START_FAILURE = "Application startup failed. Exiting."


def _run_all(
    env: dict[str, str], workdir: Path, database: Path, *, count: int, timeout: float
) -> int:
    """Start `count` `gdflow run` at once, poll while they train; return the reader's polls."""
    args = ["run", "--epochs", str(EPOCHS), "--log-every", "1000"]
    processes = [
        start_gdflow(args, env=env, cwd=workdir, log=workdir / f"run{i}.log") for i in range(count)
    ]
    deadline = time.monotonic() + timeout
    try:
        with Reader(database) as reader:
            for process in processes:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            rows_seen = epoch_rows(database)
    finally:
        for process in processes:
            stop_process(process)
    outputs = [(workdir / f"run{i}.log").read_text() for i in range(count)]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert reader.polls > 0 and reader.errors == [], reader.errors[:5]
    assert rows_seen == count * EPOCHS
    for output in outputs:
        # The temporary servers' own output (Prefect's shutdown noise included) goes to their
        # log in PREFECT_HOME: a run's output has no traceback at all.
        assert "database is locked" not in output.lower(), output[-3000:]
        assert "Traceback" not in output, output[-3000:]
    return reader.polls


def _initialise_prefect_home(env: dict[str, str], workdir: Path) -> None:
    """One run first, as on any machine that has run gdflow before: Prefect's temporary server
    creates its own tables and blocks in PREFECT_HOME. (Eight first-ever temporary servers on an
    empty PREFECT_HOME race to do that, and the losers log Prefect's tracebacks — see
    RELIABILITY.md.)"""
    warmup = {**env, "GDFLOW_DATABASE_URL": f"sqlite:///{workdir / 'warmup.db'}"}
    process = start_gdflow(["run", "--epochs", "1"], env=warmup, cwd=workdir, log=workdir / "w.log")
    try:
        assert process.wait(timeout=300) == 0, (workdir / "w.log").read_text()[-3000:]
    finally:
        stop_process(process)


@pytest.mark.heavy
@pytest.mark.parametrize(
    "mode",
    [
        "server",
        # Every run starts its own temporary Prefect server: about 100 s of two cores, so
        # `make test-extended` and `make reliability` run it, CI the server case.
        pytest.param("ephemeral", marks=pytest.mark.extended),
    ],
)
def test_concurrent_runs_store_every_epoch_once(
    mode: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = tmp_path / "metrics.db"
    if mode == "server":
        server: PrefectServer = request.getfixturevalue("prefect_server")
        env = server_env(server, database)
    else:
        from gdflow.flows.deployments import local_api_url, server_is_healthy

        if server_is_healthy(local_api_url()):
            pytest.skip("a Prefect server listens on 127.0.0.1:4200: gdflow run would use it")
        env = ephemeral_env(tmp_path / "prefect-home", database)
        _initialise_prefect_home(env, tmp_path)
    started = time.monotonic()
    count = CONCURRENT_RUNS
    polls = _run_all(env, tmp_path, database, count=count, timeout=420)
    runs = check_every_epoch_once(database)
    restarts = 0
    if mode == "ephemeral":
        server_log = (tmp_path / "prefect-home" / "temporary-server.log").read_text()
        restarts = server_log.count(SERVER_START_FAILURE)
        assert server_log.count(": temporary server on port ") >= count + 1  # and the warm-up
    print(
        f"\nobserved ({mode}): {len(runs)} runs, {epoch_rows(database)} epoch rows, "
        f"{polls} reader polls, 0 errors, {restarts} Prefect server restarts, "
        f"{time.monotonic() - started:.0f} s"
    )
    assert [(status, epochs, reason) for _id, status, epochs, reason in runs] == [
        ("completed", EPOCHS, "max_epochs")
    ] * count
    check_one_champion(f"sqlite:///{database}", name="toy", count=count)


@pytest.mark.heavy
@pytest.mark.extended  # about 35 s; CI runs the server case above and the PostgreSQL one
def test_a_sweeps_concurrent_runs_store_every_epoch_once(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    database = tmp_path / "metrics.db"
    lrs = ["0.001", "0.002", "0.005", "0.01"]
    args = ["sweep", "--lrs", *lrs, "--max-concurrency", "4", "--epochs", str(EPOCHS)]
    log = tmp_path / "sweep.log"
    process = start_gdflow(
        [*args, "--log-every", "0"], env=server_env(prefect_server, database), cwd=tmp_path, log=log
    )
    try:
        with Reader(database) as reader:
            process.wait(timeout=300)
    finally:
        stop_process(process)
    output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    assert reader.polls > 0 and reader.errors == [], reader.errors[:5]
    assert "database is locked" not in output.lower() and "Traceback" not in output
    runs = check_every_epoch_once(database)
    print(
        f"\nobserved (sweep): {len(runs)} runs, {epoch_rows(database)} epoch rows, "
        f"{reader.polls} reader polls, 0 errors"
    )
    assert sorted((status, epochs) for _id, status, epochs, _reason in runs) == [
        ("completed", EPOCHS)
    ] * len(lrs)
