"""A short soak end to end: `gdflow serve` on a real Prefect server, 5 scheduled runs, one
SIGKILL of the serving process, one Prefect server restart and one full disk, each mid-run,
then every invariant checked (about 2 minutes on two quiet cores; the full soak is
`make soak`, which CI does not run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.processes import migrated_prefect_database

#: Where the short soak leaves its report, databases and logs (CI keeps test-artifacts/).
REPORT = REPO / "test-artifacts" / "soak-short"
FAULTS = ["kill", "server", "db-full"]


# CI: each fault has its own test (tests/flows/test_faults.py, test_lease_storage.py,
# tests/storage/test_retry.py) and a schedule's runs execute in tests/flows/test_deployments.py.
@pytest.mark.extended
@pytest.mark.alone
@pytest.mark.process
def test_a_short_soak_keeps_every_invariant() -> None:
    command = [sys.executable, "-m", "benchmarks.soak", "--runs", "5", "--seed", "3"]
    command += ["--epochs", "500", "--variant", "serve", "--faults", ",".join(FAULTS)]
    command += ["--prefect-database", str(migrated_prefect_database())]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GDFLOW_"))}
    soak = subprocess.Popen(
        [*command, "--report", str(REPORT)],
        cwd=REPO,
        env={**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        stdout, stderr = soak.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        soak.terminate()  # SIGTERM: the soak stops every process it started
        stdout, stderr = soak.communicate(timeout=120)
    output = stdout + stderr
    assert soak.returncode == 0, output[-4000:]
    summary = stdout.strip().splitlines()[-1]
    # At least the 5 runs asked for: a run the schedule starts while the soak waits for a
    # moment between runs to stop the serving process ends too, and counts.
    found = re.match(r"soak ok: serve (\d+) runs, 3 faults ", summary)
    assert found and int(found.group(1)) >= 5, output[-4000:]
    (report,) = json.loads((REPORT / "soak.json").read_text())["variants"]
    checks = {check["name"]: check for check in report["checks"]}
    assert {
        "runs",
        "faults",
        "flow runs final",
        "records agree",
        "epochs once",
        "one champion",
        "model files",
        "concurrency",
        "integrity",
        "no unplanned exits",
    } <= set(checks)
    assert all(check["ok"] for check in checks.values()), checks
    assert sorted(i["kind"] for i in report["injections"]) == sorted(FAULTS)
    assert report["facts"]["gdflow_runs_by_status"].get("running", 0) == 0
    # The killed run is recorded crashed on both sides (gdflow serve's restart tells Prefect).
    assert report["facts"]["gdflow_runs_by_status"].get("crashed", 0) >= 1
    assert report["facts"]["flow_runs_by_state"].get("Running", 0) == 0
    assert report["samples"] and report["database_bytes_per_run"] is not None
