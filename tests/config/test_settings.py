"""Settings: the one owner of the database URL, and its order of precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from gdflow.config.settings import DATABASE_URL_ENV, Settings, exported

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    ("explicit", "environ", "expected"),
    [
        ("sqlite:////a.db", {DATABASE_URL_ENV: "sqlite:////b.db"}, "sqlite:////a.db"),
        (None, {DATABASE_URL_ENV: "sqlite:////b.db"}, "sqlite:////b.db"),
        ("  ", {DATABASE_URL_ENV: " sqlite:////b.db "}, "sqlite:////b.db"),
        (None, {DATABASE_URL_ENV: "  "}, "sqlite:///{home}/.gdflow/gdflow.db"),
        (None, {}, "sqlite:///{home}/.gdflow/gdflow.db"),
    ],
)
def test_the_database_url_is_explicit_then_environment_then_default(
    explicit: str | None, environ: dict[str, str], expected: str
) -> None:
    settings = Settings.load(database_url=explicit, environ=environ)
    assert settings.database_url == expected.format(home=Path.home())


def test_settings_never_show_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    settings = Settings.load(database_url=f"postgresql://u:{SECRET}@h/db")
    assert SECRET not in repr(settings) and SECRET not in settings.shown_database_url
    assert settings.shown_database_url == "postgresql://u:***@h/db"
    with exported(settings):
        assert Settings.load() == settings  # a flow run reads back what the CLI exported
    assert Settings.load().database_url.endswith("/.gdflow/gdflow.db")  # and it is removed
