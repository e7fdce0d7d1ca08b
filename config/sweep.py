"""Learning-rate sweeps as plain values: the sweep config, its learning rates, the best run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Optional, Protocol, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gdflow.config.train import TrainConfig

#: The learning rates of a sweep given no --lrs or --lr-range.
DEFAULT_LRS = (0.001, 0.01, 0.1)
#: Most runs one sweep may start.
MAX_RUNS = 100
#: Significant digits learning rates are rounded to (0.01, not 0.009999999999999998).
_LR_DIGITS = 12
#: A learning rate: a finite number above zero.
PositiveLr = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: Comparison columns before the final parameters, in table order.
COLUMNS = (
    "run",
    "lr",
    "status",
    "stop reason",
    "epochs",
    "final loss",
    "best loss",
    "val loss",
)
#: Every comparison column that is not a parameter: COLUMNS and a classifier's accuracy.
SUMMARY_COLUMNS = (*COLUMNS, "val accuracy")
#: Final parameters the comparison shows, at most (a softmax or a network has many more: their
#: runs are compared by their losses and accuracy; `gdflow show RUN` has every parameter).
MAX_COMPARED_PARAMETERS = 8


class SweepConfig(BaseModel):
    """One training configuration and the learning rates to train it with, side by side."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: TrainConfig = Field(
        default_factory=TrainConfig,
        description="The training configuration every run shares; its lr is replaced by each "
        "learning rate of the sweep.",
    )
    lrs: Optional[list[PositiveLr]] = Field(
        default=None,
        min_length=1,
        description="Learning rates to try, e.g. [0.001, 0.01, 0.1] (give this or lr_range).",
    )
    lr_range: Optional[tuple[PositiveLr, PositiveLr, Annotated[int, Field(ge=2)]]] = Field(
        default=None,
        description="[min, max, count]: count learning rates log-spaced from min to max, both "
        "included (give this or lrs).",
    )
    max_concurrency: int = Field(
        default=2,
        ge=1,
        description="How many runs train at the same time, at most (with runner 'dask' and "
        "no dask_address: the local cluster's number of worker processes).",
    )
    runner: Literal["threads", "dask"] = Field(
        default="threads",
        description="Where the runs train: 'threads' in the sweep's own process, or 'dask' in "
        "Dask worker processes (a local cluster, or the scheduler at dask_address).",
    )
    dask_address: Optional[str] = Field(
        default=None,
        description="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786; its "
        "workers train the runs (implies runner 'dask').",
    )

    @model_validator(mode="before")
    @classmethod
    def _address_implies_dask(cls, data: Any) -> Any:
        """A scheduler address without a runner means runner 'dask'."""
        if isinstance(data, dict) and data.get("dask_address") and data.get("runner") is None:
            return {**data, "runner": "dask"}
        return data

    @field_validator("dask_address", mode="before")
    @classmethod
    def _check_address(cls, value: Any) -> Any:
        """Blank means none; otherwise [scheme://]host:port, e.g. tcp://10.0.0.5:8786."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str) or scheduler_host(value) is None:
            raise ValueError(
                "give the Dask scheduler as [tcp://]HOST:PORT, e.g. tcp://10.0.0.5:8786"
            )
        return value.strip()

    @model_validator(mode="after")
    def _one_source(self) -> SweepConfig:
        """Exactly one of lrs and lr_range, max > min, and no more than MAX_RUNS learning rates."""
        if (self.lrs is None) == (self.lr_range is None):
            raise ValueError(
                "give exactly one of lrs (--lrs LR [LR ...]) or lr_range (--lr-range MIN MAX COUNT)"
            )
        if self.lr_range is not None and self.lr_range[1] <= self.lr_range[0]:
            low, high, _ = self.lr_range
            raise ValueError(
                f"the maximum of lr_range (--lr-range MIN MAX COUNT) must be greater than its "
                f"minimum, got {low:g} and {high:g}"
            )
        if self.dask_address is not None and self.runner != "dask":
            raise ValueError("dask_address (--dask-address) needs runner 'dask' (--runner dask)")
        count = self.lr_range[2] if self.lr_range is not None else len(self.lrs or [])
        if count > MAX_RUNS:
            raise ValueError(f"a sweep runs at most {MAX_RUNS} learning rates, got {count}")
        return self


def scheduler_host(address: str) -> Optional[str]:
    """The host of a Dask scheduler address ([scheme://]host:port), or None if malformed."""
    text = address.strip()
    if not text or any(c.isspace() for c in text):
        return None
    try:
        parts = urlsplit(text if "://" in text else f"tcp://{text}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        return None
    return parts.hostname


def _round_lr(value: float) -> float:
    """The learning rate in 12 significant digits, so log spacing lands on round numbers."""
    return float(f"{value:.{_LR_DIGITS}g}")


def learning_rates(sweep: SweepConfig) -> list[float]:
    """The sweep's learning rates, ascending and without duplicates."""
    if sweep.lr_range is not None:
        low, high, count = sweep.lr_range
        ratio = math.log(high / low)
        values = [low * math.exp(ratio * i / (count - 1)) for i in range(count)]
        values[0], values[-1] = low, high
    else:
        values = list(sweep.lrs or [])
    return sorted({_round_lr(v) for v in values})


def sweep_configs(sweep: SweepConfig) -> list[TrainConfig]:
    """One validated TrainConfig per learning rate, the base config otherwise unchanged."""
    base = sweep.base.model_dump()
    return [TrainConfig.model_validate({**base, "lr": lr}) for lr in learning_rates(sweep)]


def sweep_name(sweep: SweepConfig) -> str:
    """A short name for the sweep and its flow run, e.g. lr-sweep-3-runs."""
    return f"lr-sweep-{len(learning_rates(sweep))}-runs"


class RunLike(Protocol):
    """What the sweep reads of a recorded run (storage.Run satisfies it)."""

    @property
    def id(self) -> int: ...

    @property
    def status(self) -> str: ...

    @property
    def stop_reason(self) -> Optional[str]: ...

    @property
    def epochs_done(self) -> int: ...

    @property
    def final_loss(self) -> Optional[float]: ...

    @property
    def final_params(self) -> Optional[dict[str, float]]: ...

    @property
    def best_loss(self) -> Optional[float]: ...

    @property
    def config(self) -> dict[str, Any]: ...

    @property
    def evaluation(self) -> Optional[dict[str, Any]]: ...


R = TypeVar("R", bound=RunLike)


def _finite(value: Any) -> Optional[float]:
    """The value as a float when it is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def validation_loss(run: RunLike) -> Optional[float]:
    """The run's validation loss, when it has one: the MSE of a regression, the log loss of a
    classifier (evaluation["validation"]["mse"] or ["log_loss"])."""
    validation = (run.evaluation or {}).get("validation")
    if not isinstance(validation, Mapping):
        return None
    return _finite(validation.get("mse", validation.get("log_loss")))


def validation_accuracy(run: RunLike) -> Optional[float]:
    """A classifier's validation accuracy, when it has one."""
    validation = (run.evaluation or {}).get("validation")
    return _finite(validation.get("accuracy")) if isinstance(validation, Mapping) else None


def training_loss(run: RunLike) -> Optional[float]:
    """The run's final training loss: the evaluation's train_loss, else the last epoch's loss."""
    evaluation = run.evaluation or {}
    if "train_loss" in evaluation:
        return _finite(evaluation["train_loss"])
    return _finite(run.final_loss)


def run_lr(run: RunLike) -> float:
    """The learning rate a run trained with (from its stored config)."""
    value = run.config.get("lr")
    return float(value) if isinstance(value, (int, float)) else math.nan


def best_run(runs: Sequence[R]) -> Optional[R]:
    """The completed run with the lowest validation loss, else training loss; ties: smaller lr."""
    scored: list[tuple[int, float, float, int, R]] = []
    for run in runs:
        if run.status != "completed":
            continue
        val, train = validation_loss(run), training_loss(run)
        rank, loss = (0, val) if val is not None else (1, train) if train is not None else (2, 0.0)
        scored.append((rank, loss, run_lr(run), run.id, run))
    if not scored:
        return None
    return min(scored, key=lambda item: item[:4])[-1]


def comparison_rows(runs: Sequence[RunLike]) -> list[dict[str, Any]]:
    """One row per run, by learning rate: COLUMNS (val accuracy for classifiers), then every
    run's final parameters when there are at most MAX_COMPARED_PARAMETERS."""
    names: list[str] = []
    for run in runs:
        names += [name for name in (run.final_params or {}) if name not in names]
    if len(names) > MAX_COMPARED_PARAMETERS:
        names = []
    accuracy = any(validation_accuracy(run) is not None for run in runs)
    rows: list[dict[str, Any]] = []
    for run in sorted(runs, key=lambda r: (run_lr(r), r.id)):
        params = run.final_params or {}
        row: dict[str, Any] = {
            "run": run.id,
            "lr": run_lr(run),
            "status": run.status,
            "stop reason": run.stop_reason,
            "epochs": run.epochs_done,
            "final loss": _finite(run.final_loss),
            "best loss": _finite(run.best_loss),
            "val loss": validation_loss(run),
        }
        if accuracy:
            row["val accuracy"] = validation_accuracy(run)
        row.update({name: _finite(params.get(name)) for name in names})
        rows.append(row)
    return rows


def failure_message(sweep_id: int, rows: Sequence[Mapping[str, Any]], errors: Sequence[str]) -> str:
    """One line on why no run of a sweep completed and what to change."""
    statuses = [row.get("status") for row in rows]
    if statuses and all(status == "diverged" for status in statuses):
        low = min(float(row["lr"]) for row in rows)
        return (
            f"sweep {sweep_id}: no run completed: every learning rate diverged (the smallest "
            f"was {low:g}); lower them, e.g. --lrs {low / 100:g} {low / 10:g}"
        )
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted({str(s) for s in statuses}))
    first = next((e for e in errors if e), "no error message")
    return (
        f"sweep {sweep_id}: no run completed ({counts or 'none recorded'}); "
        f"first error: {first.splitlines()[0] if first.strip() else first}"
    )
