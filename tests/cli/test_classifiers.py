"""`gdflow run --model logistic|softmax` in process, against the harness server and a real SQLite
file: a classifier on scikit-learn's iris end to end (classes, metrics, per-epoch validation
accuracy stored), and each bad classifier input as one error line, nothing half-recorded."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from sklearn.datasets import load_iris

from tests.processes import GdflowMain

SPECIES = ("setosa", "versicolor", "virginica")


def _iris(folder: Path) -> Path:
    """Iris as a CSV with the species as text labels (the last column)."""
    frame = load_iris(as_frame=True).frame
    frame["species"] = [SPECIES[int(t)] for t in frame.pop("target")]
    path = folder / "iris.csv"
    frame.to_csv(path, index=False)
    return path


def _query(database_url: str, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
        return conn.execute(sql).fetchall()


def test_a_softmax_run_on_iris_stores_its_classes_metrics_and_accuracy_curve(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path
) -> None:
    data = _iris(tmp_path)
    args = ["run", "--data", str(data), "--model", "softmax", "--standardize"]
    args += ["--validation-split", "0.2", "--epochs", "300", "--log-every", "100"]
    args += ["--predict", "5.1,3.5,1.4,0.2"]
    done = gdflow_main(args, database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run 1 completed: 300 epochs (max_epochs)" in done.stdout
    header = next(line for line in done.stdout.splitlines() if line.startswith("data "))
    assert header.split() == ["data", "log_loss", "accuracy", "macro_f1"]
    assert re.search(r"true setosa\s+\d+\s+0\s+0", done.stdout)  # setosa is never confused

    ((model, task, classes, names, evaluation),) = _query(
        database_url, "SELECT model, task, classes, parameter_names, evaluation FROM runs"
    )
    assert (model, task, json.loads(classes)) == ("softmax", "multiclass", list(SPECIES))
    assert len(json.loads(names)) == 3 * 5  # a row of 4 weights and a bias per class
    evaluation = json.loads(evaluation)
    assert evaluation["classes"] == list(SPECIES)
    assert set(evaluation["validation"]) >= {"log_loss", "accuracy", "macro_f1"}
    assert evaluation["validation"]["accuracy"] > 0.8
    assert evaluation["predictions"][0]["class"] == "setosa"
    accuracies = _query(database_url, "SELECT val_accuracy FROM epoch_metrics ORDER BY epoch")
    assert len(accuracies) == 300 and all(a is not None for (a,) in accuracies)
    assert accuracies[-1][0] > 0.8


@pytest.mark.parametrize(
    ("args", "message", "recorded"),
    [
        (["--model", "logistic"], r"--model logistic needs exactly two classes .* 3", "failed"),
        (
            ["--model", "linear"],
            r"column 'species' .* is not numeric .* --model logistic",
            "failed",
        ),
        (
            ["--model", "softmax", "--task", "binary"],
            "--task binary contradicts --model softmax",
            None,
        ),
        (["--class-weight", "balanced"], "--class-weight applies to classifiers", None),
        (["--model", "tree"], "must be one of linear, logistic, softmax", None),
        (
            ["--model", "softmax", "--validation-split", "0.99"],
            "appear only in the validation rows|hold one class only",
            "failed",
        ),
    ],
)
def test_bad_classifier_input_is_one_line_and_nothing_half_recorded(
    gdflow_main: GdflowMain,
    database_url: str,
    tmp_path: Path,
    args: list[str],
    message: str,
    recorded: str | None,
) -> None:
    data = _iris(tmp_path)
    done = gdflow_main(
        ["run", "--data", str(data), "--epochs", "5", *args],
        database_url=database_url,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("gdflow: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert re.search(message, errors[0]), errors[0]
    path = Path(database_url.removeprefix("sqlite:///"))
    runs = _query(database_url, "SELECT status, epochs_done FROM runs") if path.exists() else []
    if recorded is None:  # refused before a run was recorded
        assert runs == []
    else:  # recorded as failed, no epoch rows
        assert runs == [(recorded, 0)]
        assert _query(database_url, "SELECT count(*) FROM epoch_metrics") == [(0,)]


def test_an_mlp_classifier_with_lr_auto_records_its_range_test(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path
) -> None:
    from sklearn.datasets import make_moons

    x, y = make_moons(300, noise=0.2, random_state=0)
    rows = "\n".join(f"{float(a)!r},{float(b)!r},{'yes' if t else 'no'}" for (a, b), t in zip(x, y))
    (tmp_path / "moons.csv").write_text("a,b,label\n" + rows + "\n")
    args = ["run", "--data", "moons.csv", "--model", "mlp", "--task", "binary"]
    args += ["--hidden", "8", "--standardize", "--epochs", "200", "--log-every", "0"]
    done = gdflow_main(args, database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no exact optimum: a network's loss is not convex" in done.stdout

    ((model, task, classes, final_params, evaluation),) = _query(
        database_url, "SELECT model, task, classes, final_params, evaluation FROM runs"
    )
    assert (model, task, json.loads(classes)) == ("mlp", "binary", ["no", "yes"])
    assert len(json.loads(final_params)) == 2 * 8 + 8 + 8 + 1
    evaluation = json.loads(evaluation)
    search = evaluation["lr_range_test"]
    assert search["lrs"][0] < search["chosen"] < search["lrs"][-1]
    assert len(search["lrs"]) == len(search["losses"]) and "fell fastest" in search["how"]
    assert evaluation["train"]["accuracy"] > 0.8 and evaluation["optimum"]["loss"] is None


def test_gdflow_run_imports_its_users_module_reference(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line's user names their own factory: `gdflow run` imports it (and leaves the
    machine's setting as it was), trains it for --task multiclass and stores its weights."""
    from tests.training.test_user_models import install_plugin

    monkeypatch.delenv("GDFLOW_ALLOW_MODEL_IMPORTS", raising=False)
    install_plugin(tmp_path, monkeypatch)
    data = _iris(tmp_path)
    args = ["run", "--data", str(data), "--model", "gdflow_test_models:good"]
    args += ["--task", "multiclass", "--epochs", "30", "--lr", "0.1", "--log-every", "0"]
    done = gdflow_main(args, database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GDFLOW_ALLOW_MODEL_IMPORTS" not in __import__("os").environ
    ((model, task, final_params),) = _query(
        database_url, "SELECT model, task, final_params FROM runs"
    )
    assert (model, task) == ("gdflow_test_models:good", "multiclass")
    assert len(json.loads(final_params)) == 4 * 4 + 4 + 4 * 3 + 3  # Linear(4,4), Linear(4,3)
