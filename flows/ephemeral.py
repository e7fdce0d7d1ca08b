"""Prefect's temporary server for `gdflow run` without a server, out of reach of Ctrl-C.

Prefect starts its ephemeral API server as a child in the caller's process group, so a
terminal's Ctrl-C (sent to the whole foreground group) stops the API while the run still has
to report how it ended. Here the same server is started in its own process group, and on
Linux it is told to stop when gdflow's process ends, whatever ends it (even SIGKILL).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings

from tasks.errors import GdflowError

#: Seconds to wait for the temporary server at least: Prefect's default (20 s) is too short
#: when several runs start at once on a busy machine (seen with 8 runs on 2 cores).
STARTUP_TIMEOUT_SECONDS = 120
#: prctl(2) option: the signal a child receives when its parent thread dies (Linux).
PR_SET_PDEATHSIG = 1


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
    """Prefect's SubprocessASGIServer, with its process in a process group of its own."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        original = subprocess.Popen
        hook = _stop_with_parent_hook()

        def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
            kwargs.setdefault("process_group", 0)
            if hook is not None:
                kwargs.setdefault("preexec_fn", hook)
            return original(*args, **kwargs)

        subprocess.Popen = popen  # type: ignore[assignment, misc]
        try:
            return super()._run_uvicorn_command()
        finally:
            subprocess.Popen = original  # type: ignore[misc]


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
            f"Prefect's temporary server did not start within {timeout} s ({reason}); "
            "start one with 'gdflow server' (runs then share it) or set PREFECT_API_URL"
        ) from None
