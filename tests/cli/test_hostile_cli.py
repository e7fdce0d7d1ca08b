"""Hostile input through the CLI: `gdflow run` against the harness server, in process
(main(ARGS)) and, for one failing file and one password case, in a real process.

Every hostile data file either trains (exit 0) or ends with exactly one `gdflow: error:` line
and no traceback; the database is left with no run `running` and no completed run missing
epoch rows. Hostile column names are stored verbatim and shown escaped; a database URL's
password appears nowhere the user or the Prefect UI can see. Counts go to
test-artifacts/hostile-input.json for RELIABILITY.md.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdflow.config.errors import GdflowError, one_line
from gdflow.data.dataset import load_dataset
from tests.conftest import REPO
from tests.data.test_hostile_input import CURATED
from tests.processes import GdflowMain, run_cli

SECRET = "s3cret-Pa55"
HOSTILE_NAMES = (
    'a"; DROP TABLE runs;--',
    "<script>alert(1)</script>",
    "**bold** | pipe",
    "[x](javascript:alert(1))",
)
#: How each hostile name must look in markdown: escaped, so nothing is interpreted.
ESCAPED = (
    'a"; DROP TABLE runs;\\-\\-',
    "&lt;script&gt;alert\\(1\\)&lt;/script&gt;",
    "\\*\\*bold\\*\\* \\| pipe",
    "\\[x\\]\\(javascript:alert\\(1\\)\\)",
)
OBSERVED: dict[str, Any] = {"cli_runs": 0, "exit_0": 0, "one_line_errors": 0, "cases": {}}


@pytest.fixture(scope="module", autouse=True)
def _write_counts() -> Iterator[None]:
    """Write what the module observed, for RELIABILITY.md."""
    yield
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "hostile-input.json").write_text(json.dumps(OBSERVED, indent=2, sort_keys=True))


def gdflow(run: GdflowMain, args: list[str], *, database_url: str, cwd: Path) -> str | None:
    """Run `gdflow ARGS` with `run`; None when it exits 0, else its one error line (checked)."""
    done = run(args, database_url=database_url, cwd=cwd)
    OBSERVED["cli_runs"] += 1
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    if done.returncode == 0:
        OBSERVED["exit_0"] += 1
        return None
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("gdflow: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert done.stderr.rstrip().endswith(errors[0])
    OBSERVED["one_line_errors"] += 1
    return errors[0]


def database_state(url: str) -> dict[str, int]:
    """Runs by status and epoch rows; asserts no run is `running` and no completed run lacks
    epoch rows (epochs 1..epochs_done, each once)."""
    path = Path(url.removeprefix("sqlite:///"))
    if not path.exists():
        return {"runs": 0, "epoch_rows": 0}
    with sqlite3.connect(path) as conn:
        runs = conn.execute("SELECT id, status, epochs_done FROM runs").fetchall()
        rows = conn.execute("SELECT count(*) FROM epoch_metrics").fetchone()[0]
        for run_id, status, epochs_done in runs:
            assert status != "running", f"run {run_id} left running"
            if status == "completed":
                epochs = conn.execute(
                    "SELECT count(*), min(epoch), max(epoch) FROM epoch_metrics WHERE run_id = ?",
                    (run_id,),
                ).fetchone()
                assert epochs == (epochs_done, 1, epochs_done), (run_id, epochs_done, epochs)
    state: dict[str, int] = {"runs": len(runs), "epoch_rows": rows}
    for _, status, _ in runs:
        state[status] = state.get(status, 0) + 1
    return state


def train_on(
    run: GdflowMain, path: Path, *options: str, epochs: int, database_url: str
) -> tuple[str | None, dict[str, int]]:
    """`gdflow run --data PATH`: its error line (None: exit 0) and the database's state."""
    error = gdflow(
        run,
        ["run", "--data", str(path), "--epochs", str(epochs), "--log-every", "0", *options],
        database_url=database_url,
        cwd=path.parent,
    )
    return error, database_state(database_url)


