"""A user's own model: a factory `factory(n_features, n_outputs) -> torch.nn.Module`, named by an
entry point of an installed package or, where the training machine allows it, by a raw
`package.module:factory` reference.

Importing a module runs its code, and a run's model is a deployment parameter that whoever can
start a run may set (the UI's run form). So a raw reference is imported only where the machine
that trains allows it (`GDFLOW_ALLOW_MODEL_IMPORTS`, off by default on workers and `gdflow
serve`; `gdflow run` and `gdflow sweep` allow it for the command line's own user). Models of
installed packages are registered under the `gdflow.models` entry-point group, the standard
Python plugin mechanism, and are always allowed: installing a package is the machine owner's act.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

import torch

from gdflow.config.errors import GdflowError
from gdflow.config.train import ALLOW_MODEL_IMPORTS as ALLOW
from gdflow.config.train import MODEL_ENTRY_POINTS as GROUP

#: A raw reference: dotted module path, a colon, dotted attribute path.
REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

Factory = Callable[[int, int], Any]


def imports_allowed() -> bool:
    """Whether this machine imports raw `module:factory` references (GDFLOW_ALLOW_MODEL_IMPORTS)."""
    return os.environ.get(ALLOW, "").strip().lower() in {"1", "true", "yes", "on"}


def registered() -> dict[str, Any]:
    """The installed packages' model entry points, by name."""
    return {point.name: point for point in entry_points(group=GROUP)}


def _refused(reference: str) -> GdflowError:
    return GdflowError(
        f"--model {reference}: this machine does not import raw module references (a run's "
        "model can be set from the UI's run form); register the factory under the "
        f"'{GROUP}' entry points of an installed package and use its name, or set {ALLOW}=1 "
        "on the machine that trains"
    )


def load_factory(reference: str) -> Factory:
    """The factory named by an entry point or (if allowed here) a `module:factory` reference;
    GdflowError naming the reference when it cannot be loaded."""
    points = registered()
    if reference in points:
        try:
            factory = points[reference].load()
        except Exception as exc:  # noqa: BLE001 - any import failure of the plugin
            raise GdflowError(
                f"--model {reference}: its entry point {points[reference].value!r} failed to "
                f"load ({type(exc).__name__}: {exc}); fix or reinstall the package"
            ) from None
    elif REFERENCE.match(reference):
        if not imports_allowed():
            raise _refused(reference)
        factory = _import(reference)
    else:
        known = ", ".join(sorted(points)) or "none installed"
        raise GdflowError(
            f"--model {reference}: no such model; use linear, logistic, softmax, mlp, a "
            f"registered model ({known}) or package.module:factory"
        )
    if not callable(factory):
        raise GdflowError(
            f"--model {reference}: {type(factory).__name__} is not callable; it must be a "
            "function factory(n_features, n_outputs) returning a torch.nn.Module"
        )
    return factory


def _import(reference: str) -> Any:
    """The attribute a `module:attribute` reference names."""
    module_name, attribute = reference.split(":", 1)
    try:
        target: Any = import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the module's own import errors included
        raise GdflowError(
            f"--model {reference}: cannot import {module_name!r} ({type(exc).__name__}: {exc}); "
            "make it importable where the model trains (installed, or on PYTHONPATH)"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise GdflowError(
                f"--model {reference}: {module_name!r} has no attribute {attribute!r}; check "
                "the name after the colon"
            )
        target = getattr(target, part)
    return target


def build_user_module(
    reference: str, n_features: int, outputs: int, *, seed: int, dtype: torch.dtype
) -> torch.nn.Module:
    """The user's module for this data, its initialisation drawn from a generator seeded by
    `seed`, checked: a torch.nn.Module whose output for a batch has the right shape."""
    factory = load_factory(reference)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = factory(n_features, outputs)
        except Exception as exc:  # noqa: BLE001 - the user's code
            raise GdflowError(
                f"--model {reference}: factory({n_features}, {outputs}) raised "
                f"{type(exc).__name__}: {exc}"
            ) from None
    if not isinstance(module, torch.nn.Module):
        raise GdflowError(
            f"--model {reference}: factory({n_features}, {outputs}) returned "
            f"{type(module).__name__}, not a torch.nn.Module"
        )
    module = module.to(dtype)
    check_output_shape(reference, module, n_features, outputs, dtype)
    return module


def check_output_shape(
    reference: str, module: torch.nn.Module, n_features: int, outputs: int, dtype: torch.dtype
) -> None:
    """GdflowError unless the module maps a (2, n_features) batch to (2, outputs)."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, n_features, dtype=dtype))
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise GdflowError(
            f"--model {reference}: its forward pass on a batch of shape (2, {n_features}) raised "
            f"{type(exc).__name__}: {exc}"
        ) from None
    shape = tuple(getattr(out, "shape", ()))
    if shape != (2, outputs):
        raise GdflowError(
            f"--model {reference}: outputs of shape {shape} for a batch of shape "
            f"(2, {n_features}); it must give (batch, {outputs}) — one column per "
            f"{'class' if outputs > 1 else 'output'}"
        )
