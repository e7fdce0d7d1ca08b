"""A saved model at work: its outputs and its loss on rows of features, in float64.

Every family goes through its logits (a linear family's x w + b, a network's outputs): a
regression's prediction is the logit itself, a binary classifier's P(class 1) is its sigmoid, a
multiclass classifier's probabilities its softmax. The loss is the family's own (MSE, mean binary
or softmax cross-entropy, unweighted), which is what a champion and a challenger are compared on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional

import numpy as np
import torch

from gdflow.registry.model_file import ModelFile, ModelSpec
from gdflow.training.classification import binary_log_loss, multiclass_log_loss
from gdflow.training.classifier_evaluation import weight_matrix
from gdflow.training.evaluation import design_matrix
from gdflow.training.network_evaluation import outputs_of


@dataclass(frozen=True)
class Predictor:
    """A loaded model: logits, predictions and loss for feature rows in the spec's order."""

    file: ModelFile

    @property
    def spec(self) -> ModelSpec:
        return self.file.spec

    @cached_property
    def _module(self) -> Optional[torch.nn.Module]:
        return self.file.module() if self.spec.network else None

    @cached_property
    def _theta(self) -> Optional[np.ndarray]:
        if self.spec.network:
            return None
        return weight_matrix(
            self.file.parameters(),
            n_features=len(self.spec.feature_names),
            outputs=self.spec.n_outputs,
        )

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(n,) for one output, (n, k) for several."""
        if self._module is not None:
            return outputs_of(self._module, x)
        assert self._theta is not None
        values = design_matrix(x, self.spec.bias) @ self._theta
        return values[:, 0] if values.shape[1] == 1 else values

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """A regression's predictions (n,), P(class 1) (n,) or class probabilities (n, k)."""
        z = self.logits(x)
        if self.spec.task == "regression":
            return z
        from scipy.special import expit, softmax  # a regression's run never loads scipy

        return np.asarray(expit(z) if self.spec.task == "binary" else softmax(z, axis=1))

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """The family's loss on rows (x, y); a classifier's y holds class indices in the order
        of the spec's classes."""
        z = self.logits(x)
        if self.spec.task == "regression":
            return float(np.mean((z - np.asarray(y, dtype=np.float64)) ** 2))
        if self.spec.task == "binary":
            return binary_log_loss(z, y)
        return multiclass_log_loss(z, np.asarray(y).astype(np.int64))

    def labelled(self, x: np.ndarray) -> tuple[list[Any], Optional[np.ndarray]]:
        """Each row's prediction (a value, or the most probable class) and, for a classifier,
        the probability of each class as an (n, k) matrix."""
        out = self.outputs(x)
        if self.spec.task == "regression":
            return out.tolist(), None
        table = np.column_stack([1 - out, out]) if out.ndim == 1 else out
        classes: Sequence[Any] = self.spec.classes or ()
        return [classes[i] for i in np.argmax(table, axis=1).tolist()], table
