"""Training loop: time per epoch of gdflow's `fit` against reading the data once (`X.sum()`).

Large problem: full-batch gradient descent on float32 rows x features in memory; the floor is
one read of the feature matrix. `fit` takes the sufficient-statistics path there (its one pass
over X to form X^T X included in the time); the fused pass, the seed's loop and an `F.mse_loss`
loop are shown beside it. Statistics epoch: what one more epoch of `fit` costs on that path
(1,000 epochs timed from one chunk of records to the next, after the one pass), against one
read of X, and over a grid of rows and features, printed as its own table before the results,
to show that it no longer grows with the rows. Classifiers: an epoch of `fit` on full-batch
logistic and 10-class softmax regression of the same float32 rows (the fused cross-entropy
kernel on the CPU), timed like the statistics epoch over the second of two chunks of epochs,
against one read of X, the torch ops beside it. Small problem (the seed's 5
points): `fit` against a bare loop of the same ops, no recording.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import Result, interleaved, ms
from gdflow.data.dataset import load_toy
from gdflow.training.fused_cross_entropy import threads_for
from gdflow.training.loop import Hooks, fit, loss_path_of
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization
from gdflow.training.statistics_mse import LossPath, MSEStatistics

#: Feature matrices above this size are left out of the statistics grid (and said to be).
MAX_GRID_BYTES = 2 << 30


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


def _data(rows: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 rows of standard normal features and a linear target."""
    generator = np.random.default_rng(0)
    x = generator.standard_normal((rows, features), dtype=np.float32)
    y = (x @ np.linspace(-1, 1, features, dtype=np.float32) + 0.5).astype(np.float32)
    return x, y


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    device: torch.device,
    path: LossPath | None = None,
) -> Callable[[], None]:
    """One `fit` of `epochs` on (x, y) (on `path`; None: the path it chooses)."""
    initial = {f"w_{j}": 0.0 for j in range(x.shape[1])}
    opt = Optimization(lr=0.01, epochs=epochs)

    def run() -> None:
        fit(TrainingData(x, y), initial, opt, device=device, loss_path=path)
        _sync(device)

    return run


def _floor(x_t: torch.Tensor, reads: int) -> Callable[[], None]:
    """`reads` reads of X (`X.sum()`): the floor of any epoch that reads the rows."""

    def run() -> None:
        for _ in range(reads):
            x_t.sum()
        _sync(x_t.device)

    return run


def large(rows: int, features: int, epochs: int, repeats: int, device: torch.device) -> Result:
    """gdflow's per-epoch time on a rows x features float32 problem against one read of X."""
    x, y = _data(rows, features)
    x_t = torch.from_numpy(x).to(device)
    y_t = torch.from_numpy(y).to(device)
    path = loss_path_of(TrainingData(x, y), Optimization(lr=0.01, epochs=epochs), device)
    times = interleaved(
        {
            "floor": _floor(x_t, epochs),
            "gdflow": _fit(x, y, epochs, device),
            "fused": _fit(x, y, epochs, device, "fused"),
            "seed": _reference_epochs(x_t, y_t, epochs, lambda p, t: ((p - t) ** 2).mean()),
            "mse_loss": _reference_epochs(x_t, y_t, epochs, F.mse_loss),
        },
        repeats,
    )
    per_epoch = {name: t / epochs for name, t in times.items()}
    floor = per_epoch["floor"]
    how = f"{path}, its one pass included" if path == "statistics" else path
    return Result(
        name=f"training {rows}x{features} ({device.type})",
        ratio=per_epoch["gdflow"] / floor,
        target=2.0,
        higher_is_better=False,
        raw=(
            f"epoch {ms(per_epoch['gdflow'])} ({how}, {epochs} epochs), X.sum() {ms(floor)}; "
            f"fused pass {per_epoch['fused'] / floor:.1f}x, seed loop "
            f"{per_epoch['seed'] / floor:.1f}x, F.mse_loss {per_epoch['mse_loss'] / floor:.1f}x"
        ),
    )


