"""Full-batch mean squared error whose forward also computes the gradient, for large inputs.

Autograd's version of `((x @ w + b - y) ** 2).mean()` reads `x` twice per epoch (the forward
product and the backward product) and makes several passes over n-long temporaries. Here the
forward computes the residual r = x w + b - y once, the loss r.r / n and the gradients
2/n x^T r and 2/n sum(r) in the same call, in row blocks, and keeps the gradients for the
backward, which only scales them. It is still a torch.autograd.Function: `loss.backward()`
fills `.grad` and a torch.optim optimizer takes the step, as on the reference path.

The numbers equal the reference path's up to floating-point summation order.

`fit` takes this path for large full-batch linear MSE that the sufficient statistics
(`statistics_mse`) do not serve better: more features than rows, runs too short to repay
forming X^T X, and devices without float64 (`statistics_mse.choose_loss_path`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

#: Full-batch linear training data with at least this many elements (rows x features) takes the
#: fused or the statistics path; smaller data (the seed's toy data) keeps the reference ops.
FUSED_MIN_ELEMENTS = 1 << 18
#: Rows per block on the CPU: a block of x is read for the residual and again for the gradient
#: while it is still in cache. Small blocks also keep each BLAS call single-threaded, which
#: stays fast when other processes share the cores (benchmarks/training.py, 1M x 16 float32).
CPU_BLOCK_ROWS = 4096


class _FusedMSE(torch.autograd.Function):
    """mean((x w + b - y)^2) with both gradients computed in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        b: Optional[torch.Tensor],
        block_rows: int,
    ) -> torch.Tensor:
        n = x.shape[0]
        grad_w = torch.zeros_like(w)
        grad_b = torch.zeros((), dtype=x.dtype, device=x.device)
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        for start in range(0, n, block_rows):
            xb = x[start : start + block_rows]
            residual = torch.mv(xb, w).sub_(y[start : start + block_rows])
            if b is not None:
                residual.add_(b)
                grad_b += residual.sum()
            grad_w.addmv_(xb.T, residual)
            total += torch.dot(residual, residual)
        scale = 2.0 / n
        ctx.save_for_backward(grad_w.mul_(scale), grad_b.mul_(scale).reshape(1))
        ctx.has_bias = b is not None
        return total / n

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_output: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], ...]:
        grad_w, grad_b = ctx.saved_tensors
        return (
            None,
            None,
            grad_w * grad_output,
            grad_b * grad_output if ctx.has_bias else None,
            None,
        )


def fused_mse(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    *,
    block_rows: Optional[int] = None,
) -> torch.Tensor:
    """mean((x @ w + b - y) ** 2) for x (n, k), w (k,), b (1,) or None; differentiable in w, b."""
    if block_rows is None:
        block_rows = CPU_BLOCK_ROWS if x.device.type == "cpu" else max(1, x.shape[0])
    loss: torch.Tensor = _FusedMSE.apply(x, y, w, b, block_rows)
    return loss
