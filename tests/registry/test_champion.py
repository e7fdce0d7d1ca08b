"""The champion of a model name: `judge` compares a challenger with the champion on the same rows
(features and classes matched by name), `decide` applies the decision on SQLite and PostgreSQL
with real model files, racing decisions keep one champion and one history chain, and
`previous_champions` reads the chain back through promotions and rollbacks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.data.dataset import Dataset, make_dataset, split_validation
from gdflow.registry import versions
from gdflow.registry.aliases import CHAMPION, previous_champions, promote
from gdflow.registry.champion import Decision, Rows, decide, judge, rows_of
from gdflow.registry.model_file import ModelSpec
from gdflow.registry.predictor import Predictor
from gdflow.registry.store import ModelStore
from gdflow.storage import (
    AliasChange,
    ModelVersion,
    add_model_version,
    alias_history,
    aliases_of,
    create_run,
    get_model_version,
    make_engine,
)

NAME = "toy"
#: Rows of y = 2a - b + 1 with a = +-1: a linear model whose weight of `a` is off by `e` has the
#: loss e**2 exactly (every value below is a small integer, so float64 is exact).
X = np.array([[1.0, 0.0], [-1.0, 2.0], [1.0, 3.0], [-1.0, -1.0]])
Y = 2 * X[:, 0] - X[:, 1] + 1
ROWS = Rows(x=X, y=Y, feature_names=("a", "b"), classes=None, split="validation")


def _linear(
    error: float, features: tuple[str, ...] = ("a", "b")
) -> tuple[ModelSpec, dict[str, float]]:
    """A regression on `features` whose weight of `a` is 2 + error (its loss on ROWS: error**2)."""
    spec = ModelSpec("linear", "regression", features, "y", None, True, 1)
    weights = {"a": 2.0 + error, "b": -1.0, "c": 0.5}
    return spec, {**{f"w_{name}": weights[name] for name in features}, "b": 1.0}


def _predictor(spec: ModelSpec, params: dict[str, float]) -> Predictor:
    return versions.predictor_of(spec, params)


def _regressor(error: float, features: tuple[str, ...] = ("a", "b")) -> Predictor:
    return _predictor(*_linear(error, features))


def _softmax(
    classes: tuple[str, ...], seed: int, features: tuple[str, ...] = ("a", "b")
) -> Predictor:
    """A softmax classifier with seeded random weights."""
    spec = ModelSpec("softmax", "multiclass", features, "kind", classes, True, len(classes))
    names = spec.parameter_names()
    values = np.random.default_rng(seed).normal(size=len(names)).tolist()
    return _predictor(spec, dict(zip(names, values)))


# --- judge: no database ---------------------------------------------------------------------


def test_a_better_challenger_is_promoted_with_both_losses() -> None:
    decision = judge(_regressor(2.0), _regressor(1.0), ROWS, margin=0.0, champion_version=3)
    assert decision == Decision(
        True,
        "promoted: validation loss 1 against champion version 3's 4",
        3,
        4.0,
        1.0,
        "validation",
    )


@pytest.mark.parametrize("challenger_error", [2.0, -2.0, 3.0], ids=["same", "equal", "worse"])
def test_an_equal_or_worse_challenger_keeps_the_champion(challenger_error: float) -> None:
    decision = judge(
        _regressor(2.0), _regressor(challenger_error), ROWS, margin=0.0, champion_version=1
    )
    assert not decision.promoted
    assert decision.reason.startswith("kept champion version 1: validation loss")
    assert decision.reason.endswith("not better")
    assert (decision.champion_loss, decision.challenger_loss) == (4.0, challenger_error**2)


@pytest.mark.parametrize("margin,promoted", [(0.75, False), (0.7499, True), (0.5, True)])
def test_the_margin_is_relative_to_the_champion_loss_and_strict(
    margin: float, promoted: bool
) -> None:
    """Champion loss 4, challenger 1: better by 75%, so a margin of exactly 0.75 keeps it."""
    decision = judge(_regressor(2.0), _regressor(1.0), ROWS, margin=margin, champion_version=1)
    assert decision.promoted is promoted
    assert (decision.champion_loss, decision.challenger_loss) == (4.0, 1.0)
    if not promoted:
        assert decision.reason.endswith(f"not better by the margin {margin:g}")


def test_a_champion_missing_a_feature_of_the_new_rows_is_kept_and_named() -> None:
    decision = judge(
        _regressor(2.0, ("a", "c")), _regressor(1.0), ROWS, margin=0.0, champion_version=2
    )
    assert not decision.promoted and decision.champion_loss is None
    assert decision.reason == (
        "kept champion version 2: it cannot be evaluated on the new rows, its features differ "
        "(no 'c' in the new data)"
    )


def test_a_champion_on_fewer_features_than_the_new_rows_is_kept() -> None:
    decision = judge(_regressor(2.0, ("a",)), _regressor(1.0), ROWS, margin=0.0, champion_version=2)
    assert not decision.promoted
    assert decision.reason.endswith("its features differ (the new data has other feature columns)")


def test_a_champion_with_other_classes_is_kept_and_they_are_named() -> None:
    rows = Rows(X, np.array([0, 1, 1, 0]), ("a", "b"), ("r", "b"), "validation")
    champion = _softmax(("r", "g"), seed=1)
    decision = judge(champion, _softmax(("r", "b"), seed=2), rows, margin=0.0, champion_version=4)
    assert not decision.promoted
    assert decision.reason.endswith("its classes differ (r, g against r, b)")
    assert decision.reason.startswith("kept champion version 4: it cannot be evaluated")


def test_a_champion_of_another_task_is_kept() -> None:
    rows = Rows(X, np.array([0, 1, 1, 0]), ("a", "b"), ("r", "g"), "validation")
    decision = judge(
        _regressor(2.0), _softmax(("r", "g"), seed=2), rows, margin=0.0, champion_version=1
    )
    assert not decision.promoted
    assert decision.reason.endswith("it does another task (regression against classification)")


def test_features_in_another_order_are_matched_by_name() -> None:
    """The new rows list b before a: the champion (a, b) still sees its own columns."""
    champion = _regressor(2.0, ("a", "b"))
    swapped = Rows(X[:, ::-1].copy(), Y, ("b", "a"), None, "validation")
    challenger = _regressor(1.0, ("b", "a"))
    decision = judge(champion, challenger, swapped, margin=0.0, champion_version=1)
    assert decision.champion_loss == champion.loss(X, Y) == 4.0
    assert decision.challenger_loss == 1.0 and decision.promoted
    # Without the reordering the champion's loss on those columns would be another number.
    assert champion.loss(swapped.x, Y) != 4.0


def test_classes_in_another_order_are_mapped_by_label() -> None:
    """The champion's loss is its cross-entropy on the same labels, computed by hand."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 2))
    new_order = ("b", "r", "g")
    y = rng.integers(0, 3, size=30)  # indices into new_order
    rows = Rows(x, y.astype(np.float64), ("a", "b"), new_order, "validation")
    champion = _softmax(("r", "g", "b"), seed=3)
    decision = judge(champion, _softmax(new_order, seed=4), rows, margin=0.0, champion_version=1)

    assert champion.spec.classes is not None
    own = np.array([champion.spec.classes.index(new_order[i]) for i in y])
    z = champion.logits(x)
    by_hand = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(30), own]))
    assert decision.champion_loss == pytest.approx(by_hand, rel=1e-12)
    assert by_hand != pytest.approx(champion.loss(x, y), rel=1e-3)  # the mapping matters here


