"""The sweep flow under Prefect's test harness, and `gdflow sweep`, against real SQLite files."""

from __future__ import annotations

import base64
import logging
import re
import signal
from pathlib import Path

import pytest
from prefect.artifacts import Artifact
from sqlalchemy.orm import Session

from gdflow.cli.main import main
from gdflow.config.sweep import SweepConfig
from gdflow.config.train import TrainConfig
from gdflow.flows.sweep import ARTIFACT_KEY, sweep_flow
from gdflow.storage import get_sweep, make_engine, sweep_runs
from tests.processes import GdflowMain

pytestmark = pytest.mark.usefixtures("prefect_api_url")


def _sweep_and_runs(database_url: str, sweep_id: int):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    with Session(engine) as session:
        sweep = get_sweep(session, sweep_id=sweep_id)
        runs = sweep_runs(session, sweep_id=sweep_id)
        session.expunge_all()
    engine.dispose()
    return sweep, runs


def test_sweep_trains_every_rate_and_records_the_best(database_url: str) -> None:
    base = TrainConfig(database_url=database_url, log_every=0)
    sweep = SweepConfig(base=base, lrs=[1.0, 0.01, 0.001], max_concurrency=2)
    state = sweep_flow(sweep=sweep, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()

    row, runs = _sweep_and_runs(database_url, summary["sweep_id"])
    assert row is not None and row.status == "completed" and row.finished_at is not None
    assert row.name == "lr-sweep-3-runs" and row.flow_run_id
    assert row.config["lrs"] == [1.0, 0.01, 0.001] and row.config["max_concurrency"] == 2
    by_lr = {run.config["lr"]: run for run in runs}
    assert len(runs) == 3 and sorted(by_lr) == [0.001, 0.01, 1.0]  # each recorded once
    assert len({run.flow_run_id for run in runs}) == 3
    assert all(run.sweep_id == row.id for run in runs)
    assert by_lr[1.0].status == "diverged" and by_lr[1.0].stop_reason == "diverged"
    completed = [run for run in runs if run.status == "completed"]
    assert sorted(run.config["lr"] for run in completed) == [0.001, 0.01]
    lowest = min(completed, key=lambda run: run.evaluation["train_loss"])
    assert lowest.config["lr"] == 0.01 and lowest.final_loss < by_lr[0.001].final_loss
    assert row.best_run_id == lowest.id == summary["best_run_id"]
    assert summary["best_lr"] == 0.01

    rows = summary["rows"]
    assert [r["lr"] for r in rows] == [0.001, 0.01, 1.0]
    assert [r["status"] for r in rows] == ["completed", "completed", "diverged"]
    assert rows[1]["run"] == lowest.id and rows[1]["final loss"] == lowest.final_loss
    assert rows[1]["w"] == pytest.approx(2.0, abs=1e-5)

    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact is not None and isinstance(artifact.data, str)
    assert f"## Sweep {row.id}: learning rates" in artifact.data
    uri = artifact.data.split("![loss curves](data:image/svg+xml;base64,")[1].split(")")[0]
    svg = base64.b64decode(uri).decode("utf-8")
    assert svg.count("<polyline") == 3 and "lr 0.01 (completed)" in svg


def test_a_sweep_where_every_run_diverges_fails_with_one_line(database_url: str) -> None:
    base = TrainConfig(database_url=database_url, log_every=0)
    state = sweep_flow(sweep=SweepConfig(base=base, lrs=[1.0, 2.0]), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "\n" not in message
    assert re.fullmatch(
        r"sweep \d+: no run completed: every learning rate diverged \(the smallest was 1\); "
        r"lower them, e\.g\. --lrs 0\.01 0\.1",
        message,
    ), message
    sweep_id = int(message.split()[1].rstrip(":"))
    row, runs = _sweep_and_runs(database_url, sweep_id)
    assert row is not None and row.status == "failed" and row.best_run_id is None
    assert sorted((run.config["lr"], run.status) for run in runs) == [
        (1.0, "diverged"),
        (2.0, "diverged"),
    ]


def test_gdflow_sweep_prints_the_comparison_and_the_best(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path
) -> None:
    done = gdflow_main(
        ["sweep", "--lrs", "0.01", "0.1", "--log-every", "0"],
        database_url=database_url,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("run "))
    assert lines[header].split()[:4] == ["run", "lr", "status", "stop"]
    assert len(lines[header]) == len(lines[header + 1].rstrip())  # header and rule line up
    table = lines[header + 2 : header + 4]
    assert table[0].split()[1:3] == ["0.01", "completed"]
    assert table[1].split()[1:3] == ["0.1", "diverged"]

    _, runs = _sweep_and_runs(database_url, 1)
    best = next(run for run in runs if run.config["lr"] == 0.01)
    assert lines[-1] == f"best: run {best.id} (lr 0.01, final loss {best.final_loss:.6g})"


def test_gdflow_sweep_prints_its_comparison_table_once(
    database_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The terminal shows the CLI's output and the flow's log: the table in one of them only."""
    sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    try:
        with caplog.at_level(logging.INFO):
            assert main(["sweep", "--lrs", "0.01", "0.1", "--log-every", "0"]) == 0
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    out = capsys.readouterr().out
    header = re.compile(r"^run +lr +status +stop reason +epochs +final loss", re.MULTILINE)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert len(header.findall(out)) == 1, out
    assert not header.findall(logged), logged
    (sweep,) = re.findall(r"^sweep (\d+): 2 runs in ", out, re.MULTILINE)
    assert f"Sweep {sweep}: best run" in logged  # the flow does log, just not the table
    # the UI keeps the table: the sweep's markdown artifact has it
    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact is not None and isinstance(artifact.data, str)
    assert f"## Sweep {sweep}: learning rates" in artifact.data
    assert "| best | run | lr | status | stop reason |" in artifact.data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lrs", "0.1", "-1"], "invalid --lrs -1: Input should be greater than 0"),
        (["--lr-range", "1", "0.1", "3"], "must be greater than its minimum"),
        (["--lrs", "0.1", "--lr-range", "0.1", "1", "3"], "exactly one of lrs"),
        (["--max-concurrency", "0"], "invalid --max-concurrency 0"),
        (["--lr", "0.1"], "--lr does not apply to a sweep"),
        (["--epochs", "0"], "invalid --epochs 0: .*; see 'gdflow sweep --help'"),
        (["--runner", "dask", "--dask-address", "nohost"], "invalid --dask-address nohost: give"),
        (["--runner", "threads", "--dask-address", "h:1"], "needs runner 'dask'"),
    ],
)
def test_gdflow_sweep_rejects_bad_options_in_one_line(
    database_url: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sweep", *args])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gdflow: error: ")
    assert re.search(message, err), err
    assert not Path(database_url.removeprefix("sqlite:///")).exists()
