"""Training-loop overhead: an epoch of gdflow's `fit` against the same loop written bare.

Three cases on rows x 16 float32 (1,000,000 rows by default): a linear model trained by
mini-batch SGD (batch 256), and an MLP (`--hidden 64,64`, ReLU, MSE) trained by SGD on the full
batch and on mini-batches of 256. The bare loop is the same model (the same seeded MLP), the same
shuffle (a seeded `randperm` split into batches, rows gathered with `index_select`), the same
`torch.optim.SGD` (`foreach=False` on the CPU) and the same ops in the same order (gradients set
to None after each step, as `zero_grad()` does), with nothing recorded and nothing checked.
What `fit` adds is its per-epoch records (the loss, the last gradient's norm, the parameters,
copied to the host in chunks), the stop rules over them and its own Python. Both include
building the model from the NumPy arrays (no copy on the CPU). Runs alternate; medians.

Both run on one intra-op thread, and on the CPU the ratio is of CPU time (the wall times are
shown beside it): the work that differs is the loop's own Python and small tensor ops, which
run on one thread anyway, and on a shared machine two OpenMP threads on two busy cores made a
256-row batch up to 30x slower at random, and waiting for a core doubled wall times, which
would drown a 10% difference.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import Result, ms
from gdflow.training.loop import fit
from gdflow.training.mlp import build_mlp
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization

FEATURES = 16
HIDDEN = (64, 64)
BATCH = 256
LR = 0.01
SEED = 0
#: The most an epoch of `fit` may take over the bare loop's (issue 15, item 3).
TARGET = 1.1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 rows of standard normal features and a target with a nonlinear part."""
    generator = np.random.default_rng(0)
    x = generator.standard_normal((rows, FEATURES), dtype=np.float32)
    y = x @ np.linspace(-1, 1, FEATURES, dtype=np.float32) + np.sin(x[:, 0]) + 0.5
    return x, y.astype(np.float32)


def _mlp(dtype: torch.dtype) -> torch.nn.Module:
    return build_mlp(FEATURES, 1, hidden=HIDDEN, activation="relu", seed=SEED, dtype=dtype)


def _gdflow(
    x: np.ndarray, y: np.ndarray, *, mlp: bool, batch: int | None, epochs: int, device: torch.device
) -> Callable[[], None]:
    """`fit` for `epochs` epochs (every one of them, or the benchmark is void)."""
    if mlp:
        data, initial = TrainingData(x, y, network=_mlp), {}
    else:
        data = TrainingData(x, y)
        initial = {**{f"w_{j}": 0.0 for j in range(FEATURES)}, "b": 0.0}
    opt = Optimization(lr=LR, epochs=epochs, batch_size=batch, seed=SEED)

    def run() -> None:
        result = fit(data, initial, opt, device=device)
        _sync(device)
        if result.epochs_done != epochs:
            raise RuntimeError(f"fit stopped after {result.epochs_done} epochs: {result}")

    return run


def _bare(
    x: np.ndarray, y: np.ndarray, *, mlp: bool, batch: int | None, epochs: int, device: torch.device
) -> Callable[[], None]:
    """The same training written bare: forward, loss, backward, step, zero_grad per batch."""

    def run() -> None:
        x_t = torch.as_tensor(x, device=device)
        y_t = torch.as_tensor(y, device=device)
        if mlp:
            module = _mlp(x_t.dtype).to(device)
            params: list[torch.Tensor] = list(module.parameters())

            def predict(rows: torch.Tensor) -> torch.Tensor:
                return module(rows)[:, 0]

        else:
            w = torch.zeros(FEATURES, device=device, requires_grad=True)
            b = torch.zeros(1, device=device, requires_grad=True)
            params = [w, b]

            def predict(rows: torch.Tensor) -> torch.Tensor:
                return rows @ w + b

        foreach = False if device.type == "cpu" else None  # as `make_optimizer` says
        optimizer = torch.optim.SGD(params, lr=LR, foreach=foreach)
        generator = torch.Generator(device=device).manual_seed(SEED)
        n = x_t.shape[0]
        for _ in range(epochs):
            if batch is None:
                loss = ((predict(x_t) - y_t) ** 2).mean()
                loss.backward()
                optimizer.step()
                for p in params:  # zero_grad()'s default, as `fit` does it
                    p.grad = None
                continue
            order = torch.randperm(n, generator=generator, device=device)
            for index in order.split(batch):
                rows, target = x_t.index_select(0, index), y_t.index_select(0, index)
                loss = ((predict(rows) - target) ** 2).mean()
                loss.backward()
                optimizer.step()
                for p in params:  # zero_grad()'s default, as `fit` does it
                    p.grad = None
        _sync(device)

    return run


def case(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    mlp: bool,
    batch: int | None,
    epochs: int,
    repeats: int,
    device: torch.device,
) -> Result:
    """One case: `fit`'s epoch against the bare loop's, medians of `repeats` alternating runs."""
    fns = {
        "gdflow": _gdflow(x, y, mlp=mlp, batch=batch, epochs=epochs, device=device),
        "bare": _bare(x, y, mlp=mlp, batch=batch, epochs=epochs, device=device),
    }
    cpu = device.type == "cpu"
    wall, work = _interleaved(fns, repeats)
    times = work if cpu else wall
    gdflow, bare = times["gdflow"] / epochs, times["bare"] / epochs
    how = "CPU time" if cpu else "wall time"
    return Result(
        name=f"overhead {name}, {x.shape[0]:,}x{x.shape[1]} ({device.type})",
        ratio=gdflow / bare,
        target=TARGET,
        higher_is_better=False,
        raw=(
            f"epoch {ms(gdflow)}, bare loop {ms(bare)} ({how}; wall "
            f"{ms(wall['gdflow'] / epochs)} and {ms(wall['bare'] / epochs)}), medians of "
            f"{repeats} runs of {epochs} epoch(s)"
        ),
    )


def _interleaved(
    fns: dict[str, Callable[[], None]], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall time and CPU time (s) of each function, run in turn `repeats` times after
    one warm-up (`common.interleaved`, with the CPU time beside the wall time)."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    work: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            fn()
            work[name].append(time.process_time() - cpu_started)
            wall[name].append(time.perf_counter() - started)
    median = statistics.median
    return (
        {name: median(values) for name, values in wall.items()},
        {name: median(values) for name, values in work.items()},
    )


def run(*, quick: bool, device: str = "cpu", rows: int | None = None) -> list[Result]:
    """The overhead of `fit` per epoch, for each case (quick: tiny sizes for the smoke test)."""
    dev = torch.device(device)
    x, y = _data(rows or (20_000 if quick else 1_000_000))
    repeats = 1 if quick else 5
    cases = [  # name, MLP?, batch size, epochs a run
        (f"linear SGD batch {BATCH}", False, BATCH, 1 if quick else 2),
        ("MLP 64,64 SGD full batch", True, None, 2),
        (f"MLP 64,64 SGD batch {BATCH}", True, BATCH, 1),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module's docstring
    try:
        return [
            case(name, x, y, mlp=mlp, batch=batch, epochs=epochs, repeats=repeats, device=dev)
            for name, mlp, batch, epochs in cases
        ]
    finally:
        torch.set_num_threads(threads)
