"""Full-batch training on a Dask cluster (`training.cluster`) against the single process on
the same real data in float64: every epoch's loss and the final parameters within 1e-6
relative (linear on its sufficient statistics, logistic, softmax, class weights, and MLPs for
regression, binary and multiclass, with the range test of `--lr auto` and the evaluation);
the driver receives O(parameters) bytes an epoch, never rows; a worker killed mid-training is
recomputed by Dask and the trajectory is unchanged; a gradient missing rows is never stepped
on; with every worker gone the fit fails in one line after `cluster_timeout` seconds, the
epochs before handed on and none after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pytest
import torch

from gdflow.config.errors import GdflowError
from gdflow.data.cluster import Connection, connect, load_cluster
from gdflow.data.dataset import Dataset, Labels, load_dataset, load_streamed
from gdflow.training.classification import class_weights
from gdflow.training.cluster import (
    ClusterProblem,
    Traffic,
    evaluate_cluster,
    fit_cluster,
    range_test_cluster,
)
from gdflow.training.loop import Hooks, fit
from gdflow.training.lr_finder import range_test
from gdflow.training.mlp import MLPShape, flat_names, flat_values
from gdflow.training.model import MAX_RECORDED_PARAMETERS
from gdflow.training.network_evaluation import evaluate_network
from gdflow.training.optimization import Optimization
from gdflow.training.parameters import initial_parameters, parameter_names
from gdflow.training.preprocessing import Network, TrainingProblem
from gdflow.training.records import EpochChunk
from gdflow.training.streamed import StreamedProblem, evaluate_streamed

pytestmark = pytest.mark.process

RTOL = 1e-6


def write_parts(folder: Path, frame: pd.DataFrame, parts: int) -> Path:
    """`frame` as `parts` Parquet files of consecutive rows in `folder`."""
    folder.mkdir(parents=True)
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), parts)):
        frame.iloc[rows].to_parquet(folder / f"part-{i:02d}.parquet", index=False)
    return folder


@pytest.fixture(scope="module")
def real_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """scikit-learn's diabetes (regression), breast cancer (binary) and iris (3 classes),
    each split into Parquet files."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

    root = tmp_path_factory.mktemp("real")
    return {
        "diabetes": write_parts(root / "diabetes", load_diabetes(as_frame=True).frame, 4),
        "cancer": write_parts(root / "cancer", load_breast_cancer(as_frame=True).frame, 5),
        "iris": write_parts(root / "iris", load_iris(as_frame=True).frame, 3),
    }


@pytest.fixture
def connection(dask_cluster: str) -> Iterator[Connection]:
    """A client of the session's local cluster."""
    found = connect(dask_cluster)
    yield found
    found.close()


LABELS = {"linear": None, "logistic": ("binary", "logistic"), "softmax": ("multiclass", "softmax")}


def _both(
    connection: Connection, folder: Path, family: str
) -> tuple[Dataset, Dataset, dict[str, float]]:
    """The data set on the cluster and in memory (float64), and zero initial parameters."""
    labels = LABELS[family]
    on_cluster = load_cluster(connection, str(folder), dtype="float64", labels=labels)
    in_memory = load_dataset(
        str(folder), dtype="float64", labels=Labels(*labels) if labels else None
    )
    classes = on_cluster.classes if family == "softmax" else None
    names = parameter_names(on_cluster.feature_names, bias=True, classes=classes)
    return on_cluster, in_memory, initial_parameters(names, init=0.0, seed=0)


#: The task and hidden widths of the MLP trained on each data set (`cancer`'s 257 parameters
#: are more than a network records by name: it records scalars per epoch, its weights once).
NETWORKS = {"diabetes": (None, (8,)), "cancer": ("binary", (8,)), "iris": ("multiclass", (6,))}


def _network_both(
    connection: Connection, name: str, folder: Path
) -> tuple[Dataset, Dataset, dict[str, float], Network]:
    """The data set on the cluster and in memory (float64), the seeded MLP for its task
    (`NETWORKS`) and its initial weights."""
    task, hidden = NETWORKS[name]
    labels = (task, "mlp") if task else None
    on_cluster = load_cluster(connection, str(folder), dtype="float64", labels=labels)
    in_memory = load_dataset(
        str(folder), dtype="float64", labels=Labels(*labels) if labels else None
    )
    outputs = 3 if task == "multiclass" else 1
    shape = MLPShape(on_cluster.n_features, outputs, hidden, "tanh", seed=4)
    module = shape(torch.float64)
    initial = dict(zip(flat_names(module), flat_values(module).tolist()))
    return on_cluster, in_memory, initial, Network(shape, hidden[0], outputs)


