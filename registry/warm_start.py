"""`--init champion`: start training from the weights of the model name's champion.

Only a champion of the same model can seed a run: the same family, task, features in the
same order, classes, intercept and layers. Anything else is a one-line error that says what
differs, because a silently reshaped or reordered start would be a wrong start.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gdflow.config.errors import GdflowError
from gdflow.registry.model_file import ModelSpec
from gdflow.registry.versions import ModelRef, describe, load_predictor, resolve

#: The parts of a spec that must match, and how a message names each.
_COMPARED = {
    "family": "model",
    "task": "task",
    "feature_names": "features",
    "classes": "classes",
    "bias": "intercept",
    "n_outputs": "outputs",
    "hidden": "hidden layers",
    "activation": "activation",
}


def differences(champion: ModelSpec, spec: ModelSpec) -> list[str]:
    """What differs between the champion's spec and the run's, as `features ['a'] vs ['b']`."""
    found = []
    for field, label in _COMPARED.items():
        theirs, ours = getattr(champion, field), getattr(spec, field)
        if _shown(theirs) != _shown(ours):
            found.append(f"{label} {_shown(theirs)} (champion) vs {_shown(ours)} (this run)")
    return found


def _shown(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def champion_parameters(
    engine: Engine, *, name: str, spec: ModelSpec, standardize: bool
) -> tuple[dict[str, float], int]:
    """The champion's parameters (as training names them) and its version number."""
    if spec.network and standardize:
        raise GdflowError(
            "--init champion with --standardize works for linear, logistic and softmax models "
            "only (a network's saved weights have the standardisation folded in); drop one"
        )
    with Session(engine) as session:
        try:
            version = resolve(session, ModelRef(name))
        except GdflowError as exc:
            raise GdflowError(f"--init champion: {exc}") from None
        session.expunge(version)
    champion = load_predictor(version).file
    found = differences(champion.spec, spec)
    if found:
        raise GdflowError(
            f"--init champion: {describe(version)} (the champion) does not fit this run: "
            f"{'; '.join(found)}; drop --init champion or save under another --name"
        )
    return champion.parameters(), version.version
