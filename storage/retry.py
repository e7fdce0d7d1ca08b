"""Retry a database write that failed for a passing reason (locked, busy, I/O, disk full).

Writes retried here must be idempotent (`append_metrics` ignores epochs already stored, run
updates set absolute values), so a retry after a commit the caller never heard of is harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

T = TypeVar("T")

#: Attempts in all (the first one and the retries) before the error is raised.
ATTEMPTS = 6
#: Wait before the first retry, doubled after each one up to MAX_DELAY_SECONDS.
FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 4.0

#: Driver messages of errors that can pass: SQLite's and PostgreSQL's wording.
TRANSIENT_MARKERS = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "disk i/o error",
    "database or disk is full",
    "could not serialize access",
    "deadlock detected",
    "server closed the connection",
    "connection refused",
)

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """True for an operational error that a later attempt may not meet (a lock, I/O, space)."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return isinstance(exc, OperationalError) and any(m in text for m in TRANSIENT_MARKERS)


def retry_transient(
    write: Callable[[], T],
    *,
    what: str = "database write",
    attempts: int = ATTEMPTS,
    first_delay: float = FIRST_DELAY_SECONDS,
    max_delay: float = MAX_DELAY_SECONDS,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Call `write()` (one whole transaction) until it succeeds, retrying transient errors
    with exponential backoff; any other error, or the last transient one, is raised."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except DBAPIError as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            reason = str(exc.orig if exc.orig is not None else exc).splitlines()[0]
            log.warning(
                "%s failed (%s); retry %d of %d in %.2g s",
                what,
                reason,
                attempt,
                attempts - 1,
                delay,
            )
            if on_retry is not None:
                on_retry(attempt, exc)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def in_transaction(engine: Engine, write: Callable[[Session], T], *, what: str) -> T:
    """Call `write(session)` inside one transaction, the whole transaction retried on
    transient errors (the writes given here must be idempotent)."""

    def attempt() -> T:
        with Session(engine) as session, session.begin():
            return write(session)

    return retry_transient(attempt, what=what)
