"""The model registry end to end through `gdflow` in process, against the session's Prefect
server and a real SQLite file: every completed run saves a version, the champion changes only
for a better model (or by hand), `gdflow predict` scores a file with a saved classifier and
records each batch, `--init champion` warm-starts (or refuses a champion that does not fit), an
unreachable model store fails the run with its epochs kept, and an S3 store (moto on loopback)
round-trips a model."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sqlalchemy import select
from sqlalchemy.orm import Session

from gdflow.storage import engine_for
from gdflow.storage.models import PredictionBatch
from tests.processes import Done, GdflowMain, free_port
from tests.s3_server import _require, point_aws_at


def _cli(gdflow_main: GdflowMain, database_url: str, cwd: Path, *args: str) -> Done:
    """`gdflow ARGS` in process, which must succeed."""
    done = gdflow_main(list(args), database_url=database_url, cwd=cwd)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
    return done


def _json(gdflow_main: GdflowMain, database_url: str, cwd: Path, *args: str) -> Any:
    """The JSON a successful `gdflow ARGS --format json` prints."""
    return json.loads(_cli(gdflow_main, database_url, cwd, *args, "--format", "json").stdout)


def _attempt(gdflow_main: GdflowMain, database_url: str, cwd: Path, *args: str) -> Done:
    """`gdflow ARGS` in process, which may fail."""
    return gdflow_main(list(args), database_url=database_url, cwd=cwd)


def _metrics(gdflow_main: GdflowMain, database_url: str, cwd: Path, run: str) -> pd.DataFrame:
    """`gdflow metrics RUN --format csv` as a table: epoch, loss and the parameters."""
    done = _cli(gdflow_main, database_url, cwd, "metrics", run, "--format", "csv")
    return pd.read_csv(io.StringIO(done.stdout))


def _error_line(done: Done) -> str:
    """The one `gdflow: error:` line of a command that failed with exit status 1."""
    assert done.returncode == 1, (done.stdout[-2000:], done.stderr[-3000:])
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("gdflow: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


def _saved_line(done: Done) -> str:
    """The `saved model NAME version N: ...` line of a completed `gdflow run`."""
    lines = [line for line in done.stdout.splitlines() if line.startswith("saved model ")]
    assert len(lines) == 1, done.stdout[-3000:]
    return lines[0]


def _tables(text: str) -> list[list[dict[str, str]]]:
    """The aligned tables of a text (a header line, a rule of dashes, rows) as lists of
    {column: cell}; each cell is read from its column's span under the rule, and a cell that
    runs into the gap between two columns fails the test (the table is not aligned)."""
    lines = text.splitlines()
    tables = []
    for i, rule in enumerate(lines):
        if i == 0 or not re.fullmatch(r"-+( {2}-+)+", rule):
            continue
        spans = [m.span() for m in re.finditer(r"-+", rule)]
        header = lines[i - 1]
        names = [header[a:b].strip() for a, b in spans]
        rows = []
        for line in lines[i + 1 :]:
            if not line.strip():
                break
            for (_, end), (start, _) in zip(spans, spans[1:]):
                assert line[end:start].strip() == "", f"not aligned: {line!r} under {rule!r}"
            assert len(line) <= len(rule), f"wider than its rule: {line!r}"
            rows.append({name: line[a:b].strip() for name, (a, b) in zip(names, spans)})
        tables.append(rows)
    return tables


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_versions_champion_history_promote_and_rollback(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GDFLOW_MODEL_STORE", raising=False)  # the default: models/ beside the db
    cli = partial(_cli, gdflow_main, database_url, tmp_path)
    as_json = partial(_json, gdflow_main, database_url, tmp_path)

    first = cli("run", "--epochs", "30", "--log-every", "0")
    assert (
        _saved_line(first) == "saved model toy version 1: champion (first version of toy: champion)"
    )
    second = cli("run", "--epochs", "100", "--log-every", "0")
    assert re.fullmatch(
        r"saved model toy version 2: champion \(promoted: train loss \S+ against champion "
        r"version 1's \S+\)",
        _saved_line(second),
    ), second.stdout

    (summary,) = as_json("models")
    assert (summary["name"], summary["versions"], summary["latest_version"]) == ("toy", 2, 2)
    assert summary["champion"] == 2 and summary["latest_at"]

    model = as_json("models", "toy")
    assert (model["name"], model["champion"], model["aliases"]) == ("toy", 2, {"champion": 2})
    assert [v["version"] for v in model["versions"]] == [2, 1]  # newest first
    store = tmp_path / "models"
    for version, run_id in zip(model["versions"], (2, 1)):
        assert version["run_id"] == run_id and version["flow_run_id"]
        assert (version["family"], version["task"]) == ("linear", "regression")
        assert version["feature_names"] == ["x"] and version["target_name"] == "y"
        assert version["classes"] is None and version["data_fingerprint"].startswith("sha256:")
        assert version["metrics"]["train"]["mse"] > 0
        file = version["file"]
        assert file["store"] == str(store) and file["path"].startswith("toy/")
        saved = store.joinpath(*file["path"].split("/"))
        assert saved.suffix == ".safetensors" and saved.is_file()
        data = saved.read_bytes()
        assert file["size"] == len(data) and file["checksum"] == _sha256(data)
    newer, older = model["versions"]
    assert newer["aliases"] == ["champion"] and older["aliases"] == []
    assert newer["metrics"]["train"]["mse"] < older["metrics"]["train"]["mse"]
    assert newer["promotion"]["promoted"] is True and newer["promotion"]["champion_version"] == 1
    assert older["promotion"]["promoted"] is True  # its name's first version

    first_change, promoted = model["history"]
    assert (first_change["alias"], first_change["from_version"], first_change["to_version"]) == (
        "champion",
        None,
        1,
    )
    assert first_change["reason"] == "first version" and first_change["run_id"] == 1
    assert (promoted["from_version"], promoted["to_version"], promoted["reason"]) == (
        1,
        2,
        "promoted",
    )
    assert promoted["run_id"] == 2 and promoted["flow_run_id"] == newer["flow_run_id"]
    # both losses on the same (training) rows: the champion's as its own evaluation measured it
    assert promoted["challenger_loss"] < promoted["champion_loss"]
    assert promoted["champion_loss"] == pytest.approx(older["metrics"]["train"]["mse"], rel=1e-4)
    assert promoted["challenger_loss"] == pytest.approx(newer["metrics"]["train"]["mse"], rel=1e-4)

    text = cli("models", "toy", "--history").stdout
    assert text.splitlines()[0] == "model toy: champion version 2"
    versions, history = _tables(text)
    assert [(r["version"], r["alias"], r["model"], r["run"]) for r in versions] == [
        ("2", "champion", "linear", "2"),
        ("1", "", "linear", "1"),
    ]
    assert versions[0]["metric"] == "train mse" and versions[0]["champion decision"].startswith(
        "promoted: train loss"
    )
    assert float(versions[1]["value"]) == pytest.approx(older["metrics"]["train"]["mse"], rel=1e-5)
    assert [(r["alias"], r["from"], r["to"], r["reason"]) for r in history] == [
        ("champion", "", "1", "first version"),
        ("champion", "1", "2", "promoted"),
    ]
    assert history[0]["champion loss"] == "" and float(history[1]["challenger loss"]) > 0

    third = cli("run", "--epochs", "100", "--log-every", "0", "--promote", "never")
    assert _saved_line(third) == (
        "saved model toy version 3: not champion (--promote never: kept the champion)"
    )
    assert as_json("models", "toy")["champion"] == 2
    promote = cli("promote", "toy", "3")
    assert promote.stdout.strip() == "model toy: version 3 is the champion (was version 2)"
    assert as_json("models")[0]["champion"] == 3
    back = cli("rollback", "toy")
    assert back.stdout.strip() == (
        "model toy: rolled back from version 3 to version 2 (the champion)"
    )
    model = as_json("models", "toy")
    assert model["champion"] == 2 and len(model["versions"]) == 3
    assert [(c["from_version"], c["to_version"], c["reason"]) for c in model["history"]] == [
        (None, 1, "first version"),
        (1, 2, "promoted"),
        (2, 3, "manual promote"),
        (3, 2, "rollback"),
    ]
    assert len(list(store.joinpath("toy").glob("*.safetensors"))) == 3


# --- a classifier and `gdflow predict` ----------------------------------------------------------


def _cancer(folder: Path) -> tuple[Path, pd.DataFrame]:
    """scikit-learn's breast cancer data as a CSV, its diagnosis as text (the last column)."""
    data = load_breast_cancer(as_frame=True)
    frame = data.frame
    frame["diagnosis"] = [str(data.target_names[t]) for t in frame.pop("target")]
    path = folder / "cancer.csv"
    frame.to_csv(path, index=False)
    return path, frame


