"""`gdflow show RUN` and `gdflow runs --format json|csv`, in process on a real SQLite file: runs
recorded directly through the storage functions (an old-style linear regression, a binary
classifier), and once end to end after a real softmax run on iris."""

from __future__ import annotations

import io
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy.orm import Session

from gdflow.cli.main import main
from gdflow.storage import (
    MetricRow,
    RunOutcome,
    RunStatus,
    append_metrics,
    create_run,
    engine_for,
    finish_run,
    update_run,
)
from tests.cli.test_classifiers import SPECIES, _iris
from tests.processes import GdflowMain

#: Twelve features and a bias: enough parameters that `show` must list them all, aligned.
NAMES = [f"w_{c}" for c in "abcdefghijkl"] + ["b"]
PARAMS = {name: 0.5 + i / 7 for i, name in enumerate(NAMES)}
#: An evaluation as runs recorded it before `optimum` existed: only least squares.
OLD_EVALUATION: dict[str, Any] = {
    "predictions": [{"input": [1.0] * 12, "output": 10.25}],
    "train_loss": 0.0125,
    "train": {"mse": 0.0125, "rmse": 0.1118034, "mae": 0.09, "r2": 0.97},
    "validation": {"mse": 0.02, "rmse": 0.14142136, "mae": 0.1, "r2": float("nan")},
    "least_squares": {
        "params": {name: value + 1e-3 for name, value in PARAMS.items()},
        "loss": 0.0124,
        "validation_mse": 0.019,
    },
    "param_distance": 0.0036,
    "loss_gap": 0.0001,
    "relative_loss_gap": 0.0080645,
}
BINARY_EVALUATION: dict[str, Any] = {
    "predictions": [{"input": [0.5], "class": "yes", "probabilities": {"no": 0.2, "yes": 0.8}}],
    "train_loss": 0.31,
    "train": {
        "log_loss": 0.31,
        "accuracy": 0.9,
        "roc_auc": 0.95,
        "precision": 0.875,
        "recall": 0.93333333,
        "f1": 0.90322581,
        "confusion_matrix": [[13, 2], [1, 14]],
    },
    "optimum": {"loss": None, "relative_gap": None, "reason": "the classes are separable"},
    "classes": ["no", "yes"],
}
SHOW_KEYS = {
    "id",
    "status",
    "stop_reason",
    "epochs_done",
    "final_loss",
    "final_params",
    "model",
    "metrics",
    "optimum",
    "classes",
    "task",
    "data_source",
    "device",
    "started_at",
    "finished_at",
    "flow_run_id",
    "flow_run_name",
    "config",
    "best_epoch",
    "best_loss",
    "max_stable_lr",
    "condition_number",
    "warnings",
    "error",
    "predictions",
    "sweep_id",
}


def _record_runs(database_url: str) -> None:
    """Run 1: a linear regression as recorded before model families (model NULL, no
    `optimum`), with a NaN metric; run 2: a binary classifier that has no exact optimum."""
    with Session(engine_for(database_url)) as session:
        regression = create_run(
            session,
            config={"lr": 0.01, "epochs": 100, "data": "house.csv", "tolerance": None},
            data_source="house.csv",
            parameter_names=NAMES,
            device="cpu",
            flow_run_id="0f0e-regression",
            flow_run_name="house-lr0.01-cpu-100ep",
            started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        )
        append_metrics(
            session, run_id=regression, rows=[MetricRow(epoch=1, loss=3.5, params=PARAMS)]
        )
        finish_run(
            session,
            run_id=regression,
            outcome=RunOutcome(
                status=RunStatus.COMPLETED,
                stop_reason="max_epochs",
                epochs_done=100,
                final_loss=0.0125,
                final_params=PARAMS,
                evaluation=OLD_EVALUATION,
                best_epoch=100,
                best_loss=0.0125,
                finished_at=datetime(2026, 1, 2, 3, 4, 9, tzinfo=UTC),
            ),
        )
        update_run(session, run_id=regression, max_stable_lr=0.18, condition_number=42.0)
        classifier = create_run(
            session,
            config={"model": "logistic", "data": "yes.csv", "epochs": 30},
            data_source="yes.csv",
            parameter_names=["w", "b"],
            started_at=datetime(2026, 1, 3, tzinfo=UTC),
        )
        update_run(
            session, run_id=classifier, model="logistic", task="binary", classes=["no", "yes"]
        )
        update_run(session, run_id=classifier, warnings=["the classes are separable"])
        finish_run(
            session,
            run_id=classifier,
            outcome=RunOutcome(
                status=RunStatus.COMPLETED,
                stop_reason="max_epochs",
                epochs_done=30,
                final_loss=0.31,
                final_params={"w": 2.5, "b": float("nan")},
                evaluation=BINARY_EVALUATION,
            ),
        )
        session.commit()


