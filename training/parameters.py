"""The model's parameters by name: how they are named after the features, and where they start."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional, Union

import torch


def parameter_names(
    feature_names: Sequence[str], *, bias: bool, classes: Optional[Sequence[object]] = None
) -> list[str]:
    """Name the model's parameters: `w` for one feature, `w_<feature>` for several, then `b`;
    with `classes` (softmax: one output per class) `w_<class>_<feature>`, then `b_<class>`."""
    if classes is not None:
        weights = [f"w_{label}_{name}" for label in classes for name in feature_names]
        return [*weights, *(f"b_{label}" for label in classes)] if bias else weights
    names = ["w"] if len(feature_names) == 1 else [f"w_{name}" for name in feature_names]
    return [*names, "b"] if bias else names


def initial_parameters(
    names: Sequence[str], *, init: Union[float, Literal["random"]], seed: int
) -> dict[str, float]:
    """Initial values: every weight `init` and the bias 0, or N(0, 1) draws seeded by `seed`."""
    if init == "random":
        generator = torch.Generator().manual_seed(seed)
        draws = torch.randn(len(names), generator=generator, dtype=torch.float64)
        return {name: float(v) for name, v in zip(names, draws.tolist())}
    return {name: (0.0 if is_bias(name) else float(init)) for name in names}


def is_bias(name: str) -> bool:
    """Whether a parameter name is a bias: `b`, or `b_<class>` of a softmax model."""
    return name == "b" or name.startswith("b_")
