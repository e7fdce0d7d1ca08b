"""Every renderer against output recorded before reports/ was split (issue 11), byte for byte.

Regenerate only for an intended change: `python -m tests.reports.test_golden --write`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gdflow.reports.charts import loss_curve_svg, loss_curves_svg, svg_data_uri
from gdflow.reports.comparisons import sweep_markdown, trend_markdown
from gdflow.reports.markdown import loss_curve_markdown
from gdflow.reports.run_report import metrics_table_rows, summary_markdown
from gdflow.reports.tables import (
    comparison_table,
    evaluation_table,
    format_params,
    metrics_csv,
    metrics_table,
    runs_table,
)

GOLDEN = Path(__file__).with_name("golden")
SEED_LOSSES = [11.0 * 0.75**k for k in range(99)] + [6.0254e-13]
MALICIOUS = "<script>alert(1)</script> | pipe | **bold**"
EVALUATION: dict[str, Any] = {
    "predictions": [{"input": [5.0], "output": 9.9999988}, {"input": [1.5, 2.0], "output": 3.0}],
    "train_loss": 6.0254e-13,
    "least_squares": {"params": {"w": 2.0, "b": 0.1}, "loss": 0.0, "validation_mse": 0.25},
    "param_distance": 2.4e-7,
    "loss_gap": 6.0254e-13,
    "relative_loss_gap": None,
    "train": {"mse": 6.0254e-13, "rmse": 7.7e-7, "mae": 5e-7, "r2": 0.99999999},
    "validation": {"mse": 0.3, "rmse": 0.547, "mae": 0.4, "r2": 0.91},
}


def _summary(**overrides: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "run_id": 3,
        "status": "completed",
        "stop_reason": "max_epochs",
        "epochs_done": 100,
        "max_epochs": 100,
        "final_loss": 6.0254e-13,
        "final_params": {"w": 1.99999976},
        "evaluation": EVALUATION,
        "config": {"lr": 0.01, "epochs": 100, "predict": [[5.0], [1.0, 2.0]], "data": None},
        "error": None,
        "device": "cpu",
        "database_url": "sqlite:////home/you/.gdflow/gdflow.db",
        "seconds": 0.42,
        "best_epoch": 99,
        "best_loss": 6.0e-13,
        "max_stable_lr": 0.0909,
        "condition_number": 12.5,
        "warnings": ["lr <high> | too *big*"],
    }
    summary.update(overrides)
    return summary


def _runs() -> list[dict[str, Any]]:
    return [
        {"run_id": 1, "started_at": "2026-01-01 10:00", "status": "completed",
         "epochs_done": 100, "final_loss": 1e-3, "final_params": {"w": 1.9}},
        {"run_id": 3, "started_at": "2026-01-03 10:00", "status": "failed", "epochs_done": 5,
         "final_loss": None, "final_params": None},
        {"run_id": 2, "started_at": "2026-01-02 10:00", "status": "completed",
         "epochs_done": 100, "final_loss": 2e-2, "final_params": {"w": 1.8, "b": 0.5}},
    ]  # fmt: skip


def _sweep_rows(val: bool) -> list[dict[str, Any]]:
    rows = [
        {"run": 4, "lr": 0.001, "status": "completed", "stop reason": "max_epochs", "epochs": 100,
         "final loss": 0.123456789, "best loss": 0.12, "val loss": 0.2 if val else None,
         "w": 1.23456789, "b": None},
        {"run": 5, "lr": 0.01, "status": "completed", "stop reason": "converged", "epochs": 62,
         "final loss": 6.0254e-13, "best loss": 6e-13, "val loss": 0.1 if val else None,
         "w": 1.99999976, "b": 0.0001},
        {"run": 6, "lr": 1.0, "status": "diverged", "stop reason": "diverged", "epochs": 3,
         "final loss": 2.1e6, "best loss": 11.0, "val loss": None, "w": -1234.5, "b": 7.0},
    ]  # fmt: skip
    return rows


def _metrics() -> list[Any]:
    return [
        SimpleNamespace(epoch=e, loss=SEED_LOSSES[e - 1], params={"w": 2 - 0.75**e, "b": 0.1 * e})
        for e in range(1, 8)
    ] + [SimpleNamespace(epoch=8, loss=math.inf, params={"w": None})]


def _db_runs() -> list[Any]:
    started = datetime(2026, 1, 2, 3, 4, 5)
    return [
        SimpleNamespace(id=1, flow_run_name="witty-cat", status="completed", started_at=started,
                        epochs_done=100, final_loss=6.0254e-13, stop_reason="max_epochs",
                        final_params={"w": 1.99999976, "b": None}),
        SimpleNamespace(id=12, flow_run_name=None, status="running", started_at=None,
                        epochs_done=0, final_loss=None, stop_reason=None, final_params=None),
        SimpleNamespace(id=13, flow_run_name="x", status="diverged",
                        started_at=datetime(2026, 12, 31, 23, 59, 59),
                        epochs_done=3, final_loss=math.nan, stop_reason="diverged",
                        final_params={"w": math.inf}),
    ]  # fmt: skip


def _curves(n: int) -> list[tuple[str, list[int], list[float | None]]]:
    epochs = list(range(1, 101))
    return [
        (
            f"run {i}: lr {0.001 * (i + 1):g}",
            epochs,
            [11.0 * (0.99 - 0.01 * i) ** e for e in epochs],
        )
        for i in range(n)
    ] + [("run <nan>", [1, 2], [math.nan, None])]


#: name -> the rendered text, computed by the current code.
CASES: dict[str, Callable[[], str]] = {
    "curve_seed.svg": lambda: loss_curve_svg(list(range(1, 101)), SEED_LOSSES),
    "curve_linear.svg": lambda: loss_curve_svg([1, 2, 3], [2.0, 1.5, -0.5], title="a <b>"),
    "curve_flat.svg": lambda: loss_curve_svg([1, 2], [3.0, 3.0], width=200, height=150),
    "curve_single.svg": lambda: loss_curve_svg([7], [0.5]),
    "curve_empty.svg": lambda: loss_curve_svg([1, 2], [math.nan, None]),
    "curve_zero_log.svg": lambda: loss_curve_svg([1, 2, 3, 4], [1000.0, 1.0, 0.0, math.inf]),
    "curve_long.svg": lambda: loss_curve_svg(
        list(range(1, 5001)), [1.0 / e for e in range(1, 5001)]
    ),
    "curve.md": lambda: loss_curve_markdown(list(range(1, 101)), SEED_LOSSES, title="Loss *x*"),
    "data_uri.txt": lambda: svg_data_uri("<svg>é</svg>"),
    "metrics_rows.txt": lambda: repr(
        metrics_table_rows(
            list(range(1, 501)),
            [1.0 / e for e in range(1, 501)],
            [{"w": 1 / 3 * e, "b": None} for e in range(1, 501)],
            ["w", "b"],
            max_rows=7,
        )
    ),
    "summary_seed.md": lambda: summary_markdown(_summary()),
    "summary_minimal.md": lambda: summary_markdown(
        {"run_id": 9, "status": "running", "final_params": None, "evaluation": None}
    ),
    "summary_no_evaluation.md": lambda: summary_markdown(
        _summary(evaluation=None, device="", seconds=None, warnings=None, best_epoch=None)
    ),
    "summary_escaped.md": lambda: summary_markdown(
        _summary(
            status="failed",
            final_params={MALICIOUS: 1.0},
            evaluation=None,
            config={"target": MALICIOUS, "data": "a\nb|c"},
            error="bad <b>value</b>\n| not a table |",
        )
    ),
    "summary_empty_error.md": lambda: summary_markdown(_summary(error="\n", config={})),
    "trend.md": lambda: trend_markdown(_runs(), title="Trend <x>"),
    "trend_empty.md": lambda: trend_markdown([], title="t"),
    "trend_one.md": lambda: trend_markdown(_runs()[:1], title="t"),
    "sweep.md": lambda: sweep_markdown(_sweep_rows(False), best_run_id=5, title="Sweep 2: *lr*"),
    "sweep_val.md": lambda: sweep_markdown(_sweep_rows(True), best_run_id=4, title="Sweep"),
    "sweep_no_best.md": lambda: sweep_markdown(_sweep_rows(False), best_run_id=None, title="S"),
    "sweep_empty.md": lambda: sweep_markdown([], best_run_id=None, title="S"),
    "curves.svg": lambda: loss_curves_svg(_curves(3), title="Sweep 1: training loss by run"),
    "curves_many.svg": lambda: loss_curves_svg(_curves(24), title="many", height=200),
    "curves_none.svg": lambda: loss_curves_svg(_curves(0), title="none", width=300),
    "comparison.txt": lambda: comparison_table(_sweep_rows(True)),
    "comparison_empty.txt": lambda: comparison_table([]),
    "runs_table.txt": lambda: runs_table(_db_runs()),
    "metrics_table.txt": lambda: metrics_table(_metrics(), ["w", "b"]),
    "metrics.csv": lambda: metrics_csv(_metrics(), ["w", "b"]),
    "evaluation_table.txt": lambda: evaluation_table(EVALUATION),
    "evaluation_relative.txt": lambda: evaluation_table(
        {**{k: v for k, v in EVALUATION.items() if k != "validation"}, "relative_loss_gap": 0.0123}
    ),
    "params.txt": lambda: format_params({"w_a": 3.00012, "b": None}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendering_is_byte_identical_to_the_recording(name: str) -> None:
    assert CASES[name]() == (GOLDEN / name).read_text(encoding="utf-8")


def test_every_case_is_recorded() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(CASES)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GOLDEN.mkdir(exist_ok=True)
    for name, render in CASES.items():
        (GOLDEN / name).write_text(render(), encoding="utf-8")
