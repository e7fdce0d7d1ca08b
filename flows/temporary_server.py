"""gdflow's temporary Prefect server for `gdflow run` without a server, out of reach of Ctrl-C.

With no Prefect server configured, Prefect would start its own temporary API server as a child
in the caller's process group, so a terminal's Ctrl-C (sent to the whole foreground group) would
stop the API while the run still has to report how it ended. gdflow starts the same server
itself, through public interfaces only: a loopback socket bound here (the port is known at once
and no other server can take it), handed to flows/temporary_server_child.py, which serves
Prefect's app factory in ephemeral mode with uvicorn. The child has a process group of its own,
and on Linux asks for SIGTERM when gdflow ends, whatever ends it (even SIGKILL); gdflow stops it
at exit too. Then PREFECT_API_URL points this process's Prefect clients (and its children) at it.

The server's own output (uvicorn's and Prefect's logs, tracebacks of its shutdown or of a race
between servers starting on a new PREFECT_HOME) goes to `temporary-server.log` in
PREFECT_HOME, not into the run's output: a run prints its own progress, and one line if the
server does not start, naming that log.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional

from prefect.context import refresh_global_settings_context
from prefect.logging import get_logger
from prefect.settings import get_current_settings

from gdflow.config.errors import GdflowError
from gdflow.flows.deployments import local_api_url, server_is_healthy
from gdflow.flows.temporary_server_child import STARTUP_FAILURE

#: Seconds to wait for the temporary server at least: Prefect's default (20 s) is too short
#: when several runs start at once on a busy machine (seen with 8 runs on 2 cores).
STARTUP_TIMEOUT_SECONDS = 120
#: Seconds the server has to shut down once asked, before it is killed (as Prefect does).
STOP_TIMEOUT_SECONDS = 5
#: The temporary servers' log, in PREFECT_HOME; moved to `<name>.1` once above this size.
SERVER_LOG_NAME = "temporary-server.log"
SERVER_LOG_MAX_BYTES = 5 * 1024 * 1024
#: The module run as the server process.
CHILD_MODULE = "gdflow.flows.temporary_server_child"
#: What Prefect said when it started its temporary server; gdflow says the same.
STARTING = (
    "Starting temporary server on {address}\nSee "
    "https://www.prefect.io/docs/v3/concepts/server#how-to-guides for more information on "
    "running a dedicated Prefect server."
)


def server_log_path() -> Path:
    """Where the temporary servers of this PREFECT_HOME write their output."""
    return Path(get_current_settings().home).expanduser() / SERVER_LOG_NAME


def startup_timeout() -> float:
    """Seconds to wait for the server: Prefect's setting, STARTUP_TIMEOUT_SECONDS at least."""
    configured = get_current_settings().server.ephemeral.startup_timeout_seconds
    return float(max(STARTUP_TIMEOUT_SECONDS, configured))


def _open_server_log() -> Optional[IO[bytes]]:
    """The server log opened for appending (several servers may share it), rolled over once
    it grows past SERVER_LOG_MAX_BYTES; None if it cannot be written."""
    path = server_log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > SERVER_LOG_MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
        return path.open("ab")
    except OSError:
        return None


def _loopback_listener() -> socket.socket:
    """A TCP socket bound to a free loopback port (the child listens on it)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    return listener


def _server_environment() -> dict[str, str]:
    """The child's environment: this one, plus the Prefect settings in effect here."""
    settings = get_current_settings().to_environment_variables(exclude_unset=True)
    return {**os.environ, **settings}


def _spawn(listener: socket.socket) -> subprocess.Popen[bytes]:
    """Start one server process on `listener`, in its own process group, output to the log."""
    port = listener.getsockname()[1]
    log = _open_server_log()
    output: Any = subprocess.DEVNULL if log is None else log
    try:
        if log is not None:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            line = f"{started} gdflow pid {os.getpid()}: temporary server on port {port}\n"
            log.write(line.encode())
            log.flush()
        fd = listener.fileno()
        return subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE, "--parent-pid", str(os.getpid())]
            + ["--socket-fd", str(fd)],
            pass_fds=(fd,),
            process_group=0,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=_server_environment(),
        )
    finally:
        if log is not None:
            log.close()  # the server holds its own copy of the descriptor


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Ask the server process to shut down; kill it if it has not within STOP_TIMEOUT_SECONDS."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_until_healthy(
    process: subprocess.Popen[bytes], api_url: str, deadline: float
) -> Optional[int]:
    """None once the server answers its health check; else its exit status, or -1 when the
    deadline passes first."""
    while time.monotonic() < deadline:
        status = process.poll()
        if status is not None:
            return status
        if server_is_healthy(api_url):
            return None
        time.sleep(0.1)
    return -1


@dataclass
class TemporaryServer:
    """A running temporary server: its process and API URL."""

    process: subprocess.Popen[bytes]
    api_url: str

    def stop(self) -> None:
        """Shut the server down (also done at exit)."""
        _stop(self.process)


def start_temporary_server(timeout: Optional[float] = None) -> TemporaryServer:
    """Start a temporary Prefect server on a free loopback port and wait until it answers;
    a GdflowError naming its log if it does not within `timeout` (startup_timeout())."""
    timeout = startup_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    listener = _loopback_listener()
    api_url = local_api_url("127.0.0.1", listener.getsockname()[1])
    try:
        while True:
            process = _spawn(listener)
            status = _wait_until_healthy(process, api_url, deadline)
            if status is None:
                break
            _stop(process)
            if status == STARTUP_FAILURE and time.monotonic() < deadline:
                continue  # e.g. lost a race in a new PREFECT_HOME's migrations: start again
            reason = f"it exited with status {status}" if status >= 0 else "no answer"
            raise GdflowError(
                f"Prefect's temporary server did not start within {timeout:g} s ({reason}; its "
                f"log: {server_log_path()}); start one with 'gdflow server' (runs then share it) "
                "or set PREFECT_API_URL"
            )
    finally:
        listener.close()  # the server process has its own copy
    server = TemporaryServer(process=process, api_url=api_url)
    atexit.register(server.stop)
    return server


def use_server(api_url: str) -> None:
    """Point this process's Prefect clients, in every thread, and its child processes at the
    temporary server at `api_url` (PREFECT_API_URL), and log it as Prefect did. Call it from the
    main thread, once Prefect's logging is set up: it changes os.environ."""
    get_logger().info(STARTING.format(address=api_url.removesuffix("/api")))
    os.environ["PREFECT_API_URL"] = api_url
    if get_current_settings().ui_url is None:
        # The UI URL would follow the API URL, and the flow would log a link to a dashboard
        # this server does not serve and that ends with the run.
        os.environ["PREFECT_UI_URL"] = ""
    refresh_global_settings_context()
