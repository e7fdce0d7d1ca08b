"""`gdflow promote` and `gdflow rollback` on SQLite and PostgreSQL: each change is recorded with
its reason, a rollback walks back along the chain of champions, and every refusal is one line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.config.errors import GdflowError
from gdflow.registry.aliases import CHAMPION, promote, rollback
from gdflow.storage import add_model_version, alias_history, get_alias, make_engine

NAME = "toy"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.process)])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A model with three versions and no champion, on a SQLite file or a real PostgreSQL."""
    fixture = "postgres_url" if request.param == "postgresql" else "database_url"
    engine = make_engine(str(request.getfixturevalue(fixture)))
    with Session(engine) as session, session.begin():
        for _ in range(3):
            add_model_version(
                session,
                name=NAME,
                family="linear",
                task="regression",
                architecture={},
                feature_names=["x"],
                path="toy/model.safetensors",
                store="models",
                size=1,
                checksum="sha256:" + "0" * 64,
            )
    yield engine
    engine.dispose()


def _champion(engine: Engine) -> int | None:
    with Session(engine) as session:
        return get_alias(session, NAME, CHAMPION)


def _history(engine: Engine) -> list[tuple[int | None, int | None, str]]:
    with Session(engine) as session:
        return [
            (c.from_version, c.to_version, c.reason)
            for c in alias_history(session, NAME, alias=CHAMPION)
        ]


def test_a_manual_promote_is_recorded_and_returns_the_former_champion(engine: Engine) -> None:
    assert promote(engine, name=NAME, number=2, flow_run_id="flow-1") == 0  # none before
    assert promote(engine, name=NAME, number=3) == 2
    assert _champion(engine) == 3
    assert _history(engine) == [(None, 2, "manual promote"), (2, 3, "manual promote")]
    with Session(engine) as session:
        first = alias_history(session, NAME)[0]
        assert (first.detail, first.flow_run_id) == (f"gdflow promote {NAME} 2", "flow-1")


def test_promoting_the_champion_again_is_a_one_line_error(engine: Engine) -> None:
    promote(engine, name=NAME, number=1)
    with pytest.raises(GdflowError) as caught:
        promote(engine, name=NAME, number=1)
    assert str(caught.value) == f"model {NAME} version 1 is already the champion"
    assert len(_history(engine)) == 1


@pytest.mark.parametrize("name,number", [(NAME, 9), ("nobody", 1)])
def test_promoting_an_unknown_version_is_a_one_line_error(
    engine: Engine, name: str, number: int
) -> None:
    with pytest.raises(GdflowError) as caught:
        promote(engine, name=name, number=number)
    assert str(caught.value) == f"model {name!r} has no version {number}; gdflow models {name}"
    assert _champion(engine) is None and _history(engine) == []


def test_rollback_walks_back_along_the_chain_of_champions(engine: Engine) -> None:
    for number in (1, 2, 3):
        promote(engine, name=NAME, number=number)
    assert rollback(engine, name=NAME) == (3, 2)
    assert _champion(engine) == 2
    assert rollback(engine, name=NAME, flow_run_id="flow-2") == (2, 1)
    assert _champion(engine) == 1
    with pytest.raises(GdflowError) as caught:
        rollback(engine, name=NAME)
    assert str(caught.value).startswith(
        f"model {NAME} has no previous champion to roll back to (version 1 is its first)"
    )
    assert "\n" not in str(caught.value) and _champion(engine) == 1
    assert _history(engine)[3:] == [(3, 2, "rollback"), (2, 1, "rollback")]
    with Session(engine) as session:
        last = alias_history(session, NAME)[-1]
        assert (last.detail, last.flow_run_id) == (
            f"gdflow rollback {NAME}: version 2 -> 1",
            "flow-2",
        )


def test_a_promote_after_a_rollback_is_undone_by_the_next_rollback(engine: Engine) -> None:
    for number in (1, 2):
        promote(engine, name=NAME, number=number)
    rollback(engine, name=NAME)  # 2 -> 1
    promote(engine, name=NAME, number=3)  # 1 -> 3
    assert rollback(engine, name=NAME) == (3, 1)


def test_rollback_without_a_champion_is_a_one_line_error(engine: Engine) -> None:
    with pytest.raises(GdflowError, match=f"^model '{NAME}' has no champion;") as caught:
        rollback(engine, name=NAME)
    assert "\n" not in str(caught.value)
