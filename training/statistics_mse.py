"""Full-batch least squares from sufficient statistics: each epoch costs O(d^2), not O(n d).

The mean squared error of a linear model depends on the rows only through n, X^T X, X^T y,
y^T y, sum(x) and sum(y). `MSEStatistics.of` forms them once, in float64, in one pass over the
rows in blocks (memory O(d^2) beyond X itself), on the device the data is on. They are held
centred, as Chan's pairwise update merges them block by block: the means m_x, m_y and the
co-moment matrix C of z = (x, y) about those means, so a large offset in a column cancels
nowhere. On the CPU, rows of up to 64 features go through a compiled kernel (`comoment.h`, built
with the fused cross-entropy kernel: 3-4x faster than torch's blocks at 16 features); elsewhere,
or without a compiler, torch ops form them block by block. With u = (w, -1) and
t = m_x . w + b - m_y,

    mean((x w + b - y)^2) = u^T C u / n + t^2,
    d/dw = 2 (C u)_w / n + 2 t m_x,    d/db = 2 t.

`statistics_mse` is that loss as a torch.autograd.Function of the model's own parameters:
`loss.backward()` fills their `.grad` and a torch.optim optimizer steps them, as on the direct
path; only X never appears. The loss and gradient are evaluated in float64 and handed back in
the parameters' dtype, so float32 data trains on float64 sums (the direct float32 path rounds
every residual and every sum to float32; this one is the more accurate).

What it cannot do: per-row quantities. Metrics that need residuals (MAE, R^2) come from one pass
over the rows after training (`training.evaluation.evaluate`). And its loss resolves the fit to
about 1e-16 of var(y): for an exact fit the recorded loss stops near that floor (never below 0)
where the direct float64 path goes on down to ~1e-32; the parameters are as accurate as the
direct path's, whose gradient carries rounding of the same order.

`choose_loss_path` says which path `fit` trains on: this one for large full-batch linear MSE
with no more features than rows and enough epochs to repay the one pass (`setup_epochs`), the
fused pass (`fused_mse`) for the rest of it (wide data, short runs, Apple's MPS, which has no
float64), the seed's exact ops for everything small (the seed's toy data keeps them, bit for
bit), for mini-batches, classifiers and networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from gdflow.training.fused_mse import FUSED_MIN_ELEMENTS

#: How `fit` computes the full-batch loss: the model's own ops on every row ("direct"), one
#: fused pass over the rows (`fused_mse`; `fused_cross_entropy` for a linear classifier), or
#: the sufficient statistics (this module).
LossPath = Literal["direct", "fused", "statistics"]

#: Elements (rows x (features + 1), float64) of one block while the statistics are formed on
#: the CPU: 2 MiB, cache-sized, each block one small GEMM; on a GPU blocks are 32 MiB.
CPU_BLOCK_ELEMENTS = 1 << 18
GPU_BLOCK_ELEMENTS = 1 << 22
#: The widest rows whose statistics the compiled kernel forms (`kernel_serves`). Measured on
#: the 2-core AMD machine, float32, medians of 9: 1,000,000 x 16 in 20-25 ms on two threads
#: (29-39 ms on one) against 74-87 ms for torch's blocks; 100,000 x 64 about even (24-26 ms
#: against 34-47 ms); 100,000 x 256 slower (225-250 ms against torch's 267-380 ms on two
#: threads, but 390-460 ms on one).
KERNEL_MAX_FEATURES = 64


def kernel_serves(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether the compiled kernel forms these rows' statistics: CPU rows of float32 or float64
    (targets of the same dtype) with at most KERNEL_MAX_FEATURES features, where its pass beats
    torch's blocks on one thread as on two; wider rows keep torch's blocks (at 256 features the
    kernel's one-thread pass took 390-460 ms against their 267-380 ms)."""
    return (
        x.device.type == "cpu"
        and x.dim() == 2
        and x.dtype in (torch.float32, torch.float64)
        and y.dtype == x.dtype
        and x.shape[1] <= KERNEL_MAX_FEATURES
    )


def setup_epochs(features: int) -> float:
    """About how many fused epochs forming the statistics costs (a GEMM of n x d^2 against a
    pass of n x d an epoch): measured 6-12 for 16-256 features on 1e5-1e6 rows and about 50
    for 1,000 features on 2 CPU cores; the statistics path needs at least this many epochs."""
    return 8 + features / 16


