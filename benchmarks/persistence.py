"""Metric persistence: rows/s of gdflow's storage layer against sqlite3 executemany, and the
cost of recording on training (epochs/s with recording on against off)."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from benchmarks.common import Result, interleaved
from gdflow.data.dataset import load_toy
from gdflow.runs.recording import MetricWriter
from gdflow.storage import EpochMetric, MetricBatch, append_metric_batch, create_run, make_engine
from gdflow.training.loop import Hooks, fit
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization
from gdflow.training.records import EpochChunk

_TABLE = """CREATE TABLE epoch_metrics (run_id INTEGER NOT NULL, epoch INTEGER NOT NULL, loss FLOAT,
params JSON NOT NULL, grad_norm FLOAT, lr FLOAT, val_loss FLOAT, val_accuracy FLOAT,
PRIMARY KEY (run_id, epoch))"""


class _Files:
    """Fresh database files in one temporary folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def new(self) -> Path:
        self.count += 1
        return self.folder / f"bench-{self.count}.db"


def _sqlite3_baseline(path: Path, rows: Sequence[tuple[object, ...]]) -> None:
    """Plain sqlite3: same pragmas, same columns and key, one executemany in one transaction."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(_TABLE)
    started = time.perf_counter()
    with connection:
        connection.executemany("INSERT INTO epoch_metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    _Timer.last = time.perf_counter() - started
    connection.close()


class _Timer:
    last = 0.0


def _engine_with_run(path: Path) -> tuple[Engine, int]:
    engine = make_engine(f"sqlite:///{path}")
    with Session(engine) as session, session.begin():
        run_id = create_run(session, config={}, data_source="bench", parameter_names=["w"])
    return engine, run_id


def storage(records: int, repeats: int, files: _Files) -> list[Result]:
    """gdflow's append_metric_batch and MetricWriter against sqlite3 executemany."""
    epochs = np.arange(1, records + 1)
    losses = np.random.default_rng(0).random(records)
    params = np.random.default_rng(1).random((records, 1))
    grads = np.random.default_rng(2).random(records)
    lrs = np.full(records, 0.01)
    batch = MetricBatch(
        epochs=epochs.tolist(),
        losses=losses.tolist(),
        names=("w",),
        params=params.tolist(),
        grad_norms=grads.tolist(),
        lrs=lrs.tolist(),
    )
    rows = [
        (1, e, loss, json.dumps({"w": p[0]}), g, lr, None, None)
        for e, loss, p, g, lr in zip(
            batch.epochs, batch.losses, batch.params, grads.tolist(), lrs.tolist()
        )
    ]
    chunks = [
        EpochChunk(
            epochs=epochs[i : i + 4096],
            losses=losses[i : i + 4096],
            grad_norms=grads[i : i + 4096],
            params=params[i : i + 4096],
            names=("w",),
            lrs=lrs[i : i + 4096],
        )
        for i in range(0, records, 4096)
    ]
    seconds: dict[str, list[float]] = {"sqlite3": [], "batch": [], "writer": [], "core": []}

    def timed(name: str, action: Callable[[Engine, int], None]) -> None:
        engine, run_id = _engine_with_run(files.new())
        started = time.perf_counter()
        action(engine, run_id)
        seconds[name].append(time.perf_counter() - started)
        engine.dispose()

    def batch_write(engine: Engine, run_id: int) -> None:
        with Session(engine) as session, session.begin():
            append_metric_batch(session, run_id=run_id, batch=batch)

    def writer(engine: Engine, run_id: int) -> None:
        write = MetricWriter(engine=engine, run_id=run_id)
        for chunk in chunks:
            write(chunk)

    def core(engine: Engine, run_id: int) -> None:  # the previous implementation, for context
        values = [
            {
                "run_id": run_id,
                "epoch": r[1],
                "loss": r[2],
                "params": {"w": p[0]},
                "grad_norm": r[4],
                "lr": r[5],
            }
            for r, p in zip(rows, batch.params)
        ]
        with Session(engine) as session, session.begin():
            session.execute(insert(EpochMetric), values)

    for _ in range(repeats):
        _sqlite3_baseline(files.new(), rows)
        seconds["sqlite3"].append(_Timer.last)
        timed("batch", batch_write)
        timed("writer", writer)
        timed("core", core)
    best = {name: sorted(v)[len(v) // 2] for name, v in seconds.items()}
    rate = {name: records / s for name, s in best.items()}
    raw = f"sqlite3 {rate['sqlite3']:,.0f} rows/s"
    return [
        Result(
            f"storage append_metric_batch {records:,} rows",
            rate["batch"] / rate["sqlite3"],
            0.8,
            True,
            f"{rate['batch']:,.0f} rows/s, {raw}; SQLAlchemy Core executemany (before) "
            f"{rate['core'] / rate['sqlite3']:.2f}x",
        ),
        Result(
            "storage MetricWriter (4096-epoch chunks)",
            rate["writer"] / rate["sqlite3"],
            0.8,
            True,
            f"{rate['writer']:,.0f} rows/s from EpochChunks, one transaction per chunk, {raw}",
        ),
    ]


def recording(epochs: int, repeats: int, files: _Files) -> Result:
    """fit on the seed's data with every epoch written to SQLite, against no recording.

    The ratio is measured inside each recorded run: the run's time without the time spent
    writing (the writer's construction and every chunk it writes, timed around the hook) over
    the run's time. Whole runs with recording on and off, interleaved, are printed beside it:
    on the 2-core VMs one 20,000-epoch fit varies by 10-20% from run to run (in CPU time as
    much as in wall time), which hides a cost of 1-2%."""
    data = load_toy()
    opt = Optimization(lr=0.01, epochs=epochs)
    cpu = torch.device("cpu")

    def off() -> None:
        fit(TrainingData(data.x, data.y), {"w": 1.0}, opt, device=cpu)

    runs: list[tuple[float, float]] = []  # (seconds of the run, seconds of them writing)

    def on() -> None:
        engine, run_id = _engine_with_run(files.new())
        started = time.perf_counter()
        writer = MetricWriter(engine, run_id)  # type: ignore[arg-type]
        writing = [time.perf_counter() - started]

        def timed_writer(chunk: EpochChunk) -> None:
            began = time.perf_counter()
            writer(chunk)
            writing[0] += time.perf_counter() - began

        hooks = Hooks(on_chunk=timed_writer)
        fit(TrainingData(data.x, data.y), {"w": 1.0}, opt, device=cpu, hooks=hooks)
        runs.append((time.perf_counter() - started, writing[0]))
        engine.dispose()

    times = interleaved({"off": off, "on": on}, repeats)
    measured = runs[1:] or runs  # the first run sets up SQLite's and SQLAlchemy's caches
    run_time, write_time = sorted(measured)[len(measured) // 2]
    ratio = float(np.median([(total - writes) / total for total, writes in measured]))
    return Result(
        f"recording on/off, seed data, {epochs} epochs",
        ratio,
        0.95,
        True,
        f"writes {write_time:.3f} s of a {run_time:.2f} s run; whole runs side by side: on "
        f"{epochs / run_time:,.0f} epochs/s, off {epochs / times['off']:,.0f} epochs/s",
    )


def run(*, quick: bool) -> list[Result]:
    """Both persistence benchmarks (quick: tiny sizes for the smoke test)."""
    with tempfile.TemporaryDirectory(prefix="gdflow-bench-") as folder:
        files = _Files(Path(folder))
        results = storage(2000 if quick else 100_000, 1 if quick else 5, files)
        results.append(recording(500 if quick else 20_000, 1 if quick else 5, files))
    return results
