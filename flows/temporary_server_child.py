"""The temporary Prefect server's process: `python -m gdflow.flows.temporary_server_child`.

flows/temporary_server.py starts this module with a loopback socket already bound (so the
port is known before the server starts and no two servers race for one) and gdflow's pid. On
Linux it first asks the kernel for SIGTERM when gdflow ends, whatever ends it (SIGKILL
included), and exits at once if gdflow has already gone; then it serves Prefect's API, made by
Prefect's public app factory in ephemeral mode (no UI, no scheduler: only the services an
ephemeral server runs), with uvicorn on that socket.

Exit status 3 (uvicorn's start-up failure) means the app did not start, e.g. two first-ever
servers raced in the migrations of one PREFECT_HOME: the parent starts another.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Optional

#: prctl(2) option: the signal this process receives when its parent thread ends (Linux).
PR_SET_PDEATHSIG = 1
#: uvicorn's exit status when the application does not start (uvicorn.config.STARTUP_FAILURE).
STARTUP_FAILURE = 3
#: Exit status when gdflow ended before this process could tie itself to it.
PARENT_GONE = 4


def stop_with_parent(parent_pid: int) -> bool:
    """Get SIGTERM when the parent ends (Linux); False if the parent has already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # Set after the fork: a parent that ended in between is no longer ours (we were
    # re-parented), and no signal would ever come.
    return os.getppid() == parent_pid


def serve(listener: socket.socket) -> int:
    """Serve Prefect's API (ephemeral mode) on `listener` until SIGTERM; the exit status."""
    import uvicorn
    from prefect.server.api.server import create_app

    app = create_app(ephemeral=True, final=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    server.run(sockets=[listener])
    return 0 if server.started else STARTUP_FAILURE


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Tie this process to gdflow, then serve on the socket it handed over."""
    parser = argparse.ArgumentParser(prog="gdflow-temporary-server")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--socket-fd", type=int, required=True)
    args = parser.parse_args(argv)
    if not stop_with_parent(args.parent_pid):
        return PARENT_GONE
    return serve(socket.socket(fileno=args.socket_fd))


if __name__ == "__main__":
    raise SystemExit(main())
