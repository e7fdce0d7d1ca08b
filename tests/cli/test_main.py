"""The `gdflow` command: end to end in a real process once, its bad-input cases in process;
a real SQLite file and the harness server throughout."""

from __future__ import annotations

import csv
import io
import re
import signal
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, event

from gdflow.cli.main import build_parser, main
from gdflow.config.train import TrainConfig
from gdflow.storage import dispose_engines
from tests.conftest import read_trajectory
from tests.processes import GdflowMain, run_cli


def _recorded_runs(database_url: str) -> list[tuple[str, str | None, str | None]]:
    path = Path(database_url.removeprefix("sqlite:///"))
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT status, stop_reason, error FROM runs ORDER BY id").fetchall()


def test_run_with_defaults_then_read_back(
    prefect_api_url: str, database_url: str, tmp_path: Path
) -> None:
    done = run_cli(["run"], api_url=prefect_api_url, database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "Epoch 1: w = 1.220, loss = 11.000" in output
    assert "Epoch 91: w = 2.000, loss = 0.000" in output
    assert "Prediction after training: f(5) = 10.000" in output
    assert "run 1 completed: 100 epochs (max_epochs)" in done.stdout
    assert "gdflow metrics 1" in done.stdout and "Traceback" not in output

    table = run_cli(["runs"], api_url=prefect_api_url, database_url=database_url, cwd=tmp_path)
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "flow",
        "run",
        "status",
        "started",
        "epochs",
        "final",
        "loss",
        "stop",
        "reason",
        "data",
        "final",
        "params",
    ]
    assert "toy-lr0.01-cpu-100ep" in lines[2] and "completed" in lines[2]
    assert lines[2].endswith("w=1.9999998")
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up

    exported = run_cli(
        ["metrics", "latest", "--format", "csv"],
        api_url=prefect_api_url,
        database_url=database_url,
        cwd=tmp_path,
    )
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert list(rows[0]) == ["epoch", "loss", "w"]
    reference = read_trajectory()
    assert [int(r["epoch"]) for r in rows] == list(range(1, 101))
    assert [float(r["loss"]) for r in rows] == pytest.approx(
        [r["loss"] for r in reference], rel=1e-5
    )
    assert [float(r["w"]) for r in rows] == pytest.approx([r["w"] for r in reference], rel=1e-5)


