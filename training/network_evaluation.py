"""Evaluate a trained network (`mlp`): its outputs in float64, the task's metrics per split.

The network is rebuilt from its stored parameters (`mlp.load_flat`) and run in float64. A
network's loss is not convex: there is no exact optimum to measure the gap to, and the
evaluation says so instead of giving one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch

from gdflow.training.classifier_evaluation import class_predictions, split_metrics
from gdflow.training.evaluation import metrics_of_predictions
from gdflow.training.mlp import load_flat

#: Why a network's evaluation has no optimum.
NO_OPTIMUM = "a network's loss is not convex, so there is no exact optimum to measure the gap to"


def outputs_of(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The module's outputs for rows `x`, in float64: (n,) for one output, else (n, k)."""
    with torch.no_grad():
        out = module(torch.as_tensor(np.asarray(x, dtype=np.float64)))
    values = out.numpy()
    return values[:, 0] if values.shape[1] == 1 else values


def probabilities_of(outputs: np.ndarray, task: str) -> np.ndarray:
    """A classifier network's outputs as probabilities: P(class 1) per row for one output (a
    binary task, or a multiclass task whose data has two classes), else each class's."""
    from scipy.special import expit, softmax

    return np.asarray(expit(outputs) if _one_output(outputs, task) else softmax(outputs, axis=1))


def _one_output(outputs: np.ndarray, task: str) -> bool:
    """Whether a classifier network has one output (P(class 1)) rather than one per class."""
    return task == "binary" or outputs.ndim == 1


def _split(outputs: np.ndarray, y: np.ndarray, task: str, n_classes: int) -> dict[str, Any]:
    if task == "regression":
        return dict(metrics_of_predictions(outputs, y))
    family = "logistic" if _one_output(outputs, task) else "softmax"
    return split_metrics(probabilities_of(outputs, task), y, family=family, n_classes=n_classes)


def evaluate_network(
    module: torch.nn.Module,
    params: dict[str, float],
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    classes: Optional[Sequence[Any]] = None,
    predict_rows: Sequence[Sequence[float]] = (),
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> dict[str, Any]:
    """Predictions, metrics on train (and validation) rows and the training loss of the network
    `module` (float64, any weights) with the trained `params`."""
    network = load_flat(module.double(), list(params.values()))
    k = len(classes) if classes is not None else 0
    train = _split(outputs_of(network, x), y, task, k)
    result = network_record(network, train, task=task, classes=classes, predict_rows=predict_rows)
    if validation is not None:
        result["validation"] = _split(outputs_of(network, validation[0]), validation[1], task, k)
    return result


def network_record(
    network: torch.nn.Module,
    train: dict[str, Any],
    *,
    task: str,
    classes: Optional[Sequence[Any]],
    predict_rows: Sequence[Sequence[float]],
) -> dict[str, Any]:
    """A network's evaluation record from its metrics on the training rows (however they were
    computed: here, or from per-file sums on a Dask cluster's workers) and its float64 module
    with the trained weights: the training loss, no optimum, the predictions."""
    result: dict[str, Any] = {
        "train_loss": train["mse"] if task == "regression" else train["log_loss"],
        "train": train,
        "optimum": {"loss": None, "relative_gap": None, "reason": NO_OPTIMUM},
        "predictions": _predictions(network, predict_rows, task, classes),
    }
    if classes is not None:
        result["classes"] = list(classes)
    return result


def _predictions(
    network: torch.nn.Module,
    rows: Sequence[Sequence[float]],
    task: str,
    classes: Optional[Sequence[Any]],
) -> list[dict[str, Any]]:
    """Each input row's output (regression) or class and probabilities (classifiers)."""
    if not rows:
        return []
    inputs = np.array([list(row) for row in rows], dtype=np.float64)
    outputs = outputs_of(network, inputs)
    if task == "regression" or classes is None:
        return [
            {"input": [float(v) for v in row], "output": float(out)}
            for row, out in zip(inputs, outputs)
        ]
    return class_predictions(inputs, probabilities_of(outputs, task), classes)
