"""Mini-batch training on a data set streamed from its files, never all in memory.

Each epoch reads the data's record batches (`data.streaming`), standardises them (with the
statistics of the one pass before training: the in-memory path's `Standardizer`, fitted from
moments instead of rows), and draws mini-batches from a bounded shuffle buffer; each batch is
one step of the tutorial's loop: forward, loss, backward, step, zero_grad, with the model's own
loss (`model.loss`). The shuffle is seeded by --seed through one torch generator, drawn from
epoch after epoch as `MiniBatches` draws from its own, so the same seed gives the same
trajectory. When the buffer holds every row, the row groups are read in file order and each
epoch is one `torch.randperm` of all rows cut into batches: exactly in-memory mini-batch
training's batches, and so (on the CPU) its trajectory. With a smaller buffer the row groups'
order is drawn too, each epoch. A stop asked for from outside (SIGTERM) is checked every
STOP_CHECK_BATCHES batches too, as an epoch may take hours: training ends as `cancelled` with
the epochs done before.

The conditioning report and `--lr auto` come from the rows' Gram matrix (`gram`), the
evaluation from one more pass (`evaluate_streamed`): metrics, and for a linear model the
least-squares optimum solved from the moments; a classifier's exact optimum needs every row in
memory and is not computed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch

from gdflow.config.errors import features_too_large
from gdflow.data.dataset import Dataset
from gdflow.data.sources import usable_cpus
from gdflow.data.streaming import (
    Moments,
    RowsElsewhere,
    StreamedData,
    buffer_rows,
    prefetched,
    shuffled,
)
from gdflow.training.classification import EPS, binary_log_loss, multiclass_log_loss
from gdflow.training.classifier_evaluation import class_predictions, probabilities, weight_matrix
from gdflow.training.conditioning import Gram
from gdflow.training.evaluation import design_matrix, least_squares_record, metrics_of_sums
from gdflow.training.loop import EpochEnd, Hooks
from gdflow.training.model import TrainingData, build_model
from gdflow.training.optimization import Optimization, make_optimizer, make_scheduler
from gdflow.training.parameters import is_bias
from gdflow.training.preprocessing import Standardizer, TrainingProblem
from gdflow.training.records import EpochRecords
from gdflow.training.result import History, TrainResult

#: CPUs from which the next record batch is decoded on a thread while this one trains, however
#: busy the machine. With fewer (but 2 at least) only while a core is idle: on 2 shared cores
#: at load 8-10 it did not pay (1.00x, 1.02x and 0.62x the rows/s without, in three
#: measurements), as decoding, torch's threads and the steps then share them; on 2 quiet cores
#: it did (1.30x, 4M x 16, interleaved; BENCHMARKS.md, streaming). Its memory is about one
#: record batch and the thread's stack: a 128 MiB stream's peak RSS grew 68-70 MiB with it
#: against 63 MiB without (tests/training/test_streamed_memory.py).
PREFETCH_MIN_CPUS = 4
#: Batches between two checks of whether the caller asks to stop (an epoch may take hours).
STOP_CHECK_BATCHES = 256
#: Why a streamed classifier's evaluation has no exact optimum.
NO_OPTIMUM = "not computed for streamed data (Newton's method needs every row in memory)"


def standardizer_of(
    stream: RowsElsewhere, *, bias: bool, labels: bool, outputs: int = 1
) -> Standardizer:
    """`Standardizer.fit` of every row, from the pass's moments: mean and standard deviation
    with a bias, else the root mean square; a classifier's target is left as it is."""
    d = stream.n_features
    mean, variance = stream.moments.mean[:d], stream.moments.variance[:d]
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.sqrt(variance) if bias else np.sqrt(variance + mean**2)
        centre = mean.copy() if bias else np.zeros(d)
    if not (np.isfinite(scale).all() and np.isfinite(centre).all()):
        raise features_too_large(float(stream.abs_max.max()))
    scale[~(scale > 0)] = 1.0
    y_mean = float(stream.moments.mean[d]) if bias and not labels else 0.0
    return Standardizer(mean=centre, scale=scale, y_mean=y_mean, bias=bias, outputs=outputs)


