"""Flow runs that Prefect still shows Running after their process was killed (SIGKILL, the OOM
killer, a power cut): once gdflow has recorded their runs `crashed` (`gdflow serve` at its
start, every train flow at its start for its host), Prefect is told too, which also frees the
deployment's concurrency slot the dead run held until its lease ran out (5 minutes: the whole
schedule waited that long).

A dead run repaired after its lease ran out has already given its slot back (Prefect's lease
reaper freed it), yet Prefect 3.9 frees one again when the run leaves Running: for a lease it
cannot find it takes a slot off the deployment's count anyway (`Lease ... not found during
release`), since a server that keeps leases in memory loses them at a restart without freeing
their slots. The count then falls one short of the runs holding slots, and the deployment
admits one run too many: the 300-run workers soak saw two at once, and putting the count back
after the crash came too late (the next soak saw a worker take the freed slot 2.7 s before the
correction). So such a run first gets a lease of its own on `REPAIR_LIMIT`, a limit of gdflow's
that nothing else takes (Running again, holding that lease); the crash then releases that lease
and leaves the deployment's count alone. A count left too high by a lease lost with a restart
is brought down to the deployment's runs that hold a slot (Pending, Running or Cancelling)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Optional
from uuid import UUID

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.storage import get_run

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.states import State

log = logging.getLogger(__name__)

#: Seconds a dead run's live lease is renewed for, and a repair lease lasts, while the run is
#: crashed: the crash releases it at once; should the crash fail, the slot comes back this
#: much later (60 s: the least Prefect accepts).
LEASE_SECONDS = 60.0
#: The global concurrency limit that repair leases are taken on: large enough never to refuse
#: one, used by nothing else (it shows under Concurrency in Prefect's UI, at 0 slots between
#: repairs).
REPAIR_LIMIT = "gdflow-repair"


def crash_flow_runs(
    engine: Engine, run_ids: Sequence[int], *, current: Optional[str] = None
) -> list[str]:
    """Set Crashed, with the run's error as its message, on the flow runs of these gdflow runs
    (just recorded `crashed`) that Prefect still has Pending, Running or Cancelling, but the
    `current` flow run (one retried after its process died); return the ids of the flow runs
    changed. A flow run Prefect cannot be asked about is left as it is, with a warning: the
    run itself is recorded in gdflow's database."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    with Session(engine) as session:
        runs = [get_run(session, run_id=run_id) for run_id in run_ids]
        found = [
            (run.flow_run_id, run.error)
            for run in runs
            if run and run.flow_run_id and run.flow_run_id != current
        ]
    if not found:
        return []
    unfinished = {StateType.PENDING, StateType.RUNNING, StateType.CANCELLING}
    changed = []
    with get_client(sync_client=True) as client:
        for flow_run_id, error in found:
            try:
                flow_run = client.read_flow_run(UUID(flow_run_id))
                if flow_run.state is None or flow_run.state.type not in unfinished:
                    continue
                lease_id = flow_run.state.state_details.deployment_concurrency_lease_id
                # The deployment is read only for a lease that is gone (the rare case).
                limit = (
                    _deployment_limit(client, flow_run.deployment_id)
                    if lease_id is not None and not _renew_lease(client, lease_id)
                    else None
                )
                lost = limit is not None and _hold_repair_lease(client, flow_run.id, flow_run.state)
                crashed: State[None] = Crashed(message=error or "")
                if client.set_flow_run_state(flow_run.id, crashed).status != SetStateStatus.ACCEPT:
                    continue
                changed.append(flow_run_id)
            except (ObjectNotFound, ValueError, httpx.HTTPError) as exc:
                log.warning("Could not mark flow run %s crashed in Prefect: %s", flow_run_id, exc)
                continue
            if lost and limit is not None and flow_run.deployment_id is not None:
                started = flow_run.start_time or flow_run.created
                held = (datetime.now(UTC) - started).total_seconds() if started else 0
                try:
                    release_lost_slots(client, flow_run.deployment_id, limit, held=held)
                except httpx.HTTPError as exc:
                    log.warning(
                        "Could not check deployment %s's concurrency count: %s",
                        flow_run.deployment_id,
                        exc,
                    )
    return changed


def _deployment_limit(client: SyncPrefectClient, deployment_id: Optional[UUID]) -> Optional[str]:
    """The name of the deployment's concurrency limit, or None (no deployment, no limit)."""
    if deployment_id is None:
        return None
    limit = client.read_deployment(deployment_id).global_concurrency_limit
    return limit.name if limit is not None else None


def _renew_lease(client: SyncPrefectClient, lease_id: UUID) -> bool:
    """Whether the lease is still held, renewed for LEASE_SECONDS if so: renewed, it cannot
    run out between this check and the crash that releases it."""
    import httpx

    try:
        client.renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in (404, 410):
            return False
        raise
    return True


def _hold_repair_lease(client: SyncPrefectClient, flow_run_id: UUID, state: State[Any]) -> bool:
    """Give the flow run, in its state (Pending, Running or Cancelling) again, a new lease on
    REPAIR_LIMIT, so that the crash releases that lease instead of a slot of its deployment;
    False if that failed (the crash then frees a deployment slot, as Prefect alone would).
    Forced: Prefect's rules refuse Pending to Pending, and would ask for a deployment slot on
    the way into Running; its forced transitions still keep and release leases."""
    import httpx
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.states import State

    try:
        client.read_global_concurrency_limit_by_name(REPAIR_LIMIT)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=REPAIR_LIMIT, limit=1_000_000)
            )
        except ObjectAlreadyExists:  # another repair created it just now
            pass
    try:
        response = client.increment_concurrency_slots_with_lease(
            names=[REPAIR_LIMIT], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS
        )
    except httpx.HTTPStatusError as exc:
        log.warning("Could not take a repair lease for flow run %s: %s", flow_run_id, exc)
        return False
    again: State[None] = State(
        type=state.type, name=state.name, message="gdflow: its process is gone; crashing it"
    )
    again.state_details.deployment_concurrency_lease_id = UUID(response.json()["lease_id"])
    accepted = client.set_flow_run_state(flow_run_id, again, force=True)
    return accepted.status == SetStateStatus.ACCEPT


def release_lost_slots(
    client: SyncPrefectClient, deployment_id: UUID, limit: str, *, held: float = 1.0
) -> int:
    """Bring the deployment's concurrency count down to the number of its flow runs holding a
    slot (Pending, Running or Cancelling): a dead run whose lease a server restart lost (kept
    in memory) still counts, and its crash no longer frees it. Return the slots freed.

    The count and the runs are read in turn, so the count is read again after the runs and
    trusted only when it has not moved: Prefect changes a run's state and the count in one
    transaction, so an unchanged count means no run took or gave back a slot in between. A
    count at or below the number of runs is left alone. `held`: the seconds the lost slots
    were held, for Prefect's average occupancy."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    holding = FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(
                any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
            )
        ),
    )
    for _ in range(10):
        before = client.read_global_concurrency_limit_by_name(limit).active_slots
        holders = client.count_flow_runs(flow_run_filter=holding)
        count = client.read_global_concurrency_limit_by_name(limit).active_slots
        if count == before:
            break
    else:
        log.warning("Deployment %s's concurrency count kept changing; left as it is", deployment_id)
        return 0
    extra = count - holders
    if extra <= 0:
        return 0
    client.release_concurrency_slots(names=[limit], slots=extra, occupancy_seconds=max(held, 1.0))
    log.info(
        "Freed %d concurrency slot(s) of deployment %s held by runs that are gone",
        extra,
        deployment_id,
    )
    return extra
