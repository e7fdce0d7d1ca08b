"""Full-batch epochs on a Dask cluster: the rows stay on the workers, the step is the driver's.

The workers keep each Parquet file's rows (`data.cluster`) and, for training, a copy in
training units (`prepare_part`: the in-memory path's `Standardizer.transform`, with the
statistics merged from every file's moments, and class indices). Each epoch the driver sends
the parameters (one float64 array) with one task per file, and each worker returns that
file's loss summed over its rows and its gradient (`part_gradient`: the model's own loss, so
class weights behave as in memory, and autograd). The driver adds them up in file order (so
the sum never depends on which worker answers first), checks that every file answered for all
its rows, divides by n, sets each parameter's `.grad` and steps the `torch.optim` optimizer
built as `fit` builds it, with the same records, chunks, stop rules and stop checks: the
trajectory is the single process's, up to the order of floating-point sums. An MLP trains the
same way: each task builds the network from its architecture (`mlp.MLPShape`) and loads the
driver's weights; its `--lr auto` is `fit`'s range test with each step's gradient from the
workers (`range_test_cluster`), its evaluation per-file sums of its outputs' errors.

A linear model needs no traffic per epoch: the workers send the sufficient statistics of
their rows once (`part_statistics`: n, means and co-moments, merged in file order by Chan's
update), and the driver trains on them as `fit`'s statistics path does (`statistics_mse`).

A worker lost mid-training loses the rows it kept; Dask reads those files again on another
worker (the futures' lineage) and the epoch goes on with them. When Dask gives up (a task's
workers died `distributed.scheduler.allowed-failures` times, or the scheduler is gone), or
when no task finishes for `--cluster-timeout` seconds (every worker gone: Dask itself would
wait forever), the run fails with one line, the epochs before handed on: an epoch is never
taken on a partial gradient.
"""

from __future__ import annotations

import itertools
import pickle
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
import torch

from gdflow.config.errors import GdflowError
from gdflow.data.cluster import ClusterData, Part, checked, cluster_failure
from gdflow.data.dataset import Dataset
from gdflow.data.streaming import Moments
from gdflow.training.classifier_evaluation import weight_matrix
from gdflow.training.conditioning import Gram
from gdflow.training.evaluation import metrics_of_sums
from gdflow.training.loop import EpochEnd, Hooks, recorded_parameters, with_final_weights
from gdflow.training.lr_finder import RangeTest, range_test_of
from gdflow.training.mlp import load_flat
from gdflow.training.model import (
    CLASSIFIERS,
    LinearModel,
    NetworkModel,
    TrainingData,
    build_model,
)
from gdflow.training.network_evaluation import network_record, outputs_of, probabilities_of
from gdflow.training.optimization import Optimization, make_optimizer, make_scheduler, zero_grad
from gdflow.training.parameters import is_bias
from gdflow.training.preprocessing import Network, Standardizer, TrainingProblem
from gdflow.training.records import EpochRecords
from gdflow.training.result import History, TrainResult
from gdflow.training.statistics_mse import LossPath, MSEStatistics, StatisticsMSE
from gdflow.training.streamed import (
    ClassifierSums,
    classifier_evaluation,
    classifier_sums,
    gram_of,
    least_squares_of,
    linear_evaluation,
    linear_sums,
    metrics_of_counts,
    standardizer_of,
)

#: Parameters a model trained on the cluster may have, at most: each epoch sends them to every
#: file's task and gets a gradient of the same size back (2 x 8 bytes x parameters x files:
#: 16 MB a file an epoch at this limit), and the driver holds every file's gradient at once.
#: A file's compute grows with the parameters too: measured (benchmarks/cluster.py, 64,64 and
#: 256,256 MLPs on 16 features), its bytes on a 1 Gbit/s link cost what about 200-400 of its
#: rows' gradient does, whatever the network; the limit is the driver's traffic and memory.
MAX_PARAMETERS = 1_000_000
#: Why a classifier trained on the cluster has no exact optimum in its evaluation.
NO_OPTIMUM = "not computed on a Dask cluster (Newton's method needs every row in one place)"