# --- rows_of ------------------------------------------------------------------------------


def _dataset(rows: int = 8) -> Dataset:
    x = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)
    return make_dataset(x, x[:, 0] - x[:, 1], feature_names=["a", "b"], target_name="y", source="t")


def test_a_run_is_judged_on_its_validation_rows_when_it_has_them() -> None:
    dataset = split_validation(_dataset(), 0.25, seed=0)
    assert dataset.x_val is not None and dataset.y_val is not None
    rows = rows_of(dataset)
    assert rows.split == "validation" and rows.feature_names == ("a", "b")
    np.testing.assert_array_equal(rows.x, dataset.x_val)
    np.testing.assert_array_equal(rows.y, dataset.y_val)
    assert rows.x.dtype == rows.y.dtype == np.float64 and rows.classes is None


def test_a_run_without_a_split_is_judged_on_its_training_rows() -> None:
    dataset = replace(_dataset(), classes=("no", "yes"))
    rows = rows_of(dataset)
    assert rows.split == "train" and rows.classes == ("no", "yes")
    np.testing.assert_array_equal(rows.x, dataset.x)
    np.testing.assert_array_equal(rows.y, dataset.y)


# --- decide on a real database and a real model store ---------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.process)])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The metrics database of this test: a SQLite file, or a database on a real PostgreSQL."""
    fixture = "postgres_url" if request.param == "postgresql" else "database_url"
    engine = make_engine(str(request.getfixturevalue(fixture)))
    yield engine
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(str(tmp_path / "models"))


