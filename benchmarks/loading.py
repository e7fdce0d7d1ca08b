"""Data loading: Parquet and CSV into training tensors, against pyarrow's own reader into NumPy.

Each load runs in a fresh subprocess so its peak resident memory is its own; the memory ratio
is (peak - resident size before the load) / size of the float32 matrix. The peak is the
process's VmHWM (/proc/self/status), not `ru_maxrss`: Linux carries the parent's high-water
mark into `ru_maxrss` across the exec of a child started by fork or vfork, so after the
training benchmarks `ru_maxrss` was the benchmark runner's peak (1,183-1,302 MiB, the same for
both formats), not the load's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, Result, process_status

COLUMNS = 16  # 15 features and the target


def write_data(folder: Path, rows: int) -> dict[str, Path]:
    """A rows x 16 float32 table (x0..x14, y) as Parquet and CSV."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(rows, dtype=np.float32) for _ in range(COLUMNS)]
    names = [f"x{j}" for j in range(COLUMNS - 1)] + ["y"]
    table = pa.table(dict(zip(names, arrays)))
    paths = {"parquet": folder / "data.parquet", "csv": folder / "data.csv"}
    pq.write_table(table, paths["parquet"])
    pacsv.write_csv(table, paths["csv"])
    return paths


def child(kind: str, path: str) -> None:
    """In a fresh process: load `path` one way, print seconds, RSS before and peak (JSON)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    import torch

    from gdflow.data.dataset import load_dataset

    before = process_status("VmRSS")
    started = time.perf_counter()
    if kind == "gdflow":
        dataset = load_dataset(path, dtype="float32")
        tensors = (torch.from_numpy(dataset.x), torch.from_numpy(dataset.y))
        shape = (tensors[0].shape[0], tensors[0].shape[1] + 1)
    else:
        table = pacsv.read_csv(path) if path.endswith(".csv") else pq.read_table(path)
        matrix = np.empty((table.num_rows, table.num_columns), dtype=np.float32)
        for j, column in enumerate(table.columns):
            matrix[:, j] = column.to_numpy()
        shape = matrix.shape
    seconds = time.perf_counter() - started
    peak = process_status("VmHWM")
    print(json.dumps({"seconds": seconds, "before": before, "peak": peak, "shape": list(shape)}))


def _measure(kind: str, path: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.loading", kind, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(*, quick: bool, rows: int | None = None) -> list[Result]:
    """Parquet and CSV loads, each measured against pyarrow, runs interleaved."""
    rows = rows or (20_000 if quick else 10_000_000)
    repeats = 1 if quick else 3
    matrix_bytes = rows * COLUMNS * 4
    results = []
    with tempfile.TemporaryDirectory(prefix="gdflow-bench-") as folder:
        paths = write_data(Path(folder), rows)
        for fmt, path in paths.items():
            runs: dict[str, list[dict[str, float]]] = {"pyarrow": [], "gdflow": []}
            for _ in range(repeats):
                for kind in runs:
                    runs[kind].append(_measure(kind, path))
            seconds = {k: float(np.median([r["seconds"] for r in v])) for k, v in runs.items()}
            extra = {k: max(r["peak"] - r["before"] for r in v) for k, v in runs.items()}
            results.append(
                Result(
                    f"load {fmt} {rows:,}x{COLUMNS} speed",
                    seconds["pyarrow"] / seconds["gdflow"],
                    0.8,
                    True,
                    f"gdflow {seconds['gdflow']:.3g} s, "
                    f"pyarrow -> NumPy {seconds['pyarrow']:.3g} s",
                )
            )
            results.append(
                Result(
                    f"load {fmt} {rows:,}x{COLUMNS} peak memory",
                    extra["gdflow"] / matrix_bytes,
                    2.0,
                    False,
                    f"peak growth {extra['gdflow'] / 2**20:,.0f} MiB (pyarrow -> NumPy "
                    f"{extra['pyarrow'] / 2**20:,.0f} MiB), float32 matrix "
                    f"{matrix_bytes / 2**20:,.0f} MiB",
                )
            )
    return results


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2])
