"""The champion of a model name, and the rules that change it.

A name's first version becomes its champion. After that a new version (the challenger) is
compared with the champion on the same rows (the new run's validation rows, or its training
rows without a split: a seeded sample of them for a streamed or cluster data set) with the family's
loss, and replaces it under `--promote auto` only when its loss is lower by the relative
`--promote-margin`. A champion that cannot be evaluated on the new rows (other features,
classes or task) is kept, and the reason is stored.

Every change is a compare-and-set on the alias (storage's `set_alias`): when two retrains of a
name finish at once, the second sees the champion the first set, compares again with it, and
the history stays one chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.config.errors import GdflowError
from gdflow.data.dataset import Dataset
from gdflow.registry.aliases import CHAMPION
from gdflow.registry.predictor import Predictor
from gdflow.registry.versions import load_predictor
from gdflow.storage import (
    ModelVersion,
    get_alias,
    get_model_version,
    set_alias,
    set_promotion,
)
from gdflow.storage.retry import in_transaction

#: How many times a decision is taken again after another run changed the champion meanwhile.
MAX_ROUNDS = 20


@dataclass(frozen=True)
class Rows:
    """The rows a challenger is judged on, as its run saw them: features in order, targets as
    values (regression) or class indices into `classes`."""

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    classes: Optional[tuple[Any, ...]]
    split: str


@dataclass(frozen=True)
class Decision:
    """Whether the new version became champion, and why (stored with the version)."""

    promoted: bool
    reason: str
    champion_version: Optional[int] = None
    champion_loss: Optional[float] = None
    challenger_loss: Optional[float] = None
    rows: Optional[str] = None

    def as_record(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """`champion (promoted: validation loss ...)` or `not champion (kept ...)`."""
        return f"{'champion' if self.promoted else 'not champion'} ({self.reason})"


def rows_of(dataset: Dataset) -> Rows:
    """The rows a run's new version is judged on: its validation rows, else its training rows."""
    if dataset.x_val is not None and dataset.y_val is not None:
        x, y, split = dataset.x_val, dataset.y_val, "validation"
    else:
        x, y, split = dataset.x, dataset.y, "train"
        if dataset.stream is not None or dataset.cluster is not None:  # a seeded sample only
            split = f"train sample ({len(y):,} rows)"
    return Rows(
        x=np.asarray(x, dtype=np.float64),
        y=np.asarray(y, dtype=np.float64),
        feature_names=tuple(dataset.feature_names),
        classes=tuple(dataset.classes) if dataset.classes is not None else None,
        split=split,
    )


def champion_rows(
    champion: Predictor, rows: Rows
) -> tuple[Optional[tuple[np.ndarray, np.ndarray]], str]:
    """The rows as the champion reads them (its feature order, its class indices), or None and
    why it cannot be evaluated on them."""
    spec = champion.spec
    missing = [name for name in spec.feature_names if name not in rows.feature_names]
    if missing:
        return None, f"its features differ (no {', '.join(map(repr, missing[:5]))} in the new data)"
    if len(spec.feature_names) != len(rows.feature_names):
        return None, "its features differ (the new data has other feature columns)"
    columns = [rows.feature_names.index(name) for name in spec.feature_names]
    x = rows.x[:, columns]
    if (spec.classes is None) != (rows.classes is None):
        return None, "it does another task (regression against classification)"
    if spec.classes is None or rows.classes is None:
        return (x, rows.y), ""
    if set(map(str, spec.classes)) != set(map(str, rows.classes)):
        return None, (
            f"its classes differ ({', '.join(map(str, spec.classes))} against "
            f"{', '.join(map(str, rows.classes))})"
        )
    position = {str(label): i for i, label in enumerate(spec.classes)}
    mapping = np.array([position[str(label)] for label in rows.classes], dtype=np.int64)
    return (x, mapping[np.asarray(rows.y).astype(np.int64)]), ""


