"""Data functions on a real SQLite file: runs, epoch rows, ordering, NaN handling, uniqueness."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gdflow.storage import (
    EpochMetric,
    MetricBatch,
    MetricRow,
    RunOutcome,
    RunStatus,
    append_metric_batch,
    append_metrics,
    crashed_runs_of_flow_runs,
    create_run,
    finish_run,
    get_metrics,
    get_run,
    latest_run_id,
    list_runs,
    make_engine,
    update_run,
)


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _new_run(session: Session, started_at: datetime | None = None) -> int:
    return create_run(
        session,
        config={"lr": 0.01},
        data_source="toy",
        parameter_names=["w"],
        flow_run_id="abc",
        flow_run_name="toy-run",
        started_at=started_at,
    )


def test_run_lifecycle_round_trip(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
    with Session(engine) as session, session.begin():
        append_metrics(
            session,
            run_id=run_id,
            rows=[MetricRow(1, 11.0, {"w": 1.22}, 22.0, 0.01), MetricRow(2, 6.69, {"w": 1.39})],
        )
    with Session(engine) as session:
        run = get_run(session, run_id=run_id)
        assert run is not None and run.status == "running" and run.epochs_done == 2
    with Session(engine) as session, session.begin():
        outcome = RunOutcome(
            status=RunStatus.COMPLETED,
            final_loss=6.69,
            final_params={"w": 1.39},
            stop_reason="max_epochs",
            evaluation={"train_loss": 1.0},
        )
        finish_run(session, run_id=run_id, outcome=outcome)
    with Session(engine) as session:
        run = get_run(session, run_id=run_id)
        assert run is not None
        assert (run.status, run.stop_reason, run.final_params) == (
            "completed",
            "max_epochs",
            {"w": 1.39},
        )
        assert run.finished_at is not None and run.epochs_done == 2
        rows = get_metrics(session, run_id=run_id)
        assert [(m.epoch, m.loss, m.params, m.grad_norm) for m in rows] == [
            (1, 11.0, {"w": 1.22}, 22.0),
            (2, 6.69, {"w": 1.39}, None),
        ]


def test_non_finite_values_are_stored_as_null(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
        append_metrics(
            session, run_id=run_id, rows=[MetricRow(1, math.inf, {"w": math.nan}, math.nan)]
        )
    with Session(engine) as session:
        (row,) = get_metrics(session, run_id=run_id)
        assert row.loss is None and row.params == {"w": None} and row.grad_norm is None


def test_an_epoch_is_stored_once_per_run_and_a_retry_is_not_an_error(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
        append_metrics(session, run_id=run_id, rows=[MetricRow(1, 1.0, {"w": 1.0})])
    with pytest.raises(IntegrityError):  # the schema refuses a second row for an epoch
        with Session(engine) as session, session.begin():
            session.add(EpochMetric(run_id=run_id, epoch=1, loss=2.0, params={"w": 2.0}))
    with Session(engine) as session, session.begin():  # a retried chunk: epoch 1 again, and 2
        append_metrics(
            session,
            run_id=run_id,
            rows=[MetricRow(1, 2.0, {"w": 2.0}), MetricRow(2, 3.0, {"w": 3.0})],
        )
    with Session(engine) as session:
        assert [(m.epoch, m.loss) for m in get_metrics(session, run_id=run_id)] == [
            (1, 1.0),
            (2, 3.0),
        ]
        assert get_run(session, run_id=run_id).epochs_done == 2  # type: ignore[union-attr]


def _batch(first: int, last: int, **overrides: object) -> MetricBatch:
    epochs = list(range(first, last + 1))
    fields: dict[str, object] = {
        "epochs": epochs,
        "losses": [1.0 / e for e in epochs],
        "names": ["w_a", "b"],
        "params": [[0.1 * e, -0.3 * e] for e in epochs],
        "grad_norms": [2.0 / e for e in epochs],
        "lrs": [0.01] * len(epochs),
        "val_losses": None,
        **overrides,
    }
    return MetricBatch(**fields)  # type: ignore[arg-type]


def test_a_batch_is_stored_as_the_same_rows_and_json_as_metric_rows(engine: Engine) -> None:
    batch = _batch(1, 50, val_losses=[0.5] * 50)
    rows = [
        MetricRow(e, loss, dict(zip(batch.names, p)), g, lr, v)
        for e, loss, p, g, lr, v in zip(
            batch.epochs, batch.losses, batch.params, batch.grad_norms, batch.lrs, [0.5] * 50
        )
    ]
    with Session(engine) as session, session.begin():
        by_batch, by_rows = _new_run(session), _new_run(session)
        assert append_metric_batch(session, run_id=by_batch, batch=batch) == 50
        assert append_metrics(session, run_id=by_rows, rows=rows) == 50
    with engine.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT run_id, epoch, loss, params, grad_norm, lr, val_loss FROM epoch_metrics "
            "ORDER BY epoch, run_id"
        ).all()
    for mine, theirs in zip(stored[0::2], stored[1::2]):
        assert mine[1:] == theirs[1:]
    expected = {"w_a": 0.1 * 50, "b": -0.3 * 50}
    params = stored[-2][3]  # JSON text on SQLite (as json.dumps writes it), decoded by psycopg
    assert params == (json.dumps(expected) if isinstance(params, str) else expected)
    with Session(engine) as session:
        assert get_run(session, run_id=by_batch).epochs_done == 50  # type: ignore[union-attr]


def test_batch_parameters_read_back_as_the_same_float64_values(engine: Engine) -> None:
    """The JSON of a batch's parameters (written by orjson from a NumPy matrix) decodes to the
    very floats given: tiny, huge, subnormal, float32-derived, negative zero; any names."""
    awkward = [1e-05, 1e16, 5e-324, 1.7976931348623157e308, 0.1, float(np.float32(0.1)), -0.0]
    names = ['w "quoted"', "b%s", "ünï"]
    matrix = np.array([[v, -v, v / 3.0] for v in awkward])
    batch = _batch(1, len(awkward), names=names, params=matrix, grad_norms=None, lrs=None)
    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
        append_metric_batch(session, run_id=run_id, batch=batch)
        no_params = _new_run(session)
        append_metric_batch(session, run_id=no_params, batch=_batch(1, 3, names=[], params=[]))
    with Session(engine) as session:
        stored = get_metrics(session, run_id=run_id)
        assert [list(m.params.values()) for m in stored] == matrix.tolist()
        assert [list(m.params) for m in stored] == [names] * len(awkward)
        assert [(m.grad_norm, m.lr, m.val_loss) for m in stored] == [(None, None, None)] * 7
        assert [m.params for m in get_metrics(session, run_id=no_params)] == [{}] * 3


def test_non_finite_values_of_a_batch_are_stored_as_null(engine: Engine) -> None:
    batch = _batch(
        1,
        2,
        losses=[math.inf, 1.0],
        params=[[math.nan, 1.0], [2.0, 3.0]],
        grad_norms=[1.0, -math.inf],
        val_losses=[math.nan, 0.5],
    )
    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
        append_metric_batch(session, run_id=run_id, batch=batch)
    with Session(engine) as session:
        first, second = get_metrics(session, run_id=run_id)
        assert (first.loss, first.params, first.val_loss) == (None, {"w_a": None, "b": 1.0}, None)
        assert (second.grad_norm, second.params) == (None, {"w_a": 2.0, "b": 3.0})


def test_a_retried_batch_neither_fails_nor_duplicates(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
        append_metric_batch(session, run_id=run_id, batch=_batch(1, 10))
    with Session(engine) as session, session.begin():
        append_metric_batch(session, run_id=run_id, batch=_batch(5, 20))
        append_metric_batch(session, run_id=run_id, batch=_batch(1, 3))  # late retry
    with Session(engine) as session:
        assert [m.epoch for m in get_metrics(session, run_id=run_id)] == list(range(1, 21))
        assert get_run(session, run_id=run_id).epochs_done == 20  # type: ignore[union-attr]


def test_a_failed_batch_leaves_no_rows(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
    with pytest.raises(IntegrityError):
        with Session(engine) as session, session.begin():
            append_metric_batch(session, run_id=run_id, batch=_batch(1, 10))
            append_metric_batch(session, run_id=999, batch=_batch(11, 12))
    with Session(engine) as session:
        assert get_metrics(session, run_id=run_id) == []


def test_writing_a_chunk_again_keeps_one_row_per_epoch(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
    chunk = [MetricRow(epoch, 1.0 / epoch, {"w": float(epoch)}) for epoch in (1, 2, 3)]
    for rows in (chunk, chunk, [*chunk[1:], MetricRow(4, 0.25, {"w": 4.0})]):
        with Session(engine) as session, session.begin():  # a retry re-sends what was sent
            append_metrics(session, run_id=run_id, rows=rows)
    with Session(engine) as session:
        assert [(m.epoch, m.loss) for m in get_metrics(session, run_id=run_id)] == [
            (1, 1.0),
            (2, 0.5),
            (3, 1 / 3),
            (4, 0.25),
        ]
        run = get_run(session, run_id=run_id)
        assert run is not None and run.epochs_done == 4


def test_metrics_need_an_existing_run(engine: Engine) -> None:
    with pytest.raises(IntegrityError):
        with Session(engine) as session, session.begin():
            append_metrics(session, run_id=999, rows=[MetricRow(1, 1.0, {"w": 1.0})])


def test_latest_runs_come_first(engine: Engine) -> None:
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        old = _new_run(session, started_at=now - timedelta(hours=1))
        new = _new_run(session, started_at=now)
        update_run(session, run_id=old, device="cpu")
    with Session(engine) as session:
        assert latest_run_id(session) == new
        assert [r.id for r in list_runs(session, limit=10)] == [new, old]
        assert [r.id for r in list_runs(session, limit=1)] == [new]
        assert get_run(session, run_id=old).device == "cpu"  # type: ignore[union-attr]


def test_crashed_runs_of_flow_runs_are_a_hosts_latest_without_a_live_retry(
    engine: Engine,
) -> None:
    def run(host: str, flow_run_id: str | None, status: RunStatus) -> int:
        run_id = create_run(
            session,
            config={},
            data_source="toy",
            parameter_names=["w"],
            flow_run_id=flow_run_id,
            owner={"host": host, "pid": 1, "pid_started": None},
        )
        if status is not RunStatus.RUNNING:
            finish_run(session, run_id=run_id, outcome=RunOutcome(status=status))
        return run_id

    with Session(engine) as session, session.begin():
        first = run("here", "f1", RunStatus.CRASHED)
        run("elsewhere", "f2", RunStatus.CRASHED)  # another host's
        run("here", None, RunStatus.CRASHED)  # no flow run (main() in a notebook)
        run("here", "f3", RunStatus.FAILED)
        run("here", "f4", RunStatus.CRASHED)  # retried: a live run has its flow run
        run("here", "f4", RunStatus.RUNNING)
        last = run("here", "f5", RunStatus.CRASHED)
    with Session(engine) as session:
        found = crashed_runs_of_flow_runs(session, host="here", limit=10)
        assert [r.id for r in found] == [last, first]
        limited = crashed_runs_of_flow_runs(session, host="here", limit=1)
        assert [r.id for r in limited] == [last]


def test_latest_run_of_empty_database_is_none(engine: Engine) -> None:
    with Session(engine) as session:
        assert latest_run_id(session) is None
        assert list_runs(session) == []


def test_tables_are_readable_with_pandas(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
        append_metrics(
            session,
            run_id=run_id,
            rows=[MetricRow(e, 1.0 / e, {"w": float(e)}) for e in range(1, 4)],
        )
    frame = pd.read_sql(
        text("SELECT epoch, loss, params FROM epoch_metrics WHERE run_id = :run ORDER BY epoch"),
        engine,
        params={"run": run_id},
    )
    assert frame["epoch"].tolist() == [1, 2, 3]
    assert frame["loss"].tolist() == [1.0, 0.5, pytest.approx(1 / 3)]
    runs = pd.read_sql("SELECT id, status FROM runs", engine)
    assert runs["status"].tolist() == ["running"]


@pytest.mark.parametrize(
    ("epochs", "max_rows"), [(2000, 2000), (2001, 2000), (2500, 2000), (200, 20)]
)
def test_metric_sample_uses_the_row_budget_and_keeps_the_ends(
    engine: Engine, epochs: int, max_rows: int
) -> None:
    from gdflow.storage import get_metrics_sample

    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
        append_metrics(
            session,
            run_id=run_id,
            rows=[MetricRow(e, 1.0, {"w": 0.0}) for e in range(1, epochs + 1)],
        )
    with Session(engine) as session:
        sample = [m.epoch for m in get_metrics_sample(session, run_id=run_id, max_rows=max_rows)]
    assert sample[0] == 1 and sample[-1] == epochs
    # An even integer stride: every epoch when they fit, else at least half the budget.
    assert len(sample) == epochs if epochs <= max_rows else max_rows // 2 <= len(sample) <= max_rows
