"""Evaluate a trained linear model: predictions, training loss, and the least-squares optimum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, cast

import numpy as np

from gdflow.config.errors import GdflowError


def check_predict_rows(rows: Sequence[Sequence[float]], n_features: int) -> None:
    """Raise GdflowError unless every prediction input has one value per feature."""
    for row in rows:
        if len(row) != n_features:
            shown = ",".join(f"{v:g}" for v in row)
            raise GdflowError(
                f"--predict {shown!r} has {len(row)} value(s) but the model has {n_features} "
                f"feature(s); give each input as {n_features} comma-separated numbers"
            )


def design_matrix(x: np.ndarray, bias: bool) -> np.ndarray:
    """The float64 design matrix, with a column of ones when the model has a bias."""
    x64 = np.asarray(x, dtype=np.float64)
    if x64.ndim == 1:
        x64 = x64.reshape(-1, 1)
    return np.hstack([x64, np.ones((x64.shape[0], 1))]) if bias else x64


def predict(x: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """Model outputs x @ w (+ b) in float64 for parameters named as in training."""
    theta = np.array(list(params.values()), dtype=np.float64)
    return design_matrix(x, "b" in params) @ theta


def mse(x: np.ndarray, y: np.ndarray, params: dict[str, float]) -> float:
    """Mean squared error of the model on (x, y), in float64."""
    residual = predict(x, params) - np.asarray(y, dtype=np.float64)
    return float(np.mean(residual**2))


def regression_metrics(
    x: np.ndarray, y: np.ndarray, params: dict[str, float]
) -> dict[str, Optional[float]]:
    """MSE, RMSE, MAE and R^2 (None for a constant target) of the model on (x, y), in float64."""
    return metrics_of_predictions(predict(x, params), y)


def metrics_of_predictions(outputs: np.ndarray, y: np.ndarray) -> dict[str, Optional[float]]:
    """MSE, RMSE, MAE and R^2 (None for a constant target) of any model's outputs for y."""
    target = np.asarray(y, dtype=np.float64)
    residual = np.asarray(outputs, dtype=np.float64) - target
    mse_value = float(np.mean(residual**2))
    total = float(np.sum((target - target.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else None  # constant target
    return {
        "mse": mse_value,
        "rmse": float(np.sqrt(mse_value)),
        "mae": float(np.mean(np.abs(residual))),
        "r2": r2,
    }


def metrics_of_sums(sse: float, sae: float, *, rows: int, total: float) -> dict[str, Any]:
    """`metrics_of_predictions` from sums over the rows (blocks of them added up elsewhere): of
    the squared and the absolute residuals, and `total`, the target's squares about its mean."""
    mse_value = sse / rows
    return {
        "mse": mse_value,
        "rmse": float(np.sqrt(mse_value)),
        "mae": sae / rows,
        "r2": 1.0 - sse / total if total > 0 else None,
    }


def least_squares(x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """The closed-form least-squares parameters for the same model (minimum-norm if singular)."""
    theta, *_ = np.linalg.lstsq(
        design_matrix(x, "b" in names), np.asarray(y, np.float64), rcond=None
    )
    return dict(zip(names, (float(v) for v in theta)))


def evaluate(
    x: np.ndarray,
    y: np.ndarray,
    params: dict[str, float],
    *,
    predict_rows: Sequence[Sequence[float]],
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> dict[str, Any]:
    """Predictions, metrics on train (and validation) rows, and the gap to least squares."""
    names = list(params)
    # One float64 design matrix of the training rows serves the least-squares solve and the
    # model's and the optimum's outputs: the metrics that need residuals (MSE, MAE, R^2) come
    # from one pass over the rows, whatever path training took (statistics_mse needs none).
    design = design_matrix(x, "b" in params)
    target = np.asarray(y, dtype=np.float64)
    theta, *_ = np.linalg.lstsq(design, target, rcond=None)
    optimum = dict(zip(names, (float(v) for v in theta)))
    train = metrics_of_predictions(design @ np.array(list(params.values()), np.float64), target)
    train_loss = cast(float, train["mse"])  # always a number (only R^2 can be None)
    optimum_loss = float(np.mean((design @ np.array(list(optimum.values())) - target) ** 2))
    del design
    result = least_squares_record(
        predict_rows,
        params,
        optimum,
        train=train,
        train_loss=train_loss,
        optimum_loss=optimum_loss,
        target_variance=float(np.var(target)),
    )
    if validation is not None:
        result["validation"] = regression_metrics(*validation, params)
        result["least_squares"]["validation_mse"] = mse(*validation, optimum)
    return result


def least_squares_record(
    predict_rows: Sequence[Sequence[float]],
    params: dict[str, float],
    optimum: dict[str, float],
    *,
    train: dict[str, Any],
    train_loss: float,
    optimum_loss: float,
    target_variance: float,
) -> dict[str, Any]:
    """A linear model's evaluation record from its metrics and the least-squares optimum's (in
    memory, streamed or on a cluster alike): predictions, the gap to the optimum, and the same
    summary as a classifier's (`optimum`: its loss and the relative gap to it)."""
    rows = np.array([list(row) for row in predict_rows], dtype=np.float64)
    outputs = predict(rows, params) if len(rows) else np.empty(0)
    gap = np.array([params[n] - optimum[n] for n in params], dtype=np.float64)
    # Relative to the optimum only where the optimum is not an exact fit (loss ~ 0).
    relative = (
        (train_loss - optimum_loss) / optimum_loss
        if optimum_loss > 1e-12 * max(target_variance, 1e-300)
        else None
    )
    return {
        "predictions": [
            {"input": [float(v) for v in row], "output": float(out)}
            for row, out in zip(rows, outputs)
        ],
        "train_loss": train_loss,
        "train": train,
        "least_squares": {"params": optimum, "loss": optimum_loss},
        "param_distance": float(np.linalg.norm(gap)),
        "loss_gap": train_loss - optimum_loss,
        "relative_loss_gap": relative,
        "optimum": {"loss": optimum_loss, "relative_gap": relative, "reason": None},
    }


def prediction_line(prediction: dict[str, Any]) -> str:
    """The seed's closing line, e.g. `Prediction after training: f(5) = 10.000`."""
    args = ", ".join(f"{v:g}" for v in prediction["input"])
    return f"Prediction after training: f({args}) = {prediction['output']:.3f}"
