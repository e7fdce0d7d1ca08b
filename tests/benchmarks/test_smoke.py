"""Each benchmark still runs end to end at tiny sizes (`--quick`) and prints its rows: every
promised row once, each with a positive finite ratio, a target and pass/MISS. The figures are
timings of a shared machine, so whether a target is met is not checked."""

from __future__ import annotations

import math
import re

import pytest

from benchmarks.__main__ import main

#: One row of the table: name, ratio, target, result, raw figures.
ROW = re.compile(
    r"^(?P<name>\S.*?)\s{2,}(?P<ratio>\S+)x\s+(?P<op><=|>=) (?P<target>\S+)x\s+"
    r"(?P<result>pass|MISS)\s+(?P<raw>\S.*)$"
)
HEADER = ["benchmark", "ratio", "target", "result", "raw", "figures"]


def rows_of(name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, str]]:
    """Run one benchmark at quick sizes in this process; its table rows by name."""
    assert main(["--quick", "--only", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == HEADER)
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 1 :]:
        match = ROW.match(line)
        assert match, f"not a table row: {line!r}"
        assert match["name"] not in rows, f"row printed twice: {line!r}"
        rows[match["name"]] = match.groupdict()
    for row in rows.values():
        ratio, target = float(row["ratio"]), float(row["target"])
        assert math.isfinite(ratio) and ratio > 0, row
        assert math.isfinite(target) and target > 0, row
        if ratio == target:
            continue  # equal as printed (rounded): the unrounded ratio decides either way
        met = ratio >= target if row["op"] == ">=" else ratio <= target
        assert row["result"] == ("pass" if met else "MISS"), row
    return rows


@pytest.mark.parametrize(
    ("name", "promised"),
    [
        (
            "training",
            [
                "training 20000x16 (cpu)",
                "training statistics epoch 20000x16 (cpu)",
                "training statistics epoch, rows 1,000 -> 20,000 (cpu)",
                "training logistic 20000x16 (cpu)",
                "training softmax 10 classes 20000x16 (cpu)",
                "training seed 5 points (cpu)",
            ],
        ),
        (
            "overhead",
            [
                "overhead linear SGD batch 256, 20,000x16 (cpu)",
                "overhead MLP 64,64 SGD full batch, 20,000x16 (cpu)",
                "overhead MLP 64,64 SGD batch 256, 20,000x16 (cpu)",
            ],
        ),
        (
            "persistence",
            [
                "storage append_metric_batch 2,000 rows",
                "storage MetricWriter (4096-epoch chunks)",
                "recording on/off, seed data, 500 epochs",
            ],
        ),
        pytest.param(
            "loading",
            [
                "load parquet 20,000x16 speed",
                "load parquet 20,000x16 peak memory",
                "load csv 20,000x16 speed",
                "load csv 20,000x16 peak memory",
            ],
            # each load runs in a fresh process; make test-extended runs it
            marks=[pytest.mark.process, pytest.mark.extended],
        ),
        pytest.param(
            "streaming",
            [
                "streaming 20,000x16 training rows/s vs one pyarrow read",
                "streaming 20,000x16 peak memory vs RLIMIT_AS",
            ],
            # the streamed run and the pyarrow read each run in a fresh process
            marks=[pytest.mark.process, pytest.mark.extended],
        ),
        pytest.param(
            "cluster",
            [
                "cluster 20,000x16, 8 files, 2 workers: logistic epoch time vs one process",
                "cluster 20,000x16, 8 files, 2 workers: logistic data vs bytes per epoch",
                "cluster 20,000x16, 8 files, 2 workers: linear data vs statistics bytes (once)",
                "mlp 64,64 on 16 features, 40,000 rows in 8 files: a file's compute vs its "
                "bytes at 1 Gbit/s",
                "mlp 256,256 on 16 features, 40,000 rows in 8 files: a file's compute vs its "
                "bytes at 1 Gbit/s",
            ],
            # a LocalCluster of two worker processes
            marks=[pytest.mark.process, pytest.mark.extended],
        ),
    ],
)
def test_benchmark_prints_its_rows(
    name: str, promised: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = rows_of(name, capsys)
    assert sorted(rows) == sorted(promised)


@pytest.mark.extended  # make test-extended: minutes of CPU on two cores
@pytest.mark.heavy
def test_orchestration_benchmark_runs_once_in_ephemeral_mode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gdflow.flows.deployments import local_api_url, server_is_healthy

    if server_is_healthy(local_api_url()):
        pytest.skip("a Prefect server listens on 127.0.0.1:4200: ephemeral mode is not measured")
    rows = rows_of("orchestration", capsys)  # one run of each program (no warm-up)
    assert sorted(rows) == [
        "orchestration, ephemeral: gdflow / bare flow",
        "orchestration, ephemeral: gdflow / seed script",
    ]
    for other in ("bare flow", "seed script"):
        assert re.fullmatch(
            rf"gdflow run [\d.]+ s, {other} [\d.]+ s \(cpu [\d.]+ s, [\d.]+ s; medians of 1, "
            r"load [\d.]+-[\d.]+\)",
            rows[f"orchestration, ephemeral: gdflow / {other}"]["raw"],
        ), rows
