"""Full-batch epochs on a local Dask cluster of 2 worker processes against one process.

The parent writes a rows x 16 float64 Parquet folder of 8 files (15 features and a 0/1 label),
then times full-batch logistic regression (standardised, SGD) two ways on the same data:
in this process (`fit`, on whichever loss path it picks) and on a `LocalCluster` of two worker
processes with one thread each (`fit_cluster`: the rows kept on the workers, each epoch one
task per file). The figures: the epoch time ratio (cluster / one process), the bytes the
driver sends and receives per epoch against the data's size, the compute of one file's
gradient (timed in this process, so the rest of a cluster epoch is Dask's overhead), and a
linear model's sufficient statistics, sent once, with nothing per epoch.

Then MLPs (`--hidden 64,64` and `256,256`) on a rows x 17 folder of 8 files (16 features, a
numeric target): per epoch the bytes the driver sends and receives (2 x 8 B x parameters x
files, measured as pickled), the wall time of a cluster epoch and of one process's full-batch
epoch, one file's gradient on one thread, and what the bytes cost: pickling and unpickling
them here, and their time on a 1 Gbit/s link. The ratio is one file's compute over its bytes'
time on that link: how far the parameters are from limiting an epoch.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from benchmarks.common import Result

if TYPE_CHECKING:
    from gdflow.data.cluster import Part

COLUMNS = 16  # 15 features and the label
FILES = 8
WORKERS = 2
#: Hidden widths of the MLPs whose traffic is measured, and their input features.
NETWORKS = ((64, 64), (256, 256))
NETWORK_FEATURES = 16
#: Bytes a second of the link the bytes are priced at (1 Gbit/s).
LINK = 125e6


def write_data(folder: Path, rows: int) -> None:
    """rows x 16 float64 in FILES Parquet files: 15 normal features, a noisy linear 0/1 label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    weights = rng.normal(size=COLUMNS - 1)
    names = [f"x{j}" for j in range(COLUMNS - 1)] + ["label"]
    folder.mkdir(parents=True)
    for i, n in enumerate(np.diff(np.linspace(0, rows, FILES + 1).astype(int))):
        x = rng.standard_normal((n, COLUMNS - 1))
        y = ((x @ weights + rng.standard_normal(n)) > 0).astype(np.float64)
        columns = [*(x[:, j] for j in range(COLUMNS - 1)), y]
        pq.write_table(pa.table(dict(zip(names, columns))), folder / f"part-{i}.parquet")