# --- What runs on the workers -----------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """One file's rows in training units, kept by a worker: standardised features, and the
    target centred (regression) or as class indices (a classifier), in the training dtype."""

    index: int
    x: np.ndarray
    y: np.ndarray


def prepare_part(
    part: Part,
    digest: str,
    where: str,
    scaler: Optional[Standardizer],
    class_values: Optional[np.ndarray],
) -> Prepared:
    """A kept file's rows as training sees them (run on its worker; Dask runs it again, and
    reads the file again, when the worker that kept them is lost: `checked`)."""
    x, y = checked(part, digest, where).x, part.y
    if class_values is not None:
        y = np.searchsorted(class_values, y).astype(y.dtype)
    if scaler is not None:
        x, y = scaler.transform(x, y)
    return Prepared(part.index, x, y)


@dataclass(frozen=True)
class GradientSpec:
    """What each gradient task needs besides the rows and the parameters: the model's
    parameter names and family, a classifier's weight of each class, and a network's builder
    (`mlp.MLPShape`: its architecture, which pickles)."""

    names: tuple[str, ...]
    family: str
    n_classes: int
    class_weights: Optional[np.ndarray]
    network: Optional[Callable[[torch.dtype], torch.nn.Module]] = None

    def model(self, part: Prepared, values: np.ndarray) -> Any:
        """The model of the family on one file's rows, at the parameters `values`."""
        weights = None
        if self.class_weights is not None:
            weights = self.class_weights[part.y.astype(np.int64)]
        data = TrainingData(
            part.x, part.y, None, self.family, self.n_classes, weights, self.network
        )
        cpu = torch.device("cpu")
        if self.network is not None:  # built, then given the driver's weights as they are
            network = build_model(data, {}, cpu)
            assert isinstance(network, NetworkModel)
            load_flat(network.module, values)
            return network
        return build_model(data, dict(zip(self.names, values.tolist())), cpu)


@dataclass(frozen=True)
class PartGradient:
    """One file's loss summed over its rows, its rows, and the gradient of that sum."""

    index: int
    rows: int
    loss_sum: float
    grad: np.ndarray


def part_gradient(spec: GradientSpec, part: Prepared, values: np.ndarray) -> PartGradient:
    """The summed loss of one file's rows and its gradient, by autograd (run on its worker)."""
    rows = len(part.y)
    if rows == 0:
        return PartGradient(part.index, 0, 0.0, np.zeros(len(values)))
    model = spec.model(part, values)
    loss = model.full_loss()
    loss.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.params]).to(torch.float64).numpy()
    return PartGradient(part.index, rows, float(loss.detach()) * rows, grad * rows)


def part_statistics(part: Prepared) -> tuple[int, Moments]:
    """n, means and co-moments of one file's rows in training units, in float64 (run on its
    worker; `MSEStatistics.of`, the single process's one pass)."""
    stats = MSEStatistics.of(torch.from_numpy(part.x), torch.from_numpy(part.y))
    return part.index, Moments(stats.n, stats.mean.numpy(), stats.comoment.numpy())


def part_linear_sums(
    part: Part, digest: str, where: str, theta: np.ndarray, theta_optimum: np.ndarray, bias: bool
) -> tuple[int, np.ndarray]:
    """`linear_sums` of one kept file's rows (original units; run on its worker)."""
    part = checked(part, digest, where)
    return part.index, linear_sums(part.x, part.y, theta, theta_optimum, bias=bias)


def part_classifier_sums(
    part: Part,
    digest: str,
    where: str,
    theta: np.ndarray,
    family: str,
    class_values: np.ndarray,
    weights: Optional[np.ndarray],
) -> tuple[int, ClassifierSums]:
    """`classifier_sums` of one kept file's rows (original units; run on its worker)."""
    part = checked(part, digest, where)
    y = np.searchsorted(class_values, part.y).astype(np.int64)
    return part.index, classifier_sums(part.x, y, theta, family=family, weights=weights)


