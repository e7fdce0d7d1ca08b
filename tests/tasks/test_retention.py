"""The prune after a run, inside a real flow run: it deletes the run's own model name's old runs,
never another name's; a sweep's runs prune nothing; a prune that fails is a warning in the run's
log and the flow run still completes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Optional

import pytest
from prefect import flow
from sqlalchemy import select
from sqlalchemy.orm import Session

from gdflow.config.train import TrainConfig
from gdflow.runs.recording import RunRef
from gdflow.storage import RunOutcome, RunStatus, create_run, engine_for, finish_run, update_run
from gdflow.storage.models import Run
from gdflow.tasks.retention import prune_after_run

pytestmark = pytest.mark.usefixtures("prefect_api_url")


@flow
def _after_run(config: TrainConfig, database_url: str, in_sweep: bool = False) -> Optional[int]:
    """A flow whose only step is the prune after a run: the runs it deleted (None: none tried)."""
    result = prune_after_run(config, RunRef(run_id=0, database_url=database_url), in_sweep=in_sweep)
    return None if result is None else result.runs


def _runs(database_url: str, names: list[str]) -> list[int]:
    engine = engine_for(database_url)
    ids = []
    for day, name in enumerate(names):
        with Session(engine) as session, session.begin():
            started = datetime.now(UTC) - timedelta(days=len(names) - day)
            run_id = create_run(
                session, config={}, data_source="toy", parameter_names=["w"], started_at=started
            )
            update_run(session, run_id=run_id, model_name=name)
            finish_run(session, run_id=run_id, outcome=RunOutcome(RunStatus.COMPLETED))
        ids.append(run_id)
    return ids


def _left(database_url: str) -> list[int]:
    with Session(engine_for(database_url)) as session:
        return list(session.scalars(select(Run.id).order_by(Run.id)))


def test_the_run_prunes_its_own_name_only(database_url: str) -> None:
    ids = _runs(database_url, ["toy", "other", "toy", "toy", "other", "toy"])
    config = TrainConfig(prune_keep_last=2)
    assert _after_run(config, database_url, in_sweep=True) is None  # a sweep's run: nothing
    assert _left(database_url) == ids
    assert _after_run(TrainConfig(), database_url) is None  # not asked
    assert _after_run(config, database_url) == 2
    assert _left(database_url) == [ids[1], ids[3], ids[4], ids[5]]
    # by age: toy's runs started more than 2.5 days ago (the fourth, 3 days old); the other
    # name's run of 5 days ago stays
    days = TrainConfig(prune_older_than_days=2.5)
    assert _after_run(days, database_url) == 1
    assert _left(database_url) == [ids[1], ids[4], ids[5]]


def test_a_failing_prune_is_a_warning_and_the_run_completes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unusable = f"sqlite:///{tmp_path}"  # a directory: the database cannot be opened
    with caplog.at_level(logging.WARNING):
        state = _after_run(TrainConfig(prune_keep_last=1), unusable, return_state=True)
    assert state.is_completed() and state.result() is None
    (warning,) = [r.getMessage() for r in caplog.records if "Could not prune" in r.getMessage()]
    assert warning.startswith(f"Could not prune the old runs of toy: database path {tmp_path}")
