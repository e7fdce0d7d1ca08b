"""The exact optimum of a classifier's weighted mean log loss, in float64.

Logistic regression and softmax regression minimise sum_i w_i l_i / n (see classification.py).
Their optimum is found by Newton's method with a backtracking line search on standardized
columns and mapped back to the original units. It exists only when the classes overlap: if a
direction separates them, even with some rows on the boundary (quasi-separation), the loss keeps
falling as the weights grow. A linear program (scipy's HiGHS) checks that exactly first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import sparse
from scipy.optimize import linprog
from scipy.special import expit, softmax

from gdflow.training.classification import (
    binary_log_loss,
    class_indices,
    multiclass_log_loss,
    row_weights,
)
from gdflow.training.evaluation import design_matrix

#: Softmax problems with more free parameters than this are not solved exactly.
MAX_PARAMETERS = 3000
#: Separability checks with more nonzero constraint-matrix entries than this are not attempted.
MAX_LP_ENTRIES = 20_000_000
#: Newton stops when the gradient norm is this small relative to its scale (see _newton).
GRADIENT_TOL = 1e-12
NO_MINIMUM = "the loss has no finite minimum"
SEPARABLE = (
    f"the classes are linearly separable: {NO_MINIMUM} (it approaches 0 as the weights grow)"
)
QUASI = (
    "the classes are quasi-separable (a hyperplane separates them with some rows on it): "
    f"{NO_MINIMUM} (it keeps falling as the weights grow)"
)


@dataclass(frozen=True)
class Optimum:
    """The optimal parameters and their loss, or None for both and the reason why."""

    theta: Optional[np.ndarray]
    loss: Optional[float]
    reason: str


NOT_CONVERGED = Optimum(None, None, "Newton's method did not converge to the optimum")


def logistic_loss(
    x: np.ndarray,
    y01: np.ndarray,
    theta: np.ndarray,
    *,
    bias: bool,
    weights: Optional[np.ndarray] = None,
) -> float:
    """Weighted mean binary cross-entropy of parameters theta (bias last) on rows (x, y01)."""
    return binary_log_loss(design_matrix(x, bias) @ np.asarray(theta, np.float64), y01, weights)


def softmax_loss(
    x: np.ndarray,
    y_idx: np.ndarray,
    theta: np.ndarray,
    *,
    bias: bool,
    weights: Optional[np.ndarray] = None,
) -> float:
    """Weighted mean softmax cross-entropy of (d + bias, k) parameters on rows (x, y_idx)."""
    return multiclass_log_loss(
        design_matrix(x, bias) @ np.asarray(theta, np.float64), y_idx, weights
    )


def _standardize(x: np.ndarray, bias: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns centred (only with a bias) and scaled to unit size, with the shift and scale."""
    a = design_matrix(x, False)
    shift = a.mean(axis=0) if bias else np.zeros(a.shape[1])
    scale = np.sqrt(np.mean((a - shift) ** 2, axis=0))
    scale[~(scale > 0)] = 1.0  # a constant column stays constant (zero with a bias)
    return design_matrix((a - shift) / scale, bias), shift, scale


def _original_units(
    beta: np.ndarray, shift: np.ndarray, scale: np.ndarray, bias: bool
) -> np.ndarray:
    """Map parameters on standardized columns back to the original columns."""
    d = scale.size
    weights = beta[:d] / (scale[:, None] if beta.ndim == 2 else scale)
    if not bias:
        return weights
    return np.concatenate([weights, (beta[d] - shift @ weights)[None]])


def _separation(m: sparse.csr_array) -> Optional[str]:
    """None if no v != 0 in [-1, 1]^p has m v >= 0 with sum(m v) > 0; else SEPARABLE or QUASI."""
    total = float(abs(m).sum())
    n_rows, p = m.shape
    zeros = np.zeros(n_rows)
    res = linprog(-(m.T @ np.ones(n_rows)), A_ub=-m, b_ub=zeros, bounds=(-1, 1), method="highs")
    if res.status != 0 or not float(np.sum(m @ res.x)) > 1e-7 * total:
        return None
    # Complete separation: every row's margin m_i v at least t |m_i|_1 for some t > 0.
    row_sizes = np.asarray(abs(m).sum(axis=1)).reshape(-1, 1)
    cost = np.concatenate([np.zeros(p), [-1.0]])
    bounds = [(-1.0, 1.0)] * p + [(None, 1.0)]
    strict = sparse.hstack([-m, sparse.csr_array(row_sizes)]).tocsr()
    res = linprog(cost, A_ub=strict, b_ub=zeros, bounds=bounds, method="highs")
    return SEPARABLE if res.status == 0 and -res.fun > 1e-7 else QUASI


Objective = Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]]


def _newton(
    objective: Objective, loss: Callable[[np.ndarray], float], p: int, g_scale: float
) -> Optional[np.ndarray]:
    """Minimise from zero; the parameters, or None if the gradient did not become small."""
    theta = np.zeros(p)
    f, g, h = objective(theta)
    for _ in range(200):
        if np.linalg.norm(g) <= GRADIENT_TOL * g_scale:
            break
        step = -np.linalg.lstsq(h, g, rcond=None)[0]  # minimum norm where h is singular
        slope = float(g @ step)
        if not slope < 0:
            break
        t, slack = 1.0, 8 * np.finfo(np.float64).eps * abs(f)  # rounding near the optimum
        while loss(theta + t * step) > f + 1e-4 * t * slope + slack and t > 1e-12:
            t /= 2
        if t <= 1e-12:
            break
        theta = theta + t * step
        f, g, h = objective(theta)
    return theta if np.linalg.norm(g) <= 1e-9 * g_scale else None