@dataclass(frozen=True)
class MSEStatistics:
    """n rows, their column means (x then y) and the co-moment matrix of z = (x, y) about them,
    all float64 on the rows' device (`StatisticsMSE` evaluates the MSE of (w, b) from them)."""

    n: int
    mean: torch.Tensor  # (d + 1,): m_x then m_y
    comoment: torch.Tensor  # (d + 1, d + 1): sum over rows of (z - m)(z - m)^T

    @classmethod
    def of(
        cls, x: torch.Tensor, y: torch.Tensor, *, block_rows: Optional[int] = None
    ) -> MSEStatistics:
        """The statistics of rows x (n, d) and targets y (n,), formed in one pass of row
        blocks (Chan et al.'s pairwise update of means and co-moments), in float64: by the
        compiled kernel (`comoment.h`) where it serves (`kernel_serves`) and no `block_rows`
        is asked for, else by torch ops in blocks of `block_rows`."""
        n, d = x.shape
        if block_rows is None and kernel_serves(x, y):
            from gdflow.training import fused_cross_entropy as compiled  # it imports this module

            loaded = compiled.kernel()
            if loaded is not None:
                x, y = x.contiguous(), y.contiguous()
                threads = compiled.threads_for(n * (d + 1) * (d + 2) // 2)  # rows x pairs
                mean, comoment = loaded.comoment(x, y, threads=threads)
                return cls(n=n, mean=mean, comoment=comoment)
        if block_rows is None:
            elements = CPU_BLOCK_ELEMENTS if x.device.type == "cpu" else GPU_BLOCK_ELEMENTS
            block_rows = max(1, elements // (d + 1))
        block_rows = max(1, min(block_rows, n))
        f64, device = torch.float64, x.device
        mean = torch.zeros(d + 1, dtype=f64, device=device)
        comoment = torch.zeros(d + 1, d + 1, dtype=f64, device=device)
        z = torch.empty(block_rows, d + 1, dtype=f64, device=device)  # one block, reused
        seen = 0
        for start in range(0, n, block_rows):
            rows = min(block_rows, n - start)
            block = z[:rows]
            block[:, :d].copy_(x[start : start + rows])
            block[:, d].copy_(y[start : start + rows])
            block_mean = block.mean(0)
            block.sub_(block_mean)
            total = seen + rows
            delta = block_mean - mean
            comoment.addmm_(block.T, block).addr_(delta, delta, alpha=seen * rows / total)
            mean.add_(delta, alpha=rows / total)
            seen = total
        return cls(n=n, mean=mean, comoment=comoment)

    @property
    def features(self) -> int:
        """d, the number of weights."""
        return int(self.mean.shape[0]) - 1


class _Quadratic:
    """The MSE as a function of v = (w, [b], -1): v^T E v + (a . v)^2, where E is C / n with a
    zero row and column for b and a = (m_x, [1], m_y), so a . v = t; v is a float64 buffer
    that each evaluation fills with the parameters."""

    def __init__(self, statistics: MSEStatistics, *, bias: bool) -> None:
        d = statistics.features
        size = d + 1 + int(bias)
        f64, device = torch.float64, statistics.mean.device
        keep = [*range(d), size - 1]  # where C's rows and columns go: b's stays zero
        self.e = torch.zeros(size, size, dtype=f64, device=device)
        self.e[[[i] for i in keep], keep] = statistics.comoment / statistics.n
        self.a = torch.ones(size, dtype=f64, device=device)
        self.a[keep] = statistics.mean
        self.v = torch.empty(size, dtype=f64, device=device)
        self.v[-1] = -1.0
        self.v_w = self.v[:d]
        self.v_b = self.v[d : d + 1] if bias else None
        self.d = d

    def evaluate(
        self, w: torch.Tensor, b: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, E v, t) at (w, b) in float64; the loss is never below 0."""
        self.v_w.copy_(w)
        if self.v_b is not None and b is not None:
            self.v_b.copy_(b)
        ev = torch.mv(self.e, self.v)
        t = torch.dot(self.a, self.v)  # m_x . w + b - m_y
        # u^T C u / n is >= 0; rounding can only take it a hair below when the fit is exact.
        loss = torch.addcmul(torch.dot(self.v, ev).clamp_min_(0.0), t, t)
        return loss, ev, t


class _StatisticsMSE(torch.autograd.Function):
    """mean((x w + b - y)^2) from the statistics, its gradient computed in the forward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, w: torch.Tensor, b: Optional[torch.Tensor], quadratic: _Quadratic
    ) -> torch.Tensor:
        loss, ev, t = quadratic.evaluate(w, b)
        # Half the gradient in v: E v + t a, i.e. ((C u / n)_w + t m_x, t, unused); doubled in
        # backward. One cast for both parameters.
        ctx.save_for_backward(torch.addcmul(ev, t, quadratic.a).to(w.dtype))
        ctx.d, ctx.has_bias = quadratic.d, b is not None
        return loss.to(w.dtype)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_output: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], ...]:
        (half,) = ctx.saved_tensors
        grad = half * (grad_output * 2.0)
        d = ctx.d
        return grad[:d], grad[d : d + 1] if ctx.has_bias else None, None


class StatisticsMSE:
    """The MSE of a linear model (with a bias or not) on some rows, from their statistics."""

    def __init__(self, statistics: MSEStatistics, *, bias: bool) -> None:
        self.statistics = statistics
        self._quadratic = _Quadratic(statistics, bias=bias)

    def loss(self, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        """mean((x w + b - y)^2) in w's dtype; differentiable in w and b."""
        loss: torch.Tensor = _StatisticsMSE.apply(w, b, self._quadratic)
        return loss

    def value(self, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        """The same loss without its gradient (for the validation rows)."""
        with torch.no_grad():
            return self._quadratic.evaluate(w, b)[0].to(w.dtype)


def statistics_mse(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """mean((x @ w + b - y) ** 2) by way of the statistics (formed anew: for tests and one-offs;
    training forms them once with `StatisticsMSE`)."""
    return StatisticsMSE(MSEStatistics.of(x, y), bias=b is not None).loss(w, b)


def float64_supported(device: torch.device) -> bool:
    """Whether the device computes in float64 (Apple's MPS does not)."""
    return device.type != "mps"


def choose_loss_path(
    shape: tuple[int, ...],
    *,
    linear: bool,
    full_batch: bool,
    epochs: int,
    device: torch.device,
) -> LossPath:
    """The path `fit` trains a model on: `statistics` for large full-batch linear MSE with no
    more features than rows whose epochs repay forming X^T X; `fused` for the rest of large
    full-batch linear MSE (wide data, short runs, a device without float64); else `direct`
    (mini-batches, classifiers, networks, and small data such as the seed's, kept bit for bit)."""
    if not (linear and full_batch and len(shape) == 2):
        return "direct"
    rows, features = shape
    if rows * features < FUSED_MIN_ELEMENTS:
        return "direct"
    repaid = epochs >= setup_epochs(features)
    if features <= rows and repaid and float64_supported(device):
        return "statistics"
    return "fused"