def _losses(chunks: list[EpochChunk]) -> np.ndarray:
    return np.concatenate([c.losses for c in chunks])


def _single_process(
    dataset: Dataset,
    initial: dict[str, float],
    opt: Optimization,
    family: str,
    class_weight: Optional[str] = None,
    network: Optional[Network] = None,
) -> tuple[Any, list[EpochChunk], TrainingProblem]:
    weights = None
    if class_weight is not None:
        assert dataset.classes is not None
        weights = class_weights(dataset.y.astype("int64"), len(dataset.classes), class_weight)
    problem = TrainingProblem.prepare(
        dataset, initial, standardize=True, family=family, weights=weights, network=network
    )
    chunks: list[EpochChunk] = []
    result = fit(
        problem.data,
        problem.initial,
        opt,
        device=torch.device("cpu"),
        hooks=Hooks(on_chunk=chunks.append, chunk_epochs=7),
        loss_path="statistics" if family == "linear" else None,
    )
    return problem.result_to_original(result), chunks, problem


def _on_cluster(
    dataset: Dataset,
    initial: dict[str, float],
    opt: Optimization,
    family: str,
    class_weight: Optional[str] = None,
    hooks: Optional[Hooks] = None,
    network: Optional[Network] = None,
) -> tuple[Any, list[EpochChunk], Traffic, ClusterProblem]:
    problem = ClusterProblem.prepare(
        dataset,
        initial,
        standardize=True,
        family=family,
        class_weight=class_weight,
        network=network,
    )
    chunks: list[EpochChunk] = []
    traffic = Traffic()
    hooks = hooks or Hooks()
    hooks = replace(hooks, on_chunk=_both_calls(chunks.append, hooks.on_chunk), chunk_epochs=7)
    result = fit_cluster(problem, opt, hooks=hooks, traffic=traffic)
    return problem.problem.result_to_original(result), chunks, traffic, problem


def _both_calls(first: Any, second: Any) -> Any:
    def call(chunk: EpochChunk) -> None:
        first(chunk)
        if second is not None:
            second(chunk)

    return call


def _assert_same_trajectory(
    cluster: Any, single: Any, a: list[EpochChunk], b: list[EpochChunk]
) -> None:
    losses, expected = _losses(a), _losses(b)
    assert len(losses) == len(expected) == cluster.epochs_done == single.epochs_done
    np.testing.assert_allclose(losses, expected, rtol=RTOL, atol=0)
    # parameters as vectors: a weight that is zero in exact arithmetic (a balanced bias) is
    # +-1e-17 in either, so each epoch's vector is compared by its norm
    params, expected_params = (np.concatenate([c.params for c in x]) for x in (a, b))
    gaps = np.linalg.norm(params - expected_params, axis=1)
    assert (gaps <= RTOL * np.linalg.norm(expected_params, axis=1)).all(), gaps.max()
    assert list(cluster.final_params) == list(single.final_params)
    final = np.array(list(cluster.final_params.values()))
    final_expected = np.array(list(single.final_params.values()))
    assert np.linalg.norm(final - final_expected) <= RTOL * np.linalg.norm(final_expected)


@pytest.mark.parametrize(
    ("name", "family", "lr", "class_weight"),
    [
        ("diabetes", "linear", 0.1, None),
        ("cancer", "logistic", 0.5, None),
        ("cancer", "logistic", 0.5, "balanced"),
        ("iris", "softmax", 0.5, None),
    ],
)
def test_the_cluster_trajectory_is_the_single_process_one(
    connection: Connection,
    real_data: dict[str, Path],
    name: str,
    family: str,
    lr: float,
    class_weight: Optional[str],
) -> None:
    on_cluster, in_memory, initial = _both(connection, real_data[name], family)
    opt = Optimization(lr=lr, epochs=40, optimizer="sgd", momentum=0.5, lr_schedule="cosine")
    cluster, chunks, traffic, problem = _on_cluster(on_cluster, initial, opt, family, class_weight)
    single, expected, _ = _single_process(in_memory, initial, opt, family, class_weight)
    _assert_same_trajectory(cluster, single, chunks, expected)
    assert (cluster.data_mode, cluster.loss_path) == (
        "cluster",
        "statistics" if family == "linear" else "direct",
    )
    assert expected[0].losses[-1] > expected[-1].losses[-1]  # it trained


