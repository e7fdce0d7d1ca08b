"""`gdflow server` listens on loopback only, and warns before listening anywhere else."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from gdflow.cli.main import build_parser
from gdflow.flows.deployments import DEFAULT_HOST, exposure_warning, is_loopback, server_command
from tests.processes import (
    free_port,
    prefect_home_env,
    seeded_prefect_home,
    start_background,
    stop_process,
    venv_command,
)


def test_the_default_host_is_loopback() -> None:
    args = build_parser().parse_args(["server"])
    assert args.host == DEFAULT_HOST == "127.0.0.1"
    command, env = server_command(args.host, args.port)
    assert command[-4:] == ["--host", "127.0.0.1", "--port", str(args.port)]
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


@pytest.mark.parametrize(
    ("host", "auth", "warned"),
    [
        ("127.0.0.1", "", False),
        ("localhost", "", False),
        ("::1", "", False),
        ("0.0.0.0", "", True),
        ("192.0.2.7", "", True),
        ("myhost.example", "", True),
        ("0.0.0.0", "admin:pass", False),
    ],
)
def test_listening_beyond_loopback_without_auth_is_warned(
    host: str, auth: str, warned: bool
) -> None:
    env = {"PREFECT_SERVER_API_AUTH_STRING": auth} if auth else {}
    warning = exposure_warning(host, env)
    assert (warning is not None) == warned
    assert is_loopback(host) == (host in {"127.0.0.1", "localhost", "::1"})
    if warning:
        assert "PREFECT_SERVER_API_AUTH_STRING" in warning and "\n" not in warning


def _listeners(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


@pytest.mark.process
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp")
def test_gdflow_server_listens_on_loopback_only(tmp_path: Path) -> None:
    port = free_port()
    env = prefect_home_env(seeded_prefect_home(tmp_path))
    log = tmp_path / "server.log"
    server = start_background(
        [venv_command("gdflow"), "server", "--port", str(port)], env=env, cwd=tmp_path, log=log
    )
    try:
        deadline = time.monotonic() + 120
        while not _listeners(port):
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "gdflow server did not start listening"
            time.sleep(0.5)
        assert _listeners(port) == {"0100007F"}  # 127.0.0.1, little-endian hex; nothing else
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        outside = _outside_address()
        if outside is not None:
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=5).close()
    finally:
        stop_process(server)
    assert "warning" not in log.read_text()
