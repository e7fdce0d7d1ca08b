"""Database URLs: a password never shows in a masked URL or an error; odd SQLite URLs work."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from gdflow.storage import DatabaseError, make_engine, mask_url
from gdflow.storage.database import hide_password

SECRET = "s3cret-Pa55"


@settings(max_examples=200, deadline=1000)
@given(
    # "§" first: the password is never a substring of the URL's other parts by chance.
    password=st.text(max_size=20).filter(lambda p: "@" not in p).map(lambda p: "§" + p),
    user=st.text(alphabet="abcdefgh_", min_size=1, max_size=8),
    escaped=st.booleans(),
    scheme=st.sampled_from(["postgresql+psycopg", "mysql", "sqlite", "nodialect", ""]),
)
def test_no_password_survives_masking(password: str, user: str, escaped: bool, scheme: str) -> None:
    written = quote(password, safe="") if escaped else password
    prefix = f"{scheme}://" if scheme else ""
    url = f"{prefix}{user}:{written}@db.example:5432/metrics?sslmode=require"
    assert written not in mask_url(url)
    assert f"{user}:***@db.example:5432/metrics?sslmode=require" in mask_url(url)
    assert password not in hide_password(f"failed: {password} / {written}", url)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://user:{SECRET}@127.0.0.1:1/db",  # driver missing
        f"postgresql+asyncpg://user:{SECRET}@127.0.0.1:1/db",  # async driver in a sync engine
        f"mysql://user:{SECRET}@127.0.0.1:1/db",
        f"nodialect://user:{SECRET}@h/db",
        f"user:{SECRET}@host",  # not a URL at all
        f"postgresql://user:{SECRET}@host:notaport/db",  # SQLAlchemy's parser raises ValueError
        f"postgresql://user:p@{SECRET}@host/db",  # an unescaped @ in the password
        f"postgresql://user@host/db?password={SECRET}",
        f"sqlite://user:{SECRET}@/tmp/x.db",  # SQLite takes no password
    ],
)
def test_a_bad_url_fails_in_one_line_without_its_password(url: str) -> None:
    with pytest.raises(DatabaseError) as caught:
        make_engine(url)
    message = str(caught.value)
    assert SECRET not in message and len(message.splitlines()) == 1, message
    if "password=" in url:  # a password in the query is masked where the URL is shown
        assert "***" in message, message


def test_a_file_path_with_colon_and_at_is_not_masked() -> None:
    assert mask_url("sqlite:////tmp/a:b@c.db") == "sqlite:////tmp/a:b@c.db"
    assert hide_password("in /tmp/a:b@c.db: b", "sqlite:////tmp/a:b@c.db").endswith(": b")


@pytest.mark.parametrize(
    "suffix",
    ["?timeout=5", "?check_same_thread=false"],
)
def test_sqlite_urls_with_query_strings_work(tmp_path: Path, suffix: str) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'q.db'}{suffix}"
    engine = make_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM runs")).scalar() == 0
    engine.dispose()
    assert (tmp_path / "sub" / "q.db").is_file()


def test_a_sqlite_uri_filename_makes_its_own_folder_and_no_stray_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "deep" / "u.db"
    make_engine(f"sqlite:///file:{target}?mode=rwc&uri=true").dispose()
    assert target.is_file()
    assert not (tmp_path / "file:").exists()