@pytest.mark.parametrize(
    ("name", "lr", "class_weight"),
    [
        ("diabetes", 0.02, None),
        ("cancer", 0.5, None),
        ("cancer", 0.5, "balanced"),
        ("iris", 0.5, None),
    ],
)
def test_an_mlp_trajectory_on_the_cluster_is_the_single_process_one(
    connection: Connection,
    real_data: dict[str, Path],
    name: str,
    lr: float,
    class_weight: Optional[str],
) -> None:
    """The network is built on each worker from its architecture (`MLPShape`) and given the
    driver's weights every epoch: the same trajectory as full-batch training in one process,
    and the same final weights in original units (standardisation folded into the first
    layer)."""
    on_cluster, in_memory, initial, network = _network_both(connection, name, real_data[name])
    opt = Optimization(lr=lr, epochs=40, optimizer="sgd", momentum=0.5, lr_schedule="cosine")
    cluster, chunks, traffic, _ = _on_cluster(
        on_cluster, initial, opt, "mlp", class_weight, network=network
    )
    single, expected, _ = _single_process(in_memory, initial, opt, "mlp", class_weight, network)
    _assert_same_trajectory(cluster, single, chunks, expected)
    assert (cluster.data_mode, cluster.loss_path) == ("cluster", "direct")
    assert expected[0].losses[0] > 1.05 * expected[-1].losses[-1]  # it trained
    by_name = len(initial) <= MAX_RECORDED_PARAMETERS  # else scalars per epoch, weights once
    assert chunks[0].names == (tuple(initial) if by_name else ())
    assert list(cluster.final_params) == list(initial)
    assert on_cluster.cluster is not None
    files = len(on_cluster.cluster.parts)
    for sent, received in traffic.per_epoch:  # the weights out and a gradient back, per file
        assert 8 * len(initial) * files <= sent <= (8 * len(initial) + 400) * files
        assert 8 * len(initial) * files <= received <= (8 * len(initial) + 600) * files