@pytest.mark.parametrize(
    ("args", "message", "recorded"),
    [
        (["--lr", "0"], "invalid --lr 0: Input should be greater than 0", None),
        (["--lr", "-1"], "invalid --lr -1", None),
        (["--epochs", "0"], "invalid --epochs 0", None),
        (["--device", "tpu"], "invalid --device tpu: must be one of auto, cpu", None),
        (["--device", "cuda"], "device 'cuda' is not available", "failed"),
        (["--data", "{tmp}/missing.csv"], "not found; check the path", "failed"),
        (["--data", "{tmp}/empty.csv"], "is empty", "failed"),
        (["--data", "{tmp}/words.csv"], "column 'a' in .* is not numeric", "failed"),
        (["--data", "{tmp}/holes.csv"], "missing, NaN or infinite", "failed"),
        (["--data", "{tmp}/words.csv", "--features", "nope"], "column 'nope' not found", "failed"),
        (
            ["--database-url", "sqlite:///{tmp}/file.txt/sub/m.db"],
            "cannot create the database",
            None,
        ),
        (["--lr", "1"], "the learning rate 1 is too large; lower --lr", "diverged"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    gdflow_main: GdflowMain,
    database_url: str,
    tmp_path: Path,
    args: list[str],
    message: str,
    recorded: str | None,
) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "words.csv").write_text("a,y\n1,2\nfoo,3\n")
    (tmp_path / "holes.csv").write_text("a,y\n1,2\nnan,3\n")
    (tmp_path / "file.txt").write_text("a file, not a directory")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = gdflow_main(["run", *args], database_url=database_url, cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gdflow: error: ")

    assert re.search(message, last), last
    if recorded is None:  # refused before a run was recorded (or a database file made)
        assert _recorded_runs(database_url) == []
    else:
        ((status, stop_reason, error),) = _recorded_runs(database_url)
        assert status == recorded and error
        # Only a completed run saves a model: no version, no file, for a failed or diverged one
        with sqlite3.connect(Path(database_url.removeprefix("sqlite:///"))) as conn:
            assert conn.execute("SELECT count(*) FROM model_versions").fetchone() == (0,)
        assert not (Path(database_url.removeprefix("sqlite:///")).parent / "models").exists()


def test_every_config_field_has_an_option() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    for field in TrainConfig.model_fields:
        assert "--" + field.replace("_", "-") in help_text


def test_runs_and_metrics_on_an_empty_database(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs"]) == 0
    assert "no runs recorded yet" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["metrics", "latest"])
    assert info.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "gdflow: error: no runs recorded yet; start one with: gdflow run"
    )


def test_metrics_of_an_unknown_run(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    for ref, expected in [("7", "no run 7 in this database"), ("x", "invalid RUN_ID 'x'")]:
        with pytest.raises(SystemExit):
            main(["metrics", ref])
        assert expected in capsys.readouterr().err


def test_db_upgrade_and_current_report_the_schema_revision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gdflow.storage.migrate import head_revision

    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["db", "current", "--database-url", url]) == 0
    assert "revision none" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert f"upgraded from revision none to {head_revision()}" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert f"already at revision {head_revision()}" in capsys.readouterr().out
    assert main(["db", "current", "--database-url", url]) == 0
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["db", "upgrade", "--database-url", f"sqlite:///{tmp_path}"])
    assert info.value.code == 1
    assert capsys.readouterr().err.startswith("gdflow: error: database path")


def test_a_run_opens_one_engine_and_checks_the_schema_once(
    prefect_api_url: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One engine per database URL per process, its Alembic revision read once, however many
    steps of `gdflow run` (reconcile, start, train, persist, report) use the database."""
    assert main(["db", "upgrade"]) == 0  # at the head: each revision check is one SELECT
    dispose_engines()  # as in a new process
    path = database_url.removeprefix("sqlite:///")
    engines: list[Engine] = []
    checks: list[str] = []

    def connected(connection: Connection) -> None:
        engine = connection.engine
        if engine.url.database == path and not any(seen is engine for seen in engines):
            engines.append(engine)

    def executed(connection: Connection, _cursor, statement: str, *_args) -> None:  # type: ignore[no-untyped-def]
        if connection.engine.url.database == path and "FROM alembic_version" in statement:
            checks.append(statement)

    sigterm = signal.getsignal(signal.SIGTERM)
    event.listen(Engine, "engine_connect", connected)
    event.listen(Engine, "before_cursor_execute", executed)
    try:
        assert main(["run", "--epochs", "5", "--log-every", "0"]) == 0
    finally:
        event.remove(Engine, "engine_connect", connected)
        event.remove(Engine, "before_cursor_execute", executed)
        signal.signal(signal.SIGTERM, sigterm)
    assert "run 1 completed: 5 epochs" in capsys.readouterr().out
    assert len(engines) == 1, f"{len(engines)} engines opened on {path}"
    assert len(checks) == 1, checks


def test_the_console_script_imports_with_the_collector_paused_then_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    from gdflow.cli import main as cli

    made: list[list[int]] = []
    with cli._imports_without_gc():  # called in process (tests, notebooks): no change
        assert gc.isenabled()
        made += [[i] for i in range(1000)]
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(cli, "_console_script", True)
    try:
        with cli._imports_without_gc():
            assert not gc.isenabled()
            made += [[i] for i in range(1000)]
        assert gc.isenabled()
        # what the imports built is left out of later collections
        assert gc.get_freeze_count() >= len(made)
    finally:
        gc.unfreeze()
