"""`gdflow run` on a Parquet folder streamed a record batch at a time: recorded as streamed,
near the least-squares optimum, its standardisation and conditioning from the one pass, and
the champion judged on a seeded sample; a run that cannot stream says why in one line."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy.orm import Session

from gdflow.config.train import TrainConfig
from gdflow.flows.train import train_flow
from gdflow.storage import get_model_version, make_engine
from gdflow.training.preprocessing import Standardizer
from tests.processes import GdflowMain, latest_run

pytestmark = pytest.mark.usefixtures("prefect_api_url")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A partitioned data set of 3 files, 4,000 rows, features on very different scales."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4000, 3)) * [1.0, 50.0, 0.1] + [3.0, 200.0, 0.0]
    y = x @ np.array([2.0, 0.01, -5.0]) + 1.0 + rng.normal(scale=0.05, size=4000)
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})
    root = tmp_path / "events"
    for i, first in enumerate((0, 1400, 2700)):
        part = frame.iloc[first : (1400, 2700, 4000)[i]]
        (root / f"day={i}").mkdir(parents=True)
        part.to_parquet(root / f"day={i}" / "p.parquet", row_group_size=500, index=False)
    return root


def test_a_streamed_run_reaches_the_optimum_and_is_recorded_streamed(
    database_url: str, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = TrainConfig(
        data=str(folder),
        stream=True,
        batch_size=64,
        shuffle_buffer=1000,
        standardize=True,
        epochs=30,
        lr_schedule="cosine",
        log_every=0,
        database_url=database_url,
    )
    with caplog.at_level(logging.INFO):
        state = train_flow(config=config, return_state=True)
    assert state.is_completed(), state.message
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Mini-batches of 64 rows drawn from a shuffle buffer of 1,000 rows" in logged
    assert re.search(
        r"the next record batch read (on a thread while one trains|between batches)"
        r" \(\d+ usable CPU\(s\), 1-minute load \d+\.\d\)",
        logged,
    ), logged
    run, metrics = latest_run(database_url)
    assert run.evaluation["data_mode"] == "streamed" and len(metrics) == 30
    assert run.evaluation["relative_loss_gap"] < 0.01  # within 1% of the least-squares MSE
    assert run.data_fingerprint["rows"] == 4000 and run.data_fingerprint["files"] == 3
    assert run.condition_number is not None and run.max_stable_lr is not None
    frame = pd.concat(pd.read_parquet(p) for p in sorted(folder.rglob("*.parquet")))
    rows = frame[["a", "b", "c"]].to_numpy().astype(np.float32)
    expected = Standardizer.fit(rows, frame["y"].to_numpy(np.float32), bias=True)
    engine = make_engine(database_url)
    with Session(engine) as session:
        version = get_model_version(session, "events", 1)
        assert version is not None
        stored = version.standardization
    assert stored is not None
    np.testing.assert_allclose(stored["mean"], expected.mean, rtol=1e-10)
    np.testing.assert_allclose(stored["scale"], expected.scale, rtol=1e-10)

    again = train_flow(config=config.model_copy(update={"seed": 1}), return_state=True)
    assert again.is_completed(), again.message
    with Session(engine) as session:  # judged on the sample (here every row: 4,000 are few)
        second = get_model_version(session, "events", 2)
        assert second is not None and second.promotion is not None
        assert second.promotion["rows"] == "train sample (4,000 rows)"
    engine.dispose()


def test_runs_that_cannot_stream_fail_in_one_line(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, folder: Path
) -> None:
    csv = tmp_path / "u.csv"
    pd.read_parquet(folder).to_csv(csv, index=False)
    cases = {
        ("--data", str(csv), "--stream", "--batch-size", "8"): (
            "--stream cannot stream this run: CSV data (streaming reads Parquet files and folders)"
        ),
        ("--data", str(folder), "--stream"): (
            "--stream cannot stream this run: full-batch training (give --batch-size N)"
        ),
        ("--data", str(folder), "--stream", "--batch-size", "8", "--validation-split", "0.2"): (
            "--stream cannot stream this run: --validation-split (no rows are held out while "
            "streaming)"
        ),
        ("--stream", "--batch-size", "2"): (
            "--stream needs --data: a Parquet file or folder to stream"
        ),
    }
    for args, message in cases.items():
        done = gdflow_main(["run", *args, "--epochs", "2"], database_url=database_url, cwd=tmp_path)
        assert done.returncode != 0
        assert done.stderr.strip().splitlines()[-1] == f"gdflow: error: {message}"
