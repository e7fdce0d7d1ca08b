"""The `predict` flow: load-model -> load-input -> predict -> write.

Scores a CSV or Parquet file with a saved model version (a name's champion by default) and
records the batch: the version, the input's fingerprint, rows in and out, the output file.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run as current_run

from gdflow.config.predict import PredictConfig
from gdflow.config.settings import Settings
from gdflow.tasks.prediction import (
    load_input,
    load_model,
    predict_rows,
    record_failed_batch,
    write_predictions,
)


def _config_of(parameters: dict[str, Any]) -> PredictConfig:
    config = parameters.get("config")
    return config if isinstance(config, PredictConfig) else PredictConfig.model_validate(config)


def _flow_run_name() -> str:
    """Name each batch after its model and input file."""
    from pathlib import Path

    from gdflow.config.train import safe_label

    config = _config_of(current_run.parameters)
    return f"predict-{safe_label(config.model)}-{safe_label(Path(config.data).name)}"


@flow(name="predict", flow_run_name=_flow_run_name, validate_parameters=True)
def predict_flow(config: PredictConfig) -> dict[str, Any]:
    """Score `config.data` with `config.model` and write `config.output`; return the batch's
    summary (rows in, out and skipped, the output path, the batch id)."""
    settings = Settings.load()
    flow_run_id = str(current_run.id) if current_run.id else None
    model = load_model(config, database_url=settings.database_url)
    try:
        table = load_input(config)
        scored = predict_rows(config, model, table.frame)
        return write_predictions(
            config,
            model,
            scored,
            database_url=settings.database_url,
            flow_run_id=flow_run_id,
            input_fingerprint=table.fingerprint,
        )
    except Exception as exc:
        record_failed_batch(
            config, model, exc, database_url=settings.database_url, flow_run_id=flow_run_id
        )
        raise
