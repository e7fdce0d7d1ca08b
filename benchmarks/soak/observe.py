"""What the soak watches while it runs: gdflow's runs as they start and end (read from the
metrics database beside the processes), the runs training at once, and after every run the
serving processes' resident memory and the databases' sizes."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Optional

from benchmarks.soak.cluster import Cluster
from benchmarks.soak.processes import rss_kib, tree_rss_kib
from gdflow.runs.liveness import owner_alive


@dataclass(frozen=True)
class Sample:
    """The state after the `run`-th run ended: time, memory (KiB) and sizes (bytes)."""

    run: int
    seconds: float
    rss_kib: dict[str, int]
    lifetime: dict[str, int]
    age: dict[str, int]
    tree_rss_kib: int
    database_bytes: int
    database_file_bytes: int
    prefect_database_bytes: int
    store_bytes: int

    def as_dict(self) -> dict[str, Any]:
        """The sample as plain JSON values."""
        return asdict(self)


@dataclass
class Observer:
    """Polls the metrics database and samples after each run that ends."""

    cluster: Cluster
    started: float = field(default_factory=time.monotonic)
    wall_started: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: gdflow run id -> status, as last read.
    statuses: dict[int, str] = field(default_factory=dict)
    #: gdflow run ids in the order they were seen to end.
    ended: list[int] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    #: The most runs seen training at once (their processes alive), and when.
    max_running: int = 0
    max_running_at: list[float] = field(default_factory=list)
    #: Runs finished by each lifetime of each serving service (name -> start number -> count).
    _ages: dict[str, dict[int, int]] = field(default_factory=dict)

    def seconds(self) -> float:
        """Seconds since the soak started."""
        return time.monotonic() - self.started

    def wall(self, seconds: float) -> datetime:
        """The UTC time `seconds` after the soak started."""
        return self.wall_started + timedelta(seconds=seconds)

    def poll(self) -> list[int]:
        """Read the runs; sample once per run that ended since the last poll; return those."""
        rows = _query(
            self.cluster.layout.database,
            "SELECT id, status, host, pid, pid_started FROM runs ORDER BY id",
        )
        newly_ended = []
        running = 0
        for run_id, status, host, pid, pid_started in rows:
            before = self.statuses.get(run_id)
            self.statuses[run_id] = status
            if status == "running":
                if owner_alive(host, pid, pid_started):
                    running += 1
            elif before is None or before == "running":
                newly_ended.append(run_id)
        if running > self.max_running:
            self.max_running, self.max_running_at = running, [self.seconds()]
        elif running == self.max_running and running > 1:
            self.max_running_at.append(self.seconds())
        for run_id in newly_ended:
            self.ended.append(run_id)
            self._sample()
        return newly_ended

    @property
    def runs_seen(self) -> int:
        """How many gdflow runs have started so far."""
        return len(self.statuses)

    def running_runs(self) -> list[int]:
        """The runs recorded `running` at the last poll."""
        return [run_id for run_id, status in self.statuses.items() if status == "running"]

    def run_owner_pid(self, run_id: int) -> Optional[int]:
        """The pid of the process executing a run (recorded in its row)."""
        rows = _query(self.cluster.layout.database, "SELECT pid FROM runs WHERE id = ?", run_id)
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def _sample(self) -> None:
        """Memory of each serving process, and the databases' and store's sizes, now."""
        rss, lifetime, age = {}, {}, {}
        for service in self.cluster.serving:
            pid = service.pid
            if pid is None:
                continue
            value = rss_kib(pid)
            if value is None:
                continue
            ages = self._ages.setdefault(service.name, {})
            ages[service.starts] = ages.get(service.starts, 0) + 1
            rss[service.name] = value
            lifetime[service.name] = service.starts
            age[service.name] = ages[service.starts]
        layout = self.cluster.layout
        self.samples.append(
            Sample(
                run=len(self.ended),
                seconds=round(self.seconds(), 2),
                rss_kib=rss,
                lifetime=lifetime,
                age=age,
                tree_rss_kib=sum(tree_rss_kib(p) for p in self.cluster.serving_pids()),
                database_bytes=logical_size(layout.database),
                database_file_bytes=_files_size(layout.database),
                prefect_database_bytes=_files_size(layout.prefect_home / "prefect.db"),
                store_bytes=sum(f.stat().st_size for f in layout.store.rglob("*") if f.is_file())
                if layout.store.exists()
                else 0,
            )
        )


def _query(database: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of one query on a short-lived connection (a reader beside the runs; WAL lets it
    read while a writer holds the lock). Empty before the schema exists."""
    connection = sqlite3.connect(database, timeout=60)
    try:
        return connection.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        connection.close()


def logical_size(database: Path) -> int:
    """Bytes of the database's pages (page_count x page_size, the WAL's pages included):
    what it would take on disk after a checkpoint."""
    if not database.exists():
        return 0
    (count,), (size,) = (
        _query(database, "PRAGMA page_count")[0],
        _query(database, "PRAGMA page_size")[0],
    )
    return int(count) * int(size)


def _files_size(database: Path) -> int:
    """Bytes of a SQLite database's files on disk: the file, its WAL and shared memory."""
    return sum(
        path.stat().st_size
        for path in (database, database.with_name(database.name + "-wal"))
        if path.exists()
    )
