"""Training loop: time per epoch of gdflow's `fit` against reading the data once (`X.sum()`).

Large problem: full-batch gradient descent on float32 rows x features in memory; the floor is
one read of the feature matrix. The seed's loop and an `F.mse_loss` loop are shown beside it.
Small problem (the seed's 5 points): `fit` against a bare loop of the same ops, no recording.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import Result, interleaved, ms
from gdflow.data.dataset import load_toy
from gdflow.training.loop import fit
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization


def _reference_epochs(
    x: torch.Tensor, y: torch.Tensor, epochs: int, loss_fn: Callable[..., torch.Tensor]
) -> Callable[[], None]:
    """`epochs` of the seed's loop (autograd, torch.optim.SGD) with the given loss."""
    w = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.01)

    def run() -> None:
        for _ in range(epochs):
            loss = loss_fn(x @ w, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        _sync(x.device)

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def large(rows: int, features: int, epochs: int, repeats: int, device: torch.device) -> Result:
    """gdflow's per-epoch time on a rows x features float32 problem against one read of X."""
    generator = np.random.default_rng(0)
    x = generator.standard_normal((rows, features), dtype=np.float32)
    y = (x @ np.linspace(-1, 1, features, dtype=np.float32) + 0.5).astype(np.float32)
    x_t = torch.from_numpy(x).to(device)
    y_t = torch.from_numpy(y).to(device)
    initial = {f"w_{j}": 0.0 for j in range(features)}

    def floor() -> None:
        for _ in range(epochs):
            x_t.sum()
        _sync(device)

    def gdflow() -> None:
        fit(TrainingData(x, y), initial, Optimization(lr=0.01, epochs=epochs), device=device)

    times = interleaved(
        {
            "floor": floor,
            "gdflow": gdflow,
            "seed": _reference_epochs(x_t, y_t, epochs, lambda p, t: ((p - t) ** 2).mean()),
            "mse_loss": _reference_epochs(x_t, y_t, epochs, F.mse_loss),
        },
        repeats,
    )
    per_epoch = {name: t / epochs for name, t in times.items()}
    return Result(
        name=f"training {rows}x{features} ({device.type})",
        ratio=per_epoch["gdflow"] / per_epoch["floor"],
        target=2.0,
        higher_is_better=False,
        raw=(
            f"epoch {ms(per_epoch['gdflow'])}, X.sum() {ms(per_epoch['floor'])}; seed loop "
            f"{per_epoch['seed'] / per_epoch['floor']:.1f}x, F.mse_loss "
            f"{per_epoch['mse_loss'] / per_epoch['floor']:.1f}x"
        ),
    )


def small(epochs: int, repeats: int, device: torch.device) -> Result:
    """gdflow's per-epoch time on the seed's 5 points against the bare loop of the same ops."""
    data = load_toy()
    x_t = torch.as_tensor(data.x, device=device)
    y_t = torch.as_tensor(data.y, device=device)

    def bare() -> None:
        w = torch.tensor([1.0], device=device, requires_grad=True)
        optimizer = torch.optim.SGD([w], lr=0.01)
        for _ in range(epochs):
            loss = ((x_t @ w - y_t) ** 2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        _sync(device)

    def gdflow() -> None:
        toy = TrainingData(data.x, data.y)
        fit(toy, {"w": 1.0}, Optimization(lr=0.01, epochs=epochs), device=device)

    times = interleaved({"bare": bare, "gdflow": gdflow}, repeats)
    return Result(
        name=f"training seed 5 points ({device.type})",
        ratio=times["gdflow"] / times["bare"],
        target=1.2,
        higher_is_better=False,
        raw=(
            f"epoch {times['gdflow'] / epochs * 1e6:.1f} us, "
            f"bare loop {times['bare'] / epochs * 1e6:.1f} us"
        ),
    )


def run(*, quick: bool, device: str = "cpu", rows: int | None = None) -> list[Result]:
    """Both training benchmarks (quick: tiny sizes for the smoke test)."""
    dev = torch.device(device)
    return [
        large(
            rows or (20_000 if quick else 1_000_000), 16, 3 if quick else 20, 1 if quick else 7, dev
        ),
        small(200 if quick else 5000, 1 if quick else 7, dev),
    ]
