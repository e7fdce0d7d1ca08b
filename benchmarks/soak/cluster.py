"""What the soak runs: a real Prefect server (`gdflow server`) on a fixed loopback port with
its own PREFECT_HOME, and either `gdflow serve --interval` or two `prefect worker`s of a
process pool executing the scheduled deployment; each can be killed, stopped and started
again."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional

from benchmarks.soak.processes import (
    Service,
    SoakError,
    descendants,
    free_port,
    kill_tree,
    venv_command,
)
from gdflow.flows.deployments import NIGHTLY, server_is_healthy

#: The variants: the deployments served by `gdflow serve`, or a process work pool with two
#: workers.
VARIANTS = ("serve", "workers")
#: Name of the work pool of the workers variant and of its deployment.
POOL = "gdflow-soak"
WORKERS = ("soak-worker-a", "soak-worker-b")
#: The deployment's concurrency limit (`gdflow serve` and prefect.yaml: one run at a time).
CONCURRENCY_LIMIT = 1
#: The workers' pool's limit: runs pending or running at once (docs/deployment.md, "A backlog
#: and several workers"). One more than the deployment's: a worker killed with its run leaves
#: that flow run Running until something sets it Crashed, and with a pool limit of one it held
#: the pool, so that no run started again (seen: the automation below missed the run's one
#: event on a loaded server). The free slot lets the next run start, and its flow crashes the
#: dead run once the dead run's lease ran out (flows/orphans.py keeps Prefect from freeing the
#: deployment's slot a second time then).
POOL_LIMIT = CONCURRENCY_LIMIT + 1
#: Seconds a (re)started Prefect server gets to answer its health check.
SERVER_START_SECONDS = 180.0
#: Prefect settings of the soak. Time compressed: the scheduler, the runner and the workers look
#: for work every second or two (the scheduler keeps 10 runs ahead, not 100), and a run that
#: finds the deployment's slot taken asks again after 1 s instead of 30. Queued runs are not
#: relabelled Late (bookkeeping only, and writes on Prefect's SQLite database, which a queue
#: that never empties keeps busy).
PREFECT_TIMING = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "10",
    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
}
#: The workers' flow runs send a heartbeat every 30 s, and ZOMBIE_SECONDS without one makes
#: Prefect's automation (Prefect's "Detect zombie flows" recipe for a self-hosted server) set
#: the run Crashed: nothing else ends the flow run of a worker killed with it (see
#: RELIABILITY.md, "The soak"). The clock also starts when the run enters Running: the recipe
#: starts it at the first heartbeat only, and a run killed before its first heartbeat reached
#: the server stayed Running for good (seen: killed 1.6 s after it started training).
HEARTBEAT_SECONDS = 30
ZOMBIE_SECONDS = 90


@dataclass(frozen=True)
class Layout:
    """The files of one soak: its folder, the metrics database, the model store, the data."""

    root: Path

    @property
    def database(self) -> Path:
        """The metrics database (SQLite)."""
        return self.root / "metrics.db"

    @property
    def store(self) -> Path:
        """The model store folder."""
        return self.root / "store"

    @property
    def data(self) -> Path:
        """The CSV file the scheduled runs train on."""
        return self.root / "data.csv"

    @property
    def api_ca_file(self) -> Path:
        """The workers' PREFECT_API_SSL_CERT_FILE: one certificate (the server is http://)."""
        return self.root / "api-ca.pem"

    @property
    def prefect_home(self) -> Path:
        """The Prefect server's home: its own database, settings and logs."""
        return self.root / "prefect-home"


def write_api_ca_file(path: Path) -> Path:
    """Write the first certificate of certifi's bundle to `path` and return it: a CA file for a
    Prefect client of an http:// server, which verifies nothing with it, so that each client
    does not load the bundle's 100-odd certificates into a new SSL context (docs/deployment.md,
    "Workers that run for months")."""
    import re

    import certifi

    bundle = Path(certifi.where()).read_text(encoding="ascii")
    first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", bundle, re.S)
    if first is None:
        raise SoakError(f"no certificate in {certifi.where()}")
    path.write_text(first.group(0), encoding="ascii")
    return path


