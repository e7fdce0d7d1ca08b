"""The typed training configuration: CLI flags, the flow parameter and the UI's run form."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class TrainConfig(BaseModel):
    """Everything one training run needs; the defaults reproduce the seed tutorial exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: Optional[str] = Field(
        default=None,
        description="CSV or Parquet file to train on; empty for the seed's toy data (y = 2x).",
    )
    features: Optional[list[str]] = Field(
        default=None,
        description=(
            "Feature columns of --data, comma-separated (default: every column but the target)."
        ),
    )
    target: Optional[str] = Field(
        default=None,
        description="Target column of --data (default: the last column).",
    )
    bias: bool = Field(default=False, description="Fit an intercept b as well as the weights.")
    init: Union[float, Literal["random"]] = Field(
        default=1.0,
        description="Initial value of every weight, or 'random' for N(0, 1) draws from --seed.",
    )
    lr: float = Field(default=0.01, gt=0, description="Learning rate of torch.optim.SGD.")
    epochs: int = Field(default=100, ge=1, description="Maximum number of epochs.")
    tolerance: Optional[float] = Field(
        default=None,
        gt=0,
        description="Stop once the loss changes by less than this between epochs.",
    )
    device: str = Field(
        default="cpu",
        description="Where tensors live: auto, cpu, cuda, cuda:N or mps.",
    )
    dtype: Literal["float32", "float64"] = Field(
        default="float32", description="Floating-point precision of the tensors."
    )
    seed: int = Field(default=0, ge=0, description="Seed of torch's generator (random init).")
    predict: list[list[float]] = Field(
        default_factory=lambda: [[5.0]],
        description=(
            "Inputs to predict after training: numbers, or comma-separated rows for "
            "several features."
        ),
    )
    log_every: int = Field(
        default=10, ge=0, description="Log a progress line every N epochs (0: never)."
    )
    database_url: Optional[str] = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the metrics database "
            "(default: $GDFLOW_DATABASE_URL or ~/.gdflow/gdflow.db)."
        ),
    )

    @field_validator("data", "target", "database_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        """Treat empty strings (an empty UI form field) as not given."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("features", mode="before")
    @classmethod
    def _split_features(cls, value: Any) -> Any:
        """Accept 'a,b' as well as ['a', 'b'] (or ['a,b'] from the command line)."""
        if value is None:
            return None
        items = [value] if isinstance(value, str) else list(value)
        names = [part.strip() for item in items for part in str(item).split(",")]
        names = [name for name in names if name]
        return names or None

    @field_validator("init", mode="before")
    @classmethod
    def _parse_init(cls, value: Any) -> Any:
        """Accept numbers given as strings (CLI) and 'random' in any case."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "random":
                return "random"
            try:
                return float(text)
            except ValueError:
                raise ValueError("must be a number or 'random'") from None
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: Any) -> Any:
        """Accept only device strings torch understands; availability is checked at run time."""
        text = str(value).strip().lower()
        if not _DEVICE_PATTERN.match(text):
            raise ValueError("must be one of auto, cpu, cuda, cuda:N or mps")
        return text

    @field_validator("predict", mode="before")
    @classmethod
    def _rows(cls, value: Any) -> Any:
        """Turn 5, '5', [5, 7.5] or ['1,2', '3,4'] into a list of input rows."""
        items = value if isinstance(value, (list, tuple)) else [value]
        rows: list[Any] = []
        for item in items:
            if isinstance(item, str):
                rows.append([part for part in item.replace(" ", "").split(",") if part])
            elif isinstance(item, (list, tuple)):
                rows.append(list(item))
            else:
                rows.append([item])
        return rows

    @field_validator("lr", "tolerance", "init")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        """NaN and infinity are not usable step sizes, tolerances or initial weights."""
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _data_options_need_data(self) -> TrainConfig:
        """--features and --target only mean something with --data."""
        if self.data is None and (self.features or self.target):
            raise ValueError("--features and --target need --data PATH")
        return self

    @property
    def data_source(self) -> str:
        """A short description of where the data comes from (for names, tags and the database)."""
        return self.data if self.data else "toy:y=2x"

    def run_name(self) -> str:
        """A flow-run name that tells runs apart in a list: data, lr, device, epochs."""
        stem = Path(self.data).stem if self.data else "toy"
        return f"{stem}-lr{self.lr:g}-{self.device}-{self.epochs}ep"