def _strict(text: str) -> Any:
    """Parse JSON that must hold no NaN or infinity (Python's json accepts them by default)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON output")

    assert "NaN" not in text and "Infinity" not in text
    return json.loads(text, parse_constant=refuse)


def _show_json(run: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["show", run, "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    result: dict[str, Any] = _strict(captured.out)
    return result


def test_show_json_of_an_old_style_linear_regression(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_runs(database_url)
    run = _show_json("1", capsys)
    assert set(run) >= SHOW_KEYS
    assert run["id"] == 1 and run["status"] == "completed" and run["stop_reason"] == "max_epochs"
    assert (run["model"], run["task"], run["classes"]) == ("linear", "regression", None)
    assert run["epochs_done"] == 100 and run["final_loss"] == pytest.approx(0.0125)
    assert run["final_params"] == pytest.approx(PARAMS) and list(run["final_params"]) == NAMES
    assert run["metrics"]["train"] == pytest.approx(OLD_EVALUATION["train"])
    assert run["metrics"]["validation"]["mse"] == pytest.approx(0.02)
    assert run["metrics"]["validation"]["r2"] is None  # NaN recorded, null shown
    # derived from least_squares and relative_loss_gap: the run has no `optimum`
    assert run["optimum"] == {"loss": 0.0124, "relative_gap": 0.0080645, "reason": None}
    assert run["started_at"] == "2026-01-02T03:04:05+00:00"
    assert run["finished_at"] == "2026-01-02T03:04:09+00:00"
    assert datetime.fromisoformat(run["started_at"]) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (run["flow_run_id"], run["flow_run_name"]) == (
        "0f0e-regression",
        "house-lr0.01-cpu-100ep",
    )
    assert (run["data_source"], run["device"], run["sweep_id"]) == ("house.csv", "cpu", None)
    assert (run["best_epoch"], run["best_loss"]) == (100, 0.0125)
    assert (run["max_stable_lr"], run["condition_number"]) == (0.18, 42.0)
    assert run["config"]["lr"] == 0.01 and run["warnings"] == [] and run["error"] is None
    assert run["predictions"] == [{"input": [1.0] * 12, "output": 10.25}]


def test_show_json_of_a_classifier(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _record_runs(database_url)
    run = _show_json("latest", capsys)
    assert run["id"] == 2
    assert (run["model"], run["task"], run["classes"]) == ("logistic", "binary", ["no", "yes"])
    train = run["metrics"]["train"]
    assert set(train) == {
        "log_loss",
        "accuracy",
        "roc_auc",
        "precision",
        "recall",
        "f1",
        "confusion_matrix",
    }
    assert train["accuracy"] == 0.9 and train["confusion_matrix"] == [[13, 2], [1, 14]]
    assert run["metrics"]["validation"] is None  # no validation rows
    assert run["optimum"] == {
        "loss": None,
        "relative_gap": None,
        "reason": "the classes are separable",
    }
    assert run["final_params"] == {"w": 2.5, "b": None}  # NaN recorded, null shown
    assert run["warnings"] == ["the classes are separable"]
    assert run["predictions"][0]["class"] == "yes"


def test_show_text_lists_the_summary_evaluation_and_every_parameter(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_runs(database_url)
    assert main(["show", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["run", "1"]
    summary = lines[: lines.index("")]
    values = {line[:17].strip(): line[19:] for line in summary}  # aligned: one value column
    assert values["status"] == "completed" and values["model"] == "linear (regression)"
    assert values["stop reason"] == "max_epochs" and values["epochs"] == "100"
    assert values["optimum loss"] == "0.0124 (final loss 0.806% above it)"
    assert values["largest stable lr"] == "0.18" and values["condition number"] == "42"
    assert "device             cpu" in summary
    assert lines[len(summary) + 1].split() == ["data", "mse", "rmse", "mae", "r2"]
    header = next(i for i, line in enumerate(lines) if line.startswith("parameter "))
    assert lines[header].split() == ["parameter", "final", "value", "least", "squares"]
    rows = lines[header + 2 : header + 2 + len(NAMES)]
    assert [row.split()[0] for row in rows] == NAMES  # all thirteen, none elided
    assert len({len(row) for row in rows}) == 1  # right-aligned numbers: one width
    assert "f(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)  10.25" in out
    assert re.search(r"^validation +0\.02 +0\.14142136 +0\.1 +nan$", out, re.M)

    assert main(["show", "2"]) == 0
    out = capsys.readouterr().out
    assert "classes" in out and "no, yes" in out
    assert re.search(r"^optimum loss +none$", out, re.M)
    assert "\n\nno exact optimum: the classes are separable\n" in out  # said once, below
    assert "train confusion" in out and "true yes" in out
    assert re.search(r"^b +nan$", out, re.M)  # the NaN parameter, as recorded
    assert "device" not in out and "flow run" not in out  # nothing recorded: not shown


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("7", "gdflow: error: no run 7 in this database; list runs with: gdflow runs"),
        ("x", "gdflow: error: invalid RUN_ID 'x': give a number or 'latest'"),
    ],
)
def test_show_of_an_unknown_run_is_one_line_and_exit_1(
    database_url: str, capsys: pytest.CaptureFixture[str], ref: str, message: str
) -> None:
    _record_runs(database_url)
    for fmt in ("text", "json"):
        with pytest.raises(SystemExit) as info:
            main(["show", ref, "--format", fmt])
        assert info.value.code == 1
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == message + "\n"


def test_show_latest_on_an_empty_database(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["show", "latest", "--format", "json"])
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        "gdflow: error: no runs recorded yet; start one with: gdflow run\n"
    )


def test_runs_as_json_csv_and_the_table(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _record_runs(database_url)
    assert main(["runs", "--format", "json"]) == 0
    runs = _strict(capsys.readouterr().out)
    assert [run["id"] for run in runs] == [2, 1]  # newest first
    classifier, regression = runs
    assert set(regression) >= {
        "id",
        "status",
        "model",
        "task",
        "started_at",
        "finished_at",
        "epochs_done",
        "final_loss",
        "stop_reason",
        "data_source",
        "flow_run_name",
        "metrics",
    }
    assert (
        regression["model"] == "linear" and regression["started_at"] == "2026-01-02T03:04:05+00:00"
    )
    assert regression["metrics"]["validation"] == {
        "mse": 0.02,
        "rmse": 0.14142136,
        "mae": 0.1,
        "r2": None,
    }
    assert "confusion_matrix" not in classifier["metrics"]["train"]  # headline metrics only
    assert classifier["metrics"]["train"]["roc_auc"] == 0.95

    assert main(["runs", "--format", "csv", "--limit", "5"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame["id"]) == [2, 1]
    assert list(frame.columns[:4]) == ["id", "status", "model", "task"]
    by_id = frame.set_index("id")
    assert by_id.loc[1, "train_mse"] == 0.0125 and by_id.loc[1, "validation_mae"] == 0.1
    assert math.isnan(by_id.loc[1, "validation_r2"])  # NaN: an empty cell
    assert math.isnan(by_id.loc[1, "train_accuracy"])  # not a classifier metric
    assert by_id.loc[2, "train_f1"] == pytest.approx(0.90322581)
    assert by_id.loc[2, "model"] == "logistic" and by_id.loc[1, "data_source"] == "house.csv"
    assert pd.to_datetime(frame["started_at"]).dt.tz is not None

    assert main(["runs", "--source", "house.csv", "--format", "csv"]) == 0
    assert list(pd.read_csv(io.StringIO(capsys.readouterr().out))["id"]) == [1]

    assert main(["runs"]) == 0  # the table as before
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["id", "flow", "run", "status"]
    assert len(lines) == 4 and lines[3].split()[0] == "1"


def test_runs_as_json_and_csv_on_an_empty_database(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["runs", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert frame.empty and "validation_macro_f1" in frame.columns


def test_show_after_a_real_softmax_run_on_iris(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path
) -> None:
    data = _iris(tmp_path)
    args = ["run", "--data", str(data), "--model", "softmax", "--standardize"]
    args += ["--validation-split", "0.2", "--epochs", "50", "--log-every", "0"]
    done = gdflow_main(args, database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    shown = gdflow_main(
        ["show", "latest", "--format", "json"], database_url=database_url, cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    run = _strict(shown.stdout)
    assert set(run) >= SHOW_KEYS
    assert (run["id"], run["status"], run["stop_reason"]) == (1, "completed", "max_epochs")
    assert (run["model"], run["task"], run["classes"]) == ("softmax", "multiclass", list(SPECIES))
    assert run["epochs_done"] == 50 and run["final_loss"] > 0
    assert len(run["final_params"]) == 3 * 5  # four weights and a bias per class
    for split in ("train", "validation"):
        metrics = run["metrics"][split]
        assert {"log_loss", "accuracy", "macro_f1"} <= set(metrics)
        assert 0 <= metrics["accuracy"] <= 1
        assert len(metrics["confusion_matrix"]) == 3
    # setosa is linearly separable from the rest: no exact optimum exists, and the reason says so
    optimum = run["optimum"]
    assert set(optimum) == {"loss", "relative_gap", "reason"}
    assert optimum["loss"] is None and optimum["relative_gap"] is None and optimum["reason"]
    assert run["flow_run_id"] and run["flow_run_name"] and run["config"]["model"] == "softmax"
    assert datetime.fromisoformat(run["finished_at"]) >= datetime.fromisoformat(run["started_at"])

    text = gdflow_main(["show", "1"], database_url=database_url, cwd=tmp_path)
    assert text.returncode == 0 and "macro_f1" in text.stdout and "true setosa" in text.stdout
    listed = gdflow_main(["runs", "--format", "csv"], database_url=database_url, cwd=tmp_path)
    frame = pd.read_csv(io.StringIO(listed.stdout))
    assert frame.loc[0, "validation_accuracy"] == run["metrics"]["validation"]["accuracy"]


def test_show_text_of_an_evaluation_the_tables_cannot_read(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A partial evaluation (no least squares, no optimum) still shows its metrics."""
    with Session(engine_for(database_url)) as session:
        run = create_run(session, config={}, data_source="toy:y=2x", parameter_names=["w"])
        outcome = RunOutcome(RunStatus.COMPLETED, evaluation={"train": {"MSE": 0.5}})
        finish_run(session, run_id=run, outcome=outcome)
        session.commit()
    assert main(["show", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^train +0\.5$", out, re.M) and "final parameters: none recorded" in out
    run_json = _show_json("1", capsys)
    assert run_json["metrics"] == {"train": {"mse": 0.5}, "validation": None}
    assert run_json["optimum"] == {"loss": None, "relative_gap": None, "reason": None}
    assert run_json["final_params"] is None and run_json["predictions"] == []