def test_an_mlp_range_test_and_evaluation_on_the_cluster_are_the_single_process_ones(
    connection: Connection, real_data: dict[str, Path]
) -> None:
    """`--lr auto` for a network: the range test's steps take their gradients from the
    workers and choose the rate one process chooses; the evaluation from per-file sums gives
    `evaluate_network`'s metrics (but the ROC AUC, which ranks every row at once)."""
    on_cluster, in_memory, initial, network = _network_both(
        connection, "diabetes", real_data["diabetes"]
    )
    cluster = ClusterProblem.prepare(
        on_cluster, initial, standardize=True, family="mlp", network=network
    )
    problem = TrainingProblem.prepare(
        in_memory, initial, standardize=True, family="mlp", network=network
    )
    opt = Optimization(lr=1.0, epochs=1)
    found = range_test_cluster(cluster, opt)
    expected = range_test(problem.data, problem.initial, opt, device=torch.device("cpu"))
    assert found.chosen == expected.chosen and len(found.lrs) == len(expected.lrs) > 20
    assert found.lrs == expected.lrs
    # the curve up to the chosen rate; the larger rates after it make the steps unstable, and
    # an unstable step magnifies the two sums' last-bit differences (as two machines' would)
    chosen = found.lrs.index(found.chosen) + 1
    assert chosen > 20
    np.testing.assert_allclose(found.losses[:chosen], expected.losses[:chosen], rtol=1e-9)

    for name in ("diabetes", "cancer", "iris"):
        on_cluster, in_memory, initial, network = _network_both(connection, name, real_data[name])
        assert on_cluster.cluster is not None
        task = NETWORKS[name][0] or "regression"
        rows = [list(in_memory.x[0]), list(in_memory.x[-1])]
        evaluation = evaluate_cluster(
            on_cluster.cluster,
            initial,
            family="mlp",
            predict_rows=rows,
            network=network.build,
            task=task,
        )
        reference = evaluate_network(
            network.build(torch.float64),
            initial,
            in_memory.x,
            in_memory.y,
            task=task,
            classes=in_memory.classes,
            predict_rows=rows,
        )
        assert evaluation["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-12)
        assert evaluation["predictions"] == reference["predictions"]
        assert evaluation["optimum"] == reference["optimum"]
        assert evaluation.get("classes") == reference.get("classes")
        for key, value in reference["train"].items():
            if key == "roc_auc":
                assert evaluation["train"][key] is None and value is not None
            elif isinstance(value, float):
                assert evaluation["train"][key] == pytest.approx(value, rel=1e-12), (name, key)
            else:
                assert evaluation["train"][key] == value, (name, key)


def test_the_driver_receives_parameters_and_gradients_never_rows(
    connection: Connection, real_data: dict[str, Path]
) -> None:
    """Per epoch the driver sends one float64 array of the parameters to each file's task and
    gets back a loss, a row count and a gradient: O(parameters) bytes, whatever the rows. A
    linear model's statistics come once, and nothing an epoch."""
    on_cluster, _, initial = _both(connection, real_data["cancer"], "logistic")
    assert on_cluster.cluster is not None
    files, parameters = len(on_cluster.cluster.parts), len(initial)
    data_bytes = on_cluster.n_rows * (on_cluster.n_features + 1) * 8
    _, _, traffic, _ = _on_cluster(on_cluster, initial, Optimization(lr=0.5, epochs=5), "logistic")
    assert traffic.epochs == 5 and len(traffic.per_epoch) == 5
    for sent, received in traffic.per_epoch:
        assert 8 * parameters * files <= sent <= (8 * parameters + 400) * files
        assert 8 * parameters * files <= received <= (8 * parameters + 600) * files
        assert received < data_bytes / 20
    diabetes, _, linear_initial = _both(connection, real_data["diabetes"], "linear")
    _, _, linear, _ = _on_cluster(
        diabetes, linear_initial, Optimization(lr=0.1, epochs=50), "linear"
    )
    assert linear.epochs == 0 and linear.sent == linear.received == 0
    d = diabetes.n_features + 1
    assert 0 < linear.statistics <= 4 * (8 * d * d + 8 * d + 600)  # 4 files' moments, once


def test_a_gradient_missing_a_file_is_never_stepped_on(
    connection: Connection, real_data: dict[str, Path]
) -> None:
    on_cluster, _, initial = _both(connection, real_data["iris"], "softmax")
    problem = ClusterProblem.prepare(on_cluster, initial, standardize=True, family="softmax")
    partial = replace(problem, parts=problem.parts[:-1])
    chunks: list[EpochChunk] = []
    with pytest.raises(GdflowError, match="not each of the 2 once|no step was taken") as error:
        fit_cluster(partial, Optimization(lr=0.5, epochs=3), hooks=Hooks(on_chunk=chunks.append))
    assert "\n" not in str(error.value) and chunks == []
    # the rows counted too: every file answered, but one with another file's rows
    doubled = replace(problem, parts=(problem.parts[0], *problem.parts[:-1]))
    with pytest.raises(GdflowError, match="no step was taken"):
        fit_cluster(doubled, Optimization(lr=0.5, epochs=3))


def test_the_evaluation_from_the_workers_is_the_streamed_one(
    connection: Connection, real_data: dict[str, Path]
) -> None:
    """Per-file sums on the workers give the metrics one pass over the rows gives."""
    for name, family in (("diabetes", "linear"), ("cancer", "logistic"), ("iris", "softmax")):
        on_cluster, _, initial = _both(connection, real_data[name], family)
        assert on_cluster.cluster is not None
        params = {k: 0.01 * (i % 7 - 3) for i, k in enumerate(initial)}
        found = evaluate_cluster(on_cluster.cluster, params, family=family, predict_rows=())
        labels = Labels(*LABELS[family]) if LABELS[family] else None  # type: ignore[misc]
        streamed = load_streamed(str(real_data[name]), dtype="float64", labels=labels)
        problem = StreamedProblem.prepare(
            streamed, params, standardize=False, family=family, batch_size=1
        )
        expected = evaluate_streamed(problem, params)
        assert found["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-12)
        for key, value in expected["train"].items():
            if isinstance(value, float):
                assert found["train"][key] == pytest.approx(value, rel=1e-12), key
            else:
                assert found["train"][key] == value, key


@pytest.mark.heavy
def test_a_worker_killed_mid_training_is_recomputed_and_the_result_unchanged(
    real_data: dict[str, Path],
) -> None:
    """SIGKILL one of two worker processes after epoch 6: Dask reads its files again on the
    worker left (or the one its nanny restarts), the epochs go on, and the trajectory is
    still the single process's."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        connection = connect(cluster.scheduler_address)
        try:
            on_cluster, in_memory, initial = _both(connection, real_data["cancer"], "logistic")
            pids: dict[str, int] = connection.client.run(os.getpid)
            assert len(pids) == 2
            killed: list[int] = []

            def kill_one(chunk: EpochChunk) -> None:
                if not killed and chunk.epochs[-1] >= 6:
                    victim = sorted(pids.values())[0]
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)

            opt = Optimization(lr=0.5, epochs=20)
            hooks = Hooks(on_chunk=kill_one)
            cluster_result, chunks, traffic, _ = _on_cluster(
                on_cluster, initial, opt, "logistic", hooks=hooks
            )
            assert killed and traffic.epochs == 20
            after = connection.client.run(os.getpid)
            assert killed[0] not in after.values()  # the process is gone: its rows were lost
            single, expected, _ = _single_process(in_memory, initial, opt, "logistic")
            _assert_same_trajectory(cluster_result, single, chunks, expected)
        finally:
            connection.close()


def test_float32_data_trains_in_float32_on_the_cluster_too(
    connection: Connection, real_data: dict[str, Path]
) -> None:
    """The default dtype: the workers' float32 sums differ from one process's only in the
    order of float32 additions."""
    on_cluster = load_cluster(
        connection, str(real_data["cancer"]), dtype="float32", labels=LABELS["logistic"]
    )
    in_memory = load_dataset(
        str(real_data["cancer"]), dtype="float32", labels=Labels("binary", "logistic")
    )
    names = parameter_names(on_cluster.feature_names, bias=True)
    initial = initial_parameters(names, init=0.0, seed=0)
    opt = Optimization(lr=0.5, epochs=15)
    cluster, chunks, _, _ = _on_cluster(on_cluster, initial, opt, "logistic")
    single, expected, _ = _single_process(in_memory, initial, opt, "logistic")
    np.testing.assert_allclose(_losses(chunks), _losses(expected), rtol=1e-4)
    np.testing.assert_allclose(
        list(cluster.final_params.values()),
        list(single.final_params.values()),
        rtol=1e-3,
        atol=1e-5,
    )


def test_with_every_worker_gone_the_fit_fails_in_one_line_after_the_timeout(
    real_data: dict[str, Path],
) -> None:
    """The only worker (a `dask worker --no-nanny` process: nothing restarts it) is killed with
    SIGKILL after epoch 5. Dask would wait for a worker forever; the fit waits
    `cluster_timeout` seconds for epoch 6's gradients, then fails in one line naming the
    scheduler and the fix. Epochs 1-4 (a chunk) and 5 (handed on at the failure) are kept,
    none after."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        worker = subprocess.Popen(
            [sys.executable, "-m", "dask", "worker", address, "--no-nanny", "--nthreads", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        connection = connect(address, cluster_timeout=60)  # the worker's first imports
        try:
            connection.client.wait_for_workers(1, timeout=60)
            on_cluster, _, initial = _both(connection, real_data["cancer"], "logistic")
            problem = ClusterProblem.prepare(
                on_cluster, initial, standardize=True, family="logistic"
            )
            connection.cluster_timeout = 3
            epochs_seen: list[int] = []

            def kill_after_five() -> None:
                epochs_seen.append(len(epochs_seen) + 1)  # asked once after every epoch
                if len(epochs_seen) == 5:
                    worker.kill()
                    worker.wait()

            chunks: list[EpochChunk] = []
            hooks = Hooks(on_chunk=chunks.append, should_stop=kill_after_five, chunk_epochs=4)
            started = time.monotonic()
            with pytest.raises(GdflowError) as error:
                fit_cluster(problem, Optimization(lr=0.5, epochs=50), hooks=hooks)
            waited = time.monotonic() - started
        finally:
            connection.close()
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert str(error.value) == (
        f"no Dask worker answered for 3 s at {address} (the gradients of epoch 6): start "
        "workers or raise --cluster-timeout"
    )
    assert [len(c) for c in chunks] == [4, 1]
    assert np.concatenate([c.epochs for c in chunks]).tolist() == [1, 2, 3, 4, 5]
    assert 3 <= waited < 30
