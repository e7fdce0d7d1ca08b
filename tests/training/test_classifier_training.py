"""Logistic and softmax models trained by `fit` against scikit-learn on the data it ships:
trained losses within 1% of the reference, rates just below the stability bound converge, the
parameters come back in original units, and class weights change the objective as documented."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from gdflow.data.dataset import Dataset, Labels, _with_labels, make_dataset
from gdflow.training.classification import class_weights
from gdflow.training.classifier_evaluation import evaluate_classifier
from gdflow.training.conditioning import analyse
from gdflow.training.loop import Hooks, fit
from gdflow.training.optimization import Optimization
from gdflow.training.parameters import initial_parameters, parameter_names
from gdflow.training.preprocessing import TrainingProblem
from gdflow.training.result import TrainResult

CPU = torch.device("cpu")
#: Breast cancer columns whose classes overlap (all 30 are linearly separable) and that are
#: well conditioned once standardized: mean radius, texture, smoothness, symmetry, fractal dim.
CANCER_COLUMNS = [0, 1, 4, 8, 9]
#: Wine's first five columns: the three classes overlap (all 13 separate them).
WINE_COLUMNS = slice(0, 5)


def _reference_loss(x: np.ndarray, y: np.ndarray, weights: Any = None) -> float:
    """scikit-learn's unpenalised maximum-likelihood fit: its mean (weighted) log loss."""
    xs = StandardScaler().fit_transform(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(C=np.inf, tol=1e-14, max_iter=100_000)
        model.fit(xs, y, sample_weight=weights)
    rows = np.arange(len(y))
    each = -np.log(model.predict_proba(xs)[rows, np.searchsorted(model.classes_, y)])
    return float(np.mean(each if weights is None else weights * each))


def _dataset(loader: Any, columns: Any, family: str) -> Dataset:
    x, y = loader(return_X_y=True)
    x = x[:, columns]
    names = [f"f{i}" for i in range(x.shape[1])]
    data = make_dataset(x, y.astype(float), feature_names=names, target_name="y", source="sk")
    task = "binary" if family == "logistic" else "multiclass"
    return _with_labels(data, Labels(task, family))


def _train(
    dataset: Dataset, family: str, *, lr_share: float, epochs: int, weights: Any = None
) -> tuple[TrainResult, float, TrainingProblem]:
    """Train from zero on standardized features at `lr_share` of the stability bound."""
    classes = dataset.classes if family == "softmax" else None
    names = parameter_names(dataset.feature_names, bias=True, classes=classes)
    initial = initial_parameters(names, init=0.0, seed=0)
    problem = TrainingProblem.prepare(
        dataset, initial, standardize=True, family=family, weights=weights
    )
    bound = analyse(problem.x, bias=True, lr=None, family=family, weights=weights).max_stable_lr
    assert bound is not None
    opt = Optimization(lr=lr_share * bound, epochs=epochs)
    result = problem.result_to_original(fit(problem.data, problem.initial, opt, device=CPU))
    return result, bound, problem


@pytest.mark.parametrize(
    ("loader", "columns", "family"),
    [(load_breast_cancer, CANCER_COLUMNS, "logistic"), (load_wine, WINE_COLUMNS, "softmax")],
    ids=["logistic-breast-cancer", "softmax-wine"],
)
def test_a_rate_just_below_the_bound_converges_to_within_1_percent_of_scikit_learn(
    loader: Any, columns: Any, family: str
) -> None:
    dataset = _dataset(loader, columns, family)
    result, _bound, _problem = _train(dataset, family, lr_share=0.95, epochs=1000)
    x, y = loader(return_X_y=True)
    reference = _reference_loss(x[:, columns], y)
    assert result.stop_reason == "max_epochs"
    assert result.final_loss is not None
    assert abs(result.final_loss - reference) <= 0.01 * reference, (result.final_loss, reference)

    # The stored parameters are in original units: scored on the raw rows in float64 they give
    # the training loss, and the exact optimum matches scikit-learn to 1e-6.
    evaluation = evaluate_classifier(
        dataset.x, dataset.y, result.final_params, family=family, classes=dataset.classes or ()
    )
    assert evaluation["train_loss"] == pytest.approx(result.final_loss, rel=1e-4)
    assert evaluation["optimum"]["loss"] == pytest.approx(reference, rel=1e-6)
    assert 0 <= evaluation["optimum"]["relative_gap"] <= 0.01
    assert evaluation["train"]["accuracy"] > 0.8


def test_rates_above_the_logistic_bound_are_warned_about_not_refused() -> None:
    dataset = _dataset(load_breast_cancer, CANCER_COLUMNS, "logistic")
    _result, bound, problem = _train(dataset, "logistic", lr_share=0.5, epochs=1)
    above = analyse(problem.x, bias=True, lr=1.5 * bound, family="logistic")
    below = analyse(problem.x, bias=True, lr=0.9 * bound, family="logistic")
    assert below.warnings == []
    assert len(above.warnings) == 1 and "the loss may diverge" in above.warnings[0]
    # The bound is sufficient, not tight: 1.5 times it still converges on this data.
    result, _bound, _problem = _train(dataset, "logistic", lr_share=1.5, epochs=1000)
    assert result.stop_reason == "max_epochs" and result.final_loss is not None
    assert result.final_loss < 0.2


def test_balanced_class_weights_train_the_weighted_objective() -> None:
    x, y = load_breast_cancer(return_X_y=True)
    dataset = _dataset(load_breast_cancer, CANCER_COLUMNS, "logistic")
    weights = class_weights(dataset.y.astype(np.int64), 2, "balanced")
    assert weights.sum() == pytest.approx(len(y))
    result, _bound, _problem = _train(
        dataset, "logistic", lr_share=0.95, epochs=1000, weights=weights
    )
    reference = _reference_loss(x[:, CANCER_COLUMNS], y, weights)
    unweighted = _reference_loss(x[:, CANCER_COLUMNS], y)
    assert abs(reference - unweighted) > 0.01 * unweighted  # the weights change the objective
    assert result.final_loss is not None
    assert abs(result.final_loss - reference) <= 0.01 * reference


def test_validation_accuracy_is_recorded_every_epoch() -> None:
    dataset = _dataset(load_wine, WINE_COLUMNS, "softmax")
    validation = (dataset.x[::4], dataset.y[::4])
    names = parameter_names(dataset.feature_names, bias=True, classes=dataset.classes)
    problem = TrainingProblem.prepare(
        Dataset(**{**dataset.__dict__, "x_val": validation[0], "y_val": validation[1]}),
        initial_parameters(names, init=0.0, seed=0),
        standardize=True,
        family="softmax",
    )
    chunks: list[Any] = []
    opt = Optimization(lr=1.0, epochs=50)
    fit(problem.data, problem.initial, opt, device=CPU, hooks=Hooks(on_chunk=chunks.append))
    # One chunk, or more when a loaded machine passes the 2 s flush interval.
    accuracies = np.concatenate([chunk.val_accuracies for chunk in chunks])
    assert len(accuracies) == 50
    assert accuracies[0] < accuracies[-1] <= 1.0
    params = np.concatenate([chunk.params for chunk in chunks])
    assert params.shape == (50, len(names))  # 18 parameters: recorded every epoch
