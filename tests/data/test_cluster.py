"""A Parquet data set read onto a Dask cluster (`data.cluster`): the same fingerprint, rows,
moments and classes as reading it here; a seeded sample only; one-line errors for bad values,
unreadable data, a scheduler that does not answer and one without workers (after
`cluster_timeout`); the options it cannot train with."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gdflow.config.errors import GdflowError
from gdflow.config.train import TrainConfig
from gdflow.data.cluster import (
    Connection,
    Part,
    checked,
    cluster_blockers,
    cluster_failure,
    connect,
    list_parts,
    load_cluster,
    summarize,
)
from gdflow.data.dataset import Labels, load_dataset
from gdflow.data.fingerprint import data_fingerprint, fingerprint
from gdflow.data.labels import MAX_CLASSES
from gdflow.training.cluster import prepare_part
from tests.processes import free_port


@pytest.fixture
def connection(dask_cluster: str) -> Iterator[Connection]:
    """A client of the session's local cluster."""
    found = connect(dask_cluster)
    yield found
    found.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """1,000 rows in 3 files of a partitioned folder, a 0/1 label last."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 3)) * [1.0, 30.0, 0.5] + [2.0, -5.0, 0.0]
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(label=(x[:, 0] > 2).astype(int))
    root = tmp_path / "events"
    for i, rows in enumerate(np.array_split(np.arange(1000), 3)):
        (root / f"day={i}").mkdir(parents=True)
        frame.iloc[rows].to_parquet(root / f"day={i}" / "part.parquet", index=False)
    return root


def test_the_cluster_reads_what_this_process_reads(connection: Connection, folder: Path) -> None:
    found = load_cluster(connection, str(folder), dtype="float64", labels=("binary", "logistic"))
    here = load_dataset(str(folder), dtype="float64", labels=Labels("binary", "logistic"))
    data = found.cluster
    assert data is not None and len(data.parts) == 3 and data.part_rows == (334, 333, 333)
    assert found.n_rows == 1000 and found.feature_names == ("a", "b", "c")
    assert found.classes == here.classes == (0, 1)
    assert data.class_counts is not None and data.class_counts.sum() == 1000
    assert found.fingerprint == fingerprint(str(folder), rows=1000, read_from=None)
    assert found.fingerprint is not None
    assert found.fingerprint["sha256"] == data_fingerprint(str(folder))
    rows = np.column_stack([here.x, here.y])
    np.testing.assert_allclose(data.moments.mean, rows.mean(axis=0), rtol=1e-12)
    centred = rows - rows.mean(axis=0)
    np.testing.assert_allclose(data.moments.comoment, centred.T @ centred, rtol=1e-10, atol=1e-9)
    # every row is in the sample of so small a data set, in file order
    np.testing.assert_array_equal(found.x, here.x)
    np.testing.assert_array_equal(found.y, here.y)


def test_a_large_data_set_sends_the_driver_a_seeded_sample_only(
    connection: Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gdflow.data.cluster as cluster

    monkeypatch.setattr(cluster, "SAMPLE_ROWS", 100)
    frame = pd.DataFrame({"x": np.arange(2000.0), "y": np.arange(2000.0) * 2})
    root = tmp_path / "big"
    root.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(2000), 4)):
        frame.iloc[rows].to_parquet(root / f"{i}.parquet", index=False)
    first = load_cluster(connection, str(root), dtype="float64", seed=5)
    again = load_cluster(connection, str(root), dtype="float64", seed=5)
    assert first.n_rows == 2000 and len(first.y) <= 100 and len(first.y) > 50
    np.testing.assert_array_equal(first.x, again.x)  # seeded
    np.testing.assert_array_equal(first.y, 2 * first.x[:, 0])  # whole rows


def test_bad_values_and_unreadable_data_fail_in_one_line(
    connection: Connection, folder: Path, tmp_path: Path
) -> None:
    frame = pd.read_parquet(folder / "day=1" / "part.parquet")
    frame.loc[frame.index[4], "b"] = np.nan
    frame.to_parquet(folder / "day=1" / "part.parquet", index=False)
    with pytest.raises(GdflowError) as error:
        load_cluster(connection, str(folder), dtype="float64")
    message = str(error.value)
    assert "\n" not in message and "'b'" in message and "day=1" in message
    assert "data row 5 of that file" in message

    with pytest.raises(GdflowError, match="a Dask worker cannot read .*nowhere") as missing:
        load_cluster(connection, str(tmp_path / "nowhere"), dtype="float64")
    assert "\n" not in str(missing.value)

    text = pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "b"]})
    (tmp_path / "text").mkdir()
    text.to_parquet(tmp_path / "text" / "t.parquet", index=False)
    with pytest.raises(GdflowError, match="column 'y' in .*t.parquet is not numeric"):
        load_cluster(connection, str(tmp_path / "text"), dtype="float64")


def test_no_scheduler_at_the_address_is_one_line() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(GdflowError) as error:
        connect(address, timeout=2)
    message = str(error.value)
    assert message.startswith(f"cannot reach the Dask scheduler at {address}")
    assert "\n" not in message and "--dask-address" in message


def test_the_address_is_checked_with_the_config() -> None:
    assert TrainConfig(dask_address=" LOCAL:3 ").dask_address == "local:3"
    assert TrainConfig(dask_address="10.0.0.5:8786").dask_address == "10.0.0.5:8786"
    assert TrainConfig(dask_address="").dask_address is None
    for bad in ("local:0", "local:300", "tcp://scheduler", "a b:1"):
        with pytest.raises(ValueError, match="give the Dask scheduler as"):
            TrainConfig(dask_address=bad)


def test_what_a_cluster_run_cannot_do_is_named() -> None:
    assert cluster_blockers(TrainConfig(data="d", dask_address="local")) == []
    network = TrainConfig(
        data="d",
        dask_address="local",
        model="mlp",
        task="binary",
        class_weight="balanced",
        lr="auto",
    )
    assert cluster_blockers(network) == []  # the range test takes the workers' gradients
    found = cluster_blockers(
        TrainConfig(
            dask_address="local",
            batch_size=8,
            validation_split=0.2,
            model="models.net:build",
            device="cuda",
        )
    )
    assert [line.split(" ")[0] for line in found] == [
        "the",
        "--batch-size",
        "--validation-split",
        "--model",
        "--device",
    ]
    assert "a user's model" in found[3]
    for text in ("s3://bucket/events.csv.gz", "d.tsv", "/data/u.CSV"):
        (csv,) = cluster_blockers(TrainConfig(data=text, dask_address="local"))
        assert csv.startswith("a CSV or TSV --data (the workers read Parquet"), csv


def test_a_url_folder_lists_its_files_in_the_order_of_a_local_one(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    names = ["x=1.5/a.parquet", "x=1/a.parquet", "x=1/b.parquet", "_SUCCESS", "y/.a.crc"]
    for name in names:
        fs.pipe(f"/order/{name}", b"")
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    remote = [name for _, name in list_parts("memory://order", {})]
    local = [name for _, name in list_parts(str(tmp_path), {})]
    assert remote == local == ["x=1/a.parquet", "x=1/b.parquet", "x=1.5/a.parquet"]


def test_a_number_column_given_as_a_label_stays_on_its_worker() -> None:
    part = Part(0, np.zeros((50_000, 1)), np.arange(50_000, dtype=np.float64), "digest", 1)
    assert len(summarize(part, labels=True).labels) == MAX_CLASSES + 1
    assert summarize(part, labels=False).labels == {}


def test_a_scheduler_without_workers_fails_the_load_in_one_line(folder: Path) -> None:
    """Dask waits for a worker forever; the load waits `cluster_timeout` seconds, then fails
    with one line naming the scheduler and the fix."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster:
        connection = connect(cluster.scheduler_address, cluster_timeout=1.5)
        try:
            started = time.monotonic()
            with pytest.raises(GdflowError) as error:
                load_cluster(connection, str(folder), dtype="float64")
            waited = time.monotonic() - started
        finally:
            connection.close()
    message = str(error.value)
    assert message == (
        f"no Dask worker answered for 1.5 s at {cluster.scheduler_address} (listing "
        f"{folder}): start workers or raise --cluster-timeout"
    )
    assert 1.5 <= waited < 10


