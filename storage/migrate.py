"""Schema versions: bring a database to the newest Alembic revision, once, across processes.

Every engine gdflow opens goes through `ensure_current`: a database already at the head revision
costs one query; an empty or older one is upgraded inside a transaction that holds the database's
write lock (SQLite `BEGIN IMMEDIATE`, a PostgreSQL advisory lock), so processes opening the same
old database at once wait for the first one's upgrade instead of racing it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text

#: Where the revisions live (storage/migrations/versions).
SCRIPT_LOCATION = Path(__file__).with_name("migrations")
#: Key of the PostgreSQL advisory lock held while migrating ("gdflow" in ASCII).
PG_LOCK_KEY = 0x6764666C6F77


class MigrationError(RuntimeError):
    """The schema cannot be brought up to date; the message says why and what to do."""


def alembic_config(connection: Optional[Connection] = None) -> Config:
    """An Alembic configuration for gdflow's revisions, bound to `connection` if given."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of gdflow knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "storage/migrations/versions has no revisions"
    return head


def current_revision(connection: Connection) -> Optional[str]:
    """The revision recorded in the database; None when it has never been migrated."""
    return MigrationContext.configure(connection).get_current_revision()


def ensure_current(engine: Engine) -> tuple[Optional[str], str]:
    """Upgrade the database behind `engine` to the head; return (revision before, after)."""
    head = head_revision()
    with engine.connect() as connection:
        before = current_revision(connection)
        connection.rollback()
    if before == head:
        return before, head
    with engine.connect() as connection:
        _lock(connection)
        before = current_revision(connection)  # again, now that no one else can be migrating
        if before != head:
            _known(before)
            command.upgrade(alembic_config(connection), "head")
        connection.commit()
    return before, head


def _lock(connection: Connection) -> None:
    """Take the database-wide lock that serialises migrations, held until commit."""
    backend = connection.dialect.name
    if backend == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif backend == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})


def _known(revision: Optional[str]) -> None:
    """Refuse a database stamped by a newer gdflow instead of guessing at its schema."""
    if revision is None:
        return
    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    except CommandError:
        raise MigrationError(
            f"the database is at schema revision {revision}, newer than this gdflow knows "
            f"(newest {head_revision()}); upgrade gdflow or use another --database-url"
        ) from None