def _batches(database_url: str) -> list[PredictionBatch]:
    with Session(engine_for(database_url)) as session:
        rows = list(session.scalars(select(PredictionBatch).order_by(PredictionBatch.id)))
        session.expunge_all()
    return rows


def test_a_logistic_model_scores_files_and_records_its_batches(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GDFLOW_MODEL_STORE", raising=False)
    cli = partial(_cli, gdflow_main, database_url, tmp_path)
    as_json = partial(_json, gdflow_main, database_url, tmp_path)
    attempt = partial(_attempt, gdflow_main, database_url, tmp_path)
    data, frame = _cancer(tmp_path)
    features = [c for c in frame.columns if c != "diagnosis"]
    trained = cli(
        *("run", "--data", str(data), "--model", "logistic", "--standardize"),
        *("--validation-split", "0.2", "--epochs", "300", "--log-every", "0", "--name", "cancer"),
    )
    assert _saved_line(trained).startswith("saved model cancer version 1: champion")
    shown = as_json("show", "latest")
    classes = shown["classes"]
    assert sorted(classes) == ["benign", "malignant"] and shown["task"] == "binary"

    # 40 rows to score: the feature columns in reverse order, an id column first, no label
    rows = frame.iloc[100:140].reset_index(drop=True)
    new = rows[features[::-1]].copy()
    new.insert(0, "id", [f"patient-{i}" for i in range(len(new))])
    new.to_csv(tmp_path / "new.csv", index=False)
    done = cli(
        *("predict", "--model", "cancer", "--data", "new.csv", "--output", "out.csv"),
    )
    assert re.search(
        r"model cancer version 1: 40 of 40 row\(s\) scored -> \S*out\.csv", done.stdout
    )
    out = pd.read_csv(tmp_path / "out.csv")
    probabilities = [f"p_{label}" for label in classes]
    assert list(out.columns) == [*new.columns, "prediction", *probabilities]
    assert list(out["id"]) == list(new["id"])
    pd.testing.assert_frame_equal(out[features], new[features])
    assert np.allclose(out[probabilities].sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # the run's final weights (original units), applied by hand: P(classes[1]) = sigmoid(z)
    params = shown["final_params"]
    z = params["b"] + sum(params[f"w_{name}"] * rows[name].to_numpy() for name in features)
    positive = 1.0 / (1.0 + np.exp(-z))
    assert np.allclose(out[f"p_{classes[1]}"], positive, rtol=1e-9, atol=1e-12)
    assert list(out["prediction"]) == [classes[int(p > 0.5)] for p in positive]
    assert set(out["prediction"]) == set(classes)  # both classes occur in these rows
    assert (out["prediction"] == rows["diagnosis"]).mean() > 0.9

    parquet = as_json(
        *("predict", "--model", "cancer:1", "--data", "new.csv", "--output", "out.parquet"),
    )
    assert set(parquet) >= {"rows_in", "rows_out", "rows_skipped", "output", "batch_id"}
    assert (parquet["rows_in"], parquet["rows_out"], parquet["rows_skipped"]) == (40, 40, 0)
    assert Path(parquet["output"]).resolve() == (tmp_path / "out.parquet").resolve()
    assert parquet["batch_id"] == 2
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"), out)

    new.drop(columns="mean radius").to_csv(tmp_path / "missing.csv", index=False)
    missing = attempt("predict", "--model", "cancer", "--data", "missing.csv", "--output", "m.csv")
    line = _error_line(missing)
    assert "missing.csv has no column 'mean radius'" in line and "model cancer version 1" in line
    assert not (tmp_path / "m.csv").exists()

    holes = new.copy()
    holes.loc[[2, 6], "worst area"] = math.nan
    holes.to_csv(tmp_path / "holes.csv", index=False)
    refused = attempt("predict", "--model", "cancer", "--data", "holes.csv", "--output", "h.csv")
    line = _error_line(refused)
    assert "2 row(s) cannot be scored" in line and "column 'worst area'" in line, line
    assert "data row 3" in line and "--on-invalid skip" in line, line
    assert not (tmp_path / "h.csv").exists()
    skipped = cli(
        *("predict", "--model", "cancer", "--data", "holes.csv", "--output", "h.csv"),
        *("--on-invalid", "skip"),
    )
    assert "38 of 40 row(s) scored, 2 skipped" in skipped.stdout, skipped.stdout
    kept = pd.read_csv(tmp_path / "h.csv")
    assert list(kept["id"]) == [i for j, i in enumerate(new["id"]) if j not in (2, 6)]
    assert list(kept["prediction"]) == [
        p for j, p in enumerate(out["prediction"]) if j not in (2, 6)
    ]

    batches = _batches(database_url)
    assert [(b.id, b.status, b.name, b.version) for b in batches] == [
        (1, "completed", "cancer", 1),
        (2, "completed", "cancer", 1),
        (3, "failed", "cancer", 1),
        (4, "failed", "cancer", 1),
        (5, "completed", "cancer", 1),
    ]
    new_fingerprint = _sha256((tmp_path / "new.csv").read_bytes())
    holes_fingerprint = _sha256((tmp_path / "holes.csv").read_bytes())
    assert [b.input_fingerprint for b in (batches[0], batches[1], batches[4])] == [
        new_fingerprint,
        new_fingerprint,
        holes_fingerprint,
    ]
    assert [
        (b.rows_in, b.rows_out, b.rows_skipped) for b in batches if b.status == "completed"
    ] == [
        (40, 40, 0),
        (40, 40, 0),
        (40, 38, 2),
    ]
    assert [Path(b.output_path or "").name for b in batches] == [
        "out.csv",
        "out.parquet",
        "",
        "",
        "h.csv",
    ]
    assert [b.input_path for b in batches] == [
        "new.csv",
        "new.csv",
        "missing.csv",
        "holes.csv",
        "holes.csv",
    ]
    assert "'mean radius'" in (batches[2].error or "") and "'worst area'" in (
        batches[3].error or ""
    )
    assert all(b.rows_out == 0 for b in batches if b.status == "failed")
    assert all(b.flow_run_id for b in batches) and len({b.flow_run_id for b in batches}) == 5


# --- --init champion ----------------------------------------------------------------------------


def test_init_champion_starts_from_the_champion_or_says_what_differs(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GDFLOW_MODEL_STORE", raising=False)
    cli = partial(_cli, gdflow_main, database_url, tmp_path)
    as_json = partial(_json, gdflow_main, database_url, tmp_path)
    attempt = partial(_attempt, gdflow_main, database_url, tmp_path)
    rng = np.random.default_rng(7)
    a, b = rng.uniform(-1, 1, 60), rng.uniform(-1, 1, 60)
    pair = pd.DataFrame({"a": a, "b": b, "y": 3 * a - 2 * b + 1 + rng.normal(0, 0.1, 60)})
    pair.to_csv(tmp_path / "pair.csv", index=False)
    common = ("--data", "pair.csv", "--bias", "--lr", "0.1", "--log-every", "0")
    cli("run", *common, "--epochs", "150")
    champion = as_json("show", "1")
    w = champion["final_params"]
    # the champion's loss on these rows, by hand (float64): where a warm start begins
    start_loss = float(np.mean((w["w_a"] * a + w["w_b"] * b + w["b"] - pair["y"]) ** 2))
    assert champion["final_loss"] < 0.02  # near the noise (0.1 ** 2)

    warm = cli(
        *("run", *common, "--epochs", "5", "--init", "champion", "--promote", "never"),
    )
    assert _saved_line(warm).startswith("saved model pair version 2: not champion")
    cold = _metrics(gdflow_main, database_url, tmp_path, "1")
    curve = _metrics(gdflow_main, database_url, tmp_path, "2")
    assert len(curve) == 5
    # epoch 1's loss is the initial parameters' loss: the champion's, not a cold start's
    assert curve.loc[0, "loss"] == pytest.approx(start_loss, rel=1e-4)
    assert curve.loc[0, "loss"] == pytest.approx(champion["final_loss"], rel=0.05)
    assert cold.loc[0, "loss"] > 10 * curve.loc[0, "loss"]
    warm_run = as_json("show", "2")
    assert warm_run["config"]["init"] == "champion" and warm_run["status"] == "completed"

    for args, differs in (
        (["--features", "a"], r"features \['a', 'b'\] \(champion\) vs \['a'\] \(this run\)"),
        (["--model", "mlp"], r"model linear \(champion\) vs mlp \(this run\)"),
    ):
        refused = attempt("run", *common, "--epochs", "5", "--init", "champion", *args)
        line = _error_line(refused)
        assert "--init champion: model pair version 1 (the champion) does not fit" in line, line
        assert re.search(differs, line), line
    runs = as_json("runs")
    assert [(r["id"], r["status"]) for r in runs] == [
        (4, "failed"),
        (3, "failed"),
        (2, "completed"),
        (1, "completed"),
    ]
    for run_id in (3, 4):
        failed = as_json("show", str(run_id))
        assert failed["epochs_done"] == 0 and "does not fit this run" in failed["error"]
    model = as_json("models", "pair")
    assert [v["run_id"] for v in model["versions"]] == [2, 1]


# --- the model store ----------------------------------------------------------------------------


def test_an_unreachable_model_store_fails_the_run_and_keeps_its_epochs(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require("s3fs")
    as_json = partial(_json, gdflow_main, database_url, tmp_path)
    port = free_port()  # nothing listens there
    point_aws_at(monkeypatch, f"http://127.0.0.1:{port}", tmp_path)
    args = ["run", "--epochs", "20", "--log-every", "0", "--model-store", "s3://gdflow-gone/x"]
    done = gdflow_main(args, database_url=database_url, cwd=tmp_path)
    line = _error_line(done)
    assert "model store s3://gdflow-gone/x: cannot write toy/run-1-" in line, line
    assert "AWS_ENDPOINT_URL" in line, line

    shown = as_json("show", "latest")
    assert (shown["id"], shown["status"], shown["epochs_done"]) == (1, "failed", 20)
    assert "model store s3://gdflow-gone/x" in shown["error"]
    curve = _metrics(gdflow_main, database_url, tmp_path, "latest")
    assert list(curve["epoch"]) == list(range(1, 21)) and curve["loss"].notna().all()
    assert as_json("models") == []
    assert not (tmp_path / "models").exists()


def test_a_model_saved_to_s3_is_predicted_from_s3(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, s3_bucket: str
) -> None:
    import s3fs

    cli = partial(_cli, gdflow_main, database_url, tmp_path)
    as_json = partial(_json, gdflow_main, database_url, tmp_path)
    store = f"s3://{s3_bucket}/models"
    trained = cli(
        *("run", "--epochs", "50", "--log-every", "0", "--model-store", store),
    )
    assert (
        _saved_line(trained)
        == "saved model toy version 1: champion (first version of toy: champion)"
    )
    (version,) = as_json("models", "toy")["versions"]
    file = version["file"]
    assert file["store"] == store and file["path"].startswith("toy/run-1-")
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    key = f"{s3_bucket}/models/{file['path']}"
    assert s3.info(key)["size"] == file["size"]
    assert _sha256(s3.cat_file(key)) == file["checksum"]
    assert not (tmp_path / "models").exists()  # nothing saved beside the database

    pd.DataFrame({"x": [1.5, 6.0, -2.0]}).to_csv(tmp_path / "in.csv", index=False)
    result = as_json(
        *("predict", "--model", "toy", "--data", "in.csv", "--output", "out.csv"),
    )
    assert (result["rows_in"], result["rows_out"], result["model"]) == (3, 3, "model toy version 1")
    w = as_json("show", "1")["final_params"]["w"]
    out = pd.read_csv(tmp_path / "out.csv")
    assert np.allclose(out["prediction"], w * out["x"], rtol=1e-12)
    assert abs(w - 2) < 0.05  # y = 2x, learnt