def test_a_file_read_again_with_other_bytes_is_refused_in_one_line() -> None:
    """Dask reads a lost worker's files again: every task on a file's rows checks they are the
    bytes the run recorded, so a file rewritten meanwhile never yields a gradient."""
    part = Part(2, np.zeros((3, 1)), np.zeros(3), "ab" * 32, 10)
    assert checked(part, "ab" * 32, "s3://b/day=2/part.parquet") is part
    with pytest.raises(GdflowError) as found:
        checked(part, "cd" * 32, "s3://b/day=2/part.parquet")
    message = str(found.value)
    assert "\n" not in message
    assert message.startswith("s3://b/day=2/part.parquet changed while the run used it")
    assert "abababababab..., not the cdcdcdcdcdcd..." in message
    with pytest.raises(GdflowError, match="changed while the run used it"):
        prepare_part(part, "cd" * 32, "f", None, None)


def test_a_task_that_fails_on_a_worker_is_one_line(connection: Connection) -> None:
    future = connection.client.submit(int, "twelve", pure=False)
    with pytest.raises(GdflowError) as found:
        connection.wait([future], "reading the 1 file(s) of d")
    assert str(found.value).startswith(
        "the Dask cluster could not finish reading the 1 file(s) of d (ValueError: invalid "
        "literal for int() with base 10: 'twelve'); no step was taken"
    )
    # A message whose first line only announces the next keeps both (Dask's cancellations).
    cancelled = RuntimeError("2 Futures cancelled:\nReason: scheduler-connection-lost\nkeys: a, b")
    assert str(cluster_failure(cancelled, "evaluate the model")).startswith(
        "the Dask cluster could not evaluate the model (RuntimeError: 2 Futures cancelled: "
        "Reason: scheduler-connection-lost); "
    )
