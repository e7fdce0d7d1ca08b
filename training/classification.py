"""Float64 maths for classifiers: class weights, log losses, metrics and smoothness.

The objective is the weighted mean loss sum_i w_i l_i / n over the n rows, where l_i is the
binary cross-entropy of a logit (logistic regression) or the cross-entropy of a softmax
(multiclass). Metrics are computed from predicted probabilities, unweighted, and returned as
plain Python numbers so they can be written to JSON as they are.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from gdflow.config.errors import GdflowError

#: Bound on the largest eigenvalue of the per-row loss Hessian with respect to the model's
#: outputs: sigma(1 - sigma) <= 1/4, diag(p) - p p^T <= 1/2, and 2 for the squared error.
CURVATURE = {"logistic": 0.25, "softmax": 0.5, "linear": 2.0}

#: Probabilities are clipped to [EPS, 1 - EPS] for the log loss, as scikit-learn does.
EPS = float(np.finfo(np.float64).eps)


def row_weights(weights: Optional[np.ndarray], n: int) -> np.ndarray:
    """Per-row weights in float64, checked to be finite and non-negative; ones for None."""
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (n,) or not np.all(np.isfinite(w) & (w >= 0)):
        raise ValueError(f"need {n} finite non-negative row weights, got {w.size}")
    return w


def class_indices(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Class indices as int64, checked to lie in 0..n_classes-1."""
    labels = np.asarray(y).reshape(-1)
    idx = labels.astype(np.int64)
    if labels.size and (np.any(idx != labels) or idx.min() < 0 or idx.max() >= n_classes):
        raise ValueError(f"class indices must be integers in 0..{n_classes - 1}")
    return idx


def class_weights(y_idx: np.ndarray, n_classes: int, mode: Optional[str]) -> np.ndarray:
    """Per-row sample weights: ones for None; n / (n_classes * count[class]) for "balanced".

    "balanced" is scikit-learn's class_weight="balanced"; the weights sum to n when every
    class occurs in `y_idx`.
    """
    idx = class_indices(y_idx, n_classes)
    if mode is None:
        return np.ones(idx.size)
    if mode != "balanced":
        raise GdflowError(f"unknown class weighting {mode!r}; use 'balanced' or leave it unset")
    counts = np.bincount(idx, minlength=n_classes).astype(np.float64)
    return idx.size / (n_classes * counts[idx])


def binary_log_loss(
    logits: np.ndarray, y01: np.ndarray, weights: Optional[np.ndarray] = None
) -> float:
    """Weighted mean binary cross-entropy sum_i w_i l_i / n of logits against 0/1 targets."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(y01, dtype=np.float64).reshape(-1)
    per_row = np.logaddexp(0.0, z) - y * z  # -y log(sigma(z)) - (1 - y) log(1 - sigma(z))
    return float(np.sum(row_weights(weights, z.size) * per_row) / z.size)


def multiclass_log_loss(
    logits: np.ndarray, y_idx: np.ndarray, weights: Optional[np.ndarray] = None
) -> float:
    """Weighted mean softmax cross-entropy sum_i w_i l_i / n of (n, k) logits."""
    from scipy.special import logsumexp  # imported here: a regression run never loads scipy

    z = np.asarray(logits, dtype=np.float64)
    idx = class_indices(y_idx, z.shape[1])
    per_row = logsumexp(z, axis=1) - z[np.arange(z.shape[0]), idx]
    return float(np.sum(row_weights(weights, z.shape[0]) * per_row) / z.shape[0])


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class."""
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0 when the denominator is 0 (scikit-learn's zero_division=0)."""
    return numerator / denominator if denominator > 0 else 0.0


def roc_auc(scores: np.ndarray, y01: np.ndarray) -> Optional[float]:
    """ROC AUC by the Mann-Whitney rank formula, ties averaged; None for a single class."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(y01).reshape(-1) == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata  # imported here: a regression run never loads scipy

    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(prob1: np.ndarray, y01: np.ndarray) -> dict[str, Any]:
    """Log loss, accuracy, ROC AUC, precision, recall, F1 and the 2x2 confusion matrix.

    The predicted class is 1 where prob1 > 0.5 (scikit-learn's predict: a logit above 0).
    """
    p = np.asarray(prob1, dtype=np.float64).reshape(-1)
    y = class_indices(y01, 2)
    clipped = np.clip(p, EPS, 1 - EPS)
    log_loss = -np.mean(np.where(y == 1, np.log(clipped), np.log1p(-clipped)))
    matrix = _confusion(y, (p > 0.5).astype(np.int64), 2)
    tp, fp, fn = int(matrix[1, 1]), int(matrix[0, 1]), int(matrix[1, 0])
    return {
        "log_loss": float(log_loss),
        "accuracy": float(np.trace(matrix) / y.size),
        "roc_auc": roc_auc(p, y),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "confusion_matrix": matrix.tolist(),
    }


def multiclass_metrics(prob: np.ndarray, y_idx: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Log loss, accuracy, macro F1 and the confusion matrix of (n, k) class probabilities.

    The predicted class is the first most probable one; macro F1 averages over the classes
    that occur in the targets or the predictions, as scikit-learn's f1_score(average="macro").
    """
    p = np.asarray(prob, dtype=np.float64)
    y = class_indices(y_idx, n_classes)
    true_prob = np.clip(p[np.arange(y.size), y], EPS, 1 - EPS)
    matrix = _confusion(y, np.argmax(p, axis=1), n_classes)
    tp = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    present = (support + predicted) > 0
    f1 = [_ratio(2 * tp[c], support[c] + predicted[c]) for c in np.flatnonzero(present)]
    return {
        "log_loss": float(-np.mean(np.log(true_prob))),
        "accuracy": float(tp.sum() / y.size),
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": matrix.tolist(),
    }


def smoothness(
    x: np.ndarray, *, bias: bool, family: str, weights: Optional[np.ndarray] = None
) -> float:
    """Smoothness constant L = lambda_max(A^T W A / n) * c of the weighted mean loss.

    A is `x` in float64 (with a column of ones for the bias), W = diag(weights), and c bounds
    the loss's curvature in the model's outputs: 1/4 for "logistic", 1/2 for "softmax" and 2
    for "linear" (the MSE, whose Hessian is exactly (2/n) A^T A). Full-batch gradient descent
    is stable for learning rates below 2 / L.
    """
    if family not in CURVATURE:
        raise ValueError(f"family must be one of {sorted(CURVATURE)}, not {family!r}")
    a = np.asarray(x, dtype=np.float64)
    a = a.reshape(-1, 1) if a.ndim == 1 else a
    if bias:
        a = np.hstack([a, np.ones((a.shape[0], 1))])
    n = a.shape[0]
    gram = a.T @ (row_weights(weights, n)[:, None] * a) / n
    return float(np.linalg.eigvalsh(gram)[-1]) * CURVATURE[family]