def run(*, quick: bool, rows: int | None = None) -> list[Result]:
    """Time one process against the 2-worker cluster; report the ratios (see the module)."""
    import torch
    from distributed import LocalCluster

    from gdflow.data.cluster import connect, load_cluster
    from gdflow.data.dataset import Labels, load_dataset
    from gdflow.training.cluster import (
        ClusterProblem,
        GradientSpec,
        Traffic,
        fit_cluster,
        part_gradient,
        prepare_part,
    )
    from gdflow.training.loop import fit, loss_path_of
    from gdflow.training.optimization import Optimization
    from gdflow.training.parameters import initial_parameters, parameter_names
    from gdflow.training.preprocessing import TrainingProblem

    rows = rows or (20_000 if quick else 1_000_000)
    epochs = 5 if quick else 30
    repeats = 1 if quick else 3
    name = f"cluster {rows:,}x{COLUMNS}, {FILES} files, {WORKERS} workers"
    with tempfile.TemporaryDirectory(prefix="gdflow-bench-cluster-") as tmp:
        folder = Path(tmp) / "data"
        write_data(folder, rows)
        data_bytes = rows * COLUMNS * 8
        opt = Optimization(lr=0.5, epochs=epochs)
        labels = Labels("binary", "logistic")
        here = load_dataset(str(folder), dtype="float64", labels=labels)
        names = parameter_names(here.feature_names, bias=True)
        initial = initial_parameters(names, init=0.0, seed=0)
        problem = TrainingProblem.prepare(here, initial, standardize=True, family="logistic")
        device = torch.device("cpu")
        path = loss_path_of(problem.data, opt, device)
        with LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            connection = connect(cluster.scheduler_address)
            try:
                dataset = load_cluster(
                    connection, str(folder), dtype="float64", labels=("binary", "logistic")
                )
                remote = ClusterProblem.prepare(
                    dataset, initial, standardize=True, family="logistic"
                )
                single_times, cluster_times, traffic = [], [], Traffic()
                fit(problem.data, problem.initial, Optimization(lr=0.5, epochs=2), device=device)
                fit_cluster(remote, Optimization(lr=0.5, epochs=2))  # warm-up: imports
                for _ in range(repeats):  # interleaved, medians: the cores are shared
                    started = time.perf_counter()
                    fit(problem.data, problem.initial, opt, device=device)
                    single_times.append((time.perf_counter() - started) / epochs)
                    traffic = Traffic()
                    started = time.perf_counter()
                    fit_cluster(remote, opt, traffic=traffic)
                    cluster_times.append((time.perf_counter() - started) / epochs)
                floor = []  # the same tasks, doing nothing: Dask's round trip an epoch
                for _ in range(epochs):
                    started = time.perf_counter()
                    connection.client.gather(
                        connection.client.map(_nothing, list(remote.parts), pure=False)
                    )
                    floor.append(time.perf_counter() - started)
                linear_traffic = Traffic()
                linear = load_cluster(connection, str(folder), dtype="float64")
                linear_names = parameter_names(linear.feature_names, bias=True)
                linear_problem = ClusterProblem.prepare(
                    linear,
                    initial_parameters(linear_names, init=0.0, seed=0),
                    standardize=True,
                    family="linear",
                )
                fit_cluster(linear_problem, Optimization(lr=0.1, epochs=50), traffic=linear_traffic)
                network_results = _networks(connection, Path(tmp), quick=quick)
            finally:
                connection.close()
        # one file's gradient, computed here: the compute a worker does per task
        part = _first_part(folder)
        prepared = prepare_part(
            part, part.digest, "", remote.problem.standardizer, np.array([0.0, 1.0])
        )
        spec = GradientSpec(tuple(initial), "logistic", 2, None)
        values = np.array(list(remote.problem.initial.values()))
        compute = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a worker of one thread computes it
        try:
            for _ in range(15):
                started = time.perf_counter()
                part_gradient(spec, prepared, values)
                compute.append(time.perf_counter() - started)
        finally:
            torch.set_num_threads(threads)
    single, on_cluster = statistics.median(single_times), statistics.median(cluster_times)
    per_task = statistics.median(compute)
    ideal = per_task * FILES / WORKERS
    # each worker runs FILES / WORKERS tasks one after another: the rest of its time is Dask's
    overhead = max(on_cluster * WORKERS / FILES - per_task, 0.0)
    sent = traffic.sent / max(traffic.epochs, 1)
    received = traffic.received / max(traffic.epochs, 1)
    return [
        Result(
            f"{name}: logistic epoch time vs one process",
            on_cluster / single,
            10.0,
            False,
            f"cluster {on_cluster * 1e3:.1f} ms/epoch, one process {single * 1e3:.1f} ms/epoch "
            f"({path} path); one file's gradient {per_task * 1e3:.2f} ms on one thread, so "
            f"{FILES} files on {WORKERS} workers ideally {ideal * 1e3:.1f} ms; the rest, "
            f"{overhead * 1e3:.1f} ms a task, is Dask's and the shared cores' (an epoch of "
            f"{FILES} tasks that compute nothing: {statistics.median(floor) * 1e3:.1f} ms); "
            f"medians of {repeats}x{epochs} epochs",
        ),
        Result(
            f"{name}: logistic data vs bytes per epoch",
            data_bytes / (sent + received),
            100.0,
            True,
            f"{sent:,.0f} B of parameters out + {received:,.0f} B of gradients back per epoch "
            f"({len(initial)} parameters x {FILES} files) against {data_bytes / 2**20:,.0f} MiB "
            "of rows, which stay on the workers",
        ),
        Result(
            f"{name}: linear data vs statistics bytes (once)",
            data_bytes / max(linear_traffic.statistics, 1),
            10.0,
            True,
            f"{linear_traffic.statistics:,} B of sufficient statistics once, then "
            f"{linear_traffic.sent + linear_traffic.received} B per epoch for 50 epochs",
        ),
        *network_results,
    ]


