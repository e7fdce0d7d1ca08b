"""A model name's aliases changed by hand: `gdflow promote` and `gdflow rollback`.

Storage only (no torch): these commands answer in well under a second. Each change is a
compare-and-set on the alias, recorded in the alias history with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.config.errors import GdflowError
from gdflow.storage import AliasChange, alias_history, get_alias, get_model_version, set_alias
from gdflow.storage.retry import in_transaction

#: The alias of the version in use.
CHAMPION = "champion"


def promote(engine: Engine, *, name: str, number: int, flow_run_id: Optional[str] = None) -> int:
    """`gdflow promote NAME VERSION`: make a version the champion by hand; return the former
    champion's number (0: there was none)."""

    def write(session: Session) -> int:
        if get_model_version(session, name, number) is None:
            raise GdflowError(f"model {name!r} has no version {number}; gdflow models {name}")
        current = get_alias(session, name, CHAMPION)
        if current == number:
            raise GdflowError(f"model {name} version {number} is already the champion")
        changed = set_alias(
            session,
            name=name,
            alias=CHAMPION,
            expected=current,
            version=number,
            reason="manual promote",
            detail=f"gdflow promote {name} {number}",
            flow_run_id=flow_run_id,
        )
        if not changed:
            raise GdflowError(f"the champion of {name} changed meanwhile; run the command again")
        return current or 0

    return in_transaction(engine, write, what="promoting a version")


def previous_champions(history: Sequence[AliasChange]) -> list[int]:
    """The champions of a name in the order they were set, rollbacks undone: a rollback
    returns to the champion before the current one."""
    stack: list[int] = []
    for change in history:
        if change.alias != CHAMPION or change.to_version is None:
            continue
        if change.reason == "rollback" and stack:
            stack.pop()
            if not stack or stack[-1] != change.to_version:
                stack.append(change.to_version)
        else:
            stack.append(change.to_version)
    return stack


def rollback(engine: Engine, *, name: str, flow_run_id: Optional[str] = None) -> tuple[int, int]:
    """`gdflow rollback NAME`: the champion goes back to the one before it; return (from, to)."""

    def write(session: Session) -> tuple[int, int]:
        current = get_alias(session, name, CHAMPION)
        if current is None:
            raise GdflowError(f"model {name!r} has no champion; gdflow models lists the names")
        stack = previous_champions(alias_history(session, name, alias=CHAMPION))
        if len(stack) < 2:
            raise GdflowError(
                f"model {name} has no previous champion to roll back to (version {current} is "
                f"its first); gdflow promote {name} VERSION picks one by hand"
            )
        target = stack[-2]
        changed = set_alias(
            session,
            name=name,
            alias=CHAMPION,
            expected=current,
            version=target,
            reason="rollback",
            detail=f"gdflow rollback {name}: version {current} -> {target}",
            flow_run_id=flow_run_id,
        )
        if not changed:
            raise GdflowError(f"the champion of {name} changed meanwhile; run the command again")
        return current, target

    return in_transaction(engine, write, what="rolling back the champion")
