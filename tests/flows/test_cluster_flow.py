"""`gdflow run --dask-address` end to end, in process: a Parquet folder read and trained on a
Dask cluster's workers (a logistic model; an MLP with the range test of `--lr auto`), every
epoch recorded in SQLite and the run recorded as `cluster`; a scheduler that does not answer
and options a cluster run cannot take fail in one line, the run recorded failed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.processes import GdflowMain, free_port, latest_run

pytestmark = pytest.mark.usefixtures("prefect_api_url")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """scikit-learn's breast cancer data set in 4 Parquet files."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    root = tmp_path / "cancer"
    root.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 4)):
        frame.iloc[rows].to_parquet(root / f"part-{i}.parquet", index=False)
    return root


def test_a_run_on_the_cluster_records_every_epoch(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, folder: Path, dask_cluster: str
) -> None:
    args = ["run", "--data", str(folder), "--model", "logistic", "--standardize", "--lr", "0.5"]
    args += ["--epochs", "25", "--dtype", "float64", "--dask-address", dask_cluster]
    done = gdflow_main(args, database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run, metrics = latest_run(database_url)
    assert run.status == "completed" and run.epochs_done == 25 and len(metrics) == 25
    assert run.evaluation["data_mode"] == "cluster"
    assert run.evaluation["train"]["accuracy"] > 0.95
    assert run.data_fingerprint["rows"] == 569 and run.data_fingerprint["files"] == 4
    assert run.config["dask_address"] == dask_cluster
    losses = [m.loss for m in metrics]
    assert losses[-1] < losses[0] / 4


def test_an_mlp_with_lr_auto_trains_on_the_cluster_and_saves_its_version(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, folder: Path, dask_cluster: str
) -> None:
    """`--model mlp` on the cluster: the range test of `--lr auto` (implied by --standardize)
    and every epoch take the workers' gradients; the evaluation comes from per-file sums; the
    model is saved in original units as an in-memory run's is."""
    args = ["run", "--data", str(folder), "--model", "mlp", "--task", "binary", "--hidden", "4"]
    args += ["--standardize", "--epochs", "30", "--dtype", "float64"]
    args += ["--dask-address", dask_cluster, "--cluster-timeout", "120"]
    done = gdflow_main(args, database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run, metrics = latest_run(database_url)
    assert run.status == "completed" and run.epochs_done == 30 and len(metrics) == 30
    evaluation = run.evaluation
    assert evaluation["data_mode"] == "cluster" and evaluation["optimum"]["loss"] is None
    assert evaluation["train"]["accuracy"] > 0.9 and evaluation["train"]["roc_auc"] is None
    search = evaluation["lr_range_test"]
    assert search["lrs"][0] < search["chosen"] < search["lrs"][-1]
    assert "fell fastest" in search["how"] and metrics[0].lr == search["chosen"]
    assert len(run.final_params) == 30 * 4 + 4 + 4 + 1
    assert run.config["cluster_timeout"] == 120


def test_a_run_the_cluster_cannot_train_fails_in_one_line(
    gdflow_main: GdflowMain,
    database_url: str,
    tmp_path: Path,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gdflow.data.cluster.CONNECT_SECONDS", 2.0)
    address = f"tcp://127.0.0.1:{free_port()}"
    cases = {
        ("--data", str(folder), "--dask-address", address): (
            f"cannot reach the Dask scheduler at {address}"
        ),
        ("--data", str(folder), "--dask-address", address, "--batch-size", "8"): (
            "--dask-address cannot train this run: --batch-size (the cluster trains full-batch "
            "epochs: drop it)"
        ),
    }
    for args, message in cases.items():
        done = gdflow_main(["run", *args, "--epochs", "2"], database_url=database_url, cwd=tmp_path)
        assert done.returncode != 0
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(f"gdflow: error: {message}"), line
        run, metrics = latest_run(database_url)
        assert run.status == "failed" and not metrics
        assert run.error is not None and message in run.error
