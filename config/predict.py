"""The typed configuration of a prediction batch: `gdflow predict` and the `predict` flow's
parameters (the UI's run form)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: The file types a prediction batch reads and writes, by suffix.
TABLE_SUFFIXES = (".csv", ".parquet")


class PredictConfig(BaseModel):
    """Which saved model scores which file, and where the scored rows go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        description="The model: NAME (its champion), NAME@ALIAS or NAME:VERSION (gdflow models)."
    )
    data: str = Field(description="CSV or Parquet file of rows to score (its feature columns).")
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

    @field_validator("data", "output")
    @classmethod
    def _table_file(cls, value: Optional[str]) -> Optional[str]:
        """CSV or Parquet, by suffix."""
        if value is not None and Path(value).suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError(f"must be a .csv or .parquet file, not {Path(value).name!r}")
        return value

    @property
    def output_path(self) -> str:
        """--output, else `<input stem>.predictions<suffix>` beside the input."""
        if self.output:
            return self.output
        source = Path(self.data)
        return str(source.with_name(f"{source.stem}.predictions{source.suffix}"))
