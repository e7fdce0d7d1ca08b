"""A user's model through a deployment run on a real Prefect server: the session's `gdflow serve`
runs on a machine where a package registers the model `tiny` under the `gdflow.models` entry
points. A run that names the registered model trains it; a run whose form names a raw
`module:factory` is refused in one line (that machine does not set GDFLOW_ALLOW_MODEL_IMPORTS)
and recorded as failed."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from tests.processes import Served, wait_for

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.mark.extended  # CI: the same in process (tests/training/test_user_models.py)
def test_a_deployment_run_trains_a_registered_model_and_refuses_a_raw_reference(
    served: Served,
) -> None:
    server = served.server
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(80, 2))
    rows = "\n".join(f"{a!r},{b!r},{float(np.sin(3 * a) + b)!r}" for a, b in x.tolist())
    data = served.workdir / "wave.csv"
    data.write_text("a,b,y\n" + rows + "\n")
    configs = [
        {"data": str(data), "model": "tiny", "epochs": 40, "lr": 0.05},
        {"data": str(data), "model": "gdflow_test_models:good", "epochs": 40},
    ]
    with server.client() as client:
        deployment = client.read_deployment_by_name("train/gdflow-on-demand")
        ids = [
            client.create_flow_run_from_deployment(deployment.id, parameters={"config": c}).id
            for c in configs
        ]

    def finished():  # type: ignore[no-untyped-def]
        with server.client() as client:
            runs = [client.read_flow_run(i) for i in ids]
        return runs if all(r.state and r.state.type.value in FINAL for r in runs) else None

    registered, raw = wait_for(finished, timeout=300, what="both flow runs to end")
    log = (served.workdir / "serve.log").read_text()[-3000:]
    assert registered.state.type.value == "COMPLETED", log
    assert raw.state.type.value == "FAILED", log
    with sqlite3.connect(served.database) as conn:
        rows_by_run = conn.execute(
            "SELECT flow_run_id, model, status, epochs_done, error FROM runs "
            f"WHERE flow_run_id IN ('{registered.id}', '{raw.id}')"
        ).fetchall()
    by_flow_run = {row[0]: row[1:] for row in rows_by_run}
    assert by_flow_run[str(registered.id)][:3] == ("tiny", "completed", 40)
    _model, status, epochs, error = by_flow_run[str(raw.id)]
    assert (status, epochs) == ("failed", 0)
    assert error.startswith("--model gdflow_test_models:good: this machine does not import")
    assert "'gdflow.models' entry points" in error and "\n" not in error
