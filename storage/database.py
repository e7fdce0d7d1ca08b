"""Engines from a URL: SQLite in WAL mode with a busy timeout, the schema migrated on first use."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from storage.migrate import MigrationError, ensure_current

#: Environment variable that overrides the default database URL.
DATABASE_URL_ENV = "GDFLOW_DATABASE_URL"
#: How long a SQLite writer waits for a lock held by another run before failing (ms).
SQLITE_BUSY_TIMEOUT_MS = 30_000


class DatabaseError(RuntimeError):
    """The metrics database cannot be opened or written; the message says how to fix it."""


def default_database_url() -> str:
    """Return `$GDFLOW_DATABASE_URL`, else the SQLite file `~/.gdflow/gdflow.db`."""
    url = os.environ.get(DATABASE_URL_ENV, "").strip()
    if url:
        return url
    return "sqlite:///" + str(Path("~/.gdflow/gdflow.db").expanduser())


def mask_url(url: str) -> str:
    """Return the URL with any password replaced by `***`, safe to log or display."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _sqlite_file(url: str) -> Path | None:
    """Return the file behind a SQLite URL, or None for memory databases and other back ends."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """Make SQLite safe for concurrent runs and readers: WAL, busy timeout, foreign keys."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str, *, create_schema: bool = True) -> Engine:
    """Create an engine for `url` and (by default) its tables; raise DatabaseError on failure."""
    shown = mask_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(
            f"invalid database URL {shown!r}; pass a SQLAlchemy URL such as "
            "sqlite:///path/to/gdflow.db with --database-url or GDFLOW_DATABASE_URL"
        ) from None
    path = _sqlite_file(url)
    if path is not None:
        if path.is_dir():
            raise DatabaseError(
                f"database path {path} is a directory; pass a file path with --database-url"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create the database directory {path.parent} ({exc.strerror}); "
                "choose a writable location with --database-url"
            ) from None
    try:
        engine = create_engine(parsed, connect_args=_connect_args(parsed.get_backend_name()))
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise DatabaseError(
            f"cannot use database {shown!r} ({_first_line(exc)}); check --database-url "
            "and that its driver is installed"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _set_sqlite_pragmas)
    if create_schema:
        _create_schema(engine, shown)
    return engine


def _connect_args(backend: str) -> dict[str, object]:
    """Driver arguments: SQLite's own lock timeout matches the busy timeout."""
    if backend == "sqlite":
        return {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    return {}


def _create_schema(engine: Engine, shown: str) -> None:
    """Create or upgrade the schema with the Alembic revisions; failures become one line."""
    try:
        ensure_current(engine)
    except MigrationError as exc:
        engine.dispose()
        raise DatabaseError(f"database {shown}: {exc}") from None
    except RuntimeError as exc:  # a revision refusing to adopt an incompatible table
        engine.dispose()
        raise DatabaseError(f"cannot upgrade database {shown} ({_first_line(exc)})") from None
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(
            f"cannot open database {shown} ({_first_line(exc)}); check the path is "
            "writable or pass another --database-url"
        ) from None


def _first_line(exc: BaseException) -> str:
    """The driver's own message without SQLAlchemy's SQL echo and background links."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
