"""`--skip-unchanged` end to end (in process, on the session's Prefect server): a retrain whose
data and training options equal the model name's last completed run is recorded `skipped`,
pointing at it, and trains nothing; any change to the data or to what is trained retrains.
Every run keeps its data's fingerprint, shown by `gdflow runs` and `gdflow show`."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from tests.processes import GdflowMain

ARGS = ["run", "--data", "d.csv", "--bias", "--lr", "0.1", "--epochs", "50", "--skip-unchanged"]


def _runs(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as conn:
        return conn.execute(
            "SELECT id, status, stop_reason, epochs_done, skipped_for, data_hash, model_name "
            "FROM runs ORDER BY id"
        ).fetchall()


def test_an_unchanged_retrain_is_skipped_and_any_change_retrains(
    gdflow_main: GdflowMain, tmp_path: Path
) -> None:
    database = tmp_path / "metrics.db"
    url = f"sqlite:///{database}"
    data = tmp_path / "d.csv"
    data.write_text("a,y\n" + "".join(f"{i / 10},{3 * i / 10 + 1}\n" for i in range(40)))
    digest = "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest()

    def run(*extra: str) -> str:
        done = gdflow_main([*ARGS, *extra], database_url=url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    run()  # run 1: nothing to compare with, trains
    out = run("--log-every", "5", "--promote", "always")  # options that only steer gdflow
    assert "run 2 skipped: the data and the training options are those of run 1" in out
    run("--lr", "0.05")  # run 3: another learning rate trains another model
    with data.open("a") as handle:
        handle.write("4.0,13.0\n")
    run("--lr", "0.05")  # run 4: new rows
    run("--lr", "0.05")  # run 5: skipped, as run 4's twin
    done = gdflow_main(["run", *ARGS[1:-1]], database_url=url, cwd=tmp_path)
    assert done.returncode == 0  # run 6: without --skip-unchanged (a manual run) always trains

    runs = _runs(database)
    assert [(r[1], r[3], r[4]) for r in runs] == [
        ("completed", 50, None),
        ("skipped", 0, 1),
        ("completed", 50, None),
        ("completed", 50, None),
        ("skipped", 0, 4),
        ("completed", 50, None),
    ]
    assert runs[1][2] == "unchanged"
    assert {r[6] for r in runs} == {"d"}
    assert runs[0][5] == runs[1][5] == runs[2][5] == digest != runs[3][5]
    with sqlite3.connect(database) as conn:  # a skipped run saves no model; versions point at data
        versions = conn.execute(
            "SELECT run_id, data_fingerprint FROM model_versions ORDER BY version"
        ).fetchall()
    assert [v[0] for v in versions] == [1, 3, 4, 6]
    assert versions[0][1] == digest

    shown = gdflow_main(["show", "2", "--format", "json"], database_url=url, cwd=tmp_path)
    details = json.loads(shown.stdout)
    assert details["skipped_for"] == 1 and details["model_name"] == "d"
    assert details["data_fingerprint"] == {
        "sha256": digest,
        "bytes": len("a,y\n" + "".join(f"{i / 10},{3 * i / 10 + 1}\n" for i in range(40))),
        "rows": 40,
        "columns": [{"name": "a", "type": "double"}, {"name": "y", "type": "double"}],
        "delimiter": ",",
    }
    text = gdflow_main(["show", "2"], database_url=url, cwd=tmp_path).stdout
    assert f"data fingerprint  {digest} (40 rows" in text and "skipped for       run 1" in text
    table = gdflow_main(["runs"], database_url=url, cwd=tmp_path).stdout.splitlines()
    assert " data " in table[0]
    assert sum(digest[7:15] in line for line in table) == 3  # runs 1, 2, 3

    # Each skip is an event about the model, pointing at the run it matched.
    from tests.processes import model_events, wait_for

    def skipped_events() -> list:  # type: ignore[type-arg]
        skips = [e for e in model_events("d") if e.event == "gdflow.run.skipped"]
        pairs = {(e.payload["run_id"], e.payload["same_as"]) for e in skips}
        return sorted(pairs) if {(2, 1), (5, 4)} <= pairs else []

    assert wait_for(skipped_events, timeout=60, what="the skipped runs' events")
