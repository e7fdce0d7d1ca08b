"""The five Prefect tasks of a training run, each a thin wrapper over a plain function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any, Optional

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gdflow.config.errors import GdflowError
from gdflow.config.settings import Settings
from gdflow.config.train import TrainConfig
from gdflow.data.cluster import cluster_blockers, connect, load_cluster
from gdflow.data.dataset import (
    Dataset,
    Labels,
    load_dataset,
    load_streamed,
    resolve,
    split_validation,
)
from gdflow.data.fingerprint import data_fingerprint, file_state, fingerprint
from gdflow.data.sources import data_options, is_url, local_copy
from gdflow.data.streaming import Plan, memory_available, size_text, stream_plan
from gdflow.registry import champion, versions
from gdflow.registry.versions import spec_of
from gdflow.registry.warm_start import champion_parameters
from gdflow.runs.recording import (
    MetricWriter,
    RunRef,
    end_run,
    open_database,
    outcome_of,
    record_setup,
)
from gdflow.runs.signals import stop_on_signals, stop_requested
from gdflow.storage import RunStatus
from gdflow.tasks.artifacts import ProgressArtifact
from gdflow.tasks.dashboard_feed import quiet_when_unreachable
from gdflow.tasks.events import emit
from gdflow.training.classification import class_weights
from gdflow.training.classifier_evaluation import class_prediction_line, evaluate_classifier
from gdflow.training.cluster import (
    ClusterProblem,
    Traffic,
    evaluate_cluster,
    fit_cluster,
    range_test_cluster,
)
from gdflow.training.conditioning import Conditioning, Gram, analyse, auto_learning_rate
from gdflow.training.devices import resolve_device
from gdflow.training.evaluation import check_predict_rows, evaluate, prediction_line
from gdflow.training.fused_cross_entropy import kernel_problem, worth_fusing
from gdflow.training.loop import Hooks, fit, loss_path_of
from gdflow.training.lr_finder import RangeTest, range_test
from gdflow.training.mlp import DEFAULT_HIDDEN, MLPShape, flat_names, flat_values
from gdflow.training.model import CLASSIFIERS
from gdflow.training.network_evaluation import evaluate_network
from gdflow.training.optimization import Optimization
from gdflow.training.parameters import initial_parameters, is_bias, parameter_names
from gdflow.training.preprocessing import Network, TrainingProblem
from gdflow.training.records import EpochChunk, progress_line
from gdflow.training.result import TrainResult
from gdflow.training.streamed import (
    StreamedProblem,
    evaluate_streamed,
    fit_streamed,
    prefetch_by_default,
)
from gdflow.training.user_models import build_user_module


def retry_unless_user_error(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry transient I/O failures only: a GdflowError will fail the same way again."""
    return not isinstance(getattr(state, "data", None), GdflowError)


