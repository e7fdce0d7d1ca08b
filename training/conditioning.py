"""How well gradient descent can do on a least-squares problem, known before training.

For the MSE loss of a linear model the Hessian is H = (2/n) A^T A (A: the design matrix with a
column of ones for the bias). Full-batch gradient descent is stable for lr < 2 / lambda_max
(2 (1 + momentum) / lambda_max with heavy-ball momentum), and the condition number
lambda_max / lambda_min says how many epochs plain gradient descent needs (about kappa).

A classifier's Hessian changes with the weights but never exceeds c A^T W A / n (W: the row
weights; c = 1/4 for the logistic loss, 1/2 for softmax cross-entropy), so L = lambda_max of that
bound is a smoothness constant and lr < 2 / L is a sufficient, not a tight, stability bound:
above it gdflow warns that the loss may diverge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from gdflow.config.errors import features_too_large

#: Above this condition number plain gradient descent is slow enough to warn about.
SLOW_CONDITION = 1e3


@dataclass(frozen=True)
class Conditioning:
    """Largest stable learning rate, condition number and the warnings they give."""

    max_stable_lr: Optional[float]
    condition_number: Optional[float]
    warnings: list[str] = field(default_factory=list)


#: The loss's curvature in the model's outputs, at most: the factor c of the Hessian bound.
CURVATURE = {"linear": 2.0, "logistic": 0.25, "softmax": 0.5}


@dataclass(frozen=True)
class Gram:
    """A^T A of rows not in memory (a streamed data set's, `training.streamed`): the design
    matrix A has the bias's column of ones last when the model has one; `rows` is n."""

    matrix: np.ndarray
    rows: int


def hessian_eigenvalues(
    x: np.ndarray | Gram,
    *,
    bias: bool,
    family: str = "linear",
    weights: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Eigenvalues (ascending) of the MSE loss Hessian of a linear model on `x`, or of a
    classifier's Hessian bound c A^T W A / n (`family` logistic or softmax, `weights` per row).
    `x` may be the rows' Gram matrix instead (unweighted)."""
    if isinstance(x, Gram):
        if not np.isfinite(x.matrix).all():
            raise features_too_large(float(np.sqrt(np.abs(x.matrix).max())))
        factor = 2.0 if family == "linear" else CURVATURE[family]
        return np.linalg.eigvalsh(factor / x.rows * x.matrix)
    x64 = np.asarray(x, dtype=np.float64)
    n, d = x64.shape
    gram = np.empty((d + bias, d + bias))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        weighted = x64 if weights is None else x64 * np.asarray(weights, np.float64)[:, None]
        gram[:d, :d] = weighted.T @ x64
        if bias:
            sums = weighted.sum(axis=0)
            gram[:d, d] = gram[d, :d] = sums
            gram[d, d] = n if weights is None else float(np.sum(weights, dtype=np.float64))
    if not np.isfinite(gram).all():
        raise features_too_large(float(np.abs(x64).max()))
    if family == "linear":
        return np.linalg.eigvalsh(2.0 / n * gram)
    return np.linalg.eigvalsh(CURVATURE[family] / n * gram)


def analyse(
    x: np.ndarray | Gram,
    *,
    bias: bool,
    lr: Optional[float],
    optimizer: str = "sgd",
    momentum: float = 0.0,
    nesterov: bool = False,
    standardized: bool = False,
    family: str = "linear",
    weights: Optional[np.ndarray] = None,
) -> Conditioning:
    """Stability bound, condition number and warnings for training on `x` with `lr`."""
    eigenvalues = hessian_eigenvalues(x, bias=bias, family=family, weights=weights)
    top, bottom = float(eigenvalues[-1]), float(eigenvalues[0])
    if not top > 0:
        return Conditioning(None, None, ["the features are all zero: nothing to learn"])
    max_lr: Optional[float] = None
    if optimizer == "sgd":  # Adam's step size has no such bound
        # Heavy ball: 2(1+m)/lambda; Nesterov: 2(1+m)/((1+2m) lambda).
        max_lr = 2.0 * (1.0 + momentum) / ((1.0 + 2.0 * momentum) if nesterov else 1.0) / top
    condition = top / bottom if bottom > top * 1e-15 else math.inf
    warnings: list[str] = []
    if max_lr is not None and lr is not None and lr >= max_lr and family == "linear":
        warnings.append(
            f"learning rate {lr:g} is above the largest stable step {max_lr:.4g} "
            f"(2{'(1+momentum)' if momentum else ''}/largest Hessian eigenvalue) for this data: "
            f"the loss will diverge; use --lr below {max_lr:.3g}"
        )
    elif max_lr is not None and lr is not None and lr >= max_lr:
        warnings.append(
            f"learning rate {lr:g} is above {max_lr:.4g}, the step below which gradient descent "
            f"on the {family} loss surely converges (2{'(1+momentum)' if momentum else ''}/L, L "
            f"its smoothness constant): the loss may diverge; use --lr below {max_lr:.3g} to "
            "be sure"
        )
    if math.isinf(condition):
        solution = "least-squares solution" if family == "linear" else "optimum"
        warnings.append(
            f"the features are linearly dependent (singular Hessian): the {solution} is not "
            "unique; drop redundant --features"
        )
    elif condition > SLOW_CONDITION:
        advice = "" if standardized else "; --standardize usually fixes this"
        warnings.append(
            f"condition number {condition:.3g}: plain gradient descent needs on the order of "
            f"{condition:.2g} epochs to converge{advice}"
        )
    return Conditioning(max_lr, None if math.isinf(condition) else condition, warnings)


def auto_learning_rate(
    x: np.ndarray | Gram,
    *,
    bias: bool,
    optimizer: str = "sgd",
    family: str = "linear",
    weights: Optional[np.ndarray] = None,
) -> float:
    """The 'auto' learning rate: 1 / largest Hessian eigenvalue (half the stability bound);
    for a classifier 1 / L, half its sufficient bound."""
    if optimizer != "sgd":
        return 0.01
    top = float(hessian_eigenvalues(x, bias=bias, family=family, weights=weights)[-1])
    return 1.0 / top if top > 0 else 0.01