def _save(
    engine: Engine,
    store: ModelStore,
    spec: ModelSpec,
    params: dict[str, float],
    name: str = NAME,
) -> ModelVersion:
    """A run's model saved as `tasks.pipeline.persist` saves it: file first, then its record."""
    with Session(engine) as session, session.begin():
        run_id = create_run(session, config={}, data_source="t", parameter_names=list(params))
    stored = versions.save_model_file(store, name=name, run_id=run_id, spec=spec, params=params)
    fields = versions.version_fields(
        spec=spec,
        stored=stored,
        store=store,
        run_id=run_id,
        flow_run_id=None,
        scheduled_at=None,
        data_fingerprint=None,
        evaluation=None,
    )
    with Session(engine) as session, session.begin():
        row = add_model_version(session, name=name, **fields)
        session.flush()
        session.refresh(row)
        session.expunge(row)
    return row


def _retrain(
    engine: Engine, store: ModelStore, error: float, *, mode: str = "auto", margin: float = 0.0
) -> Decision:
    """Save a new version (loss error**2 on ROWS) and take its champion decision."""
    spec, params = _linear(error)
    version = _save(engine, store, spec, params)
    return decide(
        engine,
        version=version,
        challenger=_predictor(spec, params),
        rows=ROWS,
        mode=mode,
        margin=margin,
        flow_run_id="flow",
    )


def _champion(engine: Engine, name: str = NAME) -> Optional[int]:
    with Session(engine) as session:
        return aliases_of(session, name).get(CHAMPION)


def _history(engine: Engine, name: str = NAME) -> list[tuple[Any, ...]]:
    with Session(engine) as session:
        return [
            (c.from_version, c.to_version, c.reason, c.champion_loss, c.challenger_loss)
            for c in alias_history(session, name, alias=CHAMPION)
        ]


def _promotion(engine: Engine, number: int, name: str = NAME) -> dict[str, Any]:
    with Session(engine) as session:
        row = get_model_version(session, name, number)
        assert row is not None and row.promotion is not None
        return row.promotion


def test_decide_keeps_a_worse_version_and_promotes_a_better_one(
    engine: Engine, store: ModelStore
) -> None:
    first = _retrain(engine, store, 2.0)
    assert first.promoted and first.reason == f"first version of {NAME}: champion"
    assert _history(engine) == [(None, 1, "first version", None, None)]
    assert _promotion(engine, 1)["promoted"] is True

    worse = _retrain(engine, store, 3.0)
    assert not worse.promoted and _champion(engine) == 1
    record = _promotion(engine, 2)
    assert record["promoted"] is False and record["reason"] == worse.reason
    assert record["reason"].startswith("kept champion version 1: validation loss 9")
    assert record["reason"].endswith("not better")
    assert (record["champion_loss"], record["challenger_loss"]) == (4.0, 9.0)

    better = _retrain(engine, store, 1.0)
    assert better.promoted and _champion(engine) == 3
    assert _history(engine) == [
        (None, 1, "first version", None, None),
        (1, 3, "promoted", 4.0, 1.0),
    ]
    assert _promotion(engine, 3) == better.as_record()


def test_promote_never_keeps_the_champion(engine: Engine, store: ModelStore) -> None:
    assert _retrain(engine, store, 2.0, mode="never").promoted  # a first version still is one
    decision = _retrain(engine, store, 1.0, mode="never")
    assert not decision.promoted and decision.reason == "--promote never: kept the champion"
    assert _champion(engine) == 1 and _promotion(engine, 2)["promoted"] is False
    assert len(_history(engine)) == 1


def test_promote_always_replaces_the_champion_with_a_worse_version(
    engine: Engine, store: ModelStore
) -> None:
    _retrain(engine, store, 1.0)
    decision = _retrain(engine, store, 3.0, mode="always")
    assert decision.promoted and _champion(engine) == 2
    assert _history(engine)[-1][:3] == (1, 2, "promoted")
    assert _promotion(engine, 2)["reason"] == "--promote always: promoted"


def test_a_champion_with_a_corrupt_file_is_kept_and_the_reason_stored(
    engine: Engine, store: ModelStore
) -> None:
    _retrain(engine, store, 2.0)
    with Session(engine) as session:
        first = get_model_version(session, NAME, 1)
        assert first is not None
        file = Path(store.location(first.path))
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the weights: same size, another checksum
    file.write_bytes(bytes(data))

    decision = _retrain(engine, store, 1.0)
    assert not decision.promoted and _champion(engine) == 1
    reason = _promotion(engine, 2)["reason"]
    assert reason.startswith(f"kept champion version 1: model {NAME} version 1: its file ")
    assert "is corrupt" in reason and "\n" not in reason