def part_network_sums(
    part: Part,
    digest: str,
    where: str,
    network: Callable[[torch.dtype], torch.nn.Module],
    values: np.ndarray,
    task: str,
    class_values: Optional[np.ndarray],
) -> tuple[int, Any]:
    """A network's sums on one kept file's rows in float64 (original units; run on its
    worker): of the squared and the absolute residuals (regression), else `ClassifierSums`."""
    part = checked(part, digest, where)
    outputs = outputs_of(load_flat(network(torch.float64), values), part.x)
    if task == "regression":
        residual = outputs - part.y.astype(np.float64)
        return part.index, np.array([residual @ residual, np.abs(residual).sum()])
    assert class_values is not None
    y = np.searchsorted(class_values, part.y).astype(np.int64)
    return part.index, ClassifierSums.of(probabilities_of(outputs, task), y)


# --- The driver -----------------------------------------------------------------------------


@dataclass
class Traffic:
    """Bytes the driver sent to and received from the workers for the epochs' gradients
    (pickled sizes, numpy buffers counted without copying them), and the statistics' bytes."""

    epochs: int = 0
    sent: int = 0
    received: int = 0
    statistics: int = 0
    per_epoch: list[tuple[int, int]] = field(default_factory=list)


def wire_bytes(value: Any) -> int:
    """The bytes of `value` pickled (protocol 5; array buffers counted, not copied)."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return len(head) + sum(memoryview(b).nbytes for b in buffers)


@dataclass(frozen=True)
class ClusterProblem:
    """A data set kept on the cluster and what training needs besides its rows: `problem`
    holds no rows, only the family, classes, initial parameters in training units and the way
    back; `parts` are futures of each file's rows in training units."""

    data: ClusterData
    problem: TrainingProblem
    #: A classifier's weight of each class (--class-weight balanced); None: every row weighs 1.
    class_weights: Optional[np.ndarray]
    parts: tuple[Any, ...] = field(compare=False, repr=False)

    @classmethod
    def prepare(
        cls,
        dataset: Dataset,
        initial: dict[str, float],
        *,
        standardize: bool,
        family: str,
        class_weight: Optional[str] = None,
        network: Optional[Network] = None,
    ) -> ClusterProblem:
        """As `TrainingProblem.prepare`, from the workers' statistics instead of the rows;
        each file's rows in training units are formed and kept on its worker. A network's
        initial weights are its own (standardising only changes its inputs)."""
        data = dataset.cluster
        assert data is not None, "a data set kept on a Dask cluster"
        if len(initial) > MAX_PARAMETERS:
            raise GdflowError(
                f"the model has {len(initial):,} parameters, more than the {MAX_PARAMETERS:,} "
                "a cluster run sends to every file each epoch; train a smaller model"
            )
        n_classes = len(data.classes) if data.classes is not None else 0
        d = data.n_features
        problem = TrainingProblem(
            np.empty((0, d), dtype=data.dtype),
            np.empty(0, dtype=data.dtype),
            dict(initial),
            None,
            None,
            family,
            n_classes,
            network=network,
        )
        scaler = None
        if standardize:
            scaler = standardizer_of(
                data,
                bias=any(is_bias(name) for name in initial),
                labels=n_classes > 0,
                outputs=n_classes if family == "softmax" else 1,
            )
            scaled = dict(initial) if network is not None else scaler.to_scaled(initial)
            problem = replace(problem, initial=scaled, standardizer=scaler)
        weights = None
        if class_weight == "balanced" and data.class_counts is not None:
            weights = data.rows / (n_classes * data.class_counts.astype(np.float64))
        client = data.client
        parts = tuple(
            client.submit(prepare_part, *each, scaler, data.class_values, pure=False)
            for each in data.expected
        )
        # a failed read raises here, with its one-line reason (Connection.wait)
        data.connection.wait(parts, "preparing the rows for training")
        return cls(data, problem, weights, parts)

    @property
    def rows(self) -> int:
        """Rows of the data set."""
        return self.data.rows

    def gram(self, bias: bool) -> Gram:
        """A^T A of the rows in training units, from the merged moments."""
        return gram_of(self.data.moments, self.problem.standardizer, bias)

    def statistics(self, traffic: Optional[Traffic] = None) -> MSEStatistics:
        """The rows' sufficient statistics in training units: each worker's, merged in file
        order."""
        client = self.data.client
        futures = [client.submit(part_statistics, part, pure=False) for part in self.parts]
        try:
            found = self.data.connection.gather(futures, "the sufficient statistics")
        except Exception as exc:  # noqa: BLE001
            raise cluster_failure(exc, "compute the sufficient statistics") from None
        _check_answers([index for index, _ in found], len(self.parts), "statistics")
        merged = Moments(
            0, np.zeros(self.data.n_features + 1), np.zeros((self.data.n_features + 1,) * 2)
        )
        for _, moments in sorted(found, key=lambda item: item[0]):
            merged = merged.merge(moments)
        if merged.rows != self.rows:
            raise GdflowError(
                f"the workers' statistics cover {merged.rows:,} rows, not the data's "
                f"{self.rows:,}; run again"
            )
        if traffic is not None:
            traffic.statistics += sum(wire_bytes(item) for item in found)
        return MSEStatistics(
            n=merged.rows,
            mean=torch.from_numpy(merged.mean.copy()),
            comoment=torch.from_numpy(merged.comoment.copy()),
        )

    def release(self) -> None:
        """Let the workers drop the rows in training units (the rows as read stay)."""
        for future in self.parts:
            future.release()


