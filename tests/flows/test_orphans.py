"""A flow run whose process was killed stays Running in Prefect and holds its deployment's
concurrency slot (until the lease runs out, 5 minutes later): once gdflow records its run
crashed, `crash_flow_runs` tells Prefect, and the next queued run gets the slot at once.
(The soak found it: after each SIGKILL of `gdflow serve` the schedule stalled 5 minutes.)"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.flows.orphans import REPAIR_LIMIT, crash_flow_runs, release_lost_slots
from gdflow.runs.liveness import current_owner, process_started
from gdflow.runs.recording import open_database, reconcile_runs
from gdflow.storage import create_run, get_run
from tests.processes import GdflowMain

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun


def _dead_owner(tmp_path: Path) -> dict[str, object]:
    """The owner columns of a process that has ended (a child that exited)."""
    child = subprocess.Popen(["sleep", "0"])
    started = process_started(child.pid)
    child.wait()
    return {"host": socket.gethostname(), "pid": child.pid, "pid_started": started}


def _record_dead_run(engine: Engine, flow_run_id: str, tmp_path: Path) -> int:
    """A gdflow run of this flow run, still `running`, whose process has ended."""
    with Session(engine) as session, session.begin():
        return create_run(
            session,
            config={},
            data_source="toy",
            parameter_names=["w"],
            flow_run_id=flow_run_id,
            owner=_dead_owner(tmp_path),
        )


def _one_at_a_time_deployment(client: SyncPrefectClient, name: str) -> UUID:
    """A deployment with a concurrency limit of 1 whose further runs wait for the slot."""
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions

    return client.create_deployment(
        flow_id=client.create_flow_from_name("orphans-test"),
        name=name,
        concurrency_limit=1,
        concurrency_options=ConcurrencyOptions(collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
    )


@pytest.mark.usefixtures("prefect_api_url")
def test_a_killed_runs_flow_run_is_crashed_in_prefect_and_frees_the_deployment_slot(
    database_url: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Pending, Running

    with get_client(sync_client=True) as client:
        deployment_id = _one_at_a_time_deployment(client, "one-at-a-time")
        killed, queued, finished = (
            client.create_flow_run_from_deployment(deployment_id) for _ in range(3)
        )
        assert client.set_flow_run_state(killed.id, Pending()).state.is_pending()
        client.set_flow_run_state(killed.id, Running())
        # The slot is taken: the next run waits for it.
        assert client.set_flow_run_state(queued.id, Pending()).state.name == (
            "AwaitingConcurrencySlot"
        )
        client.set_flow_run_state(finished.id, Completed(), force=True)

    engine = open_database(database_url)
    owner = _dead_owner(tmp_path)
    with Session(engine) as session, session.begin():
        ids = [
            create_run(
                session,
                config={},
                data_source="toy",
                parameter_names=["w"],
                flow_run_id=str(flow_run.id),
                owner=owner,
            )
            for flow_run in (killed, finished)
        ]
    assert sorted(reconcile_runs(engine)) == sorted(ids)

    assert crash_flow_runs(engine, ids) == [str(killed.id)]  # the completed one left alone
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(killed.id).state
        assert state is not None and state.is_crashed()
        with Session(engine) as session:
            run = get_run(session, run_id=ids[0])
            assert run is not None and state.message == run.error
        assert client.read_flow_run(finished.id).state.is_completed()
        assert client.set_flow_run_state(queued.id, Pending()).state.is_pending()


@pytest.mark.usefixtures("prefect_api_url")
def test_the_next_train_flow_on_the_host_crashes_a_killed_workers_run(
    database_url: str, tmp_path: Path
) -> None:
    """A worker killed with its flow run leaves no gdflow process to notice: the next flow run
    on the same host records the run crashed and sets its flow run Crashed."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from gdflow.config.train import TrainConfig
    from gdflow.flows.train import train_flow

    with get_client(sync_client=True) as client:
        killed = client.create_flow_run(train_flow, state=Running())
    engine = open_database(database_url)
    run_id = _record_dead_run(engine, str(killed.id), tmp_path)
    state = train_flow(config=TrainConfig(epochs=5, log_every=0), return_state=True)
    assert state.is_completed()
    with Session(engine) as session:
        run = get_run(session, run_id=run_id)
        assert run is not None and run.status == "crashed"
    with get_client(sync_client=True) as client:
        crashed = client.read_flow_run(killed.id).state
        assert crashed is not None and crashed.is_crashed() and crashed.message == run.error


