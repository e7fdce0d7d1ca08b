"""Retention on SQLite and PostgreSQL: which runs a prune deletes, what it never deletes, that
every row of a deleted run goes, batches, dry runs, and the space given back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Optional

import numpy as np
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from gdflow.storage import (
    CHAMPION,
    EpochMetric,
    MetricBatch,
    ModelVersion,
    RunOutcome,
    RunStatus,
    Sweep,
    add_model_version,
    append_metric_batch,
    create_run,
    create_sweep,
    finish_run,
    finish_sweep,
    get_alias,
    make_engine,
    retention,
    set_alias,
    update_run,
)
from gdflow.storage.models import Run

T0 = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
EPOCHS = 40


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _run(
    engine: Engine,
    name: Optional[str],
    day: float,
    *,
    status: RunStatus = RunStatus.COMPLETED,
    epochs: int = EPOCHS,
    sweep_id: Optional[int] = None,
) -> int:
    """A run of model `name` started `day` days after T0, with `epochs` epoch rows."""
    with Session(engine) as session, session.begin():
        run_id = create_run(
            session,
            config={},
            data_source="toy",
            parameter_names=["w", "b"],
            started_at=T0 + timedelta(days=day),
            sweep_id=sweep_id,
        )
        update_run(session, run_id=run_id, model_name=name)
        if epochs:
            batch = MetricBatch(
                epochs=list(range(1, epochs + 1)),
                losses=[1.0 / e for e in range(1, epochs + 1)],
                names=["w", "b"],
                params=np.random.default_rng(run_id).random((epochs, 2)),
            )
            append_metric_batch(session, run_id=run_id, batch=batch)
        if status is not RunStatus.RUNNING:
            finish_run(session, run_id=run_id, outcome=RunOutcome(status))
    return run_id


def _version(engine: Engine, name: str, run_id: int, *, champion: bool = False) -> int:
    """Register a version of `name` trained by `run_id`; make it the champion if asked."""
    with Session(engine) as session, session.begin():
        version = add_model_version(
            session,
            name=name,
            run_id=run_id,
            family="linear",
            task="regression",
            architecture={"inputs": 1, "outputs": 1},
            feature_names=["x"],
            path=f"{name}/run-{run_id}.safetensors",
            store="file:///models",
            size=100,
            checksum="sha256:" + "0" * 64,
        ).version
        if champion:
            current = get_alias(session, name, CHAMPION)
            assert set_alias(
                session,
                name=name,
                alias=CHAMPION,
                expected=current,
                version=version,
                reason="promoted",
            )
    return version


def _epochs(engine: Engine) -> dict[int, int]:
    """Every run id with its number of epoch rows (0 for none)."""
    with Session(engine) as session:
        counts = dict(
            session.execute(
                select(EpochMetric.run_id, func.count()).group_by(EpochMetric.run_id)
            ).all()
        )
        runs = session.scalars(select(Run.id)).all()
        orphans = set(counts) - set(runs)
        assert not orphans, f"epoch rows of deleted runs {sorted(orphans)}"
        return {run_id: counts.get(run_id, 0) for run_id in runs}


def _prune(engine: Engine, **options: Any) -> retention.PruneResult:
    return retention.prune(engine, vacuum=False, **options)


def test_keep_last_keeps_each_names_newest_runs_and_the_unnamed_as_one_group(
    engine: Engine,
) -> None:
    names = ["a", "b", None, "a", "a", None, "b", "a", None, "b", "a", None]
    made = [(name, day, _run(engine, name, day)) for day, name in enumerate(names)]
    result = _prune(engine, keep_last=2)
    # The reference: in each group (None being one), all but the two latest.
    expected: set[int] = set()
    for group in {name for name, _, _ in made}:
        ids = [run_id for name, _, run_id in sorted(made, key=lambda m: m[1]) if name == group]
        expected.update(ids[:-2])
    assert set(result.run_ids) == expected and len(expected) == 6
    left = _epochs(engine)
    assert set(left) == {run_id for _, _, run_id in made} - expected
    assert all(count == EPOCHS for count in left.values())
    assert (result.runs, result.epoch_rows, result.runs_kept) == (6, 6 * EPOCHS, 6)
    assert result.protected == {}


def test_keep_last_of_one_model_touches_no_other(engine: Engine) -> None:
    a = [_run(engine, "a", day) for day in range(4)]
    b = [_run(engine, "b", day) for day in range(4)]
    result = _prune(engine, keep_last=1, model_name="a")
    assert result.run_ids == tuple(a[:3])
    assert set(_epochs(engine)) == {a[3], *b}


def test_older_than_keep_last_and_both(engine: Engine) -> None:
    """With both rules a run goes only when neither keeps it."""
    ids = [_run(engine, "a", day) for day in range(6)]
    cutoff = T0 + timedelta(days=2)

    def planned(**options: Any) -> tuple[int, ...]:
        return _prune(engine, dry_run=True, **options).run_ids

    assert planned(older_than=cutoff) == tuple(ids[:2])
    assert planned(keep_last=2) == tuple(ids[:4])
    assert planned(keep_last=2, older_than=cutoff) == tuple(ids[:2])
    assert planned(keep_last=1, older_than=T0 + timedelta(days=5, hours=1)) == tuple(ids[:5])
    # a naive cutoff is UTC; one with an offset is converted (03:00 at +01:00 is 02:00 UTC,
    # when the third run started: not before it)
    assert planned(older_than=datetime(2026, 1, 3, 2, 0, 1)) == tuple(ids[:3])
    plus_one = timezone(timedelta(hours=1))
    assert planned(older_than=datetime(2026, 1, 3, 3, 0, tzinfo=plus_one)) == tuple(ids[:2])
    assert set(_epochs(engine)) == set(ids)  # dry runs deleted nothing
    assert _prune(engine, keep_last=2, older_than=cutoff).run_ids == tuple(ids[:2])
    assert set(_epochs(engine)) == set(ids[2:])


def test_the_champions_run_and_the_newest_completed_survive_keep_last_0_and_1(
    engine: Engine,
) -> None:
    runs = [_run(engine, "a", day) for day in range(4)]
    versions = [_version(engine, "a", run_id, champion=i == 1) for i, run_id in enumerate(runs)]
    failed = _run(engine, "a", 5, status=RunStatus.FAILED)
    result = _prune(engine, keep_last=1)
    # kept: the newest run (failed), the champion's run, the newest completed run
    assert result.run_ids == (runs[0], runs[2])
    assert result.protected == {runs[1]: retention.ALIASED, runs[3]: retention.NEWEST_COMPLETED}
    assert set(_epochs(engine)) == {runs[1], runs[3], failed}
    assert result.versions_unlinked == 2
    result = _prune(engine, keep_last=0)
    assert result.run_ids == (failed,)
    assert result.protected == {runs[1]: retention.ALIASED, runs[3]: retention.NEWEST_COMPLETED}
    assert set(_epochs(engine)) == {runs[1], runs[3]}
    with Session(engine) as session:  # every version stays, its run unlinked if deleted
        stored = session.execute(
            select(ModelVersion.version, ModelVersion.run_id).order_by(ModelVersion.version)
        ).all()
        assert [tuple(row) for row in stored] == [
            (versions[0], None),
            (versions[1], runs[1]),
            (versions[2], None),
            (versions[3], runs[3]),
        ]
        assert get_alias(session, "a", CHAMPION) == versions[1]


def test_running_runs_survive_every_rule(engine: Engine) -> None:
    running = _run(engine, "a", 0, status=RunStatus.RUNNING)
    unnamed = _run(engine, None, 0, status=RunStatus.RUNNING)
    done = [_run(engine, "a", day) for day in (1, 2)]
    result = _prune(engine, keep_last=0, older_than=T0 + timedelta(days=30))
    assert result.run_ids == (done[0],)
    assert result.protected == {
        running: retention.RUNNING,
        unnamed: retention.RUNNING,
        done[1]: retention.NEWEST_COMPLETED,
    }
    assert _epochs(engine) == {running: EPOCHS, unnamed: EPOCHS, done[1]: EPOCHS}


def test_a_dry_run_deletes_nothing_and_says_what_the_prune_does(engine: Engine) -> None:
    for day in range(8):
        _run(engine, "a" if day % 2 else "b", day, epochs=EPOCHS + day)
    before = _epochs(engine)
    dry = _prune(engine, keep_last=1, dry_run=True)
    assert _epochs(engine) == before and dry.dry_run and dry.runs == 6
    done = _prune(engine, keep_last=1)
    assert (done.run_ids, done.runs, done.epoch_rows, done.runs_kept) == (
        dry.run_ids,
        dry.runs,
        dry.epoch_rows,
        dry.runs_kept,
    )
    assert dry.epoch_rows == sum(before[run_id] for run_id in dry.run_ids)
    assert set(_epochs(engine)) == set(before) - set(dry.run_ids)


def test_each_batch_checks_the_protections_again(engine: Engine) -> None:
    """A version promoted after the plan was made keeps its run: the batch's own transaction
    reads the aliases again."""
    runs = [_run(engine, "a", day) for day in range(3)]
    with engine.connect() as connection:
        plan = retention.plan_prune(connection, keep_last=0)
    assert plan.run_ids == tuple(runs[:2])
    _version(engine, "a", runs[0], champion=True)
    done = retention.delete_batch(engine, plan.run_ids)
    assert (done.run_ids, done.runs, done.epoch_rows) == ([runs[1]], 1, EPOCHS)
    assert set(_epochs(engine)) == {runs[0], runs[2]}


def test_batches_are_bounded_by_runs_and_epoch_rows(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {1: 50, 2: 50, 3: 30, 4: 500, 5: 10, 6: 10, 7: 10, 8: 10}
    plan = retention.PrunePlan(tuple(sizes), sizes, 0, (), {}, 10)
    monkeypatch.setattr(retention, "BATCH_EPOCH_ROWS", 120)
    monkeypatch.setattr(retention, "BATCH_RUNS", 3)
    assert retention.batches(plan) == [[1, 2], [3], [4], [5, 6, 7], [8]]
    ids = [_run(engine, "a", day, epochs=50) for day in range(7)]
    result = _prune(engine, keep_last=1)
    assert (result.batches, result.runs, result.epoch_rows) == (3, 6, 300)
    assert set(_epochs(engine)) == {ids[-1]}


def test_a_sweep_left_without_runs_goes_with_them(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        emptied = create_sweep(session, name="s1", config={})
        kept = create_sweep(session, name="s2", config={})
        for sweep_id in (emptied, kept):
            finish_sweep(session, sweep_id=sweep_id, status=RunStatus.COMPLETED, best_run_id=None)
    _run(engine, "a", 0, sweep_id=emptied)
    _run(engine, "a", 1, sweep_id=emptied)
    _run(engine, "a", 2, sweep_id=kept)
    _run(engine, "a", 10, sweep_id=kept)
    assert _prune(engine, keep_last=1, dry_run=True).sweeps == 1
    result = _prune(engine, keep_last=1)
    assert (result.runs, result.sweeps) == (3, 1)
    with Session(engine) as session:
        assert session.scalars(select(Sweep.id)).all() == [kept]


def test_invalid_rules_are_refused(engine: Engine) -> None:
    with engine.connect() as connection:
        with pytest.raises(ValueError, match="give keep_last, older_than or both"):
            retention.plan_prune(connection)
        with pytest.raises(ValueError, match="keep_last must be 0 or more"):
            retention.plan_prune(connection, keep_last=-1)


def _big_runs(engine: Engine, count: int, epochs: int = 4000) -> list[int]:
    return [_run(engine, "a", day, epochs=epochs) for day in range(count)]


def test_vacuum_gives_the_space_back(engine: Engine) -> None:
    """SQLite: the file shrinks; PostgreSQL: the pruned tables are vacuumed and analysed."""
    _big_runs(engine, 10)
    result = retention.prune(engine, keep_last=1)
    assert result.vacuumed and result.runs == 9
    assert result.bytes_before is not None and result.bytes_after is not None
    if engine.dialect.name == "sqlite":
        assert result.bytes_after < result.bytes_before / 4
        assert result.bytes_after == retention.database_bytes(engine)
        assert retention.sqlite_free_bytes(engine) == 0
        return
    deadline = time.monotonic() + 20  # PostgreSQL's statistics arrive shortly after
    while True:
        with engine.connect() as connection:
            vacuumed = connection.exec_driver_sql(
                "SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL "
                "AND last_analyze IS NOT NULL"
            ).scalars()
            found = set(vacuumed)
        if set(retention.PRUNED_TABLES) <= found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(retention.PRUNED_TABLES) <= found


def test_without_vacuum_the_sqlite_file_stays_flat_as_runs_come_and_go(
    engine: Engine, database_url: str
) -> None:
    """Pruning after each run (no VACUUM): new rows fill the freed pages, the file stops
    growing; without pruning it grows with every run."""
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL reuses the space once autovacuum has run")
    sizes = []
    for day in range(10):
        _run(engine, "a", day, epochs=4000)
        result = _prune(engine, keep_last=2)
        assert result.runs == (1 if day >= 2 else 0)
        sizes.append(retention.database_bytes(engine))
    assert sizes[-1] <= sizes[3] * 1.05, sizes
    grown = [retention.database_bytes(engine)]
    for day in range(10, 13):
        _run(engine, "a", day, epochs=4000)
        retention.checkpoint(engine)
        grown.append(retention.database_bytes(engine))
    assert grown[-1] > sizes[-1] * 1.3, (sizes, grown)