def _check_answers(indices: Sequence[int], expected: int, what: str) -> None:
    """GdflowError unless every file answered exactly once."""
    if sorted(indices) != list(range(expected)):
        raise GdflowError(
            f"the workers' {what} came from files {sorted(indices)}, not each of the "
            f"{expected} once; no step was taken on them: run again"
        )


class _RemoteGradient:
    """Each epoch's loss and gradient from the workers: the parameters out, one task per
    file, the files' sums back and added up in file order. `step`: what a call is, for the
    tasks' names and the errors (an epoch, or a step of the range test)."""

    def __init__(
        self,
        problem: ClusterProblem,
        params: list[torch.Tensor],
        traffic: Traffic,
        step: str = "epoch",
    ):
        self.problem = problem
        self.client = problem.data.client
        self.params = params
        self.traffic = traffic
        self.step = step
        network = problem.problem.network
        spec = GradientSpec(
            names=tuple(problem.problem.initial),
            family=problem.problem.family,
            n_classes=problem.problem.n_classes,
            class_weights=problem.class_weights,
            network=network.build if network is not None else None,
        )
        # Sent once and kept on the workers (recomputable anywhere from its task).
        self.spec = self.client.submit(_identity, spec, pure=False)
        self.token = uuid.uuid4().hex[:12]

    def __call__(self, epoch: int) -> torch.Tensor:
        """The mean loss at the current parameters; each parameter's `.grad` set to the mean
        loss's gradient."""
        with torch.no_grad():
            values = torch.cat([p.reshape(-1) for p in self.params]).to(torch.float64).numpy()
        parts = self.problem.parts
        step = f"{self.step} {epoch}"
        keys = [f"gdflow-gradient-{self.token}-{step}-{i}" for i in range(len(parts))]
        count = len(parts)  # one message to the scheduler for the epoch's tasks
        futures = self.client.map(
            part_gradient, [self.spec] * count, list(parts), [values] * count, key=keys
        )
        try:
            found: list[PartGradient] = self.problem.data.connection.gather(
                futures, f"the gradients of {step}"
            )
        except Exception as exc:  # noqa: BLE001
            raise cluster_failure(exc, f"compute the gradient of {step}") from None
        _check_answers([g.index for g in found], len(parts), f"gradients of {step}")
        found.sort(key=lambda g: g.index)
        rows = sum(g.rows for g in found)
        if rows != self.problem.rows:
            raise GdflowError(
                f"the workers' gradients of {step} cover {rows:,} rows, not the data's "
                f"{self.problem.rows:,}; no step was taken on them: run again"
            )
        loss_sum, grad = 0.0, np.zeros_like(found[0].grad)
        for part in found:
            loss_sum += part.loss_sum
            grad += part.grad
        grad /= rows
        offset = 0
        for p in self.params:
            size = p.numel()
            p.grad = torch.from_numpy(grad[offset : offset + size]).reshape(p.shape).to(p.dtype)
            offset += size
        sent = wire_bytes(values) * len(parts)
        received = sum(wire_bytes(g) for g in found)
        self.traffic.epochs += 1
        self.traffic.sent += sent
        self.traffic.received += received
        self.traffic.per_epoch.append((sent, received))
        return torch.tensor(loss_sum / rows, dtype=self.params[0].dtype)


