"""Streaming a Parquet file larger than the memory a process may use, against pyarrow's read.

The parent writes a rows x 16 float32 Parquet file; a child process limits its own address
space with RLIMIT_AS to `budget` bytes beyond what it has mapped once torch, pyarrow and their
thread pools are up (a warm-up run on a tiny file makes them), lets gdflow decide by itself to
stream (`stream_plan` reads the limit), makes the one statistics pass and trains linear
regression for a few epochs (batches of 4096, standardised, prefetch as gdflow decides it from
the CPUs and the load; one more epoch the other way, for comparison). Throughput is rows
trained per second against rows per second of reading the whole file once with pyarrow into a
float32 matrix (another child, no limit: `benchmarks.loading`); memory is the peak resident
size the streamed run added, against the limit. The child uses the system allocator with a
fixed mmap threshold (`ALLOCATORS`), so each large allocation is new address space that the
limit sees (mimalloc, pyarrow's default, and glibc's growing threshold reserve ahead and would
hide allocations from it).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, Result, process_status

COLUMNS = 16  # 15 features and the target
BATCH = 4096
#: The streamed child's allocators: every large allocation a new mapping.
ALLOCATORS = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_MMAP_THRESHOLD_": "262144"}


def write_data(path: Path, rows: int) -> None:
    """A rows x 16 float32 table (x0..x14, y = a linear function of them plus noise), written
    a slice at a time so the parent never holds it either."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    names = [f"x{j}" for j in range(COLUMNS - 1)] + ["y"]
    weights = rng.normal(size=COLUMNS - 1).astype(np.float32)
    step = 1 << 20
    with pq.ParquetWriter(path, pa.schema([(n, pa.float32()) for n in names])) as writer:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            x = rng.standard_normal((n, COLUMNS - 1), dtype=np.float32)
            y = x @ weights + rng.standard_normal(n, dtype=np.float32)
            columns = [*(x[:, j] for j in range(COLUMNS - 1)), y]
            writer.write_table(pa.table(dict(zip(names, columns))), row_group_size=1 << 18)


def child(path: str, budget: int, epochs: int) -> None:
    """In a fresh process limited to `budget` more bytes of address space: decide, scan and
    train streamed; print the figures (JSON)."""
    import pandas as pd
    import torch

    from gdflow.config.train import TrainConfig
    from gdflow.data.dataset import load_streamed, resolve
    from gdflow.data.streaming import memory_available, stream_plan
    from gdflow.training.optimization import Optimization
    from gdflow.training.streamed import StreamedProblem, fit_streamed, prefetch_by_default

    def problem(file: str, batch: int) -> StreamedProblem:
        dataset = load_streamed(file)
        initial = {**{f"w_{n}": 0.0 for n in dataset.feature_names}, "b": 0.0}
        return StreamedProblem.prepare(
            dataset, initial, standardize=True, family="linear", batch_size=batch
        )

    def train(streamed: StreamedProblem, epochs: int, prefetch: bool | None = None) -> float:
        opt = Optimization(lr=0.01, epochs=epochs, batch_size=BATCH, seed=0)
        started = time.perf_counter()
        fit_streamed(streamed, opt, device=torch.device("cpu"), prefetch=prefetch)
        return time.perf_counter() - started

    tiny = str(Path(path).with_name("warm-up.parquet"))
    pd.DataFrame({"a": np.arange(10.0), "y": np.arange(10.0)}).to_parquet(tiny)
    train(problem(tiny, 4), 1, prefetch=True)
    train(problem(tiny, 4), 1, prefetch=False)
    before, resident = process_status("VmSize"), process_status("VmRSS")
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (before + budget, hard))
    config = TrainConfig(data=path, batch_size=BATCH)
    plan = stream_plan(config, resolve(path), memory=memory_available(), name=Path(path).name)
    started = time.perf_counter()
    streamed = problem(path, BATCH)
    scan = time.perf_counter() - started
    prefetch, why = prefetch_by_default()  # as gdflow runs it (the CPUs and the load)
    seconds = train(streamed, epochs, prefetch=prefetch)
    other = train(streamed, 1, prefetch=not prefetch)
    print(
        json.dumps(
            {
                "reason": plan.reason,
                "rows": streamed.rows,
                "scan": scan,
                "seconds": seconds,
                "prefetch": prefetch,
                "why": why,
                "other": other,
                "resident": process_status("VmHWM") - resident,
            }
        )
    )


def _run(args: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(*, quick: bool, rows: int | None = None) -> list[Result]:
    """Streamed training throughput against one pyarrow read, and its memory against the
    limit; a file of 4x the limit (quick: a tiny file, the same steps)."""
    budget = (64 if quick else 256) << 20
    rows = rows or (20_000 if quick else 4 * budget // (COLUMNS * 4))
    epochs = 1 if quick else 2
    data_bytes = rows * COLUMNS * 4
    with tempfile.TemporaryDirectory(prefix="gdflow-bench-") as folder:
        path = Path(folder) / "large.parquet"
        write_data(path, rows)
        on_disk = path.stat().st_size
        reads = [
            _run(["benchmarks.loading", "pyarrow", str(path)]) for _ in range(1 if quick else 2)
        ]
        streamed = _run(["benchmarks.streaming", str(path), str(budget), str(epochs)], ALLOCATORS)
    read_seconds = float(np.median([r["seconds"] for r in reads]))
    rate = rows * epochs / streamed["seconds"]
    other_rate = rows / streamed["other"]
    mode, other = ("on", "off") if streamed["prefetch"] else ("off", "on")
    read_rate = rows / read_seconds
    name = f"streaming {rows:,}x{COLUMNS}"
    decided = "decided to stream" if streamed["reason"] else "NOT streamed"
    return [
        Result(
            f"{name} training rows/s vs one pyarrow read",
            rate / read_rate,
            0.5,
            True,
            f"{rate:,.0f} rows/s over {epochs} epoch(s) of batches of {BATCH}, prefetch {mode} "
            f"({streamed['why']}; {other_rate:,.0f} with it {other}), pyarrow read once "
            f"{read_rate:,.0f} rows/s; statistics pass {streamed['scan']:.3g} s",
        ),
        Result(
            f"{name} peak memory vs RLIMIT_AS",
            streamed["resident"] / budget,
            1.0,
            False,
            f"{decided}: data {data_bytes / 2**20:,.0f} MiB as float32 ({on_disk / 2**20:,.0f} "
            f"MiB on disk) = {data_bytes / budget:.2g}x the {budget >> 20} MiB limit; peak RSS "
            f"+{streamed['resident'] / 2**20:,.0f} MiB",
        ),
    ]


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