def _classes(rows: int, features: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 standard normal rows and classes that depend on them (plus noise)."""
    generator = np.random.default_rng(1)
    x = generator.standard_normal((rows, features), dtype=np.float32)
    scores = x @ generator.standard_normal((features, classes), dtype=np.float32)
    scores += generator.standard_normal((rows, classes), dtype=np.float32)
    return x, scores.argmax(axis=1)


def classifier(
    rows: int, features: int, classes: int, epochs: int, repeats: int, device: torch.device
) -> Result:
    """An epoch of `fit` (loss, backward, optimizer step) on a full-batch logistic (2 classes)
    or softmax classifier of float32 rows x features against one read of X; `fit` takes the
    fused kernel on the CPU (`fused_cross_entropy`). The torch ops' epoch is shown beside it."""
    x, y = _classes(rows, features, classes)
    family = "logistic" if classes == 2 else "softmax"
    data = TrainingData(x, y, family=family, n_classes=classes)
    names = [f"w_{j}" for j in range(features * data.outputs)]
    initial = {**{name: 0.0 for name in names}, **{f"b_{c}": 0.0 for c in range(data.outputs)}}
    opt = Optimization(lr=0.5, epochs=2 * epochs)
    path = loss_path_of(data, opt, device)
    seconds: dict[str, list[float]] = {"gdflow": [], "torch": []}

    def run(name: str, loss_path: LossPath | None) -> Callable[[], None]:
        epoch = _second_chunk_seconds(data, initial, opt, device, loss_path)
        return lambda: seconds[name].append(epoch())

    x_t = torch.from_numpy(x).to(device)
    times = interleaved(
        {
            "floor": _floor(x_t, epochs),
            "gdflow": run("gdflow", None),
            "torch": run("torch", "direct"),
        },
        repeats,
    )
    per_epoch = {name: statistics.median(values[-repeats:]) for name, values in seconds.items()}
    per_epoch["floor"] = times["floor"] / epochs
    floor = per_epoch["floor"]
    if classes == 2:
        name, target, note = f"training logistic {rows}x{features} ({device.type})", 2.0, ""
    else:
        name = f"training softmax {classes} classes {rows}x{features} ({device.type})"
        target, note = 2.0, "; target report-only"
    if path == "fused":
        how = f"fused kernel, {threads_for(rows * features * data.outputs)} thread(s)"
    else:
        how = "torch ops"
    return Result(
        name=name,
        ratio=per_epoch["gdflow"] / floor,
        target=target,
        higher_is_better=False,
        raw=(
            f"epoch {ms(per_epoch['gdflow'])} ({how}, the second {epochs} of {2 * epochs} "
            f"epochs), X.sum() {ms(floor)}; "
            f"torch ops {per_epoch['torch'] / floor:.1f}x{note}"
        ),
    )


@dataclass(frozen=True)
class StatisticsCell:
    """One problem's statistics-path epoch, one read of its X, and forming its statistics."""

    rows: int
    features: int
    epoch: float
    floor: float
    setup: float
    chosen: str


def _second_chunk_seconds(
    data: TrainingData,
    initial: dict[str, float],
    opt: Optimization,
    device: torch.device,
    loss_path: LossPath | None,
) -> Callable[[], float]:
    """A run of `fit` of `opt.epochs` epochs in two chunks, returning the seconds per epoch of
    the second chunk: the epochs alone, fit's set-up and first epochs left out (the
    statistics' one pass; the torch threads still spinning from the set-up's copies, which
    slow the fused kernel's first epoch or two), one chunk's hand-over (as fit does every 4096
    epochs) in."""
    epochs = opt.epochs // 2

    def run() -> float:
        stamps: list[float] = []
        hooks = Hooks(
            on_chunk=lambda _chunk: stamps.append(time.perf_counter()),
            chunk_epochs=epochs,
            flush_seconds=float("inf"),
        )
        _sync(device)
        fit(data, initial, opt, device=device, hooks=hooks, loss_path=loss_path)
        return (stamps[-1] - stamps[0]) / epochs

    return run


def _epoch_seconds(
    x: np.ndarray, y: np.ndarray, epochs: int, device: torch.device
) -> Callable[[], float]:
    """A run of `fit` on the statistics path, 2 x `epochs` epochs in two chunks, returning the
    seconds per epoch of the second chunk (`_second_chunk_seconds`)."""
    initial = {f"w_{j}": 0.0 for j in range(x.shape[1])}
    opt = Optimization(lr=0.01, epochs=2 * epochs)
    return _second_chunk_seconds(TrainingData(x, y), initial, opt, device, "statistics")


def statistics_cell(
    rows: int, features: int, *, epochs: int, repeats: int, device: torch.device
) -> StatisticsCell:
    """Time an epoch of `fit` on the statistics path (median of `repeats` runs), one read of X,
    and the one pass that forms X^T X."""
    x, y = _data(rows, features)
    x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    epoch = _epoch_seconds(x, y, epochs, device)
    per_epoch = []

    def timed() -> None:
        per_epoch.append(epoch())

    def setup() -> None:
        MSEStatistics.of(x_t, y_t)
        _sync(device)

    times = interleaved({"epochs": timed, "floor": _floor(x_t, 10), "setup": setup}, repeats)
    return StatisticsCell(
        rows=rows,
        features=features,
        epoch=statistics.median(per_epoch[-repeats:]),
        floor=times["floor"] / 10,
        setup=times["setup"],
        chosen=loss_path_of(TrainingData(x, y), Optimization(lr=0.01, epochs=2 * epochs), device),
    )


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


def statistics_grid(
    row_counts: list[int],
    feature_counts: list[int],
    *,
    base_rows: int,
    base_features: int,
    epochs: int,
    repeats: int,
    device: torch.device,
) -> dict[tuple[int, int], StatisticsCell]:
    """The statistics epoch over rows (at `base_features`) and over features (at `base_rows`),
    printed as a table as each cell is measured; matrices over 2 GiB are skipped, and said."""
    cells = [(r, base_features) for r in row_counts]
    cells += [(base_rows, f) for f in feature_counts if (base_rows, f) not in cells]
    print(
        f"\ntraining statistics path ({device.type}, float32): an epoch of fit (median of "
        f"{repeats} run(s) of {epochs} timed epochs), one read of X, the one pass forming X^T X",
        flush=True,
    )
    header = ("rows", "features", "matrix", "epoch", "X.sum()", "epoch/X.sum()", "one pass")
    widths = (12, 8, 10, 12, 12, 13, 10)
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths))
    print(f"{line}  fit's own choice", flush=True)
    measured = {}
    for rows, features in cells:
        size = rows * features * 4
        if size > MAX_GRID_BYTES:
            print(f"{rows:>12,}  {features:>8}  skipped: {size / 2**30:.1f} GiB is over 2 GiB")
            continue
        cell = statistics_cell(rows, features, epochs=epochs, repeats=repeats, device=device)
        measured[rows, features] = cell
        values = (
            f"{rows:,}",
            str(features),
            f"{size / 2**20:,.1f} MiB",
            _us(cell.epoch),
            _us(cell.floor),
            f"{cell.epoch / cell.floor:.3f}x",
            ms(cell.setup),
        )
        line = "  ".join(v.rjust(w) for v, w in zip(values, widths))
        print(f"{line}  {cell.chosen}", flush=True)
    print(flush=True)
    return measured