@dataclass(frozen=True)
class StreamedProblem:
    """A streamed data set and what training needs besides its rows: `problem` holds no rows,
    only the family, classes, initial parameters in training units and the way back."""

    stream: StreamedData
    problem: TrainingProblem
    #: A classifier's weight of each class (--class-weight balanced); None: every row weighs 1.
    class_weights: Optional[np.ndarray]
    #: Rows of the shuffle buffer.
    buffer_rows: int

    @classmethod
    def prepare(
        cls,
        dataset: Dataset,
        initial: dict[str, float],
        *,
        standardize: bool,
        family: str,
        batch_size: int,
        class_weight: Optional[str] = None,
        shuffle_buffer: Optional[int] = None,
    ) -> StreamedProblem:
        """As `TrainingProblem.prepare`, from the stream's statistics instead of its rows."""
        stream = dataset.stream
        assert stream is not None, "a streamed data set"
        n_classes = len(stream.classes) if stream.classes is not None else 0
        empty = np.empty((0, stream.n_features), dtype=stream.dtype)
        problem = TrainingProblem(
            empty, np.empty(0, dtype=stream.dtype), dict(initial), None, None, family, n_classes
        )
        if standardize:
            scaler = standardizer_of(
                stream,
                bias=any(is_bias(name) for name in initial),
                labels=n_classes > 0,
                outputs=n_classes if family == "softmax" else 1,
            )
            problem = replace(problem, initial=scaler.to_scaled(initial), standardizer=scaler)
        weights = None
        if class_weight == "balanced" and stream.class_counts is not None:
            counts = stream.class_counts.astype(np.float64)
            weights = stream.rows / (n_classes * counts)
        row_bytes = (stream.n_features + 1) * np.dtype(stream.dtype).itemsize
        capacity = buffer_rows(batch_size, shuffle_buffer, row_bytes=row_bytes)
        return cls(stream, problem, weights, capacity)

    @property
    def rows(self) -> int:
        """Rows of the data set."""
        return self.stream.rows

    def chunks(
        self, order: Optional[Sequence[int] | np.ndarray] = None
    ) -> Iterator[tuple[Any, Any]]:
        """The record batches as training sees them: class indices, standardised."""
        scaler = self.problem.standardizer
        for x, y in self.stream.chunks(order):
            y = self.stream.encode(y)
            yield scaler.transform(x, y) if scaler is not None else (x, y)

    def gram(self, bias: bool) -> Gram:
        """A^T A of the training rows in training units (standardised when they are), with
        the bias's column of ones last, from the pass's moments."""
        return gram_of(self.stream.moments, self.problem.standardizer, bias)


def gram_of(moments: Moments, scaler: Optional[Standardizer], bias: bool) -> Gram:
    """A^T A of rows in training units (standardised by `scaler` when given), with the bias's
    column of ones last, from the rows' moments (features, then the target)."""
    d = len(moments.mean) - 1
    n, mean = moments.rows, moments.mean[:d]
    centre = scaler.mean if scaler is not None else np.zeros(d)
    scale = scaler.scale if scaler is not None else np.ones(d)
    shift = mean - centre
    matrix = np.empty((d + bias, d + bias))
    with np.errstate(over="ignore", invalid="ignore"):
        inner = moments.comoment[:d, :d] + n * np.outer(shift, shift)
        matrix[:d, :d] = inner / np.outer(scale, scale)
        if bias:
            matrix[:d, d] = matrix[d, :d] = n * shift / scale
            matrix[d, d] = n
    return Gram(matrix, n)


def prefetch_wanted(cpus: int, load: Optional[float]) -> bool:
    """Whether to decode the next record batch on a thread while this one trains, on `cpus`
    usable CPUs at a 1-minute load average of `load` (None: unknown): with PREFETCH_MIN_CPUS
    or more, or with 2 or more while the load leaves one of them idle (this run's own thread
    counted in the load)."""
    if cpus >= PREFETCH_MIN_CPUS:
        return True
    return cpus >= 2 and load is not None and load <= cpus - 1


