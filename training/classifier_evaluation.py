"""Evaluate a trained classifier: class probabilities, metrics per split, and the exact optimum.

Parameters come named as training names them (`model.py`): one row of weights per output, then
the biases. Everything here is float64 NumPy; the optimum of the same objective (the same rows,
bias and row weights) comes from `optima` (Newton's method), or the reason none exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from gdflow.training.classification import binary_metrics, multiclass_metrics
from gdflow.training.evaluation import design_matrix
from gdflow.training.parameters import is_bias


def weight_matrix(params: dict[str, float], *, n_features: int, outputs: int) -> np.ndarray:
    """The parameters as a (features [+ 1 for the bias], outputs) float64 matrix."""
    names = list(params)
    weights = np.array([params[n] for n in names if not is_bias(n)], dtype=np.float64)
    theta = weights.reshape(outputs, n_features).T
    biases = [params[n] for n in names if is_bias(n)]
    if biases:
        theta = np.vstack([theta, np.array(biases, dtype=np.float64).reshape(1, outputs)])
    return theta


def probabilities(x: np.ndarray, theta: np.ndarray, *, family: str) -> np.ndarray:
    """P(class 1) per row for `logistic` (n,), class probabilities (n, k) for `softmax`."""
    from scipy.special import expit, softmax

    a = design_matrix(x, False)
    logits = design_matrix(a, theta.shape[0] == a.shape[1] + 1) @ theta
    if family == "logistic":
        return np.asarray(expit(logits[:, 0]))
    return np.asarray(softmax(logits, axis=1))


def split_metrics(prob: np.ndarray, y: np.ndarray, *, family: str, n_classes: int) -> dict:
    """The family's metrics of one split (log loss, accuracy, ..., confusion matrix)."""
    labels = np.asarray(y).astype(np.int64)
    if family == "logistic":
        return binary_metrics(prob, labels)
    return multiclass_metrics(prob, labels, n_classes)


def _loss(x: np.ndarray, y: np.ndarray, theta: np.ndarray, family: str, weights: Any) -> float:
    """The training objective (weighted mean cross-entropy) at `theta`, in float64."""
    from gdflow.training.optima import logistic_loss, softmax_loss

    bias = theta.shape[0] == x.shape[1] + 1
    if family == "logistic":
        return logistic_loss(x, y, theta[:, 0], bias=bias, weights=weights)
    return softmax_loss(x, np.asarray(y).astype(np.int64), theta, bias=bias, weights=weights)


def optimum_of(
    x: np.ndarray, y: np.ndarray, *, family: str, n_classes: int, bias: bool, weights: Any
) -> Any:
    """The exact optimum of the objective on these rows (`optima.Optimum`)."""
    from gdflow.training.optima import logistic_optimum, softmax_optimum

    if family == "logistic":
        return logistic_optimum(x, y, bias=bias, weights=weights)
    return softmax_optimum(x, np.asarray(y).astype(np.int64), n_classes, bias=bias, weights=weights)


def evaluate_classifier(
    x: np.ndarray,
    y: np.ndarray,
    params: dict[str, float],
    *,
    family: str,
    classes: Sequence[Any],
    weights: Optional[np.ndarray] = None,
    predict_rows: Sequence[Sequence[float]] = (),
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> dict[str, Any]:
    """Predictions (class and probabilities), metrics on train (and validation) rows, the
    training objective and its relative gap to the exact optimum (None where none exists)."""
    n_features = np.asarray(x).reshape(len(y), -1).shape[1]
    outputs = len(classes) if family == "softmax" else 1
    theta = weight_matrix(params, n_features=n_features, outputs=outputs)
    bias = theta.shape[0] == n_features + 1
    k = len(classes)
    train_loss = _loss(x, y, theta, family, weights)
    optimum = optimum_of(x, y, family=family, n_classes=k, bias=bias, weights=weights)
    gap = None
    if optimum.loss is not None and optimum.loss > 0:
        gap = (train_loss - optimum.loss) / optimum.loss
    result: dict[str, Any] = {
        "predictions": _predictions(predict_rows, theta, family=family, classes=classes),
        "train_loss": train_loss,
        "train": split_metrics(
            probabilities(x, theta, family=family), y, family=family, n_classes=k
        ),
        "optimum": {
            "loss": optimum.loss,
            "relative_gap": gap,
            "reason": optimum.reason or None,
        },
        "classes": list(classes),
    }
    if validation is not None:
        x_val, y_val = validation
        prob = probabilities(x_val, theta, family=family)
        result["validation"] = split_metrics(prob, y_val, family=family, n_classes=k)
    return result


def _predictions(
    rows: Sequence[Sequence[float]], theta: np.ndarray, *, family: str, classes: Sequence[Any]
) -> list[dict[str, Any]]:
    """Each input row's class and its probability per class."""
    if not rows:
        return []
    inputs = np.array([list(row) for row in rows], dtype=np.float64)
    return class_predictions(inputs, probabilities(inputs, theta, family=family), classes)


def class_predictions(
    inputs: np.ndarray, prob: np.ndarray, classes: Sequence[Any]
) -> list[dict[str, Any]]:
    """Rows of `inputs` with their most probable class and the probability of each class;
    `prob` is P(class 1) per row (n,) for two classes, else (n, classes)."""
    table = np.column_stack([1 - prob, prob]) if prob.ndim == 1 else prob
    return [
        {
            "input": [float(v) for v in row],
            "class": classes[int(np.argmax(p))],
            "probabilities": {str(label): float(v) for label, v in zip(classes, p)},
        }
        for row, p in zip(inputs, table)
    ]


def class_prediction_line(prediction: dict[str, Any]) -> str:
    """`Prediction after training: f(1, 2) = 'b' (P: a 0.120, b 0.850, c 0.030)`."""
    args = ", ".join(f"{v:g}" for v in prediction["input"])
    shown = ", ".join(f"{label} {p:.3f}" for label, p in prediction["probabilities"].items())
    return f"Prediction after training: f({args}) = {prediction['class']!r} (P: {shown})"