def _no_optimum(m: sparse.csr_array, absent: str) -> Optional[Optimum]:
    """The Optimum saying why there is none if the LP finds a separating direction."""
    if m.nnz > MAX_LP_ENTRIES:
        reason = f"too many rows for the exact solver ({m.nnz} > {MAX_LP_ENTRIES} LP entries)"
        return Optimum(None, None, reason)
    kind = _separation(m)
    if kind is None:
        return None
    return Optimum(None, None, f"{absent}: {NO_MINIMUM}" if absent else kind)


def logistic_optimum(
    x: np.ndarray, y01: np.ndarray, *, bias: bool, weights: Optional[np.ndarray] = None
) -> Optimum:
    """The parameters (weights, then the bias) minimising the weighted mean logistic loss."""
    z, shift, scale = _standardize(x, bias)
    y = class_indices(y01, 2).astype(np.float64)
    n, p = z.shape
    w = row_weights(weights, n)
    use = w > 0  # rows of weight 0 do not affect the loss, nor whether it has a minimum
    absent = "only one class occurs in the targets" if np.unique(y[use]).size < 2 else ""
    if stop := _no_optimum(sparse.csr_array((2 * y[use] - 1)[:, None] * z[use]), absent):
        return stop

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        logits = z @ beta
        prob = expit(logits)
        loss = binary_log_loss(logits, y, w)
        return loss, z.T @ (w * (prob - y)) / n, (z.T * (w * prob * (1 - prob))) @ z / n

    beta = _newton(objective, lambda b: binary_log_loss(z @ b, y, w), p, _g_scale(z, w))
    if beta is None:
        return NOT_CONVERGED
    theta = _original_units(beta, shift, scale, bias)
    return Optimum(theta, logistic_loss(x, y, theta, bias=bias, weights=w), "")


def _g_scale(z: np.ndarray, w: np.ndarray) -> float:
    """Gradient norm if every residual were 1: the scale of the stopping rule."""
    return float(np.linalg.norm(np.abs(z).T @ np.abs(w) / z.shape[0])) or 1.0


def _softmax_lp(z: np.ndarray, y: np.ndarray, k: int) -> sparse.csr_array:
    """Rows a_i (v_{y_i} - v_j), j != y_i, over the free columns v_1..v_{k-1} (v_0 = 0)."""
    p = z.shape[1]
    rows_i, rows_j = np.nonzero(np.arange(k)[None, :] != y[:, None])
    parts = []
    for cls, sign in ((y[rows_i], 1.0), (rows_j, -1.0)):
        keep = cls > 0
        r = np.repeat(np.flatnonzero(keep), p)
        c = ((cls[keep] - 1)[:, None] * p + np.arange(p)).reshape(-1)
        parts.append((r, c, sign * z[rows_i[keep]].reshape(-1)))
    r, c, v = (np.concatenate(t) for t in zip(*parts))
    return sparse.csr_array((v, (r, c)), shape=(rows_i.size, (k - 1) * p))


def softmax_optimum(
    x: np.ndarray,
    y_idx: np.ndarray,
    n_classes: int,
    *,
    bias: bool,
    weights: Optional[np.ndarray] = None,
) -> Optimum:
    """The (d + bias, k) parameters, class 0's column zero, minimising the softmax loss."""
    z, shift, scale = _standardize(x, bias)
    k = n_classes
    y = class_indices(y_idx, k)
    n, p = z.shape
    if k < 2:
        raise ValueError("a softmax needs at least 2 classes")
    if p * (k - 1) > MAX_PARAMETERS:
        reason = f"too many parameters for the exact solver ({p * (k - 1)} > {MAX_PARAMETERS})"
        return Optimum(None, None, reason)
    w = row_weights(weights, n)
    use = w > 0
    missing = np.setdiff1d(np.arange(k), y[use])
    absent = f"class(es) {', '.join(map(str, missing))} never occur in the targets"
    onehot = np.eye(k)[y]

    def logits(free: np.ndarray) -> np.ndarray:
        return np.hstack([np.zeros((n, 1)), z @ free.reshape(p, k - 1)])

    def objective(free: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        out = logits(free)
        prob = softmax(out, axis=1)[:, 1:]
        grad = z.T @ (w[:, None] * (prob - onehot[:, 1:])) / n
        hess = np.empty((p, k - 1, p, k - 1))
        for c in range(k - 1):
            for e in range(c, k - 1):
                curvature = w * prob[:, c] * ((c == e) - prob[:, e])
                hess[:, c, :, e] = hess[:, e, :, c] = (z.T * curvature) @ z / n
        return multiclass_log_loss(out, y, w), grad.reshape(-1), hess.reshape(p * (k - 1), -1)

    if stop := _no_optimum(_softmax_lp(z[use], y[use], k), absent if missing.size else ""):
        return stop

    def loss(free: np.ndarray) -> float:
        return multiclass_log_loss(logits(free), y, w)

    free = _newton(objective, loss, p * (k - 1), _g_scale(z, w))
    if free is None:
        return NOT_CONVERGED
    beta = np.hstack([np.zeros((p, 1)), free.reshape(p, k - 1)])
    theta = _original_units(beta, shift, scale, bias)
    return Optimum(theta, softmax_loss(x, y, theta, bias=bias, weights=w), "")
