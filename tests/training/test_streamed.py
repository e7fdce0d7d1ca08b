"""Training on a streamed Parquet data set, against in-memory mini-batch training, the float64
least-squares optimum and the in-memory evaluation; seeded, and every row once an epoch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pytest
import torch

from gdflow.data.dataset import Dataset, Labels, load_dataset, load_streamed
from gdflow.training.classification import class_weights
from gdflow.training.classifier_evaluation import evaluate_classifier
from gdflow.training.conditioning import hessian_eigenvalues
from gdflow.training.evaluation import evaluate
from gdflow.training.loop import Hooks, fit
from gdflow.training.optimization import Optimization
from gdflow.training.preprocessing import Standardizer, TrainingProblem
from gdflow.training.records import EpochChunk
from gdflow.training.result import TrainResult
from gdflow.training.streamed import (
    StreamedProblem,
    evaluate_streamed,
    fit_streamed,
    prefetch_by_default,
    prefetch_wanted,
    standardizer_of,
)

CPU = torch.device("cpu")


def _regression(tmp_path: Path, rows: int = 3000, *, dtype: Any = np.float64) -> Path:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, 3)) * [1.0, 30.0, 0.2] + [5.0, -100.0, 0.0]
    y = x @ np.array([1.5, -0.02, 4.0]) + 0.7 + rng.normal(scale=0.1, size=rows)
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y}).astype(dtype)
    path = tmp_path / "r.parquet"
    frame.to_parquet(path, row_group_size=250, index=False)
    return path


def _classes(tmp_path: Path, k: int, rows: int = 2000) -> Path:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(rows, 2))
    scores = x @ rng.normal(size=(2, k)) + rng.normal(scale=1.0, size=(rows, k))
    labels = np.array([10, 20, 30, 40])[:k][np.argmax(scores, axis=1)]
    labels[: rows // 10] = 10  # imbalanced: the first class is more common
    path = tmp_path / f"c{k}.parquet"
    pd.DataFrame({"u": x[:, 0], "v": x[:, 1], "label": labels}).to_parquet(
        path, row_group_size=300, index=False
    )
    return path


def _initial(dataset: Dataset, *, bias: bool = True, k: int = 1) -> dict[str, float]:
    names = [f"w_{n}" if k == 1 else f"w_{c}_{n}" for c in range(k) for n in dataset.feature_names]
    biases = (["b"] if k == 1 else [f"b_{c}" for c in range(k)]) if bias else []
    return dict.fromkeys([*names, *biases], 0.0)


def _streamed_run(
    streamed: StreamedProblem, opt: Optimization, **options: Any
) -> tuple[TrainResult, list[EpochChunk]]:
    chunks: list[EpochChunk] = []
    result = fit_streamed(streamed, opt, device=CPU, hooks=Hooks(on_chunk=chunks.append), **options)
    return result, chunks


def _trajectory(chunks: list[EpochChunk]) -> np.ndarray:
    return np.column_stack(
        [
            np.concatenate([c.losses for c in chunks]),
            np.concatenate([c.params for c in chunks]),
            np.concatenate([c.grad_norms for c in chunks]),
        ]
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_buffer_holding_every_row_trains_exactly_as_in_memory(tmp_path: Path, dtype: str) -> None:
    """The buffer is one permutation of all rows in file order, drawn from a generator seeded
    as `MiniBatches` seeds its own: the same batches, so the same trajectory bit for bit."""
    path = _regression(tmp_path)
    in_memory = load_dataset(str(path), dtype=dtype)
    streamed_data = load_streamed(str(path), dtype=dtype)
    initial = _initial(in_memory)
    opt = Optimization(lr=5e-5, epochs=6, batch_size=64, seed=11, momentum=0.5)
    problem = TrainingProblem.prepare(in_memory, initial, standardize=False)
    memory_chunks: list[EpochChunk] = []
    expected = fit(
        problem.data, problem.initial, opt, device=CPU, hooks=Hooks(on_chunk=memory_chunks.append)
    )
    streamed = StreamedProblem.prepare(
        streamed_data,
        initial,
        standardize=False,
        family="linear",
        batch_size=64,
        shuffle_buffer=len(in_memory.y),
    )
    for prefetch in (True, False):
        result, chunks = _streamed_run(streamed, opt, prefetch=prefetch)
        assert np.array_equal(_trajectory(chunks), _trajectory(memory_chunks))
        assert result.final_params == expected.final_params and result.epochs_done == 6
        assert (result.data_mode, expected.data_mode) == ("streamed", "in-memory")


@pytest.mark.parametrize(("k", "family"), [(2, "logistic"), (3, "softmax")])
def test_classifiers_with_balanced_weights_stream_as_in_memory(
    tmp_path: Path, k: int, family: str
) -> None:
    path = _classes(tmp_path, k)
    labels = Labels("binary" if k == 2 else "multiclass", family)
    in_memory = load_dataset(str(path), labels=labels)
    streamed_data = load_streamed(str(path), labels=labels)
    initial = _initial(in_memory, k=1 if family == "logistic" else k)
    opt = Optimization(lr=0.05, epochs=4, batch_size=50, seed=2)
    weights = class_weights(in_memory.y.astype(np.int64), k, "balanced")
    problem = TrainingProblem.prepare(
        in_memory, initial, standardize=True, family=family, weights=weights
    )
    memory_chunks: list[EpochChunk] = []
    fit(problem.data, problem.initial, opt, device=CPU, hooks=Hooks(on_chunk=memory_chunks.append))
    streamed = StreamedProblem.prepare(
        streamed_data,
        initial,
        standardize=True,
        family=family,
        batch_size=50,
        class_weight="balanced",
        shuffle_buffer=10**6,
    )
    assert streamed.class_weights is not None
    assert np.allclose(streamed.class_weights[in_memory.y.astype(np.int64)], weights, rtol=1e-15)
    _, chunks = _streamed_run(streamed, opt)
    # The standardised rows may differ in their last bit (moments merged block by block, not
    # one NumPy reduction): the trajectories agree to float32 rounding.
    np.testing.assert_allclose(
        _trajectory(chunks), _trajectory(memory_chunks), rtol=2e-5, atol=1e-6
    )


def test_a_tiny_buffer_and_reads_converge_to_the_least_squares_optimum(tmp_path: Path) -> None:
    """A buffer of 40 rows (of 3,000) and 50-row record batches: far from holding the data,
    mini-batch SGD with a cosine schedule still reaches numpy's float64 lstsq solution."""
    path = _regression(tmp_path)
    dataset = load_streamed(str(path), dtype="float64")
    assert dataset.stream is not None
    dataset = replace(dataset, stream=replace(dataset.stream, read_rows=50))
    initial = _initial(dataset)
    streamed = StreamedProblem.prepare(
        dataset, initial, standardize=True, family="linear", batch_size=16, shuffle_buffer=40
    )
    opt = Optimization(lr=0.05, epochs=40, batch_size=16, seed=0, lr_schedule="cosine")
    result = streamed.problem.result_to_original(fit_streamed(streamed, opt, device=CPU))
    frame = pd.read_parquet(path)
    design = np.column_stack([frame[["a", "b", "c"]].to_numpy(), np.ones(len(frame))])
    optimum, *_ = np.linalg.lstsq(design, frame["y"].to_numpy(), rcond=None)
    trained = np.array(list(result.final_params.values()))
    assert np.abs(trained - optimum).max() < 2e-3, (trained, optimum)


