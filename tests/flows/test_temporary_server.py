"""gdflow's temporary Prefect server (no server configured): its own process group, gone with
gdflow whatever ends it, Prefect's clients in every thread and child process pointed at it, and
one error line naming its log when it does not start. (Ctrl-C: tests/flows/test_faults.py;
eight at once: tests/flows/test_concurrency.py.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.context import refresh_global_settings_context
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)

from gdflow.config.errors import GdflowError
from gdflow.flows.deployments import local_api_url, server_is_healthy
from gdflow.flows.temporary_server import (
    SERVER_LOG_MAX_BYTES,
    server_log_path,
    start_temporary_server,
    startup_timeout,
    use_server,
)
from tests.flows.reliability import ephemeral_env, temporary_servers_of
from tests.processes import start_background, stop_process, wait_for

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's"
)

#: A stand-in for `gdflow run` that imports neither torch nor the flow: it starts the temporary
#: server as `gdflow run` does (early, from a background thread; a line while it waits for it, as
#: `gdflow run` prepares its training then), prints its API URL and whether a flow run would get
#: a UI link, then waits until the file named by its argument exists and exits normally.
GDFLOW_LIKE = """
import os, sys, time
from gdflow.cli.main import start_temporary_server_early
import prefect.main  # as the flow's import does: Prefect's logging set up
start_temporary_server_early(while_waiting=lambda: print("while it boots", flush=True))()
from prefect.utilities.urls import url_for
print("ui link", url_for("flow-run", obj_id="00000000-0000-0000-0000-000000000000"))
print("api", os.environ["PREFECT_API_URL"], flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PREFECT_HOME shared by this module's servers (the first one creates its database)."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def settings_restored() -> Iterator[None]:
    """Restore PREFECT_API_URL, PREFECT_UI_URL and Prefect's process-wide settings after."""
    names = ("PREFECT_API_URL", "PREFECT_UI_URL")
    before = {name: os.environ.get(name) for name in names}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    refresh_global_settings_context()


def _api_url(log: Path, process: subprocess.Popen[bytes]) -> str:
    """The API URL the stand-in printed, once it has."""

    def printed() -> str | None:
        assert process.poll() is None, log.read_text()[-3000:]
        match = re.search(r"^api (\S+)$", log.read_text(), re.MULTILINE)
        return match.group(1) if match else None

    return str(wait_for(printed, timeout=240, what="the temporary server"))


@linux_only
@pytest.mark.process
@pytest.mark.parametrize(
    "end",
    # CI: SIGKILL, the case only the group shows; Ctrl-C in test_faults.py ends one too
    [pytest.param("exit", marks=pytest.mark.extended), "SIGKILL"],
)
def test_the_temporary_server_has_its_own_group_and_ends_with_gdflow(
    end: str, prefect_home: Path, tmp_path: Path
) -> None:
    if server_is_healthy(local_api_url()):
        pytest.skip("a Prefect server listens on 127.0.0.1:4200: gdflow would use it")
    env = ephemeral_env(prefect_home, tmp_path / "metrics.db")
    log, done = tmp_path / "gdflow.log", tmp_path / "done"
    gdflow = start_background(
        [sys.executable, "-c", GDFLOW_LIKE, str(done)], env=env, cwd=tmp_path, log=log
    )
    servers: list[int] = []
    try:
        api_url = _api_url(log, gdflow)
        servers = temporary_servers_of(gdflow.pid)
        assert len(servers) == 1 and server_is_healthy(api_url)
        assert log.read_text().count("while it boots") == 1  # the server takes seconds
        # Out of reach of a terminal's Ctrl-C, which goes to gdflow's (foreground) group.
        assert os.getpgid(servers[0]) == servers[0] != os.getpgid(gdflow.pid)
        if end == "SIGKILL":
            gdflow.kill()  # no atexit: only the kernel (PR_SET_PDEATHSIG) can stop the server
        else:
            done.touch()
        gdflow.wait(timeout=60)
        wait_for(
            lambda: not temporary_servers_of(gdflow.pid) and not server_is_healthy(api_url),
            timeout=30,
            what="the temporary server to end with gdflow",
        )
    finally:
        stop_process(gdflow)
        for pid in temporary_servers_of(gdflow.pid):  # left behind: stop it, the test failed
            os.kill(pid, signal.SIGKILL)
    output = log.read_text()
    assert "Traceback" not in output
    assert f"prefect - Starting temporary server on {api_url.removesuffix('/api')}\n" in output
    assert "ui link None\n" in output  # no link to a dashboard this server does not serve
    server_log = (prefect_home / "temporary-server.log").read_text()
    port = api_url.split(":")[-1].removesuffix("/api")
    assert f"gdflow pid {gdflow.pid}: temporary server on port {port}\n" in server_log


@linux_only
@pytest.mark.process
def test_a_server_that_does_not_answer_in_time_is_one_error_naming_its_rolled_log(
    tmp_path: Path,
) -> None:
    with temporary_settings(updates={PREFECT_HOME: str(tmp_path)}):
        log = server_log_path()
        log.write_bytes(b"x" * (SERVER_LOG_MAX_BYTES + 1))
        with pytest.raises(GdflowError) as caught:
            start_temporary_server(timeout=0.5)  # a server needs seconds of CPU to start
    message = str(caught.value)
    assert "\n" not in message
    assert f"did not start within 0.5 s (no answer; its log: {log})" in message
    assert "'gdflow server'" in message and "PREFECT_API_URL" in message
    assert temporary_servers_of(os.getpid()) == []  # stopped, not left starting
    assert re.fullmatch(
        rf"\S+ \S+ gdflow pid {os.getpid()}: temporary server on port \d+\n", log.read_text()
    )
    assert log.with_name(log.name + ".1").stat().st_size == SERVER_LOG_MAX_BYTES + 1


@pytest.mark.parametrize(("configured", "used"), [(10, 120.0), (300, 300.0)])
def test_the_start_up_timeout_is_prefects_and_120_s_at_least(configured: int, used: float) -> None:
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: configured}):
        assert startup_timeout() == used


@pytest.mark.process
@pytest.mark.usefixtures("settings_restored")
def test_use_server_points_every_thread_and_child_process_at_the_server() -> None:
    url = "http://127.0.0.1:9/api"
    use_server(url)
    seen: list[object] = []
    # A new thread has no settings context of its own: it sees Prefect's process-wide one,
    # where a Prefect client with no URL would start a server of Prefect's own.
    thread = threading.Thread(target=lambda: seen.append(PREFECT_API_URL.value()))
    thread.start()
    thread.join()
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['PREFECT_API_URL'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert seen == [url]
    assert child.stdout.strip() == url
