"""Checks before training, end to end (in process, on the session's Prefect server): against
the champion's training data a drifted feature warns (or fails with --on-drift fail) and a
changed schema fails (or warns); a failed check trains nothing and every check is stored."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from tests.processes import GdflowMain

ARGS = ["run", "--data", "drifty.csv", "--bias", "--lr", "0.01", "--epochs", "20"]


def test_schema_and_drift_checks_against_the_champion(
    gdflow_main: GdflowMain, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    frame["y"] = 2 * frame["a"] - frame["b"]
    data = tmp_path / "drifty.csv"
    frame.to_csv(data, index=False)

    def run(*extra: str) -> tuple[int, str]:
        done = gdflow_main([*ARGS, *extra], database_url=url, cwd=tmp_path)
        return done.returncode, (done.stderr.strip().splitlines() or [""])[-1]

    assert run()[0] == 0  # run 1: the champion; nothing to compare with
    frame.assign(a=frame["a"] + 2.0).to_csv(data, index=False)  # a moves by 2 deviations
    # run 2: drift warns, trains (and stays a challenger: the baseline stays version 1's data)
    assert run("--promote", "never")[0] == 0
    code, line = run("--on-drift", "fail")  # run 3
    assert code == 1 and line.startswith(
        "gdflow: error: features drifted from model drifty version"
    )
    assert "a (PSI " in line and "b (" not in line
    frame.assign(c=1.0).to_csv(data, index=False)  # a new column
    code, line = run()  # run 4: the schema changed: fails by default
    assert code == 1 and "schema differs" in line and "new column 'c'" in line
    assert run("--on-schema-change", "warn")[0] == 0  # run 5

    with sqlite3.connect(tmp_path / "metrics.db") as conn:
        rows = conn.execute(
            "SELECT status, epochs_done, data_checks FROM runs ORDER BY id"
        ).fetchall()
    statuses = [(status, epochs) for status, epochs, _ in rows]
    assert statuses == [
        ("completed", 20),
        ("completed", 20),
        ("failed", 0),
        ("failed", 0),
        ("completed", 20),
    ]
    shown = gdflow_main(["show", "2"], database_url=url, cwd=tmp_path).stdout
    assert "data checks        against version 1 (run 1): schema unchanged; drifted: a (PSI" in (
        shown
    )
    checks = [json.loads(c) for _, _, c in rows]
    assert checks[0]["baseline"] is None
    assert checks[1]["drifted"] == ["a"] and checks[1]["drift"]["a"]["mean_shift"] > 1.5
    assert checks[1]["drift"]["b"]["psi"] < 0.05 and "failed" not in checks[1]
    assert checks[2]["failed"].startswith("features drifted")
    assert checks[3]["schema_changes"] == ["new column 'c'"] and "failed" in checks[3]
    assert checks[4]["schema_changes"] == ["new column 'c'"] and "failed" not in checks[4]

    # The alerts reached the Prefect server as events about model `drifty`, numbers in the payload.
    from tests.processes import model_events, wait_for

    def gdflow_events() -> list:  # type: ignore[type-arg]
        events = model_events("drifty")
        found = {e.event for e in events}
        wanted = {
            "gdflow.model.promoted",
            "gdflow.model.rejected",
            "gdflow.data.drift",
            "gdflow.data.schema-changed",
        }
        return events if wanted <= found else []

    events = wait_for(gdflow_events, timeout=60, what="gdflow's events on the Prefect server")
    by_name: dict[str, list] = {}  # type: ignore[type-arg]
    for event in events:
        by_name.setdefault(event.event, []).append(event)
    drift_payloads = [e.payload for e in by_name["gdflow.data.drift"]]
    assert any(
        p["features"]["a"]["mean_shift"] > 1.5 and p["baseline"]["version"] == 1
        for p in drift_payloads
    )
    assert any(
        p["changes"] == ["new column 'c'"] and p["failed"]
        for p in (e.payload for e in by_name["gdflow.data.schema-changed"])
    )
    (first,) = [e.payload for e in by_name["gdflow.model.promoted"] if e.payload["version"] == 1]
    assert first["promoted"] is True and first["run_id"] == 1
    rejected = [e.payload for e in by_name["gdflow.model.rejected"]]
    assert any(p["version"] == 2 and "--promote never" in p["reason"] for p in rejected)
    assert all(e.resource.get("gdflow.model.name") == "drifty" for e in events)


def test_a_champion_without_recorded_statistics(gdflow_main: GdflowMain, tmp_path: Path) -> None:
    """A champion saved before data checks existed: the checks say so and training goes on;
    with --on-drift fail, which cannot be honoured, the run fails in one line, nothing trains."""
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    (tmp_path / "old.csv").write_text("a,y\n" + "".join(f"{i},{2 * i}\n" for i in range(30)))
    args = ["run", "--data", "old.csv", "--lr", "0.001", "--epochs", "5"]
    assert gdflow_main(args, database_url=url, cwd=tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "metrics.db") as conn:  # as a run before revision 0006
        conn.execute("UPDATE runs SET data_profile = NULL, data_checks = NULL")
    assert gdflow_main(args, database_url=url, cwd=tmp_path).returncode == 0
    done = gdflow_main([*args, "--on-drift", "fail"], database_url=url, cwd=tmp_path)
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "gdflow: error: cannot check the data: model old version 1 (the champion) has no "
            "recorded statistics"
        )
    )
    with sqlite3.connect(tmp_path / "metrics.db") as conn:
        rows = conn.execute("SELECT status, epochs_done, data_checks FROM runs").fetchall()
    assert [(s, e) for s, e, _ in rows] == [("completed", 5), ("completed", 5), ("failed", 0)]
    assert "no recorded statistics" in json.loads(rows[1][2])["reason"]