def test_the_same_seed_gives_the_same_records_and_another_seed_others(tmp_path: Path) -> None:
    path = _regression(tmp_path)
    dataset = load_streamed(str(path), dtype="float32")
    streamed = StreamedProblem.prepare(
        dataset,
        _initial(dataset),
        standardize=True,
        family="linear",
        batch_size=32,
        shuffle_buffer=300,
    )
    runs = [
        _trajectory(
            _streamed_run(streamed, Optimization(lr=0.05, epochs=3, batch_size=32, seed=s))[1]
        )
        for s in (5, 5, 6)
    ]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_every_row_counts_once_in_each_epochs_loss(tmp_path: Path) -> None:
    """With lr 0 nothing moves, so each epoch's loss (the row-weighted mean of the batch
    losses) is the loss of the initial model on every row once: mean(y^2) at w = b = 0."""
    path = _regression(tmp_path)
    dataset = load_streamed(str(path), dtype="float64")
    streamed = StreamedProblem.prepare(
        dataset,
        _initial(dataset),
        standardize=False,
        family="linear",
        batch_size=7,
        shuffle_buffer=100,
    )
    _, chunks = _streamed_run(streamed, Optimization(lr=1e-300, epochs=3, batch_size=7))
    y = pd.read_parquet(path)["y"].to_numpy()
    np.testing.assert_allclose(
        np.concatenate([c.losses for c in chunks]), np.mean(y**2), rtol=1e-12
    )


