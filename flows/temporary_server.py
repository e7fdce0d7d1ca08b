"""Prefect's temporary server for `gdflow run` without a server, out of reach of Ctrl-C.

Prefect starts its ephemeral API server as a child in the caller's process group, so a
terminal's Ctrl-C (sent to the whole foreground group) stops the API while the run still has
to report how it ended. Here the same server is started in its own process group, and on
Linux it is told to stop when gdflow's process ends, whatever ends it (even SIGKILL).

The server's own output (uvicorn's and Prefect's logs, tracebacks of its shutdown or of a race
between servers starting on a new PREFECT_HOME) goes to `temporary-server.log` in
PREFECT_HOME, not into the run's output: a run prints its own progress, and one line if the
server does not start, naming that log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings

from gdflow.config.errors import GdflowError

#: Seconds to wait for the temporary server at least: Prefect's default (20 s) is too short
#: when several runs start at once on a busy machine (seen with 8 runs on 2 cores).
STARTUP_TIMEOUT_SECONDS = 120
#: prctl(2) option: the signal a child receives when its parent thread dies (Linux).
PR_SET_PDEATHSIG = 1
#: The temporary servers' log, in PREFECT_HOME; moved to `<name>.1` once above this size.
SERVER_LOG_NAME = "temporary-server.log"
SERVER_LOG_MAX_BYTES = 5 * 1024 * 1024


def server_log_path() -> Path:
    """Where the temporary servers of this PREFECT_HOME write their output."""
    return Path(get_current_settings().home).expanduser() / SERVER_LOG_NAME


def _open_server_log() -> IO[bytes] | None:
    """The server log opened for appending (several servers may share it), rolled over once
    it grows past SERVER_LOG_MAX_BYTES; None if it cannot be written (output then inherited)."""
    path = server_log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > SERVER_LOG_MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
        return path.open("ab")
    except OSError:
        return None


def _stop_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook that makes the child get SIGTERM when its parent dies (Linux only);
    libc is loaded here, in the parent, since the child may only make the system call."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return hook


class DetachedEphemeralServer(SubprocessASGIServer):
    """Prefect's SubprocessASGIServer, with its process in a process group of its own and
    its output in the server log."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        original = subprocess.Popen
        hook = _stop_with_parent_hook()
        log = _open_server_log()
        if log is not None:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            line = f"{started} gdflow pid {os.getpid()}: temporary server on port {self.port}\n"
            log.write(line.encode())
            log.flush()

        def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
            kwargs.setdefault("process_group", 0)
            if hook is not None:
                kwargs.setdefault("preexec_fn", hook)
            if log is not None:
                kwargs.setdefault("stdout", log)
                kwargs.setdefault("stderr", subprocess.STDOUT)
            return original(*args, **kwargs)

        subprocess.Popen = popen  # type: ignore[assignment, misc]
        try:
            return super()._run_uvicorn_command()
        finally:
            subprocess.Popen = original  # type: ignore[misc]
            if log is not None:
                log.close()  # the server holds its own copy of the descriptor


def start_ephemeral_server() -> None:
    """Start the temporary server that Prefect's clients in this process will use (they look
    it up by port, None for the ephemeral one), unless one is already running."""
    if os.name != "posix":
        return  # process groups and prctl are POSIX/Linux: keep Prefect's own behaviour
    configured = get_current_settings().server.ephemeral.startup_timeout_seconds
    timeout = max(STARTUP_TIMEOUT_SECONDS, configured)
    try:
        DetachedEphemeralServer().start(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any start failure: one line, not a traceback
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GdflowError(
            f"Prefect's temporary server did not start within {timeout} s ({reason}; its log: "
            f"{server_log_path()}); start one with 'gdflow server' (runs then share it) or set "
            "PREFECT_API_URL"
        ) from None