@task(
    name="load-data",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def load_data(config: TrainConfig) -> Dataset:
    """Load the configured data and check it can train the configured model."""
    labels = Labels(config.resolved_task, config.model) if config.classifier else None
    if config.dask_address:
        dataset = _load_on_cluster(config, labels)
    else:
        dataset = _load_here(config, labels)
    dataset = split_validation(dataset, config.validation_split, seed=config.seed)
    if dataset.index_columns:
        get_run_logger().info(
            "Left out %s: the file's row index (as pandas writes it), not data",
            ", ".join(
                repr(name) if name else "the unnamed first column" for name in dataset.index_columns
            ),
        )
    get_run_logger().info(
        "Loaded %d rows x %d feature(s) %s -> %s from %s%s",
        dataset.n_rows,
        dataset.n_features,
        list(dataset.feature_names),
        dataset.target_name,
        dataset.source,
        f" ({dataset.read_as})" if dataset.read_as else "",
    )
    if dataset.classes is not None:
        get_run_logger().info(
            "Classes of %s: %s", dataset.target_name, ", ".join(map(str, dataset.classes))
        )
    if dataset.stream is not None or dataset.cluster is not None:
        get_run_logger().info(
            "One pass over the %s rows gave their statistics and checks; the data checks and "
            "the champion's comparison use a seeded sample of %s of them",
            f"{dataset.n_rows:,}",
            f"{len(dataset.y):,}",
        )
    return dataset


def _load_here(config: TrainConfig, labels: Optional[Labels]) -> Dataset:
    """`load_data` in this process: in memory, or streamed from the files."""
    with local_copy(config.data or "") as local:  # a remote --data: a temporary copy
        path = str(local) if config.data else None
        before = file_state(path) if path else None
        plan = _stream_plan(config, path)
        if plan.stream:
            assert path is not None and plan.reason is not None
            get_run_logger().info(plan.reason)
            dataset = load_streamed(
                path,
                features=config.features,
                target=config.target,
                dtype=config.dtype,
                labels=labels,
                seed=config.seed,
                reason=plan.reason,
            )
        else:
            dataset = load_dataset(
                path,
                features=config.features,
                target=config.target,
                dtype=config.dtype,
                labels=labels,
                delimiter=config.delimiter,
            )
        check_predict_rows(config.prediction_inputs, dataset.n_features)
        found = fingerprint(path, rows=dataset.n_rows, read_from=before, text=dataset.text)
    return replace(dataset, fingerprint=found, source=config.data or dataset.source)


def _load_on_cluster(config: TrainConfig, labels: Optional[Labels]) -> Dataset:
    """`load_data` on the Dask cluster at --dask-address (`data.cluster`): each Parquet file
    read and kept by a worker; the driver gets statistics, hashes and a seeded sample."""
    blockers = cluster_blockers(config)
    if blockers:
        raise GdflowError(f"--dask-address cannot train this run: {'; '.join(blockers)}")
    assert config.data is not None and config.dask_address is not None
    connection = connect(config.dask_address, cluster_timeout=config.cluster_timeout)
    try:
        get_run_logger().info(
            "Reading %s on %s; the rows stay on the workers", config.data, connection.describe()
        )
        dataset = load_cluster(
            connection,
            config.data,
            features=config.features,
            target=config.target,
            dtype=config.dtype,
            labels=(labels.task, labels.model) if labels else None,
            seed=config.seed,
            options=data_options() if is_url(config.data) else {},
        )
        check_predict_rows(config.prediction_inputs, dataset.n_features)
    except BaseException:
        connection.close()
        raise
    return dataset


def release_data(dataset: Optional[Dataset]) -> None:
    """Let go of a data set kept on a Dask cluster (the workers drop its rows; a local cluster
    started for the run is closed); nothing for other data sets."""
    if dataset is not None and dataset.cluster is not None:
        dataset.cluster.connection.close()


def _stream_plan(config: TrainConfig, path: Optional[str]) -> Plan:
    """Whether the run streams its data (`data.streaming.stream_plan`)."""
    if path is None:
        if config.stream:
            raise GdflowError("--stream needs --data: a Parquet file or folder to stream")
        return Plan(False)
    return stream_plan(config, resolve(path), memory=memory_available(), name=config.data or path)


@task(name="initialize-weight", cache_policy=NO_CACHE)
def initialize_weight(
    config: TrainConfig,
    feature_names: tuple[str, ...],
    classes: Optional[tuple[Any, ...]] = None,
    *,
    database_url: Optional[str] = None,
) -> dict[str, float]:
    """Initial parameter values, named after the features (and a softmax model's classes); a
    network's seeded initial weights, named by layer; or the champion's (`--init champion`)."""
    if config.init == "champion":
        assert database_url is not None, "--init champion reads the champion's database"
        params, number = champion_parameters(
            open_database(database_url),
            name=config.model_name,
            spec=spec_of(config, feature_names, classes),
            standardize=config.standardize,
        )
        get_run_logger().info(
            "Starting from the weights of model %s version %d (the champion)",
            config.model_name,
            number,
        )
        return params
    if config.network:
        module = network_of(config, len(feature_names), classes).build(torch.float64)
        return dict(zip(flat_names(module), flat_values(module).tolist()))
    per_class = classes if config.model == "softmax" else None
    names = parameter_names(feature_names, bias=config.bias, classes=per_class)
    assert config.init != "champion"
    return initial_parameters(names, init=config.init, seed=config.seed)


def network_of(config: TrainConfig, n_features: int, classes: Optional[tuple[Any, ...]]) -> Network:
    """The network of a config (an MLP, or a user's model): its module builder and the widths
    standardisation folds into (an MLP's)."""
    multiclass = classes is not None and len(classes) > 2 and config.resolved_task == "multiclass"
    outputs = len(classes) if classes is not None and multiclass else 1
    if config.user_model:
        user = partial(build_user_module, config.model, n_features, outputs, seed=config.seed)
        return Network(build=lambda dtype: user(dtype=dtype), first_width=0, outputs=outputs)
    hidden = tuple(config.hidden or DEFAULT_HIDDEN)
    shape = MLPShape(n_features, outputs, hidden, config.activation, config.seed)
    return Network(build=shape, first_width=hidden[0], outputs=outputs)


def row_weights(config: TrainConfig, dataset: Dataset) -> Optional[Any]:
    """A classifier's weight per training row for --class-weight (None: every row weighs 1)."""
    if config.class_weight is None or dataset.classes is None:
        return None
    return class_weights(dataset.y.astype("int64"), len(dataset.classes), config.class_weight)


@task(name="train", cache_policy=NO_CACHE)
def train_model(
    config: TrainConfig, dataset: Dataset, initial: dict[str, float], *, device: str, run: RunRef
) -> TrainResult:
    """Run gradient descent on `device`, writing epoch metrics to the database as it goes."""
    if dataset.stream is not None:
        return _train_streamed(config, dataset, initial, device=device, run=run)
    if dataset.cluster is not None:
        return _train_on_cluster(config, dataset, initial, device=device, run=run)
    problem = TrainingProblem.prepare(
        dataset,
        initial,
        standardize=config.standardize,
        family=config.model,
        weights=row_weights(config, dataset),
        network=(
            network_of(config, dataset.n_features, dataset.classes) if config.network else None
        ),
    )
    range_test = None
    if config.network and config.lr == "auto":
        range_test = find_learning_rate(config, problem, device)
        lr = range_test.chosen
    else:
        lr = learning_rate(config, problem)
    conditioning = check_conditioning(config, problem, lr)
    on_chunk, progress = _recording(config, dataset, problem, initial, run, device, conditioning)
    opt, train_device = optimization(config, lr), resolve_device(device)
    _log_loss_path(problem, loss_path_of(problem.data, opt, train_device))
    _log_kernel_fallback(problem, opt, train_device)
    with stop_on_signals(), progress:
        result = fit(
            problem.data,
            problem.initial,
            opt,
            device=train_device,
            hooks=Hooks(on_chunk=on_chunk, should_stop=stop_requested),
        )
    return _finished(problem, result, conditioning, range_test)


def _train_streamed(
    config: TrainConfig, dataset: Dataset, initial: dict[str, float], *, device: str, run: RunRef
) -> TrainResult:
    """`train_model` on a streamed data set (`training.streamed`): the learning rate and the
    conditioning from the rows' Gram matrix, mini-batches from the shuffle buffer."""
    assert config.batch_size is not None, "stream_plan streams mini-batch runs only"
    streamed = StreamedProblem.prepare(
        dataset,
        initial,
        standardize=config.standardize,
        family=config.model,
        batch_size=config.batch_size,
        class_weight=config.class_weight,
        shuffle_buffer=config.shuffle_buffer,
    )
    problem = streamed.problem
    gram = streamed.gram(any(is_bias(name) for name in problem.initial))
    lr, conditioning = _rate_of_gram(
        config, problem, gram, weighted=streamed.class_weights is not None
    )
    on_chunk, progress = _recording(config, dataset, problem, initial, run, device, conditioning)
    row_bytes = (dataset.n_features + 1) * np.dtype(config.dtype).itemsize
    prefetch, why = prefetch_by_default()
    get_run_logger().info(
        "Mini-batches of %d rows drawn from a shuffle buffer of %s rows (%s); the next record "
        "batch read %s (%s)",
        config.batch_size,
        f"{streamed.buffer_rows:,}",
        size_text(min(streamed.buffer_rows, dataset.n_rows) * row_bytes),
        "on a thread while one trains" if prefetch else "between batches",
        why,
    )
    with stop_on_signals(), progress:
        result = fit_streamed(
            streamed,
            optimization(config, lr),
            device=resolve_device(device),
            hooks=Hooks(on_chunk=on_chunk, should_stop=stop_requested),
            prefetch=prefetch,
        )
    return _finished(problem, result, conditioning)


def _train_on_cluster(
    config: TrainConfig, dataset: Dataset, initial: dict[str, float], *, device: str, run: RunRef
) -> TrainResult:
    """`train_model` on a data set kept on a Dask cluster (`training.cluster`): the learning
    rate and the conditioning from the merged moments' Gram matrix (a network's `--lr auto`:
    the range test, each step's gradient from the workers); a linear model trains on the
    workers' sufficient statistics, a classifier or a network on their gradients, every
    epoch."""
    assert dataset.cluster is not None
    cluster = ClusterProblem.prepare(
        dataset,
        initial,
        standardize=config.standardize,
        family=config.model,
        class_weight=config.class_weight,
        network=(
            network_of(config, dataset.n_features, dataset.classes) if config.network else None
        ),
    )
    problem = cluster.problem
    range_test = None
    if config.network and config.lr == "auto":
        range_test = range_test_cluster(cluster, optimization(config, 1.0))
        get_run_logger().info(
            "Learning rate 'auto' resolved to %.6g: %s (each step's gradient from the workers)",
            range_test.chosen,
            range_test.how,
        )
        lr = range_test.chosen
        conditioning = Conditioning(None, None, [])
    else:
        gram = cluster.gram(any(is_bias(name) for name in problem.initial))
        lr, conditioning = _rate_of_gram(
            config, problem, gram, weighted=cluster.class_weights is not None
        )
    on_chunk, progress = _recording(config, dataset, problem, initial, run, device, conditioning)
    connection = dataset.cluster.connection
    logger = get_run_logger()
    logger.info(
        "Training full-batch on %s: %d partition(s) (Parquet files), %s rows; %s",
        connection.describe(),
        len(dataset.cluster.parts),
        f"{dataset.n_rows:,}",
        "the workers send the sufficient statistics once"
        if config.model == "linear"
        else "each epoch the parameters go to every partition and its gradient comes back",
    )
    traffic = Traffic()
    with stop_on_signals(), progress:
        result = fit_cluster(
            cluster,
            optimization(config, lr),
            hooks=Hooks(on_chunk=on_chunk, should_stop=stop_requested),
            traffic=traffic,
        )
    if traffic.epochs:
        logger.info(
            "Cluster traffic per epoch: %s to the workers, %s back (%d partition(s))",
            size_text(traffic.sent / traffic.epochs),
            size_text(traffic.received / traffic.epochs),
            len(cluster.parts),
        )
    else:
        logger.info(
            "Cluster traffic: %s of statistics once, nothing per epoch",
            size_text(traffic.statistics),
        )
    return _finished(problem, result, conditioning, range_test)


def _rate_of_gram(
    config: TrainConfig, problem: TrainingProblem, gram: Gram, *, weighted: bool
) -> tuple[float, Conditioning]:
    """The learning rate and the conditioning of rows not in memory (streamed, or on a Dask
    cluster), from their Gram matrix; rows `weighted` by --class-weight are not checked."""
    lr = learning_rate(config, problem, rows=gram)
    if not weighted:
        return lr, check_conditioning(config, problem, lr, rows=gram)
    get_run_logger().info(
        "Conditioning not checked: rows weighted by --class-weight that are not in memory have "
        "no weighted Gram matrix (it is formed unweighted)"
    )
    return lr, Conditioning(None, None, [])


def _finished(
    problem: TrainingProblem,
    result: TrainResult,
    conditioning: Conditioning,
    range_test: Optional[RangeTest] = None,
) -> TrainResult:
    """A run's result in the data's original units, with the stability bound and the range
    test of `--lr auto` (if one ran), logged."""
    result = replace(
        problem.result_to_original(result),
        max_stable_lr=conditioning.max_stable_lr,
        lr_range_test=range_test.as_record() if range_test is not None else None,
    )
    _log_stop(result)
    return result


def _recording(
    config: TrainConfig,
    dataset: Dataset,
    problem: TrainingProblem,
    initial: dict[str, float],
    run: RunRef,
    device: str,
    conditioning: Conditioning,
) -> tuple[Callable[[EpochChunk], None], ProgressArtifact]:
    """Record the run's set-up (the names of its `initial` parameters, device, conditioning,
    model, classes) and return what every way of training hands its chunks to, and the
    progress artifact."""
    engine = open_database(run.database_url)
    record_setup(
        engine,
        run_id=run.run_id,
        names=list(initial),
        device=device,
        conditioning=conditioning,
        model=config.model,
        task=config.resolved_task,
        classes=dataset.classes,
    )
    progress = ProgressArtifact(
        config.epochs,
        description=f"gdflow run {run.run_id}: epochs done of {config.epochs}",
        logger=get_run_logger(),
    )
    writer = MetricWriter(engine=engine, run_id=run.run_id)
    return _chunk_handler(config, problem, writer, progress), progress


def _log_kernel_fallback(problem: TrainingProblem, opt: Optimization, device: torch.device) -> None:
    """Say when a linear classifier that the fused cross-entropy kernel would serve trains on
    the torch ops instead, and why (no C compiler, a failed build, switched off)."""
    if problem.network is not None or problem.family not in CLASSIFIERS:
        return
    full_batch = opt.batch_size is None or opt.batch_size >= problem.x.shape[0]
    if worth_fusing(problem.x.shape, full_batch=full_batch, device=device) and kernel_problem():
        get_run_logger().warning(
            "Training on the torch ops (two reads of the rows an epoch): the fused "
            "cross-entropy kernel is unavailable: %s",
            kernel_problem(),
        )


def _log_loss_path(problem: TrainingProblem, path: str) -> None:
    """Say when training runs on the rows' sufficient statistics rather than on the rows, or
    on the fused cross-entropy kernel."""
    if path == "fused" and problem.family in CLASSIFIERS:
        get_run_logger().info(
            "Training on the fused cross-entropy kernel: one read of the %s rows an epoch",
            f"{problem.x.shape[0]:,}",
        )
    if path == "statistics":
        rows, features = problem.x.shape
        get_run_logger().info(
            "Training on sufficient statistics XᵀX, Xᵀy (%d x %d): each epoch costs O(d²), "
            "independent of the %s rows",
            features,
            features,
            f"{rows:,}",
        )


def find_learning_rate(config: TrainConfig, problem: TrainingProblem, device: str) -> RangeTest:
    """--lr auto for a network: the learning-rate range test (logged: how it chose)."""
    test = range_test(
        problem.data, problem.initial, optimization(config, 1.0), device=resolve_device(device)
    )
    get_run_logger().info("Learning rate 'auto' resolved to %.6g: %s", test.chosen, test.how)
    return test


def learning_rate(
    config: TrainConfig, problem: TrainingProblem, *, rows: Optional[Gram] = None
) -> float:
    """The configured learning rate, with 'auto' resolved from the data (and logged); `rows`:
    the Gram matrix of rows not in memory (a streamed data set's)."""
    if config.lr != "auto":
        return config.lr
    lr = auto_learning_rate(
        problem.x if rows is None else rows,
        bias=config.bias,
        optimizer=config.optimizer,
        family=config.model,
        weights=problem.weights,
    )
    get_run_logger().info("Learning rate 'auto' resolved to %.6g", lr)
    return lr


def check_conditioning(
    config: TrainConfig, problem: TrainingProblem, lr: float, *, rows: Optional[Gram] = None
) -> Conditioning:
    """The data's conditioning at learning rate `lr`; each of its warnings is logged. A network
    has no stability bound (its loss is not a quadratic or a convex function of its weights).
    `rows`: the Gram matrix of rows not in memory (a streamed data set's)."""
    if config.network:
        return Conditioning(None, None, [])
    conditioning = analyse(
        problem.x if rows is None else rows,
        bias=config.bias,
        lr=None if config.lr == "auto" else lr,
        optimizer=config.optimizer,
        momentum=config.momentum,
        nesterov=config.nesterov,
        standardized=config.standardize,
        family=config.model,
        weights=problem.weights,
    )
    for warning in conditioning.warnings:
        get_run_logger().warning(warning)
    return conditioning


def _chunk_handler(
    config: TrainConfig, problem: TrainingProblem, writer: MetricWriter, progress: ProgressArtifact
) -> Callable[[EpochChunk], None]:
    """The callback `fit` hands each chunk to: stored (synchronously), logged, and shown as
    progress (off the training thread; progress lines stay out of an unreachable API)."""
    logger = quiet_when_unreachable(get_run_logger())

    def on_chunk(chunk: EpochChunk) -> None:
        chunk = problem.to_original(chunk)
        writer(chunk)
        _log_progress(logger, chunk, config.log_every)
        progress.update(int(chunk.epochs[-1]))

    return on_chunk


def optimization(config: TrainConfig, lr: float) -> Optimization:
    """The optimizer, schedule, batching and stop rules of a config, at learning rate `lr`."""
    return Optimization(
        lr=lr,
        epochs=config.epochs,
        optimizer=config.optimizer,
        momentum=config.momentum,
        nesterov=config.nesterov,
        lr_schedule=config.lr_schedule,
        lr_step_epochs=config.lr_step_epochs,
        lr_gamma=config.lr_gamma,
        batch_size=config.batch_size,
        seed=config.seed,
        tolerance=config.tolerance,
        patience=config.patience,
        plateau_epochs=config.plateau_epochs,
        diverge_factor=config.diverge_factor,
    )


def _log_stop(result: TrainResult) -> None:
    """Log how training ended: epochs, verdict, time and device."""
    get_run_logger().info(
        "Stopped after %d epoch(s): %s, %s (%.3f s on %s)",
        result.epochs_done,
        result.stop_reason,
        result.verdict_detail,
        result.seconds,
        result.device,
    )


def _log_progress(logger: Any, chunk: EpochChunk, every: int) -> None:
    """Log the seed's progress line for epochs 1, 1 + every, 1 + 2 * every, ..."""
    if every <= 0:
        return
    for i, epoch in enumerate(chunk.epochs.tolist()):
        if (epoch - 1) % every == 0:
            shown = chunk.names if len(chunk.names) <= MAX_PARAMS_SHOWN else ()
            params = dict(zip(shown, (float(v) for v in chunk.params[i])))
            line = progress_line(epoch, params, float(chunk.losses[i]))
            if chunk.val_accuracies is not None:
                line += f", validation accuracy = {float(chunk.val_accuracies[i]):.3f}"
            logger.info(line)


#: Parameters a progress line shows, at most (the seed's line shows w; a softmax has dozens).
MAX_PARAMS_SHOWN = 8


@task(name="evaluate-prediction", cache_policy=NO_CACHE)
def evaluate_prediction(
    config: TrainConfig, dataset: Dataset, params: dict[str, float]
) -> dict[str, Any]:
    """Predictions for the configured inputs, the training loss and the gap to the optimum."""
    if dataset.stream is not None:
        return _evaluate_streamed(config, dataset, params)
    if dataset.cluster is not None:
        return _evaluate_on_cluster(config, dataset, params)
    validation = None
    if dataset.x_val is not None and dataset.y_val is not None:
        validation = (dataset.x_val, dataset.y_val)
    if config.network:
        return _evaluate_network(config, dataset, params, validation)
    if dataset.classes is not None:
        return _evaluate_classifier(config, dataset, params, validation)
    evaluation = evaluate(
        dataset.x,
        dataset.y,
        params,
        predict_rows=config.prediction_inputs,
        validation=validation,
    )
    logger = get_run_logger()
    for prediction in evaluation["predictions"]:
        logger.info(prediction_line(prediction))
    optimum = ", ".join(f"{k} = {v:.6g}" for k, v in evaluation["least_squares"]["params"].items())
    logger.info(
        "Least-squares optimum: %s (loss %.6g); distance to it %.3g, loss gap %.3g",
        optimum,
        evaluation["least_squares"]["loss"],
        evaluation["param_distance"],
        evaluation["loss_gap"],
    )
    return evaluation


def _evaluate_streamed(
    config: TrainConfig, dataset: Dataset, params: dict[str, float]
) -> dict[str, Any]:
    """`evaluate_prediction` on a streamed data set: one more pass over its rows, logged as
    the in-memory evaluation is."""
    streamed = StreamedProblem.prepare(
        dataset,
        params,
        standardize=False,
        family=config.model,
        batch_size=config.batch_size or 1,
        class_weight=config.class_weight,
    )
    evaluation = evaluate_streamed(streamed, params, predict_rows=config.prediction_inputs)
    _log_evaluation(evaluation, moments="the streamed moments")
    return evaluation


def _evaluate_on_cluster(
    config: TrainConfig, dataset: Dataset, params: dict[str, float]
) -> dict[str, Any]:
    """`evaluate_prediction` on a data set kept on a Dask cluster: per-partition sums computed
    by the workers, logged as the streamed evaluation is."""
    data = dataset.cluster
    assert data is not None
    weights = None
    if config.class_weight == "balanced" and data.class_counts is not None:
        weights = data.rows / (len(data.class_counts) * data.class_counts.astype(np.float64))
    network = network_of(config, dataset.n_features, dataset.classes) if config.network else None
    evaluation = evaluate_cluster(
        data,
        params,
        family=config.model,
        class_weights=weights,
        predict_rows=config.prediction_inputs,
        network=network.build if network is not None else None,
        task=config.resolved_task,
    )
    _log_evaluation(evaluation, moments="the workers' moments")
    return evaluation


def _log_evaluation(evaluation: dict[str, Any], *, moments: str) -> None:
    """Log an evaluation of rows not in memory as the in-memory one is: the predictions, and
    the least-squares optimum (solved from `moments`) and the gaps to it, or why none."""
    logger = get_run_logger()
    for prediction in evaluation["predictions"]:
        line = class_prediction_line if "class" in prediction else prediction_line
        logger.info(line(prediction))
    least_squares = evaluation.get("least_squares")
    if least_squares is not None:
        optimum = ", ".join(f"{k} = {v:.6g}" for k, v in least_squares["params"].items())
        logger.info(
            "Least-squares optimum (from %s): %s (loss %.6g); distance to it %.3g, loss gap %.3g",
            moments,
            optimum,
            least_squares["loss"],
            evaluation["param_distance"],
            evaluation["loss_gap"],
        )
    else:
        logger.info("No exact optimum to compare with: %s", evaluation["optimum"]["reason"])


def _evaluate_network(
    config: TrainConfig, dataset: Dataset, params: dict[str, float], validation: Any
) -> dict[str, Any]:
    """`evaluate_prediction` for a network: its task's metrics per split and predictions."""
    module = network_of(config, dataset.n_features, dataset.classes).build(torch.float64)
    evaluation = evaluate_network(
        module,
        params,
        dataset.x,
        dataset.y,
        task=config.resolved_task,
        classes=dataset.classes,
        predict_rows=config.prediction_inputs,
        validation=validation,
    )
    logger = get_run_logger()
    for prediction in evaluation["predictions"]:
        line = class_prediction_line if "class" in prediction else prediction_line
        logger.info(line(prediction))
    logger.info("Gap to the optimum not measured: %s", evaluation["optimum"]["reason"])
    return evaluation


def _evaluate_classifier(
    config: TrainConfig, dataset: Dataset, params: dict[str, float], validation: Any
) -> dict[str, Any]:
    """`evaluate_prediction` for a classifier: classes and probabilities, metrics per split,
    the gap to the exact optimum (or why none exists), logged."""
    assert dataset.classes is not None
    evaluation = evaluate_classifier(
        dataset.x,
        dataset.y,
        params,
        family=config.model,
        classes=dataset.classes,
        weights=row_weights(config, dataset),
        predict_rows=config.prediction_inputs,
        validation=validation,
    )
    logger = get_run_logger()
    for prediction in evaluation["predictions"]:
        logger.info(class_prediction_line(prediction))
    optimum = evaluation["optimum"]
    if optimum["loss"] is None:
        logger.info("No exact optimum to compare with: %s", optimum["reason"])
    else:
        logger.info(
            "Exact optimum (Newton, float64): loss %.6g; relative loss gap %.3g",
            optimum["loss"],
            optimum["relative_gap"] if optimum["relative_gap"] is not None else float("nan"),
        )
    return evaluation


@task(name="persist", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def persist(
    *,
    run: RunRef,
    result: TrainResult,
    evaluation: Optional[dict[str, Any]],
    config: Optional[TrainConfig] = None,
    dataset: Optional[Dataset] = None,
    model_store: Optional[str] = None,
    flow_run_id: Optional[str] = None,
    scheduled_at: Optional[datetime] = None,
) -> Persisted:
    """Record the run's outcome, summary and evaluation in one transaction. A completed run
    (given its config and data) also saves its model: the file first, then the version's
    record in that same transaction, then the champion decision."""
    outcome = outcome_of(result, evaluation)
    engine = open_database(run.database_url)
    if outcome.status is not RunStatus.COMPLETED or config is None or dataset is None:
        end_run(engine, run_id=run.run_id, outcome=outcome)
        return Persisted(outcome.status)
    store = versions.model_store(
        Settings.load(database_url=run.database_url, model_store=model_store)
    )
    name = config.model_name
    spec = versions.spec_of(config, dataset.feature_names, dataset.classes, dataset.target_name)
    stored = versions.save_model_file(
        store, name=name, run_id=run.run_id, spec=spec, params=result.final_params
    )
    fields = versions.version_fields(
        spec=spec,
        stored=stored,
        store=store,
        run_id=run.run_id,
        flow_run_id=flow_run_id,
        scheduled_at=scheduled_at,
        data_fingerprint=(dataset.fingerprint or {}).get("sha256") or data_fingerprint(config.data),
        evaluation=evaluation,
        standardization=versions.standardization_of(config, dataset, result.final_params),
    )
    version = end_run(
        engine,
        run_id=run.run_id,
        outcome=outcome,
        also=lambda session: _detached(
            session, versions.record_version(session, name=name, fields=fields)
        ),
    )
    decision = champion.decide(
        engine,
        version=version,
        challenger=versions.predictor_of(spec, result.final_params),
        rows=champion.rows_of(dataset),
        mode=config.promote,
        margin=config.promote_margin,
        flow_run_id=flow_run_id,
    )
    get_run_logger().info(
        "Saved %s to %s; %s", versions.describe(version), store.shown, decision.line()
    )
    emit(
        "gdflow.model.promoted" if decision.promoted else "gdflow.model.rejected",
        name=version.name,
        payload={"version": version.version, "run_id": run.run_id, **decision.as_record()},
    )
    saved = {
        "name": version.name,
        "version": version.version,
        "champion": decision.promoted,
        "decision": decision.reason,
        "file": store.location(version.path),
    }
    return Persisted(outcome.status, saved)


@dataclass(frozen=True)
class Persisted:
    """How the run ended and, for a completed one, the model version it saved."""

    status: RunStatus
    model: Optional[dict[str, Any]] = None


def _detached(session: Any, row: Any) -> Any:
    """A row usable after its session closes (its columns loaded)."""
    session.flush()
    session.refresh(row)
    session.expunge(row)
    return row
