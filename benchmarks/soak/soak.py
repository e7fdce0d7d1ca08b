"""One soak of one variant: start the server and the serving processes, let the schedule run
until enough runs ended while the plan's faults hit, drain what is left, check, report."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from benchmarks.soak.checks import Check, check_all
from benchmarks.soak.cluster import Cluster, Layout, flow_runs
from benchmarks.soak.faults import Injection, Injector
from benchmarks.soak.observe import Observer
from benchmarks.soak.plan import KINDS, Fault
from benchmarks.soak.processes import SoakError

#: Rows of the soak's data set, and the chance that it is replaced after a run (a nightly
#: feed: a new draw of the same relation, so some retrains are better and get promoted, and
#: runs on unchanged data are recorded skipped).
DATA_ROWS = 200
REFRESH_CHANCE = 0.8
#: Scheduled runs that may wait for the deployment's slot, at most: a served run takes longer
#: than the 2 s interval (a Python process of its own), so the queue would grow by a run every
#: few seconds, and past a few hundred queued runs Prefect's own SQLite database is so busy that
#: the server answers 503. Every TRIM_SECONDS the newer runs beyond this are cancelled (and
#: counted), as an operator drops missed runs; a backlog after downtime is left whole.
QUEUE = 10
TRIM_SECONDS = 5.0
#: Seconds the end of a soak waits for the runs already started to end.
DRAIN_SECONDS = 600.0
#: Seconds a fault waits for a run to be training before it hits anyway.
MID_RUN_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Options:
    """What a soak runs: how many runs, the seed of its faults and data, the variant."""

    runs: int = 500
    seed: int = 0
    variant: str = "serve"
    interval: float = 2.0
    epochs: int = 1500
    kinds: tuple[str, ...] = KINDS
    per_kind: Optional[int] = None
    train_options: tuple[str, ...] = ()
    timeout: Optional[float] = None
    #: A Prefect database already migrated, copied in before the server's first start (the
    #: short soak of the tests: Prefect's migrations are most of a first start).
    prefect_database: Optional[Path] = None

    @property
    def deadline_seconds(self) -> float:
        """How long the soak may run before it stops and reports a miss: a minute a run."""
        return self.timeout if self.timeout is not None else 600.0 + 60.0 * self.runs


@dataclass
class Outcome:
    """What one variant's soak did and found."""

    variant: str
    options: Options
    plan: list[Fault]
    injections: list[Injection] = field(default_factory=list)
    observer: Optional[Observer] = None
    exits: list[dict[str, Any]] = field(default_factory=list)
    cancelled_unstarted: int = 0
    trimmed: int = 0
    trim_errors: int = 0
    stop_codes: dict[str, Optional[int]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    error: Optional[str] = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def misses(self) -> list[Check]:
        """The checks that failed."""
        return [check for check in self.checks if not check.ok]


def write_data(path: Path, rng: random.Random) -> None:
    """A new draw of y = 3 x1 - 2 x2 + 1 + noise, replacing the file at once (a reader sees
    the old file or the new one, never half of one)."""
    lines = ["x1,x2,y"]
    for _ in range(DATA_ROWS):
        x1, x2 = rng.uniform(-1, 1), rng.uniform(-1, 1)
        lines.append(f"{x1:.6f},{x2:.6f},{3 * x1 - 2 * x2 + 1 + rng.gauss(0, 0.1):.6f}")
    partial = path.with_name(path.name + ".new")
    partial.write_text("\n".join(lines) + "\n")
    os.replace(partial, path)


def train_args(layout: Layout, epochs: int, more: tuple[str, ...] = ()) -> list[str]:
    """The training options of the scheduled deployment: the soak's data, model name `soak`,
    and `more` (e.g. retention's `--prune-keep-last 50`)."""
    return [
        "--data", str(layout.data), "--target", "y", "--bias", "--lr", "0.1",
        "--epochs", str(epochs), "--log-every", "0", "--name", "soak", *more,
    ]  # fmt: skip


class Soak:
    """Runs one variant's soak (see the module line)."""

    def __init__(self, options: Options, variant: str, plan: list[Fault], root: Path):
        self.options = options
        self.layout = Layout(root)
        self.rng = random.Random(options.seed + 1)
        self.cluster = Cluster(
            self.layout,
            variant,
            train_args(self.layout, options.epochs, options.train_options),
            options.interval,
        )
        self.observer = Observer(self.cluster)
        self.injector = Injector(self.cluster, self.observer, self._observe_for)
        self.outcome = Outcome(variant=variant, options=options, plan=plan)
        self.outcome.observer = self.observer
        self._faulting = False
        self._trim_after_runs = 0
        self._last_drain_error = ""

    def say(self, message: str) -> None:
        """A progress line on stderr: variant, seconds since the start, message."""
        line = f"soak {self.cluster.variant} {self.observer.seconds():6.0f} s: {message}"
        print(line, file=sys.stderr, flush=True)
        with (self.layout.root / "soak.log").open("a") as log:
            log.write(line + "\n")

    def run(self) -> Outcome:
        """The whole soak; the processes are stopped whatever happens."""
        started = time.monotonic()
        try:
            self._start()
            self._schedule()
            self._drain()
            self.outcome.checks = check_all(
                self.cluster, self.observer, self.outcome.injections, self.outcome
            )
        except SoakError as exc:
            self.outcome.error = str(exc)
            self.say(f"stopped: {exc}")
        finally:
            self.cluster.kill_all()
            self.outcome.seconds = time.monotonic() - started
        return self.outcome

    def _start(self) -> None:
        """Data, server, serving processes, deployment."""
        self.layout.store.mkdir(parents=True, exist_ok=True)
        write_data(self.layout.data, self.rng)
        self.cluster.start_server()
        if self.cluster.variant == "workers":
            self.cluster.deploy()  # the pool must exist before its workers start
        for service in self.cluster.serving:
            self.cluster.start_serving(service, self._observe_for)
        if self.cluster.variant == "serve":
            self.cluster.deploy()
        self.say(f"server on port {self.cluster.port}, {len(self.cluster.serving)} serving "
                 f"process(es), files in {self.layout.root}")  # fmt: skip

    def _observe_for(self, seconds: float) -> None:
        """Keep polling (and sampling) for `seconds`, without restarting anything: a fault
        holds."""
        end = time.monotonic() + seconds
        while True:
            self._poll()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.25, left))

    def _poll(self) -> None:
        """Read the runs; replace the data now and then after a run ended."""
        for _ in self.observer.poll():
            ended = len(self.observer.ended)
            if ended % 10 == 0:
                self.say(f"{ended} of {self.options.runs} runs ended")
            if self.rng.random() < REFRESH_CHANCE:
                write_data(self.layout.data, self.rng)

    def _supervise(self) -> None:
        """Start again, as a service manager would, any process that ended by itself."""
        now = self.observer.seconds()
        for service in [self.cluster.server, *self.cluster.serving]:
            if service.alive():
                continue
            code = service.process.returncode if service.process is not None else None
            self.outcome.exits.append(
                {"service": service.name, "code": code, "seconds": round(now, 1),
                 "log_tail": service.tail(600)}
            )  # fmt: skip
            self.say(f"{service.name} ended by itself (exit {code}); starting it again")
            if service is self.cluster.server:
                self.cluster.start_server()
            else:
                self.cluster.start_serving(service, self._observe_for)

    def _trim_loop(self, stop: threading.Event) -> None:
        """Every TRIM_SECONDS, cancel the due runs waiting beyond the QUEUE oldest (see QUEUE),
        in a thread of its own (a busy Prefect server answers slowly); not while a fault holds,
        nor until QUEUE runs ended after a downtime: its backlog stays whole."""
        while not stop.wait(TRIM_SECONDS):
            if self._faulting or len(self.observer.ended) < self._trim_after_runs:
                continue
            try:
                self._trim()
            except Exception as exc:  # noqa: BLE001 - a busy or restarting server: next round
                self.outcome.trim_errors += 1
                if self.outcome.trim_errors in (1, 10, 100, 1000):
                    self.say(f"could not trim the queue ({self.outcome.trim_errors} time(s)): "
                             f"{type(exc).__name__}: {exc}"[:200])  # fmt: skip

    def _trim(self) -> None:
        """Cancel the newer of the due runs that never started, beyond the QUEUE oldest."""
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterExpectedStartTime,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        with self.cluster.client() as client:
            waiting = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=list(self.cluster.deployment_ids))
                ),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                    ),
                    expected_start_time=FlowRunFilterExpectedStartTime.model_validate(
                        {"before_": self.observer.wall(self.observer.seconds())}
                    ),
                ),
                # The runner and the workers take the earliest by next scheduled start (a run
                # refused for want of the slot is set 1 s later each time): the runs beyond the
                # first QUEUE in that order are the ones nobody is taking now. (Cancelling one
                # a worker had just moved to Pending let it run without a slot, two at once:
                # Prefect accepted its Running after Cancelled.)
                sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
                offset=QUEUE,
                limit=50,
            )
            for flow_run in waiting:
                state = flow_run.state.type.value if flow_run.state else ""
                if state == "SCHEDULED" and flow_run.run_count == 0 and not self._faulting:
                    if _cancel(client, flow_run.id, "dropped: the queue is longer than 10"):
                        self.outcome.trimmed += 1

    def _schedule(self) -> None:
        """Let the schedule run until `runs` runs ended and every fault of the plan hit,
        trimming the queue meanwhile."""
        stop = threading.Event()
        trimmer = threading.Thread(target=self._trim_loop, args=(stop,), daemon=True)
        trimmer.start()
        try:
            self._run_plan()
        finally:
            stop.set()
            trimmer.join(timeout=30)

    def _run_plan(self) -> None:
        """The schedule's main loop: supervise, observe, inject each fault at its run."""
        pending = list(self.outcome.plan)
        deadline = time.monotonic() + self.options.deadline_seconds
        while len(self.observer.ended) < self.options.runs or pending:
            if time.monotonic() > deadline:
                raise SoakError(
                    f"timed out after {self.options.deadline_seconds:.0f} s with "
                    f"{len(self.observer.ended)} of {self.options.runs} runs ended and "
                    f"{len(pending)} fault(s) not injected"
                )
            self._supervise()
            self._poll()
            if pending and self.observer.runs_seen >= pending[0].at_run:
                fault = pending.pop(0)
                self._wait_mid_run()
                self._observe_for(fault.delay)
                self._wait_mid_run()  # that run ended meanwhile (skipped runs take a second)
                self.say(f"fault {fault.describe()}, runs training: "
                         f"{self.observer.running_runs() or 'none'}")  # fmt: skip
                self._faulting = True
                try:
                    self.outcome.injections.append(self.injector.inject(fault))
                finally:
                    self._faulting = False
                if fault.kind == "downtime":
                    self._trim_after_runs = len(self.observer.ended) + QUEUE
                self._supervise()
            time.sleep(0.25)

    def _wait_mid_run(self) -> None:
        """Wait (observing) until a run is training, at most MID_RUN_WAIT_SECONDS."""
        end = time.monotonic() + MID_RUN_WAIT_SECONDS
        while not self.observer.running_runs() and time.monotonic() < end:
            self._observe_for(0.1)

    def _drain(self) -> None:
        """At the first moment no run trains (2 minutes at most), stop the serving processes
        as a person would (Ctrl-C: Prefect's runner cancels a run it has just started); then
        pause the schedule, cancel the queued runs that never started (counted) and wait for
        any run still going to end. (With the serving processes polling every second, Prefect
        on SQLite refused the pause with 503, its database busy.)"""
        self.say("waiting for a moment between runs to stop the serving processes")
        quiet_by = time.monotonic() + 120.0
        while time.monotonic() < quiet_by and not self._between_runs():
            self._observe_for(0.1)
        for service in self.cluster.serving:
            self.outcome.stop_codes[service.name] = service.stop(signal.SIGINT)
            for line, count in service.quiet.items():
                left_out = self.outcome.facts.setdefault("log_lines_left_out", {})
                left_out[line] = left_out.get(line, 0) + count
        deadline = time.monotonic() + DRAIN_SECONDS
        paused = False
        while time.monotonic() < deadline:
            self._poll()
            try:
                if not paused:
                    with self.cluster.client() as client:
                        for deployment_id in self.cluster.deployment_ids:
                            client.pause_deployment(deployment_id)
                    paused = True
                if not self._cancel_unstarted() and not self._started_runs():
                    break
            except Exception as exc:  # noqa: BLE001 - a busy server (503): ask again
                self._last_drain_error = f"{type(exc).__name__}: {exc}"[:200]
            time.sleep(1.0)
        else:  # the checks name what is left
            self.say(f"not drained after {DRAIN_SECONDS:.0f} s: {self._last_drain_error}")
        self.say(f"drained: {self.outcome.cancelled_unstarted} runs that never started cancelled")
        self._poll()

    def _between_runs(self) -> bool:
        """No run training in gdflow's records and no flow run started in Prefect. (A run that
        has recorded its outcome still reports its final state to Prefect: stopped in between
        by Ctrl-C, its flow run stayed Running for good, seen in the short soak.)"""
        if self.observer.running_runs():
            return False
        try:
            return not self._started_runs()
        except Exception:  # noqa: BLE001 - a busy server (503): not known to be quiet
            return False

    def _started_runs(self) -> int:
        """Flow runs started and not ended (Pending, Running, Cancelling)."""
        return len(flow_runs(self.cluster, ("PENDING", "RUNNING", "CANCELLING")))

    def _cancel_unstarted(self) -> int:
        """Cancel the flow runs that never started (queued, or Pending: a submission Prefect's
        runner left when Ctrl-C stopped it, nothing will start it any more); return how many
        are left to cancel."""
        left = 0
        with self.cluster.client() as client:
            for flow_run in flow_runs(self.cluster):
                state = flow_run.state.type.value if flow_run.state else "SCHEDULED"
                if state in ("SCHEDULED", "PENDING") and flow_run.run_count == 0:
                    if state == "PENDING":
                        self.outcome.facts["pending_left_by_ctrl_c"] = (
                            self.outcome.facts.get("pending_left_by_ctrl_c", 0) + 1
                        )
                    try:
                        if _cancel(client, flow_run.id, "never started: the soak ended"):
                            self.outcome.cancelled_unstarted += 1
                        else:
                            left += 1
                    except Exception as exc:  # noqa: BLE001 - a busy server: next round
                        left += 1
                        self._last_drain_error = f"{type(exc).__name__}: {exc}"[:200]
        return left


def _cancel(client: Any, flow_run_id: Any, why: str) -> bool:
    """Cancel a flow run that has not started, through Prefect's orchestration; True when
    accepted. (Deleting it instead, should a worker have just moved it to Pending, releases its
    deployment's slot twice: at the delete, and again when its lease expires, after which Prefect
    let two runs in at once: seen in the soak.)"""
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Cancelled

    result = client.set_flow_run_state(flow_run_id, Cancelled(message=why))
    return bool(result.status == SetStateStatus.ACCEPT)


def run_variant(options: Options, variant: str, plan: list[Fault], folder: Path) -> Outcome:
    """One variant's soak in `folder`, emptied first and kept afterwards: its databases, model
    store and every process's log stay there to read."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if options.prefect_database is not None:
        home = Layout(folder).prefect_home
        home.mkdir()
        shutil.copyfile(options.prefect_database, home / "prefect.db")
    return Soak(options, variant, plan, folder).run()
