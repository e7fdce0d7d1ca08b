"""The model registry's data functions on SQLite and PostgreSQL: version numbers, aliases moved
by compare-and-set with a history chain, summaries, prediction batches, and racing writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gdflow.storage import (
    CHAMPION,
    ModelAlias,
    ModelSummary,
    Run,
    add_model_version,
    alias_history,
    aliases_of,
    create_run,
    get_alias,
    get_model_version,
    latest_model_version,
    list_model_names,
    list_model_versions,
    list_predictions,
    make_engine,
    record_prediction,
    retry_transient,
    set_alias,
    set_promotion,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _fields(**overrides: Any) -> dict[str, Any]:
    """The columns a version cannot do without, plus `overrides`."""
    return {
        "family": "linear",
        "task": "regression",
        "architecture": {"inputs": 1, "outputs": 1},
        "feature_names": ["x"],
        "path": "toy/model.pt",
        "store": "file:///models",
        "size": 123,
        "checksum": "sha256:" + "0" * 64,
        **overrides,
    }


def _utc(moment: datetime) -> datetime:
    """A stored timestamp as an aware UTC datetime (SQLite gives it back naive)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _add(engine: Engine, name: str, **overrides: Any) -> int:
    with Session(engine) as session, session.begin():
        return add_model_version(session, name=name, **_fields(**overrides)).version


def _new_run(session: Session) -> int:
    return create_run(session, config={}, data_source="toy", parameter_names=["w"])


def test_versions_are_numbered_from_one_per_name(engine: Engine) -> None:
    assert [_add(engine, "alpha") for _ in range(3)] == [1, 2, 3]
    assert [_add(engine, "beta") for _ in range(2)] == [1, 2]
    with Session(engine) as session, session.begin():  # several in one transaction
        first = add_model_version(session, name="gamma", **_fields())
        second = add_model_version(session, name="gamma", **_fields())
        assert (first.version, second.version) == (1, 2) and first.id != second.id
    with Session(engine) as session:
        assert [v.version for v in list_model_versions(session, "alpha")] == [3, 2, 1]
        assert [v.version for v in list_model_versions(session, "beta")] == [2, 1]
        assert [v.version for v in list_model_versions(session, "alpha", limit=2)] == [3, 2]
        assert list_model_versions(session, "nobody") == []


def test_a_rolled_back_version_leaves_nothing_behind(engine: Engine) -> None:
    with Session(engine) as session:  # the SAVEPOINT must not commit on its own (SQLite)
        assert add_model_version(session, name="alpha", **_fields()).version == 1
        session.rollback()
    with Session(engine) as session:
        assert latest_model_version(session, "alpha") is None
    assert _add(engine, "alpha") == 1


def test_a_version_keeps_its_fields_and_needs_no_run(engine: Engine) -> None:
    full = _fields(
        flow_run_id="flow-1",
        created_at=T0,
        family="softmax",
        task="multiclass",
        architecture={"inputs": 2, "classes": 3},
        feature_names=["a", "b"],
        target_name="species",
        classes=["x", "y", "z"],
        standardization={"mean": [0.5, 1.0], "std": [1.0, 2.0]},
        data_fingerprint="sha256:abc",
        metrics={"train": {"loss": 0.5}, "validation": {"loss": 0.75, "accuracy": 0.9}},
    )
    with Session(engine) as session, session.begin():
        bare = add_model_version(session, name="alpha", **_fields())
        assert bare.run_id is None and bare.promotion is None and bare.created_at is not None
        row_id = add_model_version(session, name="alpha", **full).id
    with Session(engine) as session, session.begin():
        set_promotion(session, version_id=row_id, promotion={"decision": "promoted"})
    with Session(engine) as session:
        stored = get_model_version(session, "alpha", 2)
        assert stored is not None and stored.id == row_id
        assert {key: getattr(stored, key) for key in full if key != "created_at"} == {
            key: value for key, value in full.items() if key != "created_at"
        }
        assert _utc(stored.created_at) == T0
        assert stored.promotion == {"decision": "promoted"}
        assert get_model_version(session, "alpha", 3) is None
        assert get_model_version(session, "beta", 1) is None
    with pytest.raises(TypeError, match="colour"):
        with Session(engine) as session, session.begin():
            add_model_version(session, name="alpha", **_fields(colour="red"))
    with pytest.raises(IntegrityError):  # a required column missing
        with Session(engine) as session, session.begin():
            add_model_version(session, name="alpha", **_fields(checksum=None))


