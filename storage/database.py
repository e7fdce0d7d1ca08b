"""Engines from a URL: SQLite in WAL mode with a busy timeout, the schema migrated on first use.

`engine_for(url)` keeps one engine per URL per process and checks its schema once; a forked
child drops the engines it inherited (their pooled connections belong to the parent), and a
SQLite file that was deleted or replaced since gets a new engine, its schema checked again
(pooled connections of the old one would write into the deleted file).
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Optional

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from gdflow.storage.migrate import MigrationError, ensure_current

#: How long a SQLite writer waits for a lock held by another run before failing (ms).
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Query parameters of a URL whose values are secrets.
_SECRET_QUERY = re.compile(r"([?&](?:password|passwd|pwd|secret|token|api_?key)=)([^&]*)", re.I)


class DatabaseError(RuntimeError):
    """The metrics database cannot be opened or written; the message says how to fix it."""


def mask_url(url: str) -> str:
    """Return the URL with any password replaced by `***`, safe to log or display.

    Plain string work, not SQLAlchemy's parser, so a URL it cannot parse (a bad port, an
    unescaped `@` in the password) is masked too: everything between the user name and the
    last `@` goes, as do `password=`-like query values.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    user, password, host = _credentials(rest)
    if password:
        rest = f"{user}:***@{host}"
    return scheme + sep + _SECRET_QUERY.sub(r"\1***", rest)


def _credentials(rest: str) -> tuple[str, str, str]:
    """User, password and the rest after the last `@` of a URL without its scheme; no password
    when there is no `user:` before it (a file path such as `//tmp/a:b@c.db` has none)."""
    credentials, at, host = rest.rpartition("@")
    user, colon, password = credentials.partition(":")
    if not at or not colon or "/" in user:
        return "", "", rest
    return user, password, host


def hide_password(text: str, url: str) -> str:
    """`text` with the URL's password (as written and percent-decoded) replaced by `***`."""
    from urllib.parse import unquote

    _, sep, rest = url.partition("://")
    found = [_credentials(rest if sep else url)[1], *(m[2] for m in _SECRET_QUERY.finditer(url))]
    # A driver may split a password with an unescaped `@` elsewhere and quote only a piece of it.
    pieces = [piece for secret in found for piece in secret.split("@")[1:] if len(piece) >= 4]
    secrets = {*found, *pieces}
    for secret in sorted({*secrets, *map(unquote, secrets)} - {""}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _sqlite_file(url: str) -> Path | None:
    """Return the file behind a SQLite URL, or None for memory databases and other back ends."""
    parsed = make_url(url)
    database = parsed.database
    if str(parsed.query.get("uri", "")).lower() in {"true", "1"} and database:
        from urllib.parse import unquote, urlparse

        # A URI filename (`sqlite:///file:/path/x.db?mode=ro&uri=true`): the path is in it.
        uri = urlparse(database)
        memory = parsed.query.get("mode") == "memory" or "mode=memory" in uri.query
        database = None if memory else unquote(uri.path)
    if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return None
    return Path(database).expanduser()


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """Make SQLite safe for concurrent runs and readers: WAL, busy timeout, foreign keys."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor) -> None:  # type: ignore[no-untyped-def]
    """`PRAGMA journal_mode=WAL`, retried while another connection holds the lock it needs.

    Switching a new (rollback-journal) file to WAL needs an exclusive lock. When several
    processes open the file at once, each holds a shared lock and wants the exclusive one;
    SQLite answers all but one with SQLITE_BUSY at once, without its busy handler (waiting
    could deadlock). The switch is retried here for up to the busy timeout, after which the
    file is in WAL mode for good and the pragma takes no lock.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.002
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError, whichever SQLite driver
            if "database is locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def make_engine(url: str, *, create_schema: bool = True) -> Engine:
    """Create an engine for `url` and (by default) its tables; raise DatabaseError on failure."""
    shown = mask_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
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
            f"cannot use database {shown!r} ({_first_line(exc, url)}); check --database-url "
            "and that its driver is installed"
        ) from None
    if engine.dialect.is_async:
        engine.dispose()
        raise DatabaseError(
            f"cannot use database {shown!r}: its driver {parsed.get_driver_name()!r} is "
            "asynchronous; use a synchronous one, e.g. postgresql+psycopg://"
        )
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
    url = engine.url.render_as_string(hide_password=False)
    try:
        ensure_current(engine)
    except MigrationError as exc:
        engine.dispose()
        raise DatabaseError(f"database {shown}: {exc}") from None
    except RuntimeError as exc:  # a revision refusing to adopt an incompatible table
        engine.dispose()
        raise DatabaseError(f"cannot upgrade database {shown} ({_first_line(exc, url)})") from None
    except SQLAlchemyError as exc:
        engine.dispose()
        raise DatabaseError(
            f"cannot open database {shown} ({_first_line(exc, url)}); check the path is "
            "writable or pass another --database-url"
        ) from None


