"""Each benchmark still runs end to end at tiny sizes (`--quick`); the figures are not checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize(
    "name,rows",
    [
        ("training", ["training 20000x16 (cpu)", "training seed 5 points (cpu)"]),
        (
            "persistence",
            ["storage append_metric_batch", "storage MetricWriter", "recording on/off"],
        ),
        ("loading", ["load parquet", "load csv"]),
    ],
)
def test_benchmark_prints_its_rows(name: str, rows: list[str]) -> None:
    out = _run(name)
    assert "ratio" in out and "target" in out
    for row in rows:
        assert row in out


@pytest.mark.heavy
def test_orchestration_benchmark_runs_once_in_ephemeral_mode() -> None:
    out = _run("orchestration")  # about 20-40 s: one gdflow run and one seed run, plus a warm-up
    assert "orchestration, ephemeral" in out
