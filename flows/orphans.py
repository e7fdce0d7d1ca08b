"""Flow runs that Prefect still shows Running after their process was killed (SIGKILL, the OOM
killer, a power cut): once gdflow has recorded their runs `crashed` (`gdflow serve` at its
start, every train flow at its start for its host), Prefect is told too, which also frees the
deployment's concurrency slot the dead run held until its lease ran out (5 minutes: the whole
schedule waited that long).

A dead run repaired after its lease ran out has already given its slot back (Prefect's lease
reaper freed it), yet Prefect 3.9 frees it again when the run leaves Running: a lease it cannot
find makes it take one slot off the deployment's count anyway (`Lease ... not found during
release`), since a server that keeps leases in memory loses them at a restart without freeing
their slots. The count then falls one short of the runs holding slots, and the deployment
admits one run too many (the 300-run workers soak saw two runs at once). So a run whose lease is
gone is crashed and then the count is put back to the number of the deployment's runs that hold
a slot (Pending, Running or Cancelling), which is right in both cases."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional
from uuid import UUID

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.storage import get_run

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

log = logging.getLogger(__name__)

#: Seconds a dead run's live lease is renewed for while it is crashed: the crash releases it at
#: once; should the crash fail, the slot comes back this much later.
PROBE_LEASE_SECONDS = 60.0  # the least Prefect accepts


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
    from prefect.states import Crashed, State

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
                lease_gone = (
                    lease_id is not None
                    and flow_run.deployment_id is not None
                    and not _renew_lease(client, lease_id)
                )
                crashed: State[None] = Crashed(message=error or "")
                if client.set_flow_run_state(flow_run.id, crashed).status != SetStateStatus.ACCEPT:
                    continue
                changed.append(flow_run_id)
            except (ObjectNotFound, ValueError, httpx.HTTPError) as exc:
                log.warning("Could not mark flow run %s crashed in Prefect: %s", flow_run_id, exc)
                continue
            if lease_gone and flow_run.deployment_id is not None:
                try:
                    restore_deployment_slots(client, flow_run.deployment_id)
                except (ObjectNotFound, httpx.HTTPError) as exc:
                    log.warning(
                        "Could not check deployment %s's concurrency count after crashing flow "
                        "run %s: %s",
                        flow_run.deployment_id,
                        flow_run_id,
                        exc,
                    )
    return changed


def _renew_lease(client: SyncPrefectClient, lease_id: UUID) -> bool:
    """Whether the lease is still held, renewed for PROBE_LEASE_SECONDS if so: renewed, it
    cannot run out between this check and the crash that releases it."""
    import httpx

    try:
        client.renew_concurrency_lease(lease_id, lease_duration=PROBE_LEASE_SECONDS)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in (404, 410):
            return False
        raise
    return True


def restore_deployment_slots(client: SyncPrefectClient, deployment_id: UUID) -> int:
    """Bring the deployment's concurrency count back up to the number of its flow runs holding
    a slot (Pending, Running or Cancelling), at most its limit; return the slots taken back.

    The count and the runs are read in turn, so the count is read again after the runs and
    trusted only when it has not moved: Prefect changes a run's state and the count in one
    transaction, so an unchanged count means no run took or gave back a slot in between. A
    count at or above the number of runs is left alone: a restart of a server that keeps its
    leases in memory leaves it that way, and the crash has just corrected it."""
    import httpx
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deployment = client.read_deployment(deployment_id)
    limit = deployment.global_concurrency_limit
    if limit is None:
        return 0
    holding = FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(
                any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
            )
        ),
    )
    for _ in range(10):
        before = client.read_global_concurrency_limit_by_name(limit.name).active_slots
        holders = client.count_flow_runs(flow_run_filter=holding)
        now = client.read_global_concurrency_limit_by_name(limit.name)
        if now.active_slots == before:
            break
    else:
        log.warning("Deployment %s's concurrency count kept changing; left as it is", deployment_id)
        return 0
    missing = min(holders, now.limit) - now.active_slots
    if missing <= 0:
        return 0
    try:
        client.increment_concurrency_slots(names=[limit.name], slots=missing, mode="concurrency")
    except httpx.HTTPStatusError as exc:
        # 423: another run took the slot in the moment after the crash freed it.
        log.warning(
            "Could not take back %d concurrency slot(s) of deployment %s: %s",
            missing,
            deployment_id,
            exc,
        )
        return 0
    log.info(
        "Took back %d concurrency slot(s) of deployment %s that Prefect freed twice",
        missing,
        deployment_id,
    )
    return missing
