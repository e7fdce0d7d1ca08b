"""Fixtures and helpers that start real processes: Prefect servers, served deployments, the CLI
(in a process of its own, or in this one against the session's server: gdflow_main)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.soak.processes import free_port, venv_command


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """Run the session's flows against a temporary Prefect server; yield its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@dataclass(frozen=True)
class Done:
    """What one in-process `gdflow` command did, shaped like subprocess.CompletedProcess."""

    returncode: int
    stdout: str
    stderr: str


#: gdflow_main(args, database_url=..., cwd=...) -> Done
GdflowMain = Callable[..., Done]


@pytest.fixture
def gdflow_main(prefect_api_url: str, monkeypatch: pytest.MonkeyPatch) -> GdflowMain:
    """Run `gdflow ARGS` as main(ARGS) in this process, recording on the session's server:
    the CLI's exit status, error line and records, without seconds of torch and Prefect imports
    per command (a process stays for what only a process shows: the console script, signals,
    Prefect's own console output).

    Output is read from sys.stdout and sys.stderr redirected to buffers that stay open: a
    Prefect console handler configured during a run may keep writing to them afterwards
    (pytest's capfd closes its streams at the end of each test).
    """

    from gdflow.cli.main import main

    def run(args: list[str], *, database_url: str, cwd: Path) -> Done:
        monkeypatch.setenv("GDFLOW_DATABASE_URL", database_url)
        monkeypatch.setenv("NO_COLOR", "1")
        monkeypatch.setenv("COLUMNS", "200")
        monkeypatch.chdir(cwd)
        sigterm = signal.getsignal(signal.SIGTERM)  # `gdflow run` installs its own
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(args)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        return Done(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())

    return run


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
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gdflow.cli.main"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@dataclass(frozen=True)
class PrefectServer:
    """A real `prefect server` on loopback and the environment that points clients at it."""

    api_url: str
    ui_url: str
    env: dict[str, str]
    home: Path

    def cli(
        self, *args: str, cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (prefect, gdflow) as a user would, against this server."""
        return subprocess.run(
            list(args),
            cwd=cwd,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def client(self):  # type: ignore[no-untyped-def]
        """A synchronous Prefect client of this server (use as a context manager)."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(api=self.api_url)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, and everything it started."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start_background(
    args: list[str], *, env: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    """Start a long-running command in its own process group, output to `log`."""
    handle = log.open("wb")
    try:
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        handle.close()


def wait_for(check, *, timeout: float, interval: float = 0.5, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `check()` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def prefect_home_env(home: Path) -> dict[str, str]:
    """This process's environment for a Prefect that lives in `home` alone: none of this
    process's PREFECT_ settings, analytics off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def migrated_prefect_database() -> Path:
    """A Prefect database migrated to this Prefect's head, made once per machine and Prefect
    version by `prefect server database upgrade` (under a lock, so that pytest-xdist workers
    and later test sessions share it)."""
    import fcntl

    import prefect

    root = Path(tempfile.gettempdir()) / f"gdflow-tests-prefect-{prefect.__version__}"
    root.mkdir(exist_ok=True)
    database = root / "prefect.db"
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not database.exists():
            work = Path(tempfile.mkdtemp(dir=root))
            done = subprocess.run(
                [venv_command("prefect"), "--no-prompt", "server", "database", "upgrade", "-y"],
                env=prefect_home_env(work),
                capture_output=True,
                text=True,
                timeout=600,
                stdin=subprocess.DEVNULL,
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            (work / "prefect.db").replace(database)  # whole or not at all
            shutil.rmtree(work, ignore_errors=True)
    return database


def seeded_prefect_home(home: Path) -> Path:
    """`home` as the PREFECT_HOME of a machine that has run Prefect before: with a copy of a
    Prefect database already migrated, unless it has one. A first-ever Prefect server spends
    most of its start on Prefect's migrations (here: 30 s to answer on an empty home, 11-14 s
    with the database there), and the suite starts a dozen servers. The tests of a first-ever
    start (tests/flows/test_temporary_server.py) keep an empty home."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        shutil.copyfile(migrated_prefect_database(), home / "prefect.db")
    return home


@contextlib.contextmanager
def running_prefect_server(home: Path) -> Iterator[PrefectServer]:
    """`prefect server start` on a free loopback port with its own PREFECT_HOME, until the end
    of the block."""
    seeded_prefect_home(home)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **prefect_home_env(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_SERVER_UI_API_URL": api_url,
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    log = home / "server.log"
    server = start_background(
        [venv_command("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=home,
        log=log,
    )
    try:
        from gdflow.flows.deployments import server_is_healthy

        deadline = time.monotonic() + 120
        while not server_is_healthy(api_url):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield PrefectServer(
            api_url=api_url,
            ui_url=f"http://127.0.0.1:{port}",
            env={**env, "PREFECT_API_URL": api_url},
            home=home,
        )
    finally:
        stop_process(server)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real Prefect server for the session (shared with `gdflow serve` of `served`)."""
    with running_prefect_server(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server


@pytest.fixture
def own_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server for one test: deployments named as `gdflow serve` names its own
    (gdflow-nightly, gdflow-on-demand) would be taken over by the session's `gdflow serve`."""
    with running_prefect_server(tmp_path_factory.mktemp("own-prefect-home")) as server:
        yield server


def copy_project(root: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the repository in root/project to `prefect deploy` from, and the environment
    that deploys from there and records to root/metrics.db."""
    from tests.conftest import REPO

    project = root / "project"
    shutil.copytree(
        REPO,
        project,
        ignore=shutil.ignore_patterns(".venv", ".git", "*.db", "__pycache__", "test-artifacts"),
    )
    return project, {"PWD": str(project), "GDFLOW_DATABASE_URL": f"sqlite:///{root / 'metrics.db'}"}


@dataclass(frozen=True)
class Served:
    """`gdflow serve` running against the server, writing to its own metrics database."""

    server: PrefectServer
    database: Path
    workdir: Path


@pytest.fixture(scope="session")
def served(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`gdflow serve --interval 5` in the background until the session ends, its nightly
    deployment paused (`scheduled` resumes it for a test), on a machine where an installed
    package registers the model `tiny` under the gdflow.models entry points."""
    workdir = tmp_path_factory.mktemp("serve")
    database = workdir / "metrics.db"
    # Create the schema first, so the tests' plain sqlite3 readers never see a half-made file.
    from gdflow.storage import make_engine

    make_engine(f"sqlite:///{database}").dispose()
    # The machine has a package that registers a model (tests/training/test_user_models.py);
    # it does not allow raw module:factory imports.
    from tests.training.test_user_models import install_plugin_files

    site = workdir / "site"
    site.mkdir()
    install_plugin_files(site)
    env = {
        **prefect_server.env,
        "GDFLOW_DATABASE_URL": f"sqlite:///{database}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p),
    }
    env.pop("GDFLOW_ALLOW_MODEL_IMPORTS", None)
    log = workdir / "serve.log"
    process = start_background(
        [venv_command("gdflow"), "serve", "--interval", "5", "--epochs", "50", "--log-every", "0"],
        env=env,
        cwd=workdir,
        log=log,
    )
    try:

        def deployed() -> bool:
            with prefect_server.client() as client:
                try:
                    client.read_deployment_by_name("train/gdflow-on-demand")
                    client.read_deployment_by_name("train/gdflow-nightly")
                    return True
                except Exception:  # noqa: BLE001 - not there yet
                    assert process.poll() is None, log.read_text()[-3000:]
                    return False

        wait_for(deployed, timeout=120, what="gdflow serve to register its deployments")
        # Its nightly schedule (every 5 s here) stays paused but for the test of the schedule:
        # a run every 5 s for the rest of the session would load every other test.
        with prefect_server.client() as client:
            pause_schedule(client, client.read_deployment_by_name("train/gdflow-nightly").id)
        yield Served(server=prefect_server, database=database, workdir=workdir)
    finally:
        stop_process(process)


@contextlib.contextmanager
def scheduled(served: Served) -> Iterator[None]:
    """The served nightly deployment's schedule running (every 5 s) for the block's length."""
    with served.server.client() as client:
        deployment_id = client.read_deployment_by_name("train/gdflow-nightly").id
        client.resume_deployment(deployment_id)
    try:
        yield
    finally:
        with served.server.client() as client:
            pause_schedule(client, deployment_id)


def pause_schedule(client: Any, deployment_id: Any) -> None:
    """Pause the deployment's schedule and delete the runs it has scheduled ahead. Pausing
    alone leaves them: Prefect's scheduler keeps up to 100 runs ahead, and `gdflow serve` went
    on starting one every few seconds for the rest of the session (a process that imports torch
    and Prefect each time), which slowed every test beside it and timed out a browser test."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    client.pause_deployment(deployment_id)
    while runs := client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        limit=200,
    ):
        for run in runs:
            client.delete_flow_run(run.id)


def latest_run(database_url: str):  # type: ignore[no-untyped-def]
    """The most recent run in the database and its epoch rows, detached from any session."""
    from sqlalchemy.orm import Session

    from gdflow.storage import get_metrics, get_run, latest_run_id, make_engine

    engine = make_engine(database_url)
    with Session(engine) as session:
        run_id = latest_run_id(session)
        assert run_id is not None, "no run recorded"
        run = get_run(session, run_id=run_id)
        metrics = get_metrics(session, run_id=run_id)
        session.expunge_all()
    engine.dispose()
    return run, metrics


def model_events(model: str) -> list:  # type: ignore[type-arg]
    """gdflow's events about model `model` on the configured Prefect server (newest first)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(prefix=["gdflow."]),
                resource=EventResourceFilter(id=[f"gdflow.model.{model}"]),
            ),
            limit=50,
        )
    return list(page.events)
