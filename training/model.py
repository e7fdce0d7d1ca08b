"""The models `fit` trains, with their data and parameters as tensors on the training device.

`LinearModel` is the seed's y ~ x @ w (+ b) with MSE loss, kept operation for operation. The
classifiers share one shape: logits = x @ W^T (+ b), with W one row per output (one for
`logistic`, one per class for `softmax`), scored by the mean binary cross-entropy of the logit or
the mean cross-entropy of the softmax, each row weighted by its class weight when given.
Parameters are named and flattened W row by row, then b: `w_<feature>`/`b` for one output,
`w_<class>_<feature>`/`b_<class>` for several.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from gdflow.training.fused_cross_entropy import fused_cross_entropy
from gdflow.training.fused_mse import fused_mse
from gdflow.training.statistics_mse import LossPath, MSEStatistics, StatisticsMSE

#: Families whose target is a class index, and their number of outputs given the classes.
CLASSIFIERS = ("logistic", "softmax")


@dataclass(frozen=True)
class TrainingData:
    """The rows to fit, and the held-out rows scored after every epoch (None: no validation).

    For a classifier (`family` logistic or softmax) `y` holds class indices, `n_classes` how
    many classes there are and `weights` an optional weight per training row."""

    x: np.ndarray
    y: np.ndarray
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None
    family: str = "linear"
    n_classes: int = 0
    weights: Optional[np.ndarray] = None
    #: A network family's module (e.g. `mlp`), built for a dtype; None for the linear families.
    network: Optional[Callable[[torch.dtype], torch.nn.Module]] = None

    @property
    def outputs(self) -> int:
        """Outputs of the model: one (regression, binary) or one per class (multiclass)."""
        if self.family == "softmax" or (self.network is not None and self.n_classes > 2):
            return self.n_classes
        return 1

    @property
    def task(self) -> str:
        """regression, binary or multiclass: what the target holds."""
        if self.n_classes == 0:
            return "regression"
        return "binary" if self.family == "logistic" or self.outputs == 1 else "multiclass"


class LinearModel:
    """y ~ x @ w (+ b) with its data on `device`, in float64 for float64 data, else float32.

    Its full-batch loss is computed by one of three paths (`use_loss_path`, chosen by `fit`):
    the seed's ops on every row, the fused pass (`fused_mse`), or the rows' sufficient
    statistics (`statistics_mse`), the validation rows' likewise."""

    #: How `full_loss` and `validation_loss` compute the MSE.
    loss_path: LossPath = "direct"
    _train_statistics: Optional[StatisticsMSE] = None
    _validation_statistics: Optional[StatisticsMSE] = None

    def __init__(self, data: TrainingData, initial: dict[str, float], device: torch.device):
        self.names = tuple(initial)
        self.has_bias = self.names[-1:] == ("b",)
        dtype = torch.float64 if data.x.dtype == np.float64 else torch.float32
        self.x = torch.as_tensor(data.x, dtype=dtype, device=device)
        self.y = torch.as_tensor(data.y, dtype=dtype, device=device)
        self.validation: Optional[tuple[torch.Tensor, ...]] = None
        if data.validation is not None:
            self.validation = tuple(
                torch.as_tensor(a, dtype=dtype, device=device) for a in data.validation
            )
        values = [initial[name] for name in self.names]
        n_weights = len(self.names) - int(self.has_bias)
        self.w = torch.tensor(values[:n_weights], dtype=dtype, device=device, requires_grad=True)
        self.b = torch.tensor(values[n_weights:], dtype=dtype, device=device, requires_grad=True)
        self.params = [self.w, self.b] if self.has_bias else [self.w]

    @property
    def bias(self) -> Optional[torch.Tensor]:
        """The bias tensor, or None for a model without one."""
        return self.b if self.has_bias else None

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The predictions for `inputs`."""
        return inputs @ self.w + self.b if self.has_bias else inputs @ self.w

    def use_loss_path(self, path: LossPath) -> None:
        """Compute full-batch losses by `path`; for `statistics` the training and validation
        rows' statistics are formed here, once (one pass over each, in float64)."""
        self.loss_path = path
        self._train_statistics = self._validation_statistics = None
        if path == "statistics":
            bias = self.has_bias
            self._train_statistics = StatisticsMSE(MSEStatistics.of(self.x, self.y), bias=bias)
            if self.validation is not None:
                x, y = self.validation
                self._validation_statistics = StatisticsMSE(MSEStatistics.of(x, y), bias=bias)

    def full_loss(self) -> torch.Tensor:
        """The MSE on every training row, by the chosen path."""
        if self._train_statistics is not None:
            return self._train_statistics.loss(self.w, self.bias)
        if self.loss_path == "fused":
            return fused_mse(self.x, self.y, self.w, self.bias)
        return ((self(self.x) - self.y) ** 2).mean()

    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        """The MSE on the training rows `index` (a mini-batch)."""
        x, y = self.x.index_select(0, index), self.y.index_select(0, index)  # x[index], faster
        return ((self(x) - y) ** 2).mean()

    def loss(
        self, inputs: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The MSE on rows given as tensors (a streamed batch, `training.streamed`), as
        `batch_loss` computes it; `weights` is a classifier's, never given here."""
        return ((self(inputs) - target) ** 2).mean()

    def validation_loss(self) -> Optional[torch.Tensor]:
        """The MSE on the validation rows (call under torch.no_grad()); None without them."""
        if self.validation is None:
            return None
        if self._validation_statistics is not None:
            return self._validation_statistics.value(self.w, self.bias)
        x, y = self.validation
        return ((self(x) - y) ** 2).mean()


class ClassifierModel:
    """logits = x @ W^T (+ b) with a cross-entropy loss, its data on `device` (float64 for
    float64 data, else float32); W has one row per output.

    Its full-batch loss is computed by the torch ops (`direct`) or, for large data on the CPU,
    by the fused kernel (`fused`: `fused_cross_entropy`, one read of the rows), as `fit`
    chooses (`use_loss_path`)."""

    #: How `full_loss` computes the loss on every training row.
    loss_path: LossPath = "direct"

    def __init__(self, data: TrainingData, initial: dict[str, float], device: torch.device):
        self.names = tuple(initial)
        self.family = data.family
        self.outputs = data.outputs
        d = data.x.shape[1]
        self.has_bias = len(self.names) == self.outputs * (d + 1)
        dtype = torch.float64 if data.x.dtype == np.float64 else torch.float32
        self.x = torch.as_tensor(data.x, dtype=dtype, device=device)
        self.y = self._target(data.y, device)
        self.weights = None
        if data.weights is not None:
            self.weights = torch.as_tensor(data.weights, dtype=dtype, device=device)
        self.validation: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        if data.validation is not None:
            x_val, y_val = data.validation
            self.validation = (
                torch.as_tensor(x_val, dtype=dtype, device=device),
                self._target(y_val, device),
            )
        values = torch.tensor([initial[name] for name in self.names], dtype=dtype)
        n_weights = self.outputs * d
        self.w = values[:n_weights].reshape(self.outputs, d).clone().to(device).requires_grad_()
        self.b = values[n_weights:].clone().to(device).requires_grad_()
        self.params = [self.w, self.b] if self.has_bias else [self.w]

    def _target(self, y: np.ndarray, device: torch.device) -> torch.Tensor:
        """Class indices as the loss takes them: 0/1 floats (logistic) or int64 (softmax)."""
        if self.family == "logistic":
            return torch.as_tensor(y, device=device).to(self.x.dtype)
        return torch.as_tensor(np.asarray(y).astype(np.int64), device=device)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The logits for `inputs`: (rows,) for logistic, (rows, classes) for softmax."""
        logits = inputs @ self.w.T
        if self.has_bias:
            logits = logits + self.b
        return logits[:, 0] if self.family == "logistic" else logits

    def loss(
        self, inputs: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The mean (weighted) cross-entropy of the model on these rows."""
        logits = self(inputs)
        if self.family == "logistic":
            each = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        else:
            each = F.cross_entropy(logits, target, reduction="none")
        return (each * weights).mean() if weights is not None else each.mean()

    @property
    def bias(self) -> Optional[torch.Tensor]:
        """The bias tensor, or None for a model without one."""
        return self.b if self.has_bias else None

    def use_loss_path(self, path: LossPath) -> None:
        """Compute full-batch losses by `path`: `direct` or `fused` (the rows, targets and
        weights are made contiguous for the kernel, once: a copy only if they are not)."""
        if path not in ("direct", "fused"):
            raise ValueError(f"loss path {path!r} is for full-batch linear models only")
        if path == "fused":
            self.x, self.y = self.x.contiguous(), self.y.contiguous()
            self.weights = self.weights.contiguous() if self.weights is not None else None
        self.loss_path = path

    def full_loss(self) -> torch.Tensor:
        """The loss on every training row, by the chosen path."""
        if self.loss_path == "fused":
            return fused_cross_entropy(self.x, self.y, self.w, self.bias, self.weights)
        return self.loss(self.x, self.y, self.weights)

    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        """The loss on the training rows `index`."""
        weights = self.weights.index_select(0, index) if self.weights is not None else None
        x, y = self.x.index_select(0, index), self.y.index_select(0, index)  # x[index], faster
        return self.loss(x, y, weights)

    def validation_loss(self) -> Optional[torch.Tensor]:
        """The unweighted mean cross-entropy on the validation rows (under torch.no_grad())."""
        if self.validation is None:
            return None
        return self.loss(*self.validation, None)

    def validation_accuracy(self) -> Optional[torch.Tensor]:
        """The share of validation rows classified right (under torch.no_grad())."""
        if self.validation is None:
            return None
        x, y = self.validation
        logits = self(x)
        predicted = (logits > 0).to(y.dtype) if self.family == "logistic" else logits.argmax(1)
        return (predicted == y).to(x.dtype).mean()


class NetworkModel(ClassifierModel):
    """A torch module (`mlp`) trained for its task: MSE on its one output (regression), the
    binary cross-entropy of its one logit (binary) or the cross-entropy of its logits
    (multiclass). Parameters are recorded by name while there are at most
    `MAX_RECORDED_PARAMETERS`; larger networks record scalars per epoch and their weights once
    at the end."""

    def __init__(self, data: TrainingData, initial: dict[str, float], device: torch.device):
        assert data.network is not None
        dtype = torch.float64 if data.x.dtype == np.float64 else torch.float32
        self.task = data.task
        self.family = "logistic" if self.task == "binary" else "softmax"
        self.outputs = data.outputs
        self.x = torch.as_tensor(data.x, dtype=dtype, device=device)
        self.module = data.network(dtype).to(device)
        if initial:
            from gdflow.training.mlp import load_flat

            load_flat(self.module, list(initial.values()))
        self.names = tuple(initial) if len(initial) <= MAX_RECORDED_PARAMETERS else ()
        self.y = self._target(data.y, device)
        self.weights = None
        if data.weights is not None:
            self.weights = torch.as_tensor(data.weights, dtype=dtype, device=device)
        self.validation = None
        if data.validation is not None:
            x_val, y_val = data.validation
            self.validation = (
                torch.as_tensor(x_val, dtype=dtype, device=device),
                self._target(y_val, device),
            )
        self.params = list(self.module.parameters())

    def use_loss_path(self, path: LossPath) -> None:
        """A network's loss is always its module's ops (`direct`)."""
        if path != "direct":
            raise ValueError(f"loss path {path!r} is for linear models only, not networks")

    def _target(self, y: np.ndarray, device: torch.device) -> torch.Tensor:
        if self.task == "regression":
            return torch.as_tensor(y, device=device).to(self.x.dtype)
        return super()._target(y, device)

    @property
    def recorded(self) -> list[torch.Tensor]:
        """The parameters recorded every epoch: all of them, or none for a large network."""
        return self.params if self.names else []

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.module(inputs)
        return out[:, 0] if self.outputs == 1 else out

    def loss(
        self, inputs: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor]
    ) -> torch.Tensor:
        if self.task == "regression":
            return ((self(inputs) - target) ** 2).mean()
        return super().loss(inputs, target, weights)

    def validation_accuracy(self) -> Optional[torch.Tensor]:
        return None if self.task == "regression" else super().validation_accuracy()

    def final_values(self) -> dict[str, float]:
        """Every parameter by name (`0.weight[i,j]`, ...), as trained."""
        from gdflow.training.mlp import flat_names, flat_values

        return dict(zip(flat_names(self.module), flat_values(self.module).tolist()))


#: Parameters recorded every epoch, at most: a larger network records its weights once.
MAX_RECORDED_PARAMETERS = 100


def build_model(
    data: TrainingData, initial: dict[str, float], device: torch.device
) -> LinearModel | ClassifierModel:
    """The model of `data.family`, with its data on `device`."""
    if data.network is not None:
        return NetworkModel(data, initial, device)
    if data.family in CLASSIFIERS:
        return ClassifierModel(data, initial, device)
    return LinearModel(data, initial, device)