def test_gdflow_repair_crashes_a_killed_workers_run_before_the_worker_starts_again(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path
) -> None:
    """`gdflow repair` (a worker's ExecStartPre): the dead run is recorded crashed, its flow
    run set Crashed, and the queued run gets the deployment's slot without waiting for the
    dead run's lease to run out; a second call finds nothing."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Pending, Running

    with get_client(sync_client=True) as client:
        deployment_id = _one_at_a_time_deployment(client, "repaired-by-command")
        killed, queued = (client.create_flow_run_from_deployment(deployment_id) for _ in range(2))
        client.set_flow_run_state(killed.id, Pending())
        client.set_flow_run_state(killed.id, Running())
        assert client.set_flow_run_state(queued.id, Pending()).state.name == (
            "AwaitingConcurrencySlot"
        )
    run_id = _record_dead_run(open_database(database_url), str(killed.id), tmp_path)

    with socket.socket() as probe:  # a port nothing listens on: the server is down
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    with temporary_settings(updates={PREFECT_API_URL: down}):
        refused = gdflow_main(["repair"], database_url=database_url, cwd=tmp_path)
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"no Prefect server answers at {down}; start it first" in refused.stderr
    with Session(open_database(database_url)) as session:  # left for a later repair
        waiting = get_run(session, run_id=run_id)
        assert waiting is not None and waiting.status == "running"

    done = gdflow_main(["repair"], database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "repaired 1 run(s) left running by an ended process: recorded crashed; "
        "1 flow run(s) set Crashed in Prefect"
    )
    assert f"run {run_id} was left 'running'" in done.stderr and str(killed.id) in done.stderr
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(killed.id).state
        assert state is not None and state.is_crashed()
        assert client.set_flow_run_state(queued.id, Pending()).state.is_pending()
    with Session(open_database(database_url)) as session:
        run = get_run(session, run_id=run_id)
        assert run is not None and run.status == "crashed" and state.message == run.error

    again = gdflow_main(["repair"], database_url=database_url, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("nothing to repair")


@pytest.mark.usefixtures("prefect_api_url")
def test_gdflow_repair_crashes_flow_runs_left_running_by_a_reconcile_without_a_server(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path
) -> None:
    """Every gdflow command reconciles this host's runs. One that ran while no Prefect server
    answered (say `gdflow runs` during an outage) recorded the dead run crashed but could not
    tell Prefect, so its flow run stayed Running. `gdflow repair` finds it among the host's
    latest crashed runs and sets it Crashed; a crashed run whose flow run a live run shares (a
    retry of it) is left alone."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Running

    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(
            flow_id=client.create_flow_from_name("orphans-test"), name="reconciled-offline"
        )
        killed, retried = (client.create_flow_run_from_deployment(deployment_id) for _ in "ab")
        for flow_run in (killed, retried):
            client.set_flow_run_state(flow_run.id, Pending())
            client.set_flow_run_state(flow_run.id, Running())
    engine = open_database(database_url)
    dead = _record_dead_run(engine, str(killed.id), tmp_path)
    dead_try = _record_dead_run(engine, str(retried.id), tmp_path)
    with Session(engine) as session, session.begin():
        live_try = create_run(
            session,
            config={},
            data_source="toy",
            parameter_names=["w"],
            flow_run_id=str(retried.id),
            owner=current_owner(),
        )
    assert sorted(reconcile_runs(engine)) == [dead, dead_try]  # as a command without a server

    done = gdflow_main(["repair"], database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "repaired 1 flow run(s) still Running in Prefect whose runs were recorded crashed "
        "earlier (while no Prefect server answered): set Crashed"
    )
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(killed.id).state
        assert state is not None and state.is_crashed()
        alive = client.read_flow_run(retried.id).state
        assert alive is not None and alive.is_running()
    with Session(engine) as session:
        run = get_run(session, run_id=dead)
        assert run is not None and state.message == run.error
        live = get_run(session, run_id=live_try)
        assert live is not None and live.status == "running"

    again = gdflow_main(["repair"], database_url=database_url, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("nothing to repair")


def _running_without_its_lease(
    client: SyncPrefectClient, name: str, *, slot_freed: bool
) -> tuple[UUID, FlowRun, str]:
    """A one-at-a-time deployment, the run that held its slot (Running) whose lease is gone,
    and the deployment's limit name. `slot_freed`: the lease ran out (Prefect's reaper gives
    the slot back and drops the lease, as done here); else a server that keeps leases in
    memory restarted (the lease is gone, the slot still counted)."""
    from prefect.states import Pending, Running

    deployment_id = _one_at_a_time_deployment(client, name)
    killed = client.create_flow_run_from_deployment(deployment_id)
    client.set_flow_run_state(killed.id, Pending())
    state = client.set_flow_run_state(killed.id, Running()).state
    assert state is not None and state.is_running()
    lease_id = state.state_details.deployment_concurrency_lease_id
    assert lease_id is not None
    limit = client.read_deployment(deployment_id).global_concurrency_limit
    assert limit is not None
    client.release_concurrency_slots_with_lease(lease_id)
    if not slot_freed:
        client.increment_concurrency_slots(names=[limit.name], slots=1, mode="concurrency")
    return deployment_id, killed, limit.name


def _active_slots(client: SyncPrefectClient, limit: str) -> int:
    return client.read_global_concurrency_limit_by_name(limit).active_slots


@pytest.mark.usefixtures("prefect_api_url")
def test_a_dead_run_repaired_after_its_lease_ran_out_does_not_free_its_slot_twice(
    database_url: str, tmp_path: Path
) -> None:
    """Once a dead run's lease has run out, Prefect has given its slot back; crashing the run
    then made Prefect 3.9 take another slot off the count (the one the repairing run holds),
    and the deployment admitted a second run beside it (the 300-run workers soak)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending, Running

    with get_client(sync_client=True) as client:
        deployment_id, killed, limit = _running_without_its_lease(
            client, "lease-ran-out", slot_freed=True
        )
        repairing, queued = (client.create_flow_run_from_deployment(deployment_id) for _ in "ab")
        assert client.set_flow_run_state(repairing.id, Pending()).state.is_pending()
        client.set_flow_run_state(repairing.id, Running())

    engine = open_database(database_url)
    run_id = _record_dead_run(engine, str(killed.id), tmp_path)
    assert reconcile_runs(engine) == [run_id]
    assert crash_flow_runs(engine, [run_id], current=str(repairing.id)) == [str(killed.id)]

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(killed.id).state
        assert state is not None and state.is_crashed()
        # The crash released the repair lease, not a slot of the deployment.
        assert _active_slots(client, limit) == 1
        assert _active_slots(client, REPAIR_LIMIT) == 0
        # The repairing run still holds the one slot: the next run waits.
        assert client.set_flow_run_state(queued.id, Pending()).state.name == (
            "AwaitingConcurrencySlot"
        )


@pytest.mark.usefixtures("prefect_api_url")
def test_a_dead_runs_slot_whose_lease_a_restart_lost_is_freed(
    database_url: str, tmp_path: Path
) -> None:
    """A server that keeps leases in memory loses them at a restart and frees no slot: the
    dead run's slot stays counted, and its crash (which releases the repair lease) leaves the
    count to `release_lost_slots`, which brings it down to the runs that hold a slot."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending

    with get_client(sync_client=True) as client:
        deployment_id, killed, limit = _running_without_its_lease(
            client, "lease-lost", slot_freed=False
        )
        queued = client.create_flow_run_from_deployment(deployment_id)
        assert client.set_flow_run_state(queued.id, Pending()).state.name == (
            "AwaitingConcurrencySlot"
        )
        # A count that agrees with the runs holding slots is left as it is.
        assert release_lost_slots(client, deployment_id, limit) == 0

    engine = open_database(database_url)
    run_id = _record_dead_run(engine, str(killed.id), tmp_path)
    assert reconcile_runs(engine) == [run_id]
    assert crash_flow_runs(engine, [run_id]) == [str(killed.id)]

    with get_client(sync_client=True) as client:
        assert _active_slots(client, limit) == 0
        assert client.set_flow_run_state(queued.id, Pending()).state.is_pending()