def _identity(value: Any) -> Any:
    return value


def fit_cluster(
    problem: ClusterProblem,
    opt: Optimization,
    *,
    hooks: Hooks = Hooks(),  # noqa: B008 - frozen, safe as a default
    traffic: Optional[Traffic] = None,
) -> TrainResult:
    """Train full-batch on the cluster's rows and return how it ended (as `fit` does: the same
    optimizer, schedule, records, chunks, stop rules and stop checks). A linear model trains
    on the workers' sufficient statistics; a classifier or a network on the workers'
    gradients each epoch. When the workers cannot give an epoch's gradient (GdflowError) the
    epochs before it are handed on, and none after. `traffic` is filled with the bytes
    exchanged."""
    assert opt.batch_size is None, "the cluster trains full-batch epochs"
    traffic = traffic if traffic is not None else Traffic()
    started = time.perf_counter()
    device = torch.device("cpu")
    model = build_model(problem.problem.data, problem.problem.initial, device)
    params = model.params
    optimizer = make_optimizer(params, opt)
    scheduler = make_scheduler(optimizer, opt)
    linear = isinstance(model, LinearModel)
    if linear:
        statistics = StatisticsMSE(problem.statistics(traffic), bias=model.has_bias)
        problem.release()  # the statistics are all an epoch needs
    else:
        remote = _RemoteGradient(problem, params, traffic)
    records = EpochRecords(max(1, min(hooks.chunk_epochs, opt.epochs)))
    recorded, initial = recorded_parameters(model, problem.problem.initial)
    history = History(initial, opt, has_val=False, on_chunk=hooks.on_chunk)
    end = EpochEnd(records, history, hooks, opt.epochs)
    group = optimizer.param_groups[0]
    lr = group["lr"]
    for epoch in range(1, opt.epochs + 1):
        if linear:
            assert isinstance(model, LinearModel)
            loss = statistics.loss(model.w, model.bias)
            loss.backward()
        else:
            try:
                loss = remote(epoch)
            except GdflowError:
                end.hand_on(epoch - 1)  # the epochs done are kept, as a stop would keep them
                raise
        grads = [p.grad for p in params]
        optimizer.step()
        zero_grad(params)
        records.add(lr, loss.detach(), grads, recorded, None, None)
        if scheduler is not None:
            scheduler.step()
            lr = group["lr"]
        if end(epoch):  # the stop rules, every chunk; a stop asked for
            break
    path: LossPath = "statistics" if linear else "direct"
    result = history.result(str(device), time.perf_counter() - started, path)
    return replace(with_final_weights(model, result), data_mode="cluster")


def range_test_cluster(problem: ClusterProblem, opt: Optimization) -> RangeTest:
    """`--lr auto` for a network on the cluster: `fit`'s learning-rate range test on a copy of
    the model (`lr_finder.range_test_of`), each step's loss and gradient summed from the
    workers as an epoch's are (up to 100 steps: as many epochs' traffic)."""
    model = build_model(problem.problem.data, problem.problem.initial, torch.device("cpu"))
    remote = _RemoteGradient(problem, model.params, Traffic(), step="range-test step")
    steps = itertools.count(1)
    return range_test_of(model.params, lambda: remote(next(steps)), opt)


