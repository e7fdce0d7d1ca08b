"""Alembic environment: runs on the connection `storage.migrate` hands over, or on a URL.

`storage.migrate.upgrade` passes an open connection in `config.attributes["connection"]`. The
`alembic` command line (see alembic.ini, for writing new revisions) falls back to
`$GDFLOW_DATABASE_URL` or the default SQLite file.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from gdflow.storage.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # The `alembic` command line is a program of its own: it resolves the URL like gdflow does.
    from gdflow.config.settings import Settings

    url = context.config.get_main_option("sqlalchemy.url") or Settings.load().database_url
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


_main()