def judge(
    champion: Predictor,
    challenger: Predictor,
    rows: Rows,
    *,
    margin: float,
    champion_version: int,
) -> Decision:
    """Compare the challenger with the champion on the same rows (no database involved)."""
    seen, why_not = champion_rows(champion, rows)
    if seen is None:
        return Decision(
            False,
            f"kept champion version {champion_version}: it cannot be evaluated on the new "
            f"rows, {why_not}",
            champion_version,
        )
    champion_loss = champion.loss(*seen)
    challenger_loss = challenger.loss(rows.x, rows.y)
    better = challenger_loss < champion_loss * (1.0 - margin)
    comparison = (
        f"{rows.split} loss {challenger_loss:.6g} against champion version "
        f"{champion_version}'s {champion_loss:.6g}"
    )
    if not np.isfinite(challenger_loss) or not better:
        needed = f" by the margin {margin:g}" if margin else ""
        return Decision(
            False,
            f"kept champion version {champion_version}: {comparison}, not better{needed}",
            champion_version,
            champion_loss,
            challenger_loss,
            rows.split,
        )
    return Decision(
        True,
        f"promoted: {comparison}",
        champion_version,
        champion_loss,
        challenger_loss,
        rows.split,
    )


def decide(
    engine: Engine,
    *,
    version: ModelVersion,
    challenger: Predictor,
    rows: Rows,
    mode: str,
    margin: float,
    flow_run_id: Optional[str],
    load: Callable[[ModelVersion], Predictor] = load_predictor,
) -> Decision:
    """Take the champion decision for a new version and apply it (compare-and-set, retried
    against whatever champion another run set meanwhile); store it with the version."""
    decision = Decision(False, "not decided: the champion kept changing")
    for _ in range(MAX_ROUNDS):
        current = in_transaction(
            engine, lambda s: get_alias(s, version.name, CHAMPION), what="reading the champion"
        )
        if current is None:
            decision = Decision(True, f"first version of {version.name}: champion")
            reason = "first version"
        elif mode == "never":
            decision = Decision(False, "--promote never: kept the champion", current)
            break
        elif mode == "always":
            decision = Decision(True, "--promote always: promoted", current)
            reason = "promoted"
        else:
            decision = _judged(engine, version, challenger, rows, margin, current, load)
            reason = "promoted"
            if not decision.promoted:
                break
        if _swap(engine, version, current, reason, decision, flow_run_id):
            break
    else:  # every round lost its compare-and-set: the version did not become champion
        decision = Decision(False, "not decided: the champion kept changing")
    in_transaction(
        engine,
        lambda s: set_promotion(s, version_id=version.id, promotion=decision.as_record()),
        what="recording the champion decision",
    )
    return decision


def _judged(
    engine: Engine,
    version: ModelVersion,
    challenger: Predictor,
    rows: Rows,
    margin: float,
    current: int,
    load: Callable[[ModelVersion], Predictor],
) -> Decision:
    """`judge` against the champion numbered `current`; a champion that cannot be loaded is
    kept (and the reason says why)."""
    row = in_transaction(
        engine,
        lambda s: _detached(s, get_model_version(s, version.name, current)),
        what="reading the champion",
    )
    if row is None:
        return Decision(False, f"kept champion version {current}: its record is missing", current)
    try:
        champion = load(row)
    except GdflowError as exc:
        return Decision(False, f"kept champion version {current}: {exc}", current)
    return judge(champion, challenger, rows, margin=margin, champion_version=current)


def _detached(session: Session, row: Optional[ModelVersion]) -> Optional[ModelVersion]:
    if row is not None:
        session.expunge(row)
    return row


def _swap(
    engine: Engine,
    version: ModelVersion,
    current: Optional[int],
    reason: str,
    decision: Decision,
    flow_run_id: Optional[str],
) -> bool:
    """Set the champion from `current` to the new version, unless it changed meanwhile."""

    def write(session: Session) -> bool:
        return set_alias(
            session,
            name=version.name,
            alias=CHAMPION,
            expected=current,
            version=version.version,
            reason=reason,
            detail=decision.reason,
            champion_loss=decision.champion_loss,
            challenger_loss=decision.challenger_loss,
            run_id=version.run_id,
            flow_run_id=flow_run_id,
        )

    return in_transaction(engine, write, what="changing the champion")