#: The files named in issue #6, end to end (tests/data/test_hostile_input.py loads them all).
END_TO_END = [
    "empty.csv",
    "header-only.csv",
    "duplicate-names.csv",
    "latin-1.csv",
    "nan-cell.csv",
    "inf-cell.csv",
    "huge-1e300.csv",
    "tiny-denormal.csv",
    "csv-bomb.csv",
    "long-row.csv",
]


def console_script(api_url: str) -> GdflowMain:
    """Run the installed `gdflow` console script in a process of its own, as a user does."""

    def run(args: list[str], *, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return run_cli(args, api_url=api_url, database_url=database_url, cwd=cwd, timeout=240)

    return run


@pytest.mark.parametrize(
    "name", [*END_TO_END, pytest.param("nan-cell.csv", id="nan-cell.csv-console-script")]
)
def test_hostile_file_trains_or_fails_in_one_line(
    name: str,
    gdflow_main: GdflowMain,
    prefect_api_url: str,
    database_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    content, expected = CURATED[name]
    path = tmp_path / name
    path.write_bytes(content)
    process = request.node.callspec.id.endswith("console-script")
    run = console_script(prefect_api_url) if process else gdflow_main
    error, state = train_on(run, path, epochs=20, database_url=database_url)
    OBSERVED["cases"][name] = {"error": error, **state}
    assert (error is None) == (expected is None), error
    if error is None:
        assert state == {"runs": 1, "completed": 1, "epoch_rows": 20}
    else:  # the run was recorded as failed, with no epoch rows
        assert re.search(expected, error), error
        assert state == {"runs": 1, "failed": 1, "epoch_rows": 0}


def test_a_directory_as_data_fails_in_one_line(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    error, state = train_on(gdflow_main, folder, epochs=20, database_url=database_url)
    OBSERVED["cases"]["directory"] = {"error": error, **state}
    assert error is not None
    assert "is a folder with no .parquet files" in error


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        ("a,y\n1e300,2\n3,4\n", "failed", "features are too large to train on"),
        ("a,y\n1,1e300\n3,4\n", "diverged", "loss of the initial parameters overflows"),
    ],
)
def test_huge_values_in_float64_fail_with_what_to_change(
    content: str,
    status: str,
    message: str,
    gdflow_main: GdflowMain,
    database_url: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "huge.csv"
    path.write_text(content)
    error, state = train_on(
        gdflow_main, path, "--dtype", "float64", epochs=20, database_url=database_url
    )
    OBSERVED["cases"][f"huge-1e300-float64-{status}"] = {"error": error, **state}
    assert error is not None
    assert message in error
    assert state == {"runs": 1, status: 1, "epoch_rows": 0}


def _flow_run(api_url: str, flow_run_id: str) -> tuple[Any, list[Any], list[Any]]:
    """The flow run, its artifacts and its logs, read back through the Prefect client."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs of a flow run in this process: sent in the background
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with SyncPrefectClient(api=api_url) as client:
        flow_run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return flow_run, artifacts, logs


def test_hostile_names_are_stored_verbatim_and_shown_escaped(
    gdflow_main: GdflowMain, prefect_api_url: str, database_url: str, tmp_path: Path
) -> None:
    stem = "<img src=x onerror=alert(1)> **b** [l](javascript:x)"
    path = tmp_path / f"{stem}.csv"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*HOSTILE_NAMES, "y"])
    writer.writerows([[i, i + 1, i * 2, 1 - i, 3 * i + 1] for i in range(6)])
    path.write_text(out.getvalue())
    error, state = train_on(gdflow_main, path, "--bias", epochs=30, database_url=database_url)
    assert error is None
    OBSERVED["cases"]["hostile-names-end-to-end"] = {"error": error, **state}
    weights = [f"w_{name}" for name in HOSTILE_NAMES]

    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
        names, final, flow_run_id, flow_run_name, source = conn.execute(
            "SELECT parameter_names, final_params, flow_run_id, flow_run_name, data_source "
            "FROM runs"
        ).fetchone()
        epoch_params = [json.loads(p) for (p,) in conn.execute("SELECT params FROM epoch_metrics")]
        tables = {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "epoch_metrics", "sweeps"} <= tables  # nothing was executed as SQL
    assert json.loads(names) == [*weights, "b"] and list(json.loads(final)) == [*weights, "b"]
    assert len(epoch_params) == 30 and all(list(p) == [*weights, "b"] for p in epoch_params)
    assert source == str(path)

    flow_run, artifacts, logs = _flow_run(prefect_api_url, flow_run_id)
    # The run name and tags keep only letters, digits and ._+- of the file name.
    assert flow_run.name == flow_run_name
    assert flow_run.name.startswith("_img_src_x_onerror_alert_1___") and "<" not in flow_run.name
    assert all("<" not in tag and "*" not in tag for tag in flow_run.tags)
    markdown = {a.description: a.data for a in artifacts if a.type == "markdown"}
    summary = next(text for d, text in markdown.items() if d.endswith(": summary"))
    trend = next(text for d, text in markdown.items() if d.startswith("gdflow: final loss"))
    for raw, escaped in zip(HOSTILE_NAMES, ESCAPED):
        assert f"| w\\_{escaped} |" in summary
        assert f"w\\_{escaped}" in trend
        assert raw not in summary and raw not in trend
    assert "<" not in summary.replace("&lt;", "") and "<" not in trend.split("![")[0]
    table = next(a for a in artifacts if a.type == "table")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert list(rows[0]) == ["epoch", "loss", *weights, "b"]  # verbatim: the UI shows text
    assert logs, "no logs read back"
    OBSERVED["hostile_names"] = {
        "artifacts": len(artifacts),
        "logs": len(logs),
        "flow_run_name": flow_run.name,
    }


@pytest.mark.parametrize(
    ("url", "commands"),
    [
        (
            f"postgresql+psycopg://user:{SECRET}@127.0.0.1:1/db",
            [["run"], ["runs"], ["metrics", "1"]],
        ),
        (f"postgresql+asyncpg://user:{SECRET}@127.0.0.1:1/db", [["run"]]),
        (f"postgresql://user:{SECRET}@127.0.0.1:notaport/db", [["run"]]),
        (f"user:{SECRET}@nowhere", [["run"]]),
    ],
)
def test_a_password_in_a_bad_database_url_is_never_shown(
    url: str, commands: list[list[str]], gdflow_main: GdflowMain, tmp_path: Path
) -> None:
    """As --database-url, and as GDFLOW_DATABASE_URL for the read commands."""
    for command in commands:
        args = [*command, "--database-url", url] if command == ["run"] else command
        done = gdflow_main(args, database_url=url, cwd=tmp_path)
        OBSERVED["cli_runs"] += 1
        output = done.stdout + done.stderr
        assert done.returncode == 1 and SECRET not in output and "Traceback" not in output
        assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line, no more
        assert re.match(r"gdflow: error: (cannot|invalid database URL)", done.stderr)
        OBSERVED["one_line_errors"] += 1
        OBSERVED["cases"].setdefault("secret-bad-urls", []).append(done.stderr.strip())


def test_a_password_in_a_working_database_url_is_never_shown(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """SQLite ignores unknown URI parameters, so `password=` rides along in a URL that works."""
    database = tmp_path / "metrics.db"
    url = f"sqlite:///file:{database}?mode=rwc&password={SECRET}&uri=true"
    done = run_cli(
        ["run", "--database-url", url, "--epochs", "5"],
        api_url=prefect_api_url,
        database_url=f"sqlite:///{tmp_path / 'other.db'}",
        cwd=tmp_path,
    )
    OBSERVED["cli_runs"] += 1
    assert done.returncode == 0, done.stderr[-3000:]
    assert SECRET not in done.stdout + done.stderr
    assert "password=***" in done.stdout
    with sqlite3.connect(database) as conn:
        flow_run_id, config = conn.execute("SELECT flow_run_id, config FROM runs").fetchone()
        assert conn.execute("SELECT count(*) FROM epoch_metrics").fetchone() == (5,)
    assert SECRET not in config
    flow_run, artifacts, logs = _flow_run(prefect_api_url, flow_run_id)
    assert SECRET not in flow_run.name and SECRET not in json.dumps(flow_run.parameters)
    assert flow_run.parameters["config"].get("database_url") is None  # not a flow parameter
    for artifact in artifacts:
        assert SECRET not in json.dumps(artifact.data)
    assert any("password=***" in log.message for log in logs)
    assert not any(SECRET in log.message for log in logs)
    OBSERVED["secret_working_url"] = {"artifacts": len(artifacts), "logs": len(logs)}


def test_a_password_passed_to_the_flow_directly_stays_out_of_logs_and_artifacts(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """A deployment or the UI may put the URL in the parameters; everything gdflow writes
    masks it (Prefect itself shows parameters as given: RELIABILITY.md says so)."""
    from gdflow.config.train import TrainConfig
    from gdflow.flows.train import train_flow

    url = f"sqlite:///file:{tmp_path / 'm.db'}?mode=rwc&password={SECRET}&uri=true"
    state = train_flow(config=TrainConfig(database_url=url, epochs=3), return_state=True)
    assert state.is_completed()
    with sqlite3.connect(tmp_path / "m.db") as conn:
        flow_run_id, config = conn.execute("SELECT flow_run_id, config FROM runs").fetchone()
    assert SECRET not in config
    flow_run, artifacts, logs = _flow_run(prefect_api_url, flow_run_id)
    assert SECRET not in flow_run.name
    assert not any(SECRET in json.dumps(a.data) for a in artifacts)
    assert not any(SECRET in log.message for log in logs)


@st.composite
def small_tables(draw: st.DrawFn) -> bytes:
    """Two or three columns of small integers, often with one awkward cell: huge, tiny, NaN,
    inf, blank or text."""
    width = draw(st.integers(min_value=2, max_value=3))
    number = st.integers(min_value=-5, max_value=5).map(str)
    rows = draw(st.lists(st.lists(number, min_size=width, max_size=width), min_size=1, max_size=4))
    awkward = st.sampled_from(["1e300", "1e-310", "nan", "inf", "", "x", "-1e38"])
    if draw(st.booleans()):
        row, column = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, width - 1))
        rows[row][column] = draw(awkward)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([["a", "b", "y"][-width:], *rows])
    return out.getvalue().encode()


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,  # the same examples every time: no replay of earlier failures
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=small_tables())
def test_generated_files_end_to_end(
    content: bytes, gdflow_main: GdflowMain, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The CLI agrees with the loader: a file it refuses fails the run with its message; a file
    it loads trains every epoch, or fails as a recorded run that did not complete."""
    folder = tmp_path_factory.mktemp("generated")
    path = folder / "generated.csv"
    path.write_bytes(content)
    try:
        load_dataset(str(path))
        refused = None
    except GdflowError as exc:
        refused = str(exc)
    url = f"sqlite:///{folder / 'metrics.db'}"
    error, state = train_on(gdflow_main, path, epochs=10, database_url=url)
    OBSERVED["cases"].setdefault("generated", []).append({"error": error, **state})
    if refused is not None:
        assert error is not None, refused
        assert one_line(refused) in error
        assert state == {"runs": 1, "failed": 1, "epoch_rows": 0}
    elif error is None:
        assert state == {"runs": 1, "completed": 1, "epoch_rows": 10}
    else:  # loaded, but -1e38 (fits float32) squares to more than float32 holds
        assert b"-1e38" in content, error
        assert re.search(r"too large to train on|loss of the initial parameters overflows", error)
        assert state["runs"] == 1 and state["epoch_rows"] == 0 and "completed" not in state
