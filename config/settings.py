"""Settings from the environment: the one owner of the metrics database's URL.

Built where a program starts (the CLI's `main`, a flow run's first line), never at import time:
an explicit URL (--database-url, or `config.database_url` in a deployment's parameters) wins,
then `$GDFLOW_DATABASE_URL`, then the SQLite file `~/.gdflow/gdflow.db`. Child processes (served
flow runs, local Dask workers) receive the URL through `environment()`, never as a Prefect
parameter: Prefect stores and shows parameters, and the URL may hold a password.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

#: Environment variable that overrides the default database URL.
DATABASE_URL_ENV = "GDFLOW_DATABASE_URL"
#: The metrics database when neither a URL nor the environment names one.
DEFAULT_DATABASE_FILE = "~/.gdflow/gdflow.db"
#: Environment variable that names the model store (a folder or an fsspec URL).
MODEL_STORE_ENV = "GDFLOW_MODEL_STORE"
#: The model store's folder beside a SQLite database file, and when the database is a server.
MODEL_STORE_FOLDER = "models"
DEFAULT_MODEL_STORE = "~/.gdflow/models"


@dataclass(frozen=True)
class Settings:
    """What gdflow takes from its environment; its repr masks any password."""

    database_url: str = field(repr=False)
    #: Where model files are saved: a folder or an fsspec URL.
    model_store: str = ""

    @classmethod
    def load(
        cls,
        *,
        database_url: Optional[str] = None,
        model_store: Optional[str] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> Settings:
        """Settings from explicit values, else the environment, else the defaults (the model
        store: the folder `models` beside a SQLite database file, else ~/.gdflow/models)."""
        env = os.environ if environ is None else environ
        url = (database_url or "").strip() or env.get(DATABASE_URL_ENV, "").strip()
        if not url:
            url = "sqlite:///" + str(Path(DEFAULT_DATABASE_FILE).expanduser())
        store = (model_store or "").strip() or env.get(MODEL_STORE_ENV, "").strip()
        return cls(database_url=url, model_store=store or _store_beside(url))

    @property
    def shown_database_url(self) -> str:
        """The database URL with any password replaced by `***`, safe to log or print."""
        from gdflow.storage.database import mask_url  # storage loads SQLAlchemy: only when used

        return mask_url(self.database_url)

    def environment(self) -> dict[str, str]:
        """The environment variables that hand these settings to another process."""
        return {DATABASE_URL_ENV: self.database_url, MODEL_STORE_ENV: self.model_store}

    def __repr__(self) -> str:
        return f"Settings(database_url={self.shown_database_url!r})"


def _store_beside(database_url: str) -> str:
    """The default model store: `models/` beside a SQLite database file, else the home one."""
    prefix = "sqlite:///"
    path = database_url.split("?", 1)[0][len(prefix) :] if database_url.startswith(prefix) else ""
    if path and path != ":memory:" and not path.startswith("file:"):
        return str(Path(path).expanduser().parent / MODEL_STORE_FOLDER)
    return str(Path(DEFAULT_MODEL_STORE).expanduser())


@contextmanager
def exported(settings: Settings) -> Iterator[Settings]:
    """Put the settings in `os.environ` for the duration (flows and child processes read them
    back with `Settings.load()`); the previous values are restored afterwards."""
    saved = {name: os.environ.get(name) for name in settings.environment()}
    os.environ.update(settings.environment())
    try:
        yield settings
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
