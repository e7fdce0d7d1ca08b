"""The linear model y ~ x @ w (+ b): its data and parameters as tensors on the training device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True)
class TrainingData:
    """The rows to fit, and the held-out rows scored after every epoch (None: no validation)."""

    x: np.ndarray
    y: np.ndarray
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None


class LinearModel:
    """y ~ x @ w (+ b) with its data on `device`, in float64 for float64 data, else float32."""

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

    def validation_loss(self) -> Optional[torch.Tensor]:
        """The MSE on the validation rows (call under torch.no_grad()); None without them."""
        if self.validation is None:
            return None
        x, y = self.validation
        return ((self(x) - y) ** 2).mean()
