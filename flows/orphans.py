"""Flow runs that Prefect still shows Running after their process was killed (SIGKILL, the OOM
killer, a power cut): once gdflow has recorded their runs `crashed` (`gdflow serve` at its
start, every train flow at its start for its host), Prefect is told too, which also frees the
deployment's concurrency slot the dead run held until its lease ran out (5 minutes: the whole
schedule waited that long)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional
from uuid import UUID

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.storage import get_run

log = logging.getLogger(__name__)


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
                crashed: State[None] = Crashed(message=error or "")
                if client.set_flow_run_state(flow_run.id, crashed).status == SetStateStatus.ACCEPT:
                    changed.append(flow_run_id)
            except (ObjectNotFound, ValueError, httpx.HTTPError) as exc:
                log.warning("Could not mark flow run %s crashed in Prefect: %s", flow_run_id, exc)
    return changed