def test_a_champion_that_keeps_changing_is_not_claimed(engine: Engine, store: ModelStore) -> None:
    """Another run moves the champion during every judgement: after the last round the
    challenger is not champion, and its record does not say it is."""
    _retrain(engine, store, 2.0)
    spec, params = _linear(3.0)
    _save(engine, store, spec, params)
    spec, params = _linear(1.0)
    challenger = _save(engine, store, spec, params)

    def load_while_another_run_promotes(row: ModelVersion) -> Predictor:
        promote(engine, name=NAME, number=2 if row.version == 1 else 1)
        return versions.load_predictor(row)

    decision = decide(
        engine,
        version=challenger,
        challenger=_predictor(spec, params),
        rows=ROWS,
        mode="auto",
        margin=0.0,
        flow_run_id=None,
        load=load_while_another_run_promotes,
    )
    assert not decision.promoted and "kept changing" in decision.reason
    assert _champion(engine) in (1, 2)
    assert 3 not in [change[1] for change in _history(engine)]
    assert _promotion(engine, 3)["promoted"] is False


#: Races run by the test below, one model name each: which thread wins which step varies.
RACES = 5


def test_racing_decisions_keep_one_champion_and_one_history_chain(
    engine: Engine, store: ModelStore
) -> None:
    """Four versions, each better than the one before, decide at the same moment (several
    races, one name each)."""
    for race in range(RACES):
        _race(engine, store, f"race-{race}")


def _race(engine: Engine, store: ModelStore, name: str) -> None:
    errors = [4.0, 3.0, 2.0, 1.0]  # version n has the loss errors[n - 1] ** 2
    saved = [(_save(engine, store, *_linear(e), name=name), _regressor(e)) for e in errors]
    barrier = threading.Barrier(len(saved))
    failures: list[BaseException] = []

    def decide_at_once(version: ModelVersion, challenger: Predictor) -> None:
        try:
            barrier.wait(timeout=30)
            decide(
                engine,
                version=version,
                challenger=challenger,
                rows=ROWS,
                mode="auto",
                margin=0.0,
                flow_run_id=None,
            )
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=decide_at_once, args=pair) for pair in saved]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []

    assert _champion(engine, name) == 4  # the lowest loss
    history = _history(engine, name)
    assert history[0][0] is None and history[-1][1] == 4, history
    assert all(before[1] == after[0] for before, after in pairwise(history)), history
    promotions = {n: _promotion(engine, n, name) for n in range(1, 5)}  # every one recorded
    claimed = {n for n, record in promotions.items() if record["promoted"]}
    assert claimed == {change[1] for change in history}, (promotions, history)


# --- previous_champions ---------------------------------------------------------------------


def _change(
    from_version: Optional[int], to_version: Optional[int], reason: str, alias: str = CHAMPION
) -> AliasChange:
    return AliasChange(
        name=NAME, alias=alias, from_version=from_version, to_version=to_version, reason=reason
    )


def test_previous_champions_follow_promotions_and_undo_rollbacks() -> None:
    history = [
        _change(None, 1, "first version"),
        _change(1, 2, "promoted"),
        _change(2, 3, "manual promote"),
        _change(None, 3, "manual promote", alias="staging"),  # another alias: ignored
        _change(3, 2, "rollback"),
        _change(2, 4, "promoted"),
        _change(4, 1, "manual promote"),
    ]
    assert previous_champions(history) == [1, 2, 4, 1]
    assert previous_champions([*history, _change(1, 4, "rollback")]) == [1, 2, 4]
    assert previous_champions([*history, _change(1, 4, "rollback"), _change(4, 2, "rollback")]) == [
        1,
        2,
    ]


def test_a_rollback_elsewhere_than_the_previous_champion_ends_the_chain_where_it_went() -> None:
    """The last entry is always the champion a history leaves, whatever a rollback did."""
    history = [
        _change(None, 1, "first version"),
        _change(1, 2, "promoted"),
        _change(2, 3, "promoted"),
        _change(3, 1, "rollback"),
    ]
    assert previous_champions(history) == [1, 2, 1]


def test_previous_champions_of_a_first_version_and_of_nothing() -> None:
    assert previous_champions([]) == []
    assert previous_champions([_change(None, 1, "first version")]) == [1]