class Cluster:
    """The Prefect server and the serving processes of one variant."""

    def __init__(self, layout: Layout, variant: str, train_args: list[str], interval: float):
        if variant not in VARIANTS:
            raise SoakError(f"unknown variant {variant!r}; choose serve or workers")
        self.layout = layout
        self.variant = variant
        self.interval = interval
        self.train_args = train_args
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        layout.prefect_home.mkdir(parents=True, exist_ok=True)
        self.env = self._environment()
        self.server = Service(
            "prefect-server",
            [venv_command("gdflow"), "server", "--port", str(self.port)],  # exec's prefect's
            env=self.env,
            cwd=layout.root,
            log=layout.root / "prefect-server.log",
        )
        self.serving = self._serving_services()
        self.deployment_ids: list[Any] = []

    def _environment(self) -> dict[str, str]:
        """The environment of every process: this soak's server, database, store and timing;
        nothing of the caller's Prefect settings."""
        home = self.layout.prefect_home
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GDFLOW_"))},
            "PREFECT_HOME": str(home),
            "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            # The server's log says why it answered 503 (its database busy, and where).
            "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",
            **PREFECT_TIMING,
            "GDFLOW_DATABASE_URL": f"sqlite:///{self.layout.database}",
            "GDFLOW_MODEL_STORE": str(self.layout.store),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }

    def _serving_services(self) -> list[Service]:
        """`gdflow serve` (one process), or the two workers."""
        root = self.layout.root
        if self.variant == "serve":
            args = [venv_command("gdflow"), "serve", *self.train_args]
            args += ["--interval", f"{self.interval:g}"]
            return [
                Service(
                    "gdflow-serve",
                    args,
                    env=self.env,
                    cwd=root,
                    log=root / "serve.log",
                    ready_line=b"serving train/",
                )
            ]
        env = {
            **self.env,
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
            # docs/deployment.md, "Workers that run for months": without it each worker's
            # memory grows with the CA bundle every API client of every flow run loads.
            "PREFECT_API_SSL_CERT_FILE": str(write_api_ca_file(self.layout.api_ca_file)),
        }
        return [
            Service(
                name,
                # --limit 1, as docs/deployment.md runs several workers: a worker takes one run
                # at a time and leaves the next to the other.
                [venv_command("prefect"), "worker", "start", "--pool", POOL, "--name", name]
                + ["--type", "process", "--limit", "1"],
                env=env,
                cwd=root,
                log=root / f"{name}.log",
                ready_line=b"started!",
                # docs/deployment.md ("Run gdflow repair before a worker starts"): the flow
                # run a killed worker left Running frees its deployment's slot at once, not
                # when its lease runs out (up to 5 minutes of schedules waiting).
                before=[venv_command("gdflow"), "repair"],
            )
            for name in WORKERS
        ]

    def client(self) -> Any:
        """A synchronous Prefect client of this server (use as a context manager)."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(api=self.api_url)

    @contextmanager
    def prefect_settings(self) -> Iterator[None]:
        """This process's Prefect clients pointed at the soak's server for the block."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            yield

    def healthy(self) -> bool:
        """True when the Prefect server answers its health check."""
        return server_is_healthy(self.api_url, timeout=2.0)

    def start_server(self) -> None:
        """Start the Prefect server (again, on the same port and home) and wait for it."""
        self.server.start()
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not self.healthy():
            if not self.server.alive() or time.monotonic() > deadline:
                raise SoakError(
                    f"the Prefect server did not start on port {self.port}; see "
                    f"{self.server.log}:\n{self.server.tail()}"
                )
            time.sleep(0.5)

    def deploy(self) -> None:
        """Register the scheduled deployment: `gdflow serve` does it itself (this waits for
        it); for workers, the process pool and the nightly deployment of `gdflow serve`'s
        own build (interval schedule, limit 1, queued collisions) on it. The pool has a limit
        of POOL_LIMIT runs pending or running, as docs/deployment.md advises ("A backlog and
        several workers"): the server then offers one queued run at a time beside the one
        training, so the workers do not try every queued run every second only to be
        refused its slot."""
        if self.variant == "serve":
            self._wait_for_deployment()
            return
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.workers.process import ProcessWorker

        from gdflow.cli.main import config_from_args
        from gdflow.flows.deployments import build_deployments

        values = _options(self.train_args)
        config = config_from_args(values, command="serve")
        template = ProcessWorker.get_default_base_job_template()
        with self.client() as client:
            client.create_work_pool(
                WorkPoolCreate(
                    name=POOL,
                    type="process",
                    base_job_template=template,
                    concurrency_limit=POOL_LIMIT,
                ),
                overwrite=True,
            )
        with self.prefect_settings():
            _zombie_automation().create()
            nightly = build_deployments(
                config,
                cron="0 2 * * *",
                timezone="UTC",
                interval=self.interval,
                allow_overlap=False,
            )[0]
            self.deployment_ids = [nightly.apply(work_pool_name=POOL)]

    def _wait_for_deployment(self, timeout: float = 300.0) -> None:
        """Wait until `gdflow serve` registered its nightly deployment; remember its id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not all(service.alive() for service in self.serving):
                raise SoakError(f"gdflow serve ended at its start:\n{self.serving[0].tail()}")
            try:
                with self.client() as client:
                    deployment = client.read_deployment_by_name(f"train/{NIGHTLY}")
                self.deployment_ids = [deployment.id]
                return
            except Exception:  # noqa: BLE001 - not registered yet
                time.sleep(1.0)
        raise SoakError(f"gdflow serve registered no deployment in {timeout:.0f} s")

    def start_serving(self, service: Service, wait: Callable[[float], None]) -> Optional[int]:
        """Start a serving process again (after its `before` command: a worker's `gdflow
        repair`) and wait (calling `wait`) until it serves: `gdflow serve` has registered its
        deployments again, a worker has started. Returns the `before` command's exit status
        (None: none, or killed after its timeout), for the report."""
        before = service.run_before(wait)
        started = datetime.now(UTC)
        service.start()
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not (service.ready.is_set() and self._registered_since(started)):
            if not service.alive() or time.monotonic() > deadline:
                raise SoakError(f"{service.name} did not start again:\n{service.tail()}")
            wait(0.5)
        return before

    def _registered_since(self, started: datetime) -> bool:
        """True for workers; for `gdflow serve`, once it registered its nightly deployment
        again (it says it serves a moment before)."""
        if self.variant != "serve" or not self.deployment_ids:
            return True
        try:
            with self.client() as client:
                updated = client.read_deployment(self.deployment_ids[0]).updated
        except Exception:  # noqa: BLE001 - a busy server: ask again
            return False
        return updated is not None and updated >= started

    def serving_pids(self) -> list[int]:
        """The live serving processes (gdflow serve, or the workers)."""
        return [pid for service in self.serving if (pid := service.pid) is not None]

    def serving_tree(self) -> list[int]:
        """The serving processes and every process below them (the flow runs)."""
        pids = self.serving_pids()
        return pids + [child for pid in pids for child in descendants(pid)]

    def owner_of(self, pid: int) -> Service | None:
        """The serving service whose process tree holds `pid`, if any."""
        for service in self.serving:
            top = service.pid
            if top is not None and (pid == top or pid in descendants(top)):
                return service
        return None

    def kill_all(self) -> None:
        """SIGKILL the serving processes, their flow runs and the server: a power cut."""
        for service in [*self.serving, self.server]:
            if service.alive():
                kill_tree(service.pid or 0)
            if service.process is not None:
                service.process.wait()


def _zombie_automation() -> Any:
    """Prefect's automation that sets Crashed a flow run whose heartbeats stopped, or never
    came: ZOMBIE_SECONDS after it entered Running or after its last heartbeat, with no
    heartbeat and no final state since."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    ended = ("Completed", "Failed", "Cancelled", "Crashed")
    return Automation(
        name="soak: crash zombie flow runs",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Running"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in ended)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=ZOMBIE_SECONDS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                name="Crashed",
                message="no heartbeat: its process is gone",
                force=False,
            )
        ],
    )


def _options(args: list[str]) -> dict[str, Any]:
    """The TrainConfig values of `gdflow serve`'s options, parsed by gdflow's own parser."""
    from gdflow.cli.main import build_parser

    values = vars(build_parser().parse_args(["serve", *args]))
    for key in ("command", "cron", "timezone", "interval", "allow_overlap", "database_url"):
        values.pop(key, None)
    return values


def flow_runs(cluster: Cluster, states: Optional[Sequence[str]] = None) -> list[Any]:
    """Every flow run of the soak's deployments (only those whose state type is one of
    `states`, e.g. `RUNNING`, when given), through Prefect's public client, oldest expected
    start first (pages of 200)."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    only = None
    if states is not None:
        types = [StateType(state) for state in states]
        only = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types)))
    found: list[Any] = []
    with cluster.client() as client:
        while True:
            page = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=list(cluster.deployment_ids))
                ),
                flow_run_filter=only,
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
                offset=len(found),
            )
            found.extend(page)
            if len(page) < 200:
                return found
