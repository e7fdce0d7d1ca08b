"""gdflow on a real PostgreSQL server: the seed's run end to end, and several runs at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import read_trajectory
from tests.flows.reliability import CONCURRENT_RUNS, check_one_champion
from tests.processes import latest_run, run_cli


def test_the_seed_run_end_to_end_on_postgresql(
    prefect_api_url: str, postgres_url: str, tmp_path: Path
) -> None:
    done = run_cli(["run"], api_url=prefect_api_url, database_url=postgres_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "run 1 completed: 100 epochs (max_epochs)" in done.stdout

    run, metrics = latest_run(postgres_url)
    assert run.status == "completed" and run.epochs_done == 100
    expected = read_trajectory()
    assert [m.epoch for m in metrics] == [int(row["epoch"]) for row in expected]
    for stored, row in zip(metrics, expected):
        assert abs(stored.loss - row["loss"]) <= 1e-5 * max(1.0, abs(row["loss"]))
        assert abs(stored.params["w"] - row["w"]) <= 1e-5 * max(1.0, abs(row["w"]))

    exported = run_cli(
        ["metrics", "latest", "--format", "csv"],
        api_url=prefect_api_url,
        database_url=postgres_url,
        cwd=tmp_path,
    )
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.splitlines()[0] == "epoch,loss,w"
    assert len(exported.stdout.splitlines()) == 101


@pytest.mark.extended  # CI: the same on SQLite (test_concurrency.py) and the PostgreSQL run above
@pytest.mark.heavy
def test_concurrent_runs_store_every_epoch_once(
    prefect_api_url: str, postgres_url: str, tmp_path: Path
) -> None:
    epochs = 5_000  # at least two chunks per run (4096 epochs or 2 s each), interleaved
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api_url,
        "GDFLOW_DATABASE_URL": postgres_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    script = Path(sys.executable).with_name("gdflow")
    runs = [
        subprocess.Popen(
            [str(script), "run", "--epochs", str(epochs), "--lr", f"{0.001 * (i + 1):g}"]
            + ["--log-every", "1000"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for i in range(CONCURRENT_RUNS)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err
        assert "Traceback" not in out + err

    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        summary = connection.execute(
            text(
                "SELECT r.id, r.status, r.epochs_done, count(m.epoch), count(DISTINCT m.epoch),"
                " min(m.epoch), max(m.epoch) FROM runs r JOIN epoch_metrics m ON m.run_id = r.id"
                " GROUP BY r.id, r.status, r.epochs_done ORDER BY r.id"
            )
        ).all()
    engine.dispose()
    assert len(summary) == CONCURRENT_RUNS
    for _run_id, status, done, rows, distinct, first, last in summary:
        assert status == "completed"
        assert done == rows == distinct == epochs
        assert (first, last) == (1, epochs)
    # Runs of one model name finishing together: one champion, one consistent history.
    check_one_champion(postgres_url, name="toy", count=CONCURRENT_RUNS)
