"""`gdflow server` stopped by a signal (a service manager's or `kill`'s SIGTERM, a closed
terminal's SIGHUP) stops its Prefect server too: no process left behind, the port free again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gdflow.flows.deployments import local_api_url, server_is_healthy
from tests.processes import (
    free_port,
    prefect_home_env,
    seeded_prefect_home,
    start_background,
    stop_process,
    venv_command,
    wait_for,
)


def _descendants(pid: int) -> set[int]:
    """Live processes started by `pid`, and theirs (from Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":  # a zombie has ended
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _port_free(port: int) -> bool:
    """True when a new server could listen on 127.0.0.1:`port` (as uvicorn binds it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")
@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.extended)],
    ids=["SIGTERM", "SIGHUP"],
)
def test_a_signal_to_gdflow_server_stops_its_prefect_server(
    sig: signal.Signals, tmp_path: Path
) -> None:
    port = free_port()
    api_url = local_api_url("127.0.0.1", port)
    env = prefect_home_env(seeded_prefect_home(tmp_path))
    log = tmp_path / "server.log"
    gdflow = start_background(
        [venv_command("gdflow"), "server", "--port", str(port)], env=env, cwd=tmp_path, log=log
    )
    started: set[int] = set()
    try:

        def healthy() -> bool:
            assert gdflow.poll() is None, log.read_text()[-3000:]
            return server_is_healthy(api_url)

        wait_for(healthy, timeout=180, what="gdflow server to answer")
        started = _descendants(gdflow.pid)
        os.kill(gdflow.pid, sig)  # to gdflow alone, as `kill` or a service manager sends it
        try:
            gdflow.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gdflow server still runs 30 s after {sig.name}")
        deadline = time.monotonic() + 10  # a process gets a moment to end after its parent
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in started if _alive(pid)] == [], log.read_text()[-3000:]
        assert not server_is_healthy(api_url)
        assert _port_free(port)
    finally:
        stop_process(gdflow)
        for pid in started:  # left behind (re-parented): stop it, the test failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