def prefetch_by_default() -> tuple[bool, str]:
    """`prefetch_wanted` for this process and machine, and why, for the run's log."""
    cpus = usable_cpus()
    try:
        load: Optional[float] = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this system
        load = None
    wanted = prefetch_wanted(cpus, load)
    shown = f"1-minute load {load:.1f}" if load is not None else "load unknown"
    return wanted, f"{cpus} usable CPU(s), {shown}"


def fit_streamed(
    streamed: StreamedProblem,
    opt: Optimization,
    *,
    device: torch.device,
    hooks: Hooks = Hooks(),  # noqa: B008 - frozen, safe as a default
    prefetch: Optional[bool] = None,
) -> TrainResult:
    """Train on the streamed rows, one optimizer step per mini-batch, and return how it ended
    (as `fit` does: the same records, stop rules and chunks). `prefetch`: decode the next
    record batch on a thread while this one trains (None: `prefetch_by_default`)."""
    assert opt.batch_size is not None, "streaming trains mini-batches"
    if prefetch is None:
        prefetch = prefetch_by_default()[0]
    data: TrainingData = streamed.problem.data  # no rows: the model's shapes and family
    model = build_model(data, streamed.problem.initial, device)
    params = model.params
    optimizer = make_optimizer(params, opt)
    scheduler = make_scheduler(optimizer, opt)
    generator = torch.Generator().manual_seed(opt.seed)

    def permutation(n: int) -> np.ndarray:
        return torch.randperm(n, generator=generator).numpy()

    dtype = model.x.dtype
    target_dtype = torch.int64 if data.task == "multiclass" else dtype
    weights = (
        torch.as_tensor(streamed.class_weights, dtype=dtype)
        if streamed.class_weights is not None
        else None
    )
    bounded = streamed.buffer_rows < streamed.rows
    records = EpochRecords(max(1, min(hooks.chunk_epochs, opt.epochs)))
    history = History(streamed.problem.initial, opt, has_val=False, on_chunk=hooks.on_chunk)
    end = EpochEnd(records, history, hooks, opt.epochs)
    started = time.perf_counter()
    for epoch in range(1, opt.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        order = permutation(len(streamed.stream.groups)) if bounded else None
        chunks = streamed.chunks(order)
        batches = shuffled(
            prefetched(chunks) if prefetch else chunks,
            batch_size=opt.batch_size,
            capacity=streamed.buffer_rows,
            permutation=permutation,
        )
        total = torch.zeros((), dtype=dtype, device=device)
        grads: list[Optional[torch.Tensor]] = []
        interrupted = None
        for count, (xb, yb) in enumerate(batches, start=1):
            x = torch.from_numpy(xb).to(device)
            y = torch.from_numpy(yb).to(device, target_dtype)
            w = None
            if weights is not None:
                w = weights[torch.from_numpy(yb).to(torch.int64)].to(device)
            loss = model.loss(x, y, w)
            loss.backward()
            # zero_grad() sets .grad to None, so keeping the last batch's copies nothing.
            grads = [p.grad for p in params]
            optimizer.step()
            optimizer.zero_grad()
            total += loss.detach() * len(yb)
            if count % STOP_CHECK_BATCHES == 0 and (interrupted := hooks.asked_to_stop()):
                break
        batches.close()  # ends the prefetching thread of an epoch cut short
        if interrupted:  # asked to stop mid-epoch: keep the epochs done, not this one's part
            if not end.hand_on(epoch - 1):
                history.cancel(f"stopped by {interrupted} during epoch {epoch}")
            break
        records.add(lr, total / streamed.rows, grads, params, None, None)
        if scheduler is not None:
            scheduler.step()
        if end(epoch):  # the stop rules, every chunk; a stop asked for
            break
    result = history.result(str(device), time.perf_counter() - started, "direct")
    return replace(result, data_mode="streamed")


def least_squares_of(stream: RowsElsewhere, names: Sequence[str]) -> dict[str, float]:
    """The least-squares parameters of the linear model `names` on every row, solved from the
    centred moments (minimum-norm if singular): w = C_xx^+ C_xy, b = mean(y) - mean(x) w."""
    moments, d = stream.moments, stream.n_features
    c_xx, c_xy = moments.comoment[:d, :d], moments.comoment[:d, d]
    mean_x, mean_y = moments.mean[:d], moments.mean[d]
    if "b" in names:
        w, *_ = np.linalg.lstsq(c_xx, c_xy, rcond=None)
        theta = np.append(w, mean_y - mean_x @ w)
    else:
        n = moments.rows
        gram = c_xx + n * np.outer(mean_x, mean_x)
        theta, *_ = np.linalg.lstsq(gram, c_xy + n * mean_x * mean_y, rcond=None)
    return dict(zip(names, (float(v) for v in theta)))


def evaluate_streamed(
    streamed: StreamedProblem,
    params: dict[str, float],
    *,
    predict_rows: Sequence[Sequence[float]] = (),
) -> dict[str, Any]:
    """The evaluation `evaluate` (linear) or `evaluate_classifier` gives, from one pass over
    the rows: metrics on every row; for a linear model the least-squares optimum and the gap to
    it; for a classifier no exact optimum, and no ROC AUC (it ranks every row at once)."""
    stream = streamed.stream
    if stream.classes is not None:
        return _evaluate_classifier(streamed, params, predict_rows)
    theta = np.array(list(params.values()), dtype=np.float64)
    optimum = least_squares_of(stream, list(params))
    theta_optimum = np.array(list(optimum.values()), dtype=np.float64)
    sums = np.zeros(3)
    for x, y in stream.chunks():
        sums += linear_sums(x, y, theta, theta_optimum, bias="b" in params)
    return linear_evaluation(
        sums, moments=stream.moments, params=params, optimum=optimum, predict_rows=predict_rows
    )


def linear_sums(
    x: np.ndarray, y: np.ndarray, theta: np.ndarray, theta_optimum: np.ndarray, *, bias: bool
) -> np.ndarray:
    """(sum of squared residuals, sum of absolute residuals, sum of squared residuals at the
    optimum) of a linear model on one block of rows, in float64."""
    design, target = design_matrix(x, bias), y.astype(np.float64)
    residual = design @ theta - target
    at_optimum = design @ theta_optimum - target
    return np.array(
        [float(residual @ residual), float(np.abs(residual).sum()), float(at_optimum @ at_optimum)]
    )


def linear_evaluation(
    sums: np.ndarray,
    *,
    moments: Moments,
    params: dict[str, float],
    optimum: dict[str, float],
    predict_rows: Sequence[Sequence[float]],
) -> dict[str, Any]:
    """`evaluate`'s record for a linear model from the blocks' `linear_sums` added up."""
    sse, sae, sse_optimum = (float(v) for v in sums)
    n = moments.rows
    total = float(moments.comoment[-1, -1])
    train_loss, optimum_loss = sse / n, sse_optimum / n
    return least_squares_record(
        predict_rows,
        params,
        optimum,
        train=metrics_of_sums(sse, sae, rows=n, total=total),
        train_loss=train_loss,
        optimum_loss=optimum_loss,
        target_variance=total / n,
    )


def _evaluate_classifier(
    streamed: StreamedProblem, params: dict[str, float], predict_rows: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """`evaluate_streamed` for a classifier: the weighted objective, the log loss, accuracy,
    precision, recall and F1 (macro F1 for several classes) from the confusion matrix."""
    stream = streamed.stream
    assert stream.classes is not None
    family = streamed.problem.family
    k = len(stream.classes)
    theta = weight_matrix(
        params, n_features=stream.n_features, outputs=k if family == "softmax" else 1
    )
    sums = ClassifierSums.empty(k)
    for x, raw in stream.chunks():
        y = stream.encode(raw).astype(np.int64)
        sums = sums.add(classifier_sums(x, y, theta, family=family, weights=streamed.class_weights))
    return classifier_evaluation(
        sums,
        rows=stream.rows,
        family=family,
        theta=theta,
        classes=stream.classes,
        predict_rows=predict_rows,
    )


@dataclass(frozen=True)
class ClassifierSums:
    """A classifier's weighted objective and log loss summed over rows, and its confusion
    matrix (true class by row, predicted by column)."""

    objective: float
    log_loss: float
    matrix: np.ndarray

    @classmethod
    def empty(cls, k: int) -> ClassifierSums:
        """No rows yet."""
        return cls(0.0, 0.0, np.zeros((k, k), dtype=np.int64))

    @classmethod
    def of(
        cls, prob: np.ndarray, y: np.ndarray, *, objective: Optional[float] = None
    ) -> ClassifierSums:
        """The sums of rows of class indices `y` predicted with probabilities `prob`: P(class
        1) per row (n,) for two classes, else (n, k). `objective`: the rows' summed training
        objective (None: their log loss)."""
        if prob.ndim == 1:
            k, clipped = 2, np.clip(prob, EPS, 1 - EPS)
            log_loss = -float(np.sum(np.where(y == 1, np.log(clipped), np.log1p(-clipped))))
            predicted = (prob > 0.5).astype(np.int64)
        else:
            k = prob.shape[1]
            log_loss = -float(np.sum(np.log(np.clip(prob[np.arange(len(y)), y], EPS, 1 - EPS))))
            predicted = np.argmax(prob, axis=1)
        matrix = np.bincount(y * k + predicted, minlength=k * k).reshape(k, k)
        return cls(log_loss if objective is None else float(objective), log_loss, matrix)

    def add(self, other: ClassifierSums) -> ClassifierSums:
        """Both blocks' sums."""
        return ClassifierSums(
            self.objective + other.objective,
            self.log_loss + other.log_loss,
            self.matrix + other.matrix,
        )


def classifier_sums(
    x: np.ndarray,
    y: np.ndarray,
    theta: np.ndarray,
    *,
    family: str,
    weights: Optional[np.ndarray],
) -> ClassifierSums:
    """`ClassifierSums` of one block of rows (`y` class indices; `weights` per class)."""
    k = theta.shape[1] if family == "softmax" else 2
    if len(y) == 0:
        return ClassifierSums.empty(k)
    bias = theta.shape[0] == x.shape[1] + 1
    row_weights = weights[y] if weights is not None else None
    logits = design_matrix(x, bias) @ theta
    if family == "logistic":
        objective = binary_log_loss(logits[:, 0], y, row_weights) * len(y)
    else:
        objective = multiclass_log_loss(logits, y, row_weights) * len(y)
    return ClassifierSums.of(probabilities(x, theta, family=family), y, objective=objective)


def classifier_evaluation(
    sums: ClassifierSums,
    *,
    rows: int,
    family: str,
    theta: np.ndarray,
    classes: Sequence[Any],
    predict_rows: Sequence[Sequence[float]],
    no_optimum: str = NO_OPTIMUM,
) -> dict[str, Any]:
    """`evaluate_classifier`'s record from the blocks' `classifier_sums` added up
    (`no_optimum`: why the exact optimum is not computed)."""
    train = metrics_of_counts(sums.matrix, sums.log_loss / rows, binary=family == "logistic")
    inputs = [list(row) for row in predict_rows]
    predictions = []
    if inputs:
        table = np.array(inputs, dtype=np.float64)
        predictions = class_predictions(
            table, probabilities(table, theta, family=family), tuple(classes)
        )
    return {
        "predictions": predictions,
        "train_loss": sums.objective / rows,
        "train": train,
        "optimum": {"loss": None, "relative_gap": None, "reason": no_optimum},
        "classes": list(classes),
    }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def metrics_of_counts(matrix: np.ndarray, log_loss: float, *, binary: bool) -> dict[str, Any]:
    """`binary_metrics` / `multiclass_metrics` from a confusion matrix and the mean log loss
    (a binary split's ROC AUC is None: it needs every row's score at once)."""
    n = int(matrix.sum())
    if binary:
        tp, fp, fn = int(matrix[1, 1]), int(matrix[0, 1]), int(matrix[1, 0])
        return {
            "log_loss": log_loss,
            "accuracy": float(np.trace(matrix) / n),
            "roc_auc": None,
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "confusion_matrix": matrix.tolist(),
        }
    hits = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    present = (support + predicted) > 0
    f1 = [_ratio(2 * hits[c], support[c] + predicted[c]) for c in np.flatnonzero(present)]
    return {
        "log_loss": log_loss,
        "accuracy": float(hits.sum() / n),
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": matrix.tolist(),
    }