def evaluate_cluster(
    data: ClusterData,
    params: dict[str, float],
    *,
    family: str,
    class_weights: Optional[np.ndarray] = None,
    predict_rows: Sequence[Sequence[float]] = (),
    network: Optional[Callable[[torch.dtype], torch.nn.Module]] = None,
    task: str = "regression",
) -> dict[str, Any]:
    """`evaluate_streamed`'s record from per-file sums computed where the rows are: metrics
    on every row; for a linear model the least-squares optimum (from the moments) and the gap
    to it; for a classifier no exact optimum and no ROC AUC. A `network` (its builder, for
    its `task`) gets `evaluate_network`'s record, less the ROC AUC."""
    client = data.client
    if network is not None:
        return _evaluate_network(data, params, network, task, predict_rows)
    if family in CLASSIFIERS:
        assert data.classes is not None and data.class_values is not None
        k = len(data.classes)
        theta = weight_matrix(
            params, n_features=data.n_features, outputs=k if family == "softmax" else 1
        )
        futures = [
            client.submit(
                part_classifier_sums,
                *each,
                theta,
                family,
                data.class_values,
                class_weights,
                pure=False,
            )
            for each in data.expected
        ]
        found = _gather(data, futures)
        sums = ClassifierSums.empty(k)
        for _, each in found:
            sums = sums.add(each)
        return classifier_evaluation(
            sums,
            rows=data.rows,
            family=family,
            theta=theta,
            classes=data.classes,
            predict_rows=predict_rows,
            no_optimum=NO_OPTIMUM,
        )
    theta = np.array(list(params.values()), dtype=np.float64)
    optimum = least_squares_of(data, list(params))
    theta_optimum = np.array(list(optimum.values()), dtype=np.float64)
    futures = [
        client.submit(part_linear_sums, *each, theta, theta_optimum, "b" in params, pure=False)
        for each in data.expected
    ]
    total = np.zeros(3)
    for _, each in _gather(data, futures):
        total += each
    return linear_evaluation(
        total, moments=data.moments, params=params, optimum=optimum, predict_rows=predict_rows
    )


def _evaluate_network(
    data: ClusterData,
    params: dict[str, float],
    network: Callable[[torch.dtype], torch.nn.Module],
    task: str,
    predict_rows: Sequence[Sequence[float]],
) -> dict[str, Any]:
    """`evaluate_cluster` for a network: each file's sums (`part_network_sums`) added up."""
    values = np.array(list(params.values()), dtype=np.float64)
    futures = [
        data.client.submit(
            part_network_sums, *each, network, values, task, data.class_values, pure=False
        )
        for each in data.expected
    ]
    found = [each for _, each in _gather(data, futures)]
    if task == "regression":
        sse, sae = np.sum(found, axis=0)
        total = float(data.moments.comoment[-1, -1])  # the target's squares about its mean
        train = metrics_of_sums(float(sse), float(sae), rows=data.rows, total=total)
    else:
        assert data.classes is not None
        sums = ClassifierSums.empty(len(data.classes))
        for each in found:
            sums = sums.add(each)
        train = metrics_of_counts(sums.matrix, sums.log_loss / data.rows, binary=task == "binary")
    module = load_flat(network(torch.float64), values)
    return network_record(module, train, task=task, classes=data.classes, predict_rows=predict_rows)


def _gather(data: ClusterData, futures: list[Any]) -> list[Any]:
    """The futures' (index, value) results in file order; every file exactly once."""
    try:
        found = data.connection.gather(futures, "evaluating the model")
    except Exception as exc:  # noqa: BLE001
        raise cluster_failure(exc, "evaluate the model") from None
    _check_answers([index for index, _ in found], len(data.parts), "evaluation")
    return sorted(found, key=lambda item: item[0])
