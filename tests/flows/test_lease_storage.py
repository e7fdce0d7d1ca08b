"""`gdflow server` keeps the leases of deployment concurrency slots on disk: a run holding its
deployment's slot renews its lease after the server restarted. With Prefect's default (the
server's memory) the renewal answers 410 Gone and Prefect's engine cancels the run, 225 s after
its start, however long ago the restart was (the soak found it: RELIABILITY.md, "The soak")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gdflow.flows.deployments import LEASE_STORAGE, LEASE_STORAGE_SETTING, server_is_healthy
from tests.processes import (
    free_port,
    prefect_home_env,
    seeded_prefect_home,
    start_background,
    stop_process,
    venv_command,
    wait_for,
)


@contextmanager
def _gdflow_server(home: Path, port: int) -> Iterator[str]:
    """`gdflow server --port PORT` with its own PREFECT_HOME until the end of the block."""
    env = prefect_home_env(seeded_prefect_home(home))
    api_url = f"http://127.0.0.1:{port}/api"
    log = home / f"server-{port}.log"
    server = start_background(
        [venv_command("gdflow"), "server", "--port", str(port)], env=env, cwd=home, log=log
    )
    try:
        wait_for(
            lambda: server.poll() is not None or server_is_healthy(api_url),
            timeout=180,
            what="gdflow server to answer (or end)",
        )
        assert server.poll() is None, log.read_text()[-3000:]
        yield api_url
    finally:
        stop_process(server)


@pytest.mark.process
def test_a_slot_lease_survives_a_gdflow_server_restart(tmp_path: Path) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
    from prefect.states import Pending

    assert os.environ.get(LEASE_STORAGE_SETTING) in (None, LEASE_STORAGE)
    port = free_port()
    with _gdflow_server(tmp_path, port) as api_url, SyncPrefectClient(api=api_url) as client:
        deployment_id = client.create_deployment(
            flow_id=client.create_flow_from_name("lease-test"),
            name="one-at-a-time",
            concurrency_limit=1,
            concurrency_options=ConcurrencyOptions(
                collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
        )
        flow_run = client.create_flow_run_from_deployment(deployment_id)
        state = client.set_flow_run_state(flow_run.id, Pending()).state
        assert state is not None and state.is_pending()
        lease_id = state.state_details.deployment_concurrency_lease_id
        assert lease_id is not None
    assert list((tmp_path / "concurrency_leases").glob(f"{lease_id}.json"))
    with _gdflow_server(tmp_path, port) as api_url, SyncPrefectClient(api=api_url) as client:
        client.renew_concurrency_lease(lease_id=lease_id, lease_duration=300)  # no 410 Gone
