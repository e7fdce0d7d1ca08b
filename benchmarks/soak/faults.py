"""The soak's faults, injected into the real processes and files: SIGKILL, a Prefect server
restart, the database's write lock held past the busy timeout, a full disk (RLIMIT_FSIZE),
and a stretch of downtime that leaves a backlog of missed schedules."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from benchmarks.soak.cluster import Cluster
from benchmarks.soak.observe import Observer
from benchmarks.soak.plan import Fault
from benchmarks.soak.processes import limit_file_size

#: The file-size limits of the two disk-full faults (bytes): SQLite writes 4 KiB pages, which
#: cannot fit under 2 KiB, while the model file (about 400 bytes) can; under 128 bytes nothing
#: can be written.
DB_FULL_BYTES = 2048
STORE_FULL_BYTES = 128


@dataclass
class Injection:
    """What one fault did: when, which run it hit, and what it observed."""

    fault: Fault
    seconds: float
    runs_running: list[int]
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The injection as plain JSON values."""
        return {
            **self.fault.as_dict(),
            "seconds": round(self.seconds, 2),
            "runs_running": self.runs_running,
            "mid_run": bool(self.runs_running),
            **self.detail,
        }


class Injector:
    """Injects faults into a cluster; `wait(seconds)` keeps observing while a fault holds."""

    def __init__(self, cluster: Cluster, observer: Observer, wait: Callable[[float], None]):
        self.cluster = cluster
        self.observer = observer
        self.wait = wait
        #: The start time of each downtime's restart (soak seconds): its backlog window.
        self.restarts_after_downtime: list[float] = []

    def inject(self, fault: Fault) -> Injection:
        """Inject one fault and return once everything it stopped runs again."""
        injection = Injection(fault, self.observer.seconds(), self.observer.running_runs())
        action = {
            "kill": self._kill,
            "server": self._server,
            "lock": self._lock,
            "db-full": self._disk_full,
            "store-full": self._disk_full,
            "downtime": self._downtime,
        }[fault.kind]
        action(fault, injection)
        return injection

    def _kill(self, fault: Fault, injection: Injection) -> None:
        """SIGKILL the serving process executing the run (or the first) with its flow run."""
        service = self.cluster.serving[0]
        for run_id in injection.runs_running:
            pid = self.observer.run_owner_pid(run_id)
            owner = self.cluster.owner_of(pid) if pid is not None else None
            if owner is not None:
                service = owner
                break
        injection.detail["killed"] = service.name
        injection.detail["pids"] = service.kill()
        self.wait(fault.hold)
        injection.detail["before_exit"] = self.cluster.start_serving(service, self.wait)

    def _server(self, fault: Fault, injection: Injection) -> None:
        """Stop the Prefect server as a service manager would (SIGTERM), start it again."""
        injection.detail["server_exit"] = self.cluster.server.stop(signal.SIGTERM)
        self.wait(fault.hold)
        self.cluster.start_server()

    def _lock(self, fault: Fault, injection: Injection) -> None:
        """Hold the metrics database's write lock (another process's long transaction)."""
        blocker = sqlite3.connect(self.cluster.layout.database, isolation_level=None, timeout=60)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            self.wait(fault.hold)
            blocker.execute("COMMIT")
        finally:
            blocker.close()

    def _disk_full(self, fault: Fault, injection: Injection) -> None:
        """Limit the size of the files the serving processes write, then lift the limit from
        every process of their trees (flow runs started meanwhile included)."""
        size = DB_FULL_BYTES if fault.kind == "db-full" else STORE_FULL_BYTES
        limited = _limit_tree(self.cluster, size, fault.hold, self.wait)
        injection.detail["processes_limited"] = limited

    def _downtime(self, fault: Fault, injection: Injection) -> None:
        """A power cut: everything killed; after the stretch, the server then the serving
        processes start again and find the schedules they missed."""
        self.cluster.kill_all()
        self.wait(fault.hold)
        self.cluster.start_server()
        self.restarts_after_downtime.append(self.observer.seconds())
        injection.detail["before_exit"] = [
            self.cluster.start_serving(service, self.wait) for service in self.cluster.serving
        ]


def _limit_tree(
    cluster: Cluster, size: int, hold: float, wait: Callable[[float], None]
) -> Optional[int]:
    """RLIMIT_FSIZE `size` on the serving trees for `hold` seconds, re-applied every half
    second to flow-run processes that start meanwhile; then lifted everywhere."""
    limited: set[int] = set()
    remaining = hold
    try:
        while remaining > 0:
            pids = [pid for pid in cluster.serving_tree() if pid not in limited]
            limit_file_size(pids, size)
            limited.update(pids)
            step = min(0.5, remaining)
            wait(step)
            remaining -= step
    finally:
        for _ in range(2):  # a process started while lifting inherits the limit: look again
            limit_file_size(cluster.serving_tree(), None)
    return len(limited)
