"""A user's model through a deployment run on a real Prefect server: `gdflow serve` on a machine
where a package registers a model under the `gdflow.models` entry points. A run that names the
registered model trains it; a run whose form names a raw `module:factory` is refused in one line
(this machine does not set GDFLOW_ALLOW_MODEL_IMPORTS), recorded as failed."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np

from tests.processes import PrefectServer, start_background, stop_process, venv_command, wait_for
from tests.training.test_user_models import PLUGIN

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _install_plugin(folder: Path) -> None:
    """The test plugin as pip would install it: the module and its dist-info entry points."""
    (folder / "gdflow_test_models.py").write_text(PLUGIN)
    info = folder / "gdflow_test_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gdflow-test-models\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[gdflow.models]\ntiny = gdflow_test_models:good\n")


def test_a_deployment_run_trains_a_registered_model_and_refuses_a_raw_reference(
    own_prefect_server: PrefectServer, tmp_path: Path
) -> None:
    server = own_prefect_server
    plugins = tmp_path / "site"
    plugins.mkdir()
    _install_plugin(plugins)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(80, 2))
    rows = "\n".join(f"{a!r},{b!r},{float(np.sin(3 * a) + b)!r}" for a, b in x.tolist())
    data = tmp_path / "wave.csv"
    data.write_text("a,b,y\n" + rows + "\n")
    database = tmp_path / "metrics.db"
    env = {
        **server.env,
        "GDFLOW_DATABASE_URL": f"sqlite:///{database}",
        "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("GDFLOW_ALLOW_MODEL_IMPORTS", None)
    log = tmp_path / "serve.log"
    process = start_background(
        [venv_command("gdflow"), "serve", "--interval", "3600", "--log-every", "0"],
        env=env,
        cwd=tmp_path,
        log=log,
    )
    try:

        def on_demand():  # type: ignore[no-untyped-def]
            assert process.poll() is None, log.read_text()[-3000:]
            with server.client() as client:
                try:
                    return client.read_deployment_by_name("train/gdflow-on-demand")
                except Exception:  # noqa: BLE001 - not registered yet
                    return None

        deployment = wait_for(on_demand, timeout=120, what="gdflow serve's deployments")
        configs = [
            {"data": str(data), "model": "tiny", "epochs": 40, "lr": 0.05},
            {"data": str(data), "model": "gdflow_test_models:good", "epochs": 40},
        ]
        with server.client() as client:
            ids = [
                client.create_flow_run_from_deployment(
                    deployment.id, parameters={"config": config}
                ).id
                for config in configs
            ]

        def finished():  # type: ignore[no-untyped-def]
            with server.client() as client:
                runs = [client.read_flow_run(i) for i in ids]
            return runs if all(r.state and r.state.type.value in FINAL for r in runs) else None

        registered, raw = wait_for(finished, timeout=300, what="both flow runs to end")
    finally:
        stop_process(process)

    assert registered.state.type.value == "COMPLETED", log.read_text()[-3000:]
    assert raw.state.type.value == "FAILED"
    with sqlite3.connect(database) as conn:
        rows = conn.execute(
            "SELECT flow_run_id, model, status, epochs_done, error FROM runs ORDER BY id"
        ).fetchall()
    by_flow_run = {row[0]: row[1:] for row in rows}
    assert by_flow_run[str(registered.id)][:3] == ("tiny", "completed", 40)
    model, status, epochs, error = by_flow_run[str(raw.id)]
    assert (status, epochs) == ("failed", 0)
    assert error.startswith("--model gdflow_test_models:good: this machine does not import")
    assert "'gdflow.models' entry points" in error and "\n" not in error