def statistics_results(
    rows: int,
    features: int,
    grid: dict[tuple[int, int], StatisticsCell],
    row_counts: list[int],
    device: torch.device,
) -> list[Result]:
    """The statistics epoch against one read of X, and how it grows from the fewest rows of the
    grid to the most (one read of X grows with them)."""
    cell = grid[rows, features]
    results = [
        Result(
            name=f"training statistics epoch {rows}x{features} ({device.type})",
            ratio=cell.epoch / cell.floor,
            target=0.05,
            higher_is_better=False,
            raw=(
                f"epoch {_us(cell.epoch)}, X.sum() {ms(cell.floor)}; one pass to form "
                f"X^T X {ms(cell.setup)}"
            ),
        )
    ]
    rows_measured = [r for r in row_counts if (r, features) in grid]
    if len(rows_measured) >= 2:
        fewest, most = grid[rows_measured[0], features], grid[rows_measured[-1], features]
        results.append(
            Result(
                name=(
                    f"training statistics epoch, rows {fewest.rows:,} -> {most.rows:,} "
                    f"({device.type})"
                ),
                ratio=most.epoch / fewest.epoch,
                target=1.5,
                higher_is_better=False,
                raw=(
                    f"epoch {_us(fewest.epoch)} -> {_us(most.epoch)} at {features} features "
                    f"while X.sum() grows {most.floor / fewest.floor:,.0f}x"
                ),
            )
        )
    return results


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
    """The training benchmarks (quick: tiny sizes for the smoke test); the statistics grid is
    printed as it is measured."""
    dev = torch.device(device)
    large_rows = rows or (20_000 if quick else 1_000_000)
    if quick:
        row_counts, feature_counts, base_rows = [1_000, large_rows], [1, 16], 1_000
    else:
        row_counts = [10_000, 100_000, 1_000_000, 10_000_000]
        feature_counts, base_rows = [1, 16, 64, 256], 100_000
        if large_rows not in row_counts:
            row_counts = sorted([*row_counts, large_rows])
    grid = statistics_grid(
        row_counts,
        feature_counts,
        base_rows=base_rows,
        base_features=16,
        epochs=50 if quick else 1000,
        repeats=1 if quick else 5,
        device=dev,
    )
    results = [
        large(large_rows, 16, 3 if quick else 20, 1 if quick else 7, dev),
        *statistics_results(large_rows, 16, grid, row_counts, dev),
        classifier(large_rows, 16, 2, 3 if quick else 20, 1 if quick else 7, dev),
        classifier(large_rows, 16, 10, 3 if quick else 10, 1 if quick else 5, dev),
        small(200 if quick else 5000, 1 if quick else 7, dev),
    ]
    return results
