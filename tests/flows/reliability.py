"""Helpers of the reliability tests: start `gdflow` processes, read the database behind them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import PrefectServer, prefect_home_env, start_background, venv_command

#: `gdflow run` processes at once in the concurrency tests (SQLite against a server, SQLite in
#: ephemeral mode, PostgreSQL): two in `make test` (concurrent writers, interleaved chunks, at
#: a quarter of the CPU time), eight under `make reliability` (GDFLOW_CONCURRENT_RUNS=8), whose
#: figures RELIABILITY.md records.
CONCURRENT_RUNS = int(os.environ.get("GDFLOW_CONCURRENT_RUNS", "2"))


def server_env(server: PrefectServer, database: Path) -> dict[str, str]:
    """Environment of a `gdflow` command that records on `server` into `database`."""
    return {**server.env, "GDFLOW_DATABASE_URL": f"sqlite:///{database}"}


def ephemeral_env(home: Path, database: Path) -> dict[str, str]:
    """Environment of a `gdflow` command with no Prefect server configured (ephemeral mode)."""
    return {
        **prefect_home_env(home),
        "GDFLOW_DATABASE_URL": f"sqlite:///{database}",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }


def temporary_servers_of(gdflow_pid: int) -> list[int]:
    """Pids of the live temporary Prefect servers started by process `gdflow_pid` (from Linux
    /proc: each names its parent in its command line, --parent-pid)."""
    from gdflow.flows.temporary_server import CHILD_MODULE

    wanted = ["-m", CHILD_MODULE, "--parent-pid", str(gdflow_pid)]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # ended meanwhile
        if any(args[i : i + len(wanted)] == wanted for i in range(len(args))):
            found.append(int(entry.name))
    return found


def start_gdflow(
    args: list[str], *, env: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    """`gdflow ARGS` in its own process group (as a terminal runs it), output to `log`."""
    return start_background([venv_command("gdflow"), *args], env=env, cwd=cwd, log=log)


def query(database: Path, sql: str, *args: object) -> list[tuple]:
    """Rows of one query on a short-lived connection of its own (a reader beside the runs)."""
    connection = sqlite3.connect(database, timeout=30)
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


def epoch_rows(database: Path) -> int:
    """Epoch rows stored so far (0 before the schema exists)."""
    try:
        return int(query(database, "SELECT count(*) FROM epoch_metrics")[0][0])
    except sqlite3.OperationalError:
        return 0


@dataclass
class Reader:
    """A thread polling the database through gdflow's storage layer while runs write to it."""

    database: Path
    polls: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        from sqlalchemy.orm import Session

        from gdflow.storage import get_metrics, latest_run_id, list_runs, make_engine

        engine = make_engine(f"sqlite:///{self.database}")
        try:
            while not self._stop.wait(0.2):
                try:
                    with Session(engine) as session:
                        list_runs(session, limit=50)
                        run_id = latest_run_id(session)
                        if run_id is not None:
                            get_metrics(session, run_id=run_id)
                    self.polls += 1
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            engine.dispose()

    def __enter__(self) -> Reader:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)


def check_every_epoch_once(database: Path) -> list[tuple]:
    """Assert each run's epochs are exactly 1..epochs_done, once each; return the runs."""
    runs = query(database, "SELECT id, status, epochs_done, stop_reason FROM runs ORDER BY id")
    for run_id, _status, epochs_done, _reason in runs:
        count, distinct, low, high = query(
            database,
            "SELECT count(*), count(DISTINCT epoch), min(epoch), max(epoch) "
            "FROM epoch_metrics WHERE run_id = ?",
            run_id,
        )[0]
        assert count == distinct == epochs_done, (run_id, count, distinct, epochs_done)
        if epochs_done:
            assert (low, high) == (1, epochs_done), (run_id, low, high)
    assert query(database, "PRAGMA integrity_check") == [("ok",)]
    return runs


def check_one_champion(database_url: str, *, name: str, count: int) -> None:
    """After `count` runs of model `name` ended at about the same moment: versions 1..count,
    each with its champion decision recorded, exactly one champion, and a champion history
    that is one chain (each change starts from the previous one's version)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT version, promotion FROM model_versions WHERE name = :name "
                    "ORDER BY version"
                ),
                {"name": name},
            ).all()
            champions = connection.execute(
                text("SELECT version FROM model_aliases WHERE name = :name AND alias = 'champion'"),
                {"name": name},
            ).all()
            history = connection.execute(
                text(
                    "SELECT from_version, to_version FROM model_alias_changes "
                    "WHERE name = :name AND alias = 'champion' ORDER BY id"
                ),
                {"name": name},
            ).all()
    finally:
        engine.dispose()
    assert [version for version, _ in rows] == list(range(1, count + 1))
    assert all(promotion is not None for _, promotion in rows), rows
    assert len(champions) == 1, champions
    previous = None
    for from_version, to_version in history:
        assert from_version == previous, history
        previous = to_version
    assert previous == champions[0][0], (history, champions)
