"""Model versions: a trained model saved under its name, and a saved one found and loaded.

Saving writes the file to the model store first and records the version after, so a version
record never points at a missing file (a record that fails leaves an unreferenced file, never
the reverse). Loading resolves `NAME`, `NAME@ALIAS` or `NAME:VERSION`, reads the file from the
store the version was saved to and verifies its size and checksum.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from gdflow.config.errors import GdflowError
from gdflow.config.settings import Settings
from gdflow.config.train import TrainConfig
from gdflow.data.dataset import Dataset
from gdflow.registry.aliases import CHAMPION
from gdflow.registry.model_file import ModelSpec, from_bytes, to_bytes
from gdflow.registry.predictor import Predictor
from gdflow.registry.store import ModelStore, StoredFile, store_options_from_env
from gdflow.storage import (
    ModelVersion,
    add_model_version,
    get_alias,
    get_model_version,
    latest_model_version,
)
from gdflow.training.mlp import DEFAULT_HIDDEN

#: `NAME`, `NAME@ALIAS` or `NAME:VERSION`.
_REFERENCE = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99})(?:@(?P<alias>[A-Za-z][\w-]{0,49})|:(?P<version>\d+))?"
)
#: The splits whose metrics a version keeps.
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class ModelRef:
    """A model version named as users name it: by number, by alias, or the champion."""

    name: str
    version: Optional[int] = None
    alias: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """`NAME` (its champion), `NAME@ALIAS` or `NAME:VERSION`; GdflowError otherwise."""
        match = _REFERENCE.fullmatch(text.strip())
        if match is None:
            raise GdflowError(
                f"--model {text!r}: name a model as NAME, NAME@ALIAS or NAME:VERSION "
                "(e.g. toy, toy@champion, toy:3); gdflow models lists them"
            )
        version = match["version"]
        return cls(
            name=match["name"],
            version=int(version) if version is not None else None,
            alias=match["alias"] if version is None else None,
        )

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias or CHAMPION}"


def resolve(session: Session, ref: ModelRef) -> ModelVersion:
    """The version a reference names; GdflowError naming what is missing."""
    if ref.version is not None:
        version = get_model_version(session, ref.name, ref.version)
        if version is None:
            raise GdflowError(_missing(session, ref.name, f"has no version {ref.version}"))
        return version
    alias = ref.alias or CHAMPION
    number = get_alias(session, ref.name, alias)
    if number is None:
        raise GdflowError(_missing(session, ref.name, f"has no alias {alias!r}"))
    version = get_model_version(session, ref.name, number)
    if version is None:  # an alias always names a recorded version: the schema keeps them
        raise GdflowError(f"model {ref.name}@{alias} names version {number}, which is missing")
    return version


def _missing(session: Session, name: str, what: str) -> str:
    latest = latest_model_version(session, name)
    if latest is None:
        return f"no model named {name!r}; train one with gdflow run --name {name} (gdflow models)"
    return f"model {name!r} {what}; its versions are 1 to {latest.version} (gdflow models {name})"


def spec_of(
    config: TrainConfig,
    feature_names: Sequence[str],
    classes: Optional[Sequence[Any]],
    target_name: Optional[str] = None,
) -> ModelSpec:
    """What the model a run trains is: family, task, features, classes, architecture."""
    multiclass = classes is not None and config.resolved_task == "multiclass"
    return ModelSpec(
        family=config.model,
        task=config.resolved_task,
        feature_names=tuple(feature_names),
        target_name=target_name,
        classes=tuple(classes) if classes is not None else None,
        bias=config.bias,
        n_outputs=len(classes) if multiclass and classes is not None else 1,
        hidden=(tuple(config.hidden or DEFAULT_HIDDEN) if config.model == "mlp" else None),
        activation=config.activation if config.model == "mlp" else None,
    )


def model_store(settings: Settings) -> ModelStore:
    """The model store the settings name, with options from $GDFLOW_MODEL_STORE_OPTIONS."""
    return ModelStore(settings.model_store, storage_options=store_options_from_env(os.environ))


def store_at(url: str) -> ModelStore:
    """The model store a version was saved to."""
    return ModelStore(url, storage_options=store_options_from_env(os.environ))


def save_model_file(
    store: ModelStore, *, name: str, run_id: int, spec: ModelSpec, params: dict[str, float]
) -> StoredFile:
    """Write a run's model to the store under a key of its own (atomic; nothing is recorded)."""
    key = f"{name}/run-{run_id}-{uuid.uuid4().hex[:12]}.safetensors"
    return store.put(key, to_bytes(spec, params))