def _first_line(exc: BaseException, url: str = "") -> str:
    """The driver's own message without SQLAlchemy's SQL echo, links, or the URL's password."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return hide_password(line, url)


def _file_identity(path: Path) -> Optional[tuple[int, int]]:
    """(device, inode) of a database file; None when there is no file there."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


class _EngineCache:
    """One engine per URL for this process, its schema checked once; safe across threads. A
    SQLite URL's engine holds while its file is the one it opened (same device and inode)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.engines: dict[str, Engine] = {}
        self.current: set[str] = set()
        #: The file behind each SQLite URL, and its identity once it exists.
        self.files: dict[str, Path] = {}
        self.identities: dict[str, tuple[int, int]] = {}

    def get(self, url: str, *, migrate: bool) -> Engine:
        """The cached engine of `url` (created on first use, and again when its SQLite file
        was deleted or replaced), migrated to the head if asked."""
        with self.lock:
            engine = self.engines.get(url)
            if engine is not None and self._file_replaced(url):
                self._forget(url).dispose()
                engine = None
            if engine is None:
                engine = make_engine(url, create_schema=False)
                self.engines[url] = engine
                path = _sqlite_file(url)
                if path is not None:
                    self.files[url] = path
            if migrate and url not in self.current:
                try:
                    _create_schema(engine, mask_url(url))
                except DatabaseError:
                    self._forget(url)
                    raise
                self.current.add(url)
            self._file_replaced(url)  # notes the file's identity once the file exists
            return engine

    def _file_replaced(self, url: str) -> bool:
        """True when `url`'s SQLite file is gone or is another file than the one its engine
        opened; notes the identity of a file seen for the first time."""
        path = self.files.get(url)
        if path is None:
            return False
        now = _file_identity(path)
        known = self.identities.get(url)
        if known is None:
            if now is not None:
                self.identities[url] = now
            return False
        return now != known

    def _forget(self, url: str) -> Engine:
        """Drop `url`'s engine and what is known of its schema and file; return the engine."""
        self.current.discard(url)
        self.files.pop(url, None)
        self.identities.pop(url, None)
        return self.engines.pop(url)

    def dispose(self) -> None:
        """Close every cached engine's connections and forget them."""
        with self.lock:
            engines = list(self.engines.values())
            self.engines.clear()
            self.current.clear()
            self.files.clear()
            self.identities.clear()
        for engine in engines:
            engine.dispose()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's engines without closing its connections."""
        for engine in self.engines.values():
            engine.dispose(close=False)
        self.lock = threading.Lock()  # a lock held by another thread at fork time stays held
        self.engines = {}
        self.current = set()
        self.files = {}
        self.identities = {}


_ENGINES = _EngineCache()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ENGINES.forget_after_fork)


def engine_for(url: str, *, migrate: bool = True) -> Engine:
    """This process's engine for `url`, created once and (by default) with its schema brought
    to the newest revision once; raise DatabaseError when the database cannot be used."""
    return _ENGINES.get(url, migrate=migrate)


def dispose_engines() -> None:
    """Close and forget every engine `engine_for` made (tests; the end of a long process)."""
    _ENGINES.dispose()
