"""Feature standardisation fitted on the training rows, and parameters back to original units.

Training runs on x' = (x - mu) / sigma and y' = y - y_mean (mu and y_mean only with an
intercept), so the loss is the same number in both spaces. A model x' v + c equals
x w + b with w = v / sigma and b = y_mean + c - sum(mu * v / sigma).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from gdflow.config.errors import features_too_large
from gdflow.data.dataset import Dataset
from gdflow.training.model import TrainingData
from gdflow.training.records import EpochChunk
from gdflow.training.result import TrainResult


@dataclass(frozen=True)
class Standardizer:
    """Per-feature centre and scale, and the target's centre."""

    mean: np.ndarray
    scale: np.ndarray
    y_mean: float
    bias: bool

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, *, bias: bool) -> Standardizer:
        """Fit on training rows: centre and divide by the standard deviation with a bias, else
        divide by the root mean square (no centring is possible without an intercept)."""
        x64 = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
            scale = x64.std(axis=0) if bias else np.sqrt(np.mean(x64**2, axis=0))
            mean = x64.mean(axis=0) if bias else np.zeros(x64.shape[1])
        if not (np.isfinite(scale).all() and np.isfinite(mean).all()):
            raise features_too_large(float(np.abs(x64).max()))
        scale[~(scale > 0)] = 1.0
        y_mean = float(np.mean(y, dtype=np.float64)) if bias else 0.0
        return cls(mean=mean, scale=scale, y_mean=y_mean, bias=bias)

    def transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The standardised features and centred target, in the input's dtype."""
        dtype = x.dtype
        xs = ((np.asarray(x, np.float64) - self.mean) / self.scale).astype(dtype)
        ys = (np.asarray(y, np.float64) - self.y_mean).astype(dtype)
        return np.ascontiguousarray(xs), np.ascontiguousarray(ys)

    def to_scaled(self, params: dict[str, float]) -> dict[str, float]:
        """Parameters in original units -> the same model in standardised units."""
        names = list(params)
        weights = np.array([params[n] for n in names if n != "b"], dtype=np.float64)
        scaled = dict(zip([n for n in names if n != "b"], (weights * self.scale).tolist()))
        if "b" in params:
            scaled["b"] = float(params["b"] - self.y_mean + self.mean @ weights)
        return scaled

    def to_original(self, values: np.ndarray, *, has_bias: bool) -> np.ndarray:
        """Rows of standardised parameters (weights, then b) -> rows in original units."""
        values = np.asarray(values, dtype=np.float64)
        n_weights = self.scale.shape[0]
        weights = values[..., :n_weights] / self.scale
        if not has_bias:
            return weights
        b = self.y_mean + values[..., n_weights] - weights @ self.mean
        return np.concatenate([weights, b[..., None]], axis=-1)


@dataclass(frozen=True)
class TrainingProblem:
    """The arrays and initial parameters training sees, and the way back to original units."""

    x: np.ndarray
    y: np.ndarray
    initial: dict[str, float]
    validation: Optional[tuple[np.ndarray, np.ndarray]]
    standardizer: Optional[Standardizer]

    @classmethod
    def prepare(
        cls, dataset: Dataset, initial: dict[str, float], *, standardize: bool
    ) -> TrainingProblem:
        """Standardise on the training rows when asked; otherwise train on the data as is."""
        validation = None
        if dataset.x_val is not None and dataset.y_val is not None:
            validation = (dataset.x_val, dataset.y_val)
        if not standardize:
            return cls(dataset.x, dataset.y, dict(initial), validation, None)
        scaler = Standardizer.fit(dataset.x, dataset.y, bias="b" in initial)
        x, y = scaler.transform(dataset.x, dataset.y)
        if validation is not None:
            validation = scaler.transform(*validation)
        return cls(x, y, scaler.to_scaled(initial), validation, scaler)

    @property
    def data(self) -> TrainingData:
        """The rows training fits, and its validation rows, as `fit` takes them."""
        return TrainingData(self.x, self.y, self.validation)

    def to_original(self, chunk: EpochChunk) -> EpochChunk:
        """A chunk with its parameters in the data's original units."""
        if self.standardizer is None:
            return chunk
        params = self.standardizer.to_original(chunk.params, has_bias="b" in chunk.names)
        return replace(chunk, params=params)

    def result_to_original(self, result: TrainResult) -> TrainResult:
        """A result with its final parameters in the data's original units."""
        if self.standardizer is None:
            return result
        names = list(result.final_params)
        values = np.array([result.final_params[n] for n in names])
        original = self.standardizer.to_original(values, has_bias="b" in names)
        return replace(result, final_params=dict(zip(names, original.tolist())))