def test_standardisation_and_the_gram_matrix_from_moments_equal_the_rows(tmp_path: Path) -> None:
    path = _regression(tmp_path)
    in_memory = load_dataset(str(path), dtype="float64")
    dataset = load_streamed(str(path), dtype="float64")
    assert dataset.stream is not None
    for bias in (True, False):
        fitted = Standardizer.fit(in_memory.x, in_memory.y, bias=bias)
        found = standardizer_of(dataset.stream, bias=bias, labels=False)
        np.testing.assert_allclose(found.mean, fitted.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(found.scale, fitted.scale, rtol=1e-12)
        assert found.y_mean == pytest.approx(fitted.y_mean, rel=1e-12)
        for standardize in (True, False):
            initial = _initial(in_memory, bias=bias)
            problem = TrainingProblem.prepare(in_memory, initial, standardize=standardize)
            streamed = StreamedProblem.prepare(
                dataset, initial, standardize=standardize, family="linear", batch_size=10
            )
            expected = hessian_eigenvalues(problem.x, bias=bias)
            found_eigenvalues = hessian_eigenvalues(streamed.gram(bias), bias=bias)
            np.testing.assert_allclose(found_eigenvalues, expected, rtol=1e-9)


def test_the_streamed_evaluation_is_the_in_memory_one(tmp_path: Path) -> None:
    path = _regression(tmp_path)
    in_memory = load_dataset(str(path), dtype="float64")
    dataset = load_streamed(str(path), dtype="float64")
    params = {"w_a": 1.4, "w_b": -0.01, "w_c": 3.0, "b": 0.1}
    streamed = StreamedProblem.prepare(
        dataset, params, standardize=False, family="linear", batch_size=1
    )
    rows = [[1.0, 2.0, 3.0]]
    found = evaluate_streamed(streamed, params, predict_rows=rows)
    expected = evaluate(in_memory.x, in_memory.y, params, predict_rows=rows)
    assert found["predictions"] == expected["predictions"]
    for key in ("mse", "rmse", "mae", "r2"):
        assert found["train"][key] == pytest.approx(expected["train"][key], rel=1e-10)
    for name, value in expected["least_squares"]["params"].items():
        assert found["least_squares"]["params"][name] == pytest.approx(value, rel=1e-8, abs=1e-10)
    for key in ("train_loss", "param_distance", "loss_gap", "relative_loss_gap"):
        assert found[key] == pytest.approx(expected[key], rel=1e-6), key
    assert found["least_squares"]["loss"] == pytest.approx(
        expected["least_squares"]["loss"], rel=1e-10
    )


@pytest.mark.parametrize(
    ("k", "family", "weighting"), [(2, "logistic", None), (3, "softmax", "balanced")]
)
def test_a_streamed_classifiers_evaluation_is_the_in_memory_one_but_the_optimum(
    tmp_path: Path, k: int, family: str, weighting: Optional[str]
) -> None:
    path = _classes(tmp_path, k)
    labels = Labels("binary" if k == 2 else "multiclass", family)
    in_memory = load_dataset(str(path), labels=labels, dtype="float64")
    dataset = load_streamed(str(path), labels=labels, dtype="float64")
    outputs = 1 if family == "logistic" else k
    rng = np.random.default_rng(0)
    params = dict(zip(_initial(in_memory, k=outputs), rng.normal(size=outputs * 3).tolist()))
    streamed = StreamedProblem.prepare(
        dataset, params, standardize=False, family=family, batch_size=1, class_weight=weighting
    )
    weights = class_weights(in_memory.y.astype(np.int64), k, weighting) if weighting else None
    found = evaluate_streamed(streamed, params, predict_rows=[[0.5, -1.0]])
    expected = evaluate_classifier(
        in_memory.x,
        in_memory.y,
        params,
        family=family,
        classes=in_memory.classes or (),
        weights=weights,
        predict_rows=[[0.5, -1.0]],
    )
    assert found["predictions"] == expected["predictions"] and found["classes"] == [10, 20, 30][:k]
    assert found["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-10)
    for key, value in expected["train"].items():
        if key == "roc_auc":
            assert found["train"][key] is None  # it ranks every row at once
        elif isinstance(value, float):
            assert found["train"][key] == pytest.approx(value, rel=1e-10), key
        else:
            assert found["train"][key] == value, key
    assert found["optimum"]["loss"] is None and "streamed" in found["optimum"]["reason"]


def test_a_stop_asked_mid_epoch_keeps_the_whole_epochs_done(tmp_path: Path) -> None:
    """An epoch over a large file may take hours: SIGTERM is heeded within STOP_CHECK_BATCHES
    batches, and the run keeps only its whole epochs."""
    path = _regression(tmp_path)  # 3,000 rows in batches of 7: 429 batches an epoch
    dataset = load_streamed(str(path), dtype="float64")
    streamed = StreamedProblem.prepare(
        dataset, _initial(dataset), standardize=True, family="linear", batch_size=7
    )
    asked: list[int] = []

    def should_stop() -> Optional[str]:  # checked at batch 256, epoch 1's end, batch 256...
        asked.append(1)
        return "SIGTERM" if len(asked) >= 3 else None

    chunks: list[EpochChunk] = []
    opt = Optimization(lr=0.01, epochs=5, batch_size=7)
    result = fit_streamed(
        streamed, opt, device=CPU, hooks=Hooks(on_chunk=chunks.append, should_stop=should_stop)
    )
    assert (result.stop_reason, result.epochs_done) == ("cancelled", 1)
    assert result.verdict_detail == "stopped by SIGTERM during epoch 2" and len(asked) == 3
    assert [int(e) for c in chunks for e in c.epochs] == [1]
    assert result.final_params == dict(zip(chunks[0].names, chunks[0].params[-1].tolist()))


def test_prefetch_takes_a_spare_core_and_only_one() -> None:
    assert prefetch_wanted(4, 12.0) and prefetch_wanted(64, None)  # enough CPUs: always
    assert prefetch_wanted(2, 0.9) and prefetch_wanted(2, 1.0) and prefetch_wanted(3, 1.9)
    assert not prefetch_wanted(2, 1.3)  # this run and something else: no core idle
    assert not prefetch_wanted(3, 2.5) and not prefetch_wanted(2, 9.0)
    assert not prefetch_wanted(1, 0.0)  # one CPU: nothing to overlap on
    assert not prefetch_wanted(2, None)  # load unknown, few CPUs: the safe side
    wanted, why = prefetch_by_default()
    assert isinstance(wanted, bool) and "usable CPU(s), 1-minute load " in why