def test_a_version_outlives_the_run_that_trained_it(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        run_id = _new_run(session)
        add_model_version(session, name="alpha", run_id=run_id, **_fields())
    with pytest.raises(IntegrityError):  # the foreign key is enforced on both back ends
        with Session(engine) as session, session.begin():
            add_model_version(session, name="alpha", run_id=run_id + 100, **_fields())
    with Session(engine) as session:
        stored = get_model_version(session, "alpha", 1)
        assert stored is not None and stored.run_id == run_id
    with Session(engine) as session, session.begin():
        session.execute(delete(Run).where(Run.id == run_id))
    with Session(engine) as session:
        stored = get_model_version(session, "alpha", 1)
        assert stored is not None and stored.run_id is None
        assert [v.version for v in list_model_versions(session, "alpha")] == [1]


def test_an_alias_moves_only_from_the_version_the_caller_read(engine: Engine) -> None:
    for _ in range(3):
        _add(engine, "alpha")
    with Session(engine) as session, session.begin():
        assert get_alias(session, "alpha", CHAMPION) is None
        assert set_alias(
            session, name="alpha", alias=CHAMPION, expected=None, version=1, reason="first version"
        )
    with Session(engine) as session, session.begin():
        # A second first insert is refused, and the session's other writes stay.
        fourth = add_model_version(session, name="alpha", **_fields()).version
        assert not set_alias(
            session, name="alpha", alias=CHAMPION, expected=None, version=2, reason="first version"
        )
        assert get_alias(session, "alpha", CHAMPION) == 1
        assert set_alias(
            session,
            name="alpha",
            alias=CHAMPION,
            expected=1,
            version=2,
            reason="promoted",
            detail="validation loss 0.4 < 0.5",
            champion_loss=0.5,
            challenger_loss=0.4,
            run_id=7,
            flow_run_id="flow-7",
        )
    with Session(engine) as session, session.begin():
        assert not set_alias(  # stale: the champion is 2 now
            session, name="alpha", alias=CHAMPION, expected=1, version=3, reason="promoted"
        )
        assert not set_alias(  # an alias of another model is another alias
            session, name="beta", alias=CHAMPION, expected=2, version=3, reason="promoted"
        )
        assert set_alias(
            session, name="alpha", alias=CHAMPION, expected=2, version=1, reason="rollback"
        )
        assert set_alias(
            session, name="alpha", alias="staging", expected=None, version=3, reason="manual"
        )
    with Session(engine) as session:
        newest = latest_model_version(session, "alpha")
        assert fourth == 4 and newest is not None and newest.version == 4
        assert get_alias(session, "alpha", CHAMPION) == 1
        assert get_alias(session, "beta", CHAMPION) is None
        assert aliases_of(session, "alpha") == {CHAMPION: 1, "staging": 3}
        assert aliases_of(session, "beta") == {}
        history = alias_history(session, "alpha", alias=CHAMPION)
        assert [(c.from_version, c.to_version, c.reason) for c in history] == [
            (None, 1, "first version"),
            (1, 2, "promoted"),
            (2, 1, "rollback"),
        ]
        promoted = history[1]
        assert (promoted.detail, promoted.champion_loss, promoted.challenger_loss) == (
            "validation loss 0.4 < 0.5",
            0.5,
            0.4,
        )
        assert (promoted.run_id, promoted.flow_run_id, promoted.alias) == (7, "flow-7", CHAMPION)
        assert promoted.changed_at is not None
        everything = alias_history(session, "alpha")
        assert [(c.alias, c.to_version) for c in everything] == [
            (CHAMPION, 1),
            (CHAMPION, 2),
            (CHAMPION, 1),
            ("staging", 3),
        ]
        assert alias_history(session, "beta") == []


def test_an_alias_and_its_history_row_roll_back_together(engine: Engine) -> None:
    _add(engine, "alpha")
    with Session(engine) as session:
        assert set_alias(
            session, name="alpha", alias=CHAMPION, expected=None, version=1, reason="first version"
        )
        session.rollback()
    with Session(engine) as session:
        assert get_alias(session, "alpha", CHAMPION) is None
        assert alias_history(session, "alpha") == []


def test_models_are_summarised_by_name(engine: Engine) -> None:
    with Session(engine) as session:
        assert list_model_names(session) == []
    for hours in range(3):
        _add(engine, "beta", created_at=T0 + timedelta(hours=hours))
    _add(engine, "alpha", created_at=T0 - timedelta(days=1))
    with Session(engine) as session, session.begin():
        set_alias(session, name="beta", alias=CHAMPION, expected=None, version=2, reason="x")
        set_alias(session, name="beta", alias="staging", expected=None, version=3, reason="x")
    with Session(engine) as session:
        summaries = list_model_names(session)
    assert [
        ModelSummary(
            s.name, s.versions, s.latest_version, s.champion_version, _utc(s.latest_created_at)
        )
        for s in summaries
    ] == [
        ModelSummary("alpha", 1, 1, None, T0 - timedelta(days=1)),
        ModelSummary("beta", 3, 3, 2, T0 + timedelta(hours=2)),
    ]


def test_prediction_batches_are_recorded_newest_first(engine: Engine) -> None:
    with Session(engine) as session:
        assert list_predictions(session) == []
    with Session(engine) as session, session.begin():
        first = record_prediction(
            session,
            name="alpha",
            version=1,
            created_at=T0,
            input_path="in/a.csv",
            input_fingerprint="sha256:aa",
            output_path="out/a.csv",
            rows_in=10,
            rows_out=9,
            rows_skipped=1,
            status="completed",
            flow_run_id="flow-1",
        )
        failed = record_prediction(
            session,
            name="alpha",
            version=2,
            created_at=T0 + timedelta(minutes=1),
            input_path="in/b.csv",
            rows_in=5,
            rows_out=0,
            status="failed",
            error="column x missing",
        )
        other = record_prediction(
            session,
            name="beta",
            version=1,
            input_path="in/c.csv",
            rows_in=1,
            rows_out=1,
            status="completed",
        )
    with Session(engine) as session:
        assert [b.id for b in list_predictions(session)] == [other, failed, first]
        assert [b.id for b in list_predictions(session, "alpha")] == [failed, first]
        assert [b.id for b in list_predictions(session, "alpha", limit=1)] == [failed]
        assert list_predictions(session, "gamma") == []
        done, broken = list_predictions(session, "alpha")[::-1]
        assert (done.rows_in, done.rows_out, done.rows_skipped, done.output_path) == (
            10,
            9,
            1,
            "out/a.csv",
        )
        assert (done.input_fingerprint, done.flow_run_id, _utc(done.created_at)) == (
            "sha256:aa",
            "flow-1",
            T0,
        )
        assert (broken.status, broken.error, broken.rows_skipped, broken.output_path) == (
            "failed",
            "column x missing",
            0,
            None,
        )
    with pytest.raises(TypeError):
        with Session(engine) as session, session.begin():
            record_prediction(session, name="alpha", version=1, colour="red")


WRITERS = 8


def test_racing_retrains_leave_one_champion_and_a_chain_of_changes(engine: Engine) -> None:
    """Every writer registers a version at the same instant, then promotes it while it is newer
    than the champion it reads: numbers 1..N, one champion (the newest), a history chain."""
    barrier = threading.Barrier(WRITERS)

    def register() -> int:
        with Session(engine) as session, session.begin():
            return add_model_version(session, name="race", **_fields()).version

    def contend() -> tuple[int, int]:
        barrier.wait()
        mine = retry_transient(register, what="register", first_delay=0.01)

        def promote_once() -> bool:
            """One try in one transaction; True when done (promoted, or a newer champion)."""
            with Session(engine) as session, session.begin():
                champion = get_alias(session, "race", CHAMPION)
                if champion is not None and champion >= mine:
                    return True
                return set_alias(
                    session,
                    name="race",
                    alias=CHAMPION,
                    expected=champion,
                    version=mine,
                    reason="first version" if champion is None else "promoted",
                )

        for attempt in range(1, 200):
            if retry_transient(promote_once, what="promote", first_delay=0.01):
                return mine, attempt
        raise AssertionError(f"version {mine} never settled")

    with ThreadPoolExecutor(WRITERS) as pool:
        results = [future.result() for future in [pool.submit(contend) for _ in range(WRITERS)]]

    mine = sorted(version for version, _ in results)
    assert mine == list(range(1, WRITERS + 1))
    with Session(engine) as session:
        stored = [v.version for v in list_model_versions(session, "race")]
        champions = session.scalar(
            select(func.count()).select_from(ModelAlias).where(ModelAlias.name == "race")
        )
        history = alias_history(session, "race", alias=CHAMPION)
        assert get_alias(session, "race", CHAMPION) == WRITERS
    assert stored == list(range(WRITERS, 0, -1))
    assert champions == 1
    assert history[0].from_version is None and history[0].reason == "first version"
    for before, after in zip(history, history[1:]):
        assert after.from_version == before.to_version
        assert after.to_version is not None and before.to_version is not None
        assert after.to_version > before.to_version and after.reason == "promoted"
    assert history[-1].to_version == WRITERS
