"""How well gradient descent can do on a least-squares problem, known before training.

For the MSE loss of a linear model the Hessian is H = (2/n) A^T A (A: the design matrix with a
column of ones for the bias). Full-batch gradient descent is stable for lr < 2 / lambda_max
(2 (1 + momentum) / lambda_max with heavy-ball momentum), and the condition number
lambda_max / lambda_min says how many epochs plain gradient descent needs (about kappa).
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


def hessian_eigenvalues(x: np.ndarray, *, bias: bool) -> np.ndarray:
    """Eigenvalues (ascending) of the MSE loss Hessian of a linear model on `x`."""
    x64 = np.asarray(x, dtype=np.float64)
    n, d = x64.shape
    gram = np.empty((d + bias, d + bias))
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        gram[:d, :d] = x64.T @ x64
        if bias:
            sums = x64.sum(axis=0)
            gram[:d, d] = gram[d, :d] = sums
            gram[d, d] = n
    if not np.isfinite(gram).all():
        raise features_too_large(float(np.abs(x64).max()))
    return np.linalg.eigvalsh(2.0 / n * gram)


def analyse(
    x: np.ndarray,
    *,
    bias: bool,
    lr: Optional[float],
    optimizer: str = "sgd",
    momentum: float = 0.0,
    nesterov: bool = False,
    standardized: bool = False,
) -> Conditioning:
    """Stability bound, condition number and warnings for training on `x` with `lr`."""
    eigenvalues = hessian_eigenvalues(x, bias=bias)
    top, bottom = float(eigenvalues[-1]), float(eigenvalues[0])
    if not top > 0:
        return Conditioning(None, None, ["the features are all zero: nothing to learn"])
    max_lr: Optional[float] = None
    if optimizer == "sgd":  # Adam's step size has no such bound
        # Heavy ball: 2(1+m)/lambda; Nesterov: 2(1+m)/((1+2m) lambda).
        max_lr = 2.0 * (1.0 + momentum) / ((1.0 + 2.0 * momentum) if nesterov else 1.0) / top
    condition = top / bottom if bottom > top * 1e-15 else math.inf
    warnings: list[str] = []
    if max_lr is not None and lr is not None and lr >= max_lr:
        warnings.append(
            f"learning rate {lr:g} is above the largest stable step {max_lr:.4g} "
            f"(2{'(1+momentum)' if momentum else ''}/largest Hessian eigenvalue) for this data: "
            f"the loss will diverge; use --lr below {max_lr:.3g}"
        )
    if math.isinf(condition):
        warnings.append(
            "the features are linearly dependent (singular Hessian): the least-squares "
            "solution is not unique; drop redundant --features"
        )
    elif condition > SLOW_CONDITION:
        advice = "" if standardized else "; --standardize usually fixes this"
        warnings.append(
            f"condition number {condition:.3g}: plain gradient descent needs on the order of "
            f"{condition:.2g} epochs to converge{advice}"
        )
    return Conditioning(max_lr, None if math.isinf(condition) else condition, warnings)


def auto_learning_rate(x: np.ndarray, *, bias: bool, optimizer: str = "sgd") -> float:
    """The 'auto' learning rate: 1 / largest Hessian eigenvalue (half the stability bound)."""
    if optimizer != "sgd":
        return 0.01
    top = float(hessian_eigenvalues(x, bias=bias)[-1])
    return 1.0 / top if top > 0 else 0.01
