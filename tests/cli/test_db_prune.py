"""`gdflow db prune` on real SQLite files: its rules and errors, the summary and JSON, a dry run,
no Prefect or torch imported; and end to end after real runs, the registry still working (models,
rollback, a warm start from a version whose run was pruned) and the prune after a run."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gdflow.cli.db import parse_cutoff
from gdflow.cli.main import main
from gdflow.storage import (
    EpochMetric,
    MetricBatch,
    RunOutcome,
    RunStatus,
    append_metric_batch,
    create_run,
    engine_for,
    finish_run,
    update_run,
)
from gdflow.storage.models import Run
from tests.processes import Done, GdflowMain

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _runs(database_url: str, names: list[str], epochs: int = 25) -> list[int]:
    """Completed runs of these model names, a day apart, each with `epochs` epoch rows."""
    engine = engine_for(database_url)
    ids = []
    for day, name in enumerate(names):
        with Session(engine) as session, session.begin():
            run_id = create_run(
                session,
                config={},
                data_source="toy",
                parameter_names=["w"],
                started_at=T0 + timedelta(days=day),
            )
            update_run(session, run_id=run_id, model_name=name)
            batch = MetricBatch(
                epochs=list(range(1, epochs + 1)),
                losses=[1.0] * epochs,
                names=["w"],
                params=np.ones((epochs, 1)),
            )
            append_metric_batch(session, run_id=run_id, batch=batch)
            finish_run(session, run_id=run_id, outcome=RunOutcome(RunStatus.COMPLETED))
        ids.append(run_id)
    return ids


def _stored(database_url: str) -> dict[int, int]:
    """Run id -> epoch rows, for every run in the database."""
    with Session(engine_for(database_url)) as session:
        counts = dict(
            session.execute(
                select(EpochMetric.run_id, func.count()).group_by(EpochMetric.run_id)
            ).all()
        )
        return {run_id: counts.get(run_id, 0) for run_id in session.scalars(select(Run.id))}


def _error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_prune_needs_a_rule_and_valid_values(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _error(["db", "prune"], capsys) == (
        "gdflow: error: gdflow db prune needs --keep-last N, --older-than DATE or both, e.g. "
        "gdflow db prune --keep-last 30"
    )
    assert _error(["db", "prune", "--keep-last", "-1"], capsys) == (
        "gdflow: error: invalid --keep-last -1: must be 0 or more"
    )
    assert _error(["db", "prune", "--older-than", "last week"], capsys).startswith(
        "gdflow: error: invalid --older-than 'last week': give a date (2025-01-31)"
    )


def test_older_than_reads_dates_times_offsets_and_days() -> None:
    now = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
    assert parse_cutoff("2026-01-31") == datetime(2026, 1, 31, tzinfo=UTC)
    assert parse_cutoff("2026-01-31T12:30") == datetime(2026, 1, 31, 12, 30, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    assert parse_cutoff("2026-01-31T12:30+02:00") == datetime(2026, 1, 31, 12, 30, tzinfo=plus_two)
    assert parse_cutoff("2026-01-31T12:30+02:00").tzinfo == UTC
    assert parse_cutoff("90d", now=now) == now - timedelta(days=90)
    assert parse_cutoff(" 1.5 days", now=now) == now - timedelta(hours=36)
    for bad in ("", "d", "yesterday", "2026-13-01"):
        with pytest.raises(ValueError, match="invalid --older-than"):
            parse_cutoff(bad)


def test_prune_prints_an_aligned_summary_and_deletes(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _runs(database_url, ["a", "b", "a", "a", "b", "a"])
    assert main(["db", "prune", "--keep-last", "2", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("keep the newest 2 runs of each model name (dry run: nothing deleted)")
    summary = {line[:20].strip(): line[20:].strip() for line in lines[1:]}
    assert summary["runs to delete"] == "2" and summary["epoch rows to delete"] == "50"
    assert {line.index(value) for line, value in zip(lines[1:], summary.values())} == {22}
    assert len(_stored(database_url)) == 6  # the dry run deleted nothing
    assert main(["db", "prune", "--keep-last", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line[:18].strip(): line[18:].strip() for line in lines[1:]}
    assert rows["runs deleted"] == "2" and rows["epoch rows deleted"] == "50"
    assert rows["size after"].endswith("bytes (after VACUUM)")
    assert _stored(database_url) == dict.fromkeys([ids[1], *ids[3:]], 25)


def test_prune_json_for_scripts(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ids = _runs(database_url, ["a"] * 5, epochs=300)
    args = ["db", "--database-url", database_url, "prune", "--older-than", "2026-03-03"]
    assert main([*args, "--model", "a", "--format", "json", "--no-vacuum"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["run_ids"] == ids[:2] and record["runs_deleted"] == 2
    assert record["epoch_rows_deleted"] == 600 and record["rows_deleted"] == 602
    assert record["criteria"] == {
        "keep_last": None,
        "older_than": "2026-03-03T00:00:00+00:00",
        "model": "a",
    }
    assert record["vacuumed"] is False and record["free_bytes"] > 0
    assert record["runs_kept"] == 3 and record["protected"] == []
    assert set(_stored(database_url)) == set(ids[2:])
    # --keep-last 0 deletes all but the protected: here the newest completed run
    assert main(["db", "prune", "--keep-last", "0", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["run_ids"] == ids[2:4] and record["vacuumed"] is True
    assert record["protected"] == [{"run_id": ids[4], "reason": "newest completed"}]
    assert record["bytes_after"] < record["bytes_before"]


@pytest.mark.process
def test_prune_imports_neither_prefect_nor_torch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    code = (
        "import sys\nfrom gdflow.cli.main import main\n"
        f"codes = [main(['db', 'prune', '--keep-last', '1', '--database-url', {url!r}]),"
        f" main(['db', 'prune', '--older-than', '30d', '--dry-run', '--database-url', {url!r}])]\n"
        "print(codes, sorted(m for m in ('prefect', 'torch') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[0, 0] []"


def _cli(gdflow_main: GdflowMain, database_url: str, cwd: Path, *args: str) -> Done:
    done = gdflow_main(list(args), database_url=database_url, cwd=cwd)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
    return done


def test_after_a_prune_the_registry_works_and_a_run_prunes_its_own_name(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real runs: v1 (champion), v2 (promoted), v3 (--promote never). `db prune --keep-last 0`
    deletes run 1 only (run 2 is the champion's, run 3 the newest completed); version 1 stays,
    `rollback` makes it the champion again, a warm start reads its file, and that run's
    `--prune-keep-last 1` deletes runs 2 and 3, which nothing protects any more."""
    monkeypatch.delenv("GDFLOW_MODEL_STORE", raising=False)
    cli = partial(_cli, gdflow_main, database_url, tmp_path)

    def as_json(*args: str) -> Any:
        return json.loads(cli(*args, "--format", "json").stdout)

    quiet = ("--log-every", "0")
    cli("run", "--epochs", "30", *quiet)
    cli("run", "--epochs", "100", *quiet)
    cli("run", "--epochs", "100", "--promote", "never", *quiet)
    assert as_json("models", "toy")["champion"] == 2
    pruned = as_json("db", "prune", "--keep-last", "0")
    assert pruned["run_ids"] == [1] and pruned["epoch_rows_deleted"] == 30
    assert pruned["protected"] == [
        {"run_id": 2, "reason": "alias"},
        {"run_id": 3, "reason": "newest completed"},
    ]
    assert _stored(database_url) == {2: 100, 3: 100}

    model = as_json("models", "toy")
    assert [(v["version"], v["run_id"]) for v in model["versions"]] == [(3, 3), (2, 2), (1, None)]
    assert (tmp_path / "models" / model["versions"][2]["file"]["path"]).is_file()
    back = cli("rollback", "toy")
    assert back.stdout.strip() == (
        "model toy: rolled back from version 2 to version 1 (the champion)"
    )

    warm = cli(
        "run", "--init", "champion", "--epochs", "5", "--promote", "never",
        "--prune-keep-last", "1", *quiet,
    )  # fmt: skip
    assert "run 4 completed" in warm.stdout
    assert _stored(database_url) == {4: 5}  # runs 2 and 3 pruned after run 4
    model = as_json("models", "toy")
    assert model["champion"] == 1
    assert [(v["version"], v["run_id"]) for v in model["versions"]] == [
        (4, 4),
        (3, None),
        (2, None),
        (1, None),
    ]
    with Session(engine_for(database_url)) as session:
        run = session.get(Run, 4)
        assert run is not None and run.config["init"] == "champion"
        assert run.data_checks["baseline"] is None  # the champion's run, and its profile, are gone
