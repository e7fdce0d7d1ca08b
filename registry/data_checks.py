"""Checks before training: the new data against the data the name's champion was trained on.

The baseline is the champion version's run: its file's columns and types (its fingerprint), its
features' profile and its classes. The schema check lists changed columns and classes; the
drift check gives each feature's mean shift and PSI against the baseline (`data.drift`). What
the run does about them (`--on-schema-change`, `--on-drift`) is decided here and stored on the
run whatever the outcome; a failing check is a one-line error naming the columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from sqlalchemy.orm import Session

from gdflow.config.errors import GdflowError
from gdflow.config.train import TrainConfig
from gdflow.data.drift import drift, drifted, schema_changes
from gdflow.registry.aliases import CHAMPION
from gdflow.storage import get_alias, get_model_version, get_run


@dataclass(frozen=True)
class Baseline:
    """The champion's training data, as its run recorded it."""

    version: int
    run_id: int
    columns: list[dict[str, Any]]
    profile: dict[str, Any]
    classes: Optional[list[Any]]


def baseline(session: Session, name: str) -> Optional[Baseline]:
    """The champion of `name`'s training data; None when the name has no champion. A champion
    whose run has no recorded statistics (saved before data checks existed, or its run
    deleted) is a Baseline without a profile."""
    number = get_alias(session, name, CHAMPION)
    version = get_model_version(session, name, number) if number is not None else None
    if version is None:
        return None
    run = get_run(session, run_id=version.run_id) if version.run_id else None
    if run is None or not run.data_profile or not run.data_fingerprint:
        return Baseline(version.version, version.run_id or 0, [], {}, None)
    return Baseline(
        version=version.version,
        run_id=run.id,
        columns=list(run.data_fingerprint.get("columns") or []),
        profile=dict(run.data_profile),
        classes=list(version.classes) if version.classes is not None else None,
    )


def check(
    config: TrainConfig,
    *,
    base: Optional[Baseline],
    columns: list[dict[str, Any]],
    x: np.ndarray,
    feature_names: tuple[str, ...],
    classes: Optional[tuple[Any, ...]],
) -> dict[str, Any]:
    """The checks of the new data as stored on the run: baseline, schema changes, drift per
    feature, the drifted features, and `failed` (a one-line reason) when a check fails."""
    if base is None:
        return {"baseline": None, "reason": "no champion to compare with"}
    if not base.profile:
        missing = (
            f"model {config.model_name} version {base.version} (the champion) has no recorded "
            "statistics of its training data (saved before data checks existed)"
        )
        unchecked: dict[str, Any] = {"baseline": None, "reason": missing}
        if config.on_drift == "fail":  # drift asked to be enforced: it cannot be
            unchecked["failed"] = (
                f"cannot check the data: {missing}; retrain once with --on-drift warn to record "
                "them, or promote a newer version"
            )
        return unchecked
    changes = schema_changes(
        base.columns, columns, classes_before=base.classes, classes_after=classes
    )
    found = drift(base.profile, x, feature_names)
    moved = drifted(found, psi=config.drift_psi, mean_shift=config.drift_mean_shift)
    record: dict[str, Any] = {
        "baseline": {"version": base.version, "run_id": base.run_id},
        "schema_changes": changes,
        "drift": found,
        "drifted": moved,
        "thresholds": {"psi": config.drift_psi, "mean_shift": config.drift_mean_shift},
    }
    against = (
        f"model {config.model_name} version {base.version}'s training data (run {base.run_id})"
    )
    if changes and config.on_schema_change == "fail":
        record["failed"] = (
            f"the data's schema differs from {against}: {'; '.join(changes[:5])}; fix the "
            "file, train under a new --name, or pass --on-schema-change warn"
        )
    elif moved and config.on_drift == "fail":
        shown = ", ".join(
            f"{name} (PSI {found[name]['psi']:.3g}, mean shift {found[name]['mean_shift']:.3g})"
            for name in moved[:5]
        )
        record["failed"] = (
            f"features drifted from {against}: {shown}; check the data, or pass "
            "--on-drift warn to train on it"
        )
    return record


def raise_if_failed(record: dict[str, Any]) -> None:
    """GdflowError with the check's one-line reason when it failed."""
    if record.get("failed"):
        raise GdflowError(record["failed"])