def _networks(connection: Any, tmp: Path, *, quick: bool) -> list[Result]:
    """The MLPs' bytes per epoch against their compute (see the module)."""
    import pickle

    import torch

    from gdflow.data.cluster import load_cluster
    from gdflow.data.dataset import load_dataset
    from gdflow.training.cluster import (
        ClusterProblem,
        GradientSpec,
        PartGradient,
        Traffic,
        fit_cluster,
        part_gradient,
        prepare_part,
    )
    from gdflow.training.loop import fit
    from gdflow.training.mlp import MLPShape, flat_names, flat_values
    from gdflow.training.optimization import Optimization
    from gdflow.training.preprocessing import Network, TrainingProblem

    rows = 40_000 if quick else 80_000
    epochs = 2 if quick else 5
    folder = tmp / "network"
    _write_regression(folder, rows)
    here = load_dataset(str(folder), dtype="float64")
    there = load_cluster(connection, str(folder), dtype="float64")
    part = _first_part(folder, [*here.feature_names, here.target_name])
    results = []
    for hidden in NETWORKS:
        shape = MLPShape(NETWORK_FEATURES, 1, hidden, "relu", seed=0)
        network = Network(shape, hidden[0], 1)
        module = shape(torch.float64)
        initial = dict(zip(flat_names(module), flat_values(module).tolist()))
        parameters = len(initial)
        opt = Optimization(lr=1e-3, epochs=epochs)
        problem = TrainingProblem.prepare(
            here, initial, standardize=True, family="mlp", network=network
        )
        remote = ClusterProblem.prepare(
            there, initial, standardize=True, family="mlp", network=network
        )
        fit_cluster(remote, Optimization(lr=1e-3, epochs=1))  # warm-up
        single, on_cluster, traffic = [], [], Traffic()
        for _ in range(1 if quick else 3):  # interleaved, medians
            started = time.perf_counter()
            fit(problem.data, problem.initial, opt, device=torch.device("cpu"))
            single.append((time.perf_counter() - started) / epochs)
            traffic = Traffic()
            started = time.perf_counter()
            fit_cluster(remote, opt, traffic=traffic)
            on_cluster.append((time.perf_counter() - started) / epochs)
        remote.release()
        prepared = prepare_part(part, part.digest, "", remote.problem.standardizer, None)
        spec = GradientSpec(tuple(initial), "mlp", 0, None, shape)
        values = np.array(list(remote.problem.initial.values()))
        compute, wire = [], []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a worker of one thread computes it
        try:
            for _ in range(3 if quick else 7):
                started = time.perf_counter()
                gradient: PartGradient = part_gradient(spec, prepared, values)
                compute.append(time.perf_counter() - started)
                started = time.perf_counter()  # what the bytes cost the CPUs: out and back
                pickle.loads(pickle.dumps(values, protocol=5))
                pickle.loads(pickle.dumps(gradient, protocol=5))
                wire.append(time.perf_counter() - started)
        finally:
            torch.set_num_threads(threads)
        sent = traffic.sent / max(traffic.epochs, 1)
        received = traffic.received / max(traffic.epochs, 1)
        per_file = (sent + received) / FILES
        per_task = statistics.median(compute)
        results.append(
            Result(
                f"mlp {','.join(map(str, hidden))} on {NETWORK_FEATURES} features, "
                f"{rows:,} rows in {FILES} files: a file's compute vs its bytes at 1 Gbit/s",
                per_task / (per_file / LINK),
                10.0,
                True,
                f"{parameters:,} parameters: {sent:,.0f} B out + {received:,.0f} B back an "
                f"epoch ({per_file / 1e3:,.0f} kB a file, {per_file / LINK * 1e3:.2f} ms at "
                f"1 Gbit/s; pickled and unpickled here in "
                f"{statistics.median(wire) * 1e3:.2f} ms); one file's gradient "
                f"({rows // FILES:,} rows, one thread) {per_task * 1e3:.1f} ms; an epoch on "
                f"the cluster {statistics.median(on_cluster) * 1e3:.0f} ms, in one process "
                f"{statistics.median(single) * 1e3:.0f} ms",
            )
        )
    return results


def _write_regression(folder: Path, rows: int) -> None:
    """rows x NETWORK_FEATURES normal features and a nonlinear target, in FILES files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    names = [f"x{j}" for j in range(NETWORK_FEATURES)] + ["y"]
    folder.mkdir(parents=True)
    for i, n in enumerate(np.diff(np.linspace(0, rows, FILES + 1).astype(int))):
        x = rng.standard_normal((n, NETWORK_FEATURES))
        y = np.sin(x[:, 0]) * x[:, 1] + 0.1 * rng.standard_normal(n)
        columns = [*(x[:, j] for j in range(NETWORK_FEATURES)), y]
        pq.write_table(pa.table(dict(zip(names, columns))), folder / f"part-{i}.parquet")


def _nothing(part: object) -> int:
    """A task on a kept file that computes nothing (Dask's own cost of a task)."""
    return 0


def _first_part(folder: Path, columns: Optional[list[str]] = None) -> Part:
    """The first file read as a worker reads it (`columns`: features then the target)."""
    from gdflow.data.cluster import read_part

    first = sorted(folder.glob("*.parquet"))[0]
    columns = columns or [f"x{j}" for j in range(COLUMNS - 1)] + ["label"]
    return read_part(0, str(first), columns, "float64", {})