def version_fields(
    *,
    spec: ModelSpec,
    stored: StoredFile,
    store: ModelStore,
    run_id: int,
    flow_run_id: Optional[str],
    scheduled_at: Optional[datetime],
    data_fingerprint: Optional[str],
    evaluation: Optional[Mapping[str, Any]],
    standardization: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """The columns of a version record (all but its name and number)."""
    return {
        "run_id": run_id,
        "flow_run_id": flow_run_id,
        "scheduled_at": scheduled_at,
        "family": spec.family,
        "task": spec.task,
        "architecture": spec.architecture(),
        "feature_names": list(spec.feature_names),
        "target_name": spec.target_name,
        "classes": list(spec.classes) if spec.classes is not None else None,
        "standardization": standardization,
        "data_fingerprint": data_fingerprint,
        "metrics": split_metrics(evaluation),
        "path": stored.key,
        "store": store.url,
        "size": stored.size,
        "checksum": stored.checksum,
    }


def split_metrics(evaluation: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The metrics per split of an evaluation, JSON-safe (no NaN or infinity)."""
    metrics: dict[str, Any] = {}
    for split in SPLITS:
        values = (evaluation or {}).get(split)
        if isinstance(values, Mapping):
            metrics[split] = {str(k).lower(): _finite(v) for k, v in values.items()}
    return metrics


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def describe(version: ModelVersion) -> str:
    """`model toy version 3`, as messages name a version."""
    return f"model {version.name} version {version.version}"


def load_predictor(version: ModelVersion, *, store_url: Optional[str] = None) -> Predictor:
    """The version's model, read from the store it was saved to (or `store_url`) and verified;
    GdflowError naming the version when its file is missing, corrupt or not a gdflow model."""
    what = describe(version)
    stored = StoredFile(key=version.path, size=version.size, checksum=version.checksum)
    data = store_at(store_url or version.store).get(stored, what=what)
    return Predictor(from_bytes(data, what=what))


def standardization_of(
    config: TrainConfig, dataset: Dataset, parameter_names: Iterable[str]
) -> Optional[dict[str, Any]]:
    """The standardisation statistics of a run's training rows (None without --standardize);
    kept for reference: the saved weights are already in the data's original units. Centred
    only when the model has a bias parameter, as training standardised them (a network's
    layers have no parameter named a bias: its rows are divided by their root mean square)."""
    if not config.standardize:
        return None
    from gdflow.training.parameters import is_bias
    from gdflow.training.preprocessing import Standardizer

    bias = any(is_bias(name) for name in parameter_names)
    labels = dataset.classes is not None

    rows_elsewhere = dataset.stream if dataset.stream is not None else dataset.cluster
    if rows_elsewhere is not None:  # `x` is a sample: every row's, from the merged moments
        from gdflow.training.streamed import standardizer_of

        scaler = standardizer_of(rows_elsewhere, bias=bias, labels=labels)
    else:
        scaler = Standardizer.fit(dataset.x, dataset.y, bias=bias, labels=labels)
    return {
        "mean": scaler.mean.tolist(),
        "scale": scaler.scale.tolist(),
        "target_mean": scaler.y_mean,
    }


def record_version(session: Session, *, name: str, fields: dict[str, Any]) -> ModelVersion:
    """The run's version: recorded now, or the one an earlier attempt of the same run already
    recorded (a retried `persist` must not add a second version for one run)."""
    existing = version_of_run(session, name=name, run_id=fields["run_id"])
    if existing is not None:
        return existing
    return add_model_version(session, name=name, **fields)


def version_of_run(session: Session, *, name: str, run_id: int) -> Optional[ModelVersion]:
    """The version of `name` a run saved, if any."""
    return session.scalars(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.run_id == run_id)
    ).first()


def predictor_of(spec: ModelSpec, params: dict[str, float]) -> Predictor:
    """The model a run trained, exactly as its file stores it."""
    return Predictor(from_bytes(to_bytes(spec, params), what="the trained model"))
