"""The typed configuration of a prediction batch: `gdflow predict` and the `predict` flow's
parameters (the UI's run form)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gdflow.config.train import delimiter_value

#: The file types a prediction batch reads and writes, by suffix.
TABLE_SUFFIXES = (".csv", ".parquet")


class PredictConfig(BaseModel):
    """Which saved model scores which file, and where the scored rows go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        description="The model: NAME (its champion), NAME@ALIAS or NAME:VERSION (gdflow models)."
    )
    data: str = Field(
        description=(
            "Rows to score (their feature columns): CSV or TSV (optionally compressed), a "
            "Parquet file or folder, local or at an fsspec URL."
        )
    )
    delimiter: Optional[str] = Field(
        default=None,
        description="Column delimiter of a CSV/TSV --data (default: detected from its lines).",
    )
    output: Optional[str] = Field(
        default=None,
        description=(
            "CSV or Parquet file to write: the input's columns plus the prediction (and one "
            "probability column per class). Default: beside the input, <name>.predictions.<ext>."
        ),
    )
    on_invalid: Literal["error", "skip"] = Field(
        default="error",
        description=(
            "Rows with a missing, NaN or non-numeric feature: error (default: nothing is "
            "written), or skip them (the valid rows are written and the skipped ones counted)."
        ),
    )
    model_store: Optional[str] = Field(
        default=None,
        description="Model store to read from instead of the one each version was saved to.",
    )

    @field_validator("output")
    @classmethod
    def _table_file(cls, value: Optional[str]) -> Optional[str]:
        """CSV or Parquet, by suffix."""
        if value is not None and Path(value).suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError(f"must be a .csv or .parquet file, not {Path(value).name!r}")
        return value

    _delimiter = field_validator("delimiter", mode="before")(delimiter_value)

    @property
    def output_path(self) -> str:
        """--output, else `<input stem>.predictions<suffix>` beside the input."""
        if self.output:
            return self.output
        source = Path(self.data.rstrip("/"))
        stem, *suffixes = source.name.split(".")
        parquet = not suffixes or suffixes[0].lower() in ("parquet", "pq")
        return str(source.with_name(f"{stem}.predictions.{'parquet' if parquet else 'csv'}"))

    @model_validator(mode="after")
    def _remote_needs_output(self) -> PredictConfig:
        """Predictions of remote rows are written to a file --output names."""
        if self.output is None and "://" in self.data and not self.data.startswith("file://"):
            raise ValueError(
                f"--data {self.data!r} is remote: give --output, the CSV or Parquet file to write"
            )
        return self
