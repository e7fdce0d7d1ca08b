"""A trained model as a file: its weights as safetensors tensors, its description as metadata.

safetensors holds tensors and a string-to-string header, nothing executable: loading a model
never runs code from the file (a pickle would). The header's `gdflow` entry is the `ModelSpec`
as JSON: the family, task, features in order, target, classes and architecture, which is all
that is needed to rebuild the model and check that data fits it.

Tensors: the linear families store `weight` (outputs x features) and, with an intercept,
`bias` (outputs); a network stores its module's `state_dict()` in float64.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from gdflow.config.errors import GdflowError
from gdflow.training.classifier_evaluation import weight_matrix
from gdflow.training.mlp import build_mlp, flat_names, flat_values, load_flat
from gdflow.training.parameters import parameter_names
from gdflow.training.user_models import build_user_module

#: The header entry that names the format, and its version.
FORMAT = "gdflow-model/1"
#: Families whose parameters are one matrix of weights and a bias per output.
LINEAR_FAMILIES = ("linear", "logistic", "softmax")


@dataclass(frozen=True)
class ModelSpec:
    """What a saved model is: enough to rebuild it and to check that data fits it."""

    family: str
    task: str
    feature_names: tuple[str, ...]
    target_name: Optional[str]
    classes: Optional[tuple[Any, ...]]
    bias: bool
    n_outputs: int
    hidden: Optional[tuple[int, ...]] = None
    activation: Optional[str] = None

    @property
    def network(self) -> bool:
        """Whether the model is a network (an MLP or a user's module), not a linear family."""
        return self.family not in LINEAR_FAMILIES

    def architecture(self) -> dict[str, Any]:
        """The architecture as stored with the version: sizes, bias, layers."""
        return {
            "n_features": len(self.feature_names),
            "n_outputs": self.n_outputs,
            "bias": self.bias,
            "hidden": list(self.hidden) if self.hidden is not None else None,
            "activation": self.activation,
        }

    def to_json(self) -> str:
        fields = asdict(self)
        fields["feature_names"] = list(self.feature_names)
        fields["classes"] = list(self.classes) if self.classes is not None else None
        fields["hidden"] = list(self.hidden) if self.hidden is not None else None
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        fields = json.loads(text)
        fields["feature_names"] = tuple(fields["feature_names"])
        for key in ("classes", "hidden"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        return cls(**fields)

    def parameter_names(self) -> list[str]:
        """A linear family's parameter names, as training names them."""
        per_class = self.classes if self.family == "softmax" else None
        return parameter_names(self.feature_names, bias=self.bias, classes=per_class)

    def build_network(self, *, seed: int = 0) -> torch.nn.Module:
        """An untrained float64 module of this architecture (a user's factory is imported
        under the same rules as for training)."""
        n_features = len(self.feature_names)
        if self.family == "mlp":
            assert self.hidden is not None and self.activation is not None
            return build_mlp(
                n_features,
                self.n_outputs,
                hidden=self.hidden,
                activation=self.activation,
                seed=seed,
                dtype=torch.float64,
            )
        return build_user_module(
            self.family, n_features, self.n_outputs, seed=seed, dtype=torch.float64
        )


def to_bytes(spec: ModelSpec, params: dict[str, float]) -> bytes:
    """The safetensors file of a trained model, from its parameters as training names them
    (original units)."""
    if spec.network:
        module = load_flat(spec.build_network(), list(params.values()))
        tensors = {name: t.detach().contiguous() for name, t in module.state_dict().items()}
    else:
        theta = weight_matrix(params, n_features=len(spec.feature_names), outputs=spec.n_outputs)
        tensors = {
            "weight": torch.from_numpy(np.ascontiguousarray(theta[: len(spec.feature_names)].T))
        }
        if spec.bias:
            tensors["bias"] = torch.from_numpy(np.ascontiguousarray(theta[-1]))
    return save_tensors(tensors, metadata={"format": FORMAT, "gdflow": spec.to_json()})


@dataclass(frozen=True)
class ModelFile:
    """A model read back from its file: its spec and tensors."""

    spec: ModelSpec
    tensors: dict[str, torch.Tensor]

    def parameters(self) -> dict[str, float]:
        """The model's parameters named as training names them (its final_params)."""
        if self.spec.network:
            module = self.module()
            return dict(zip(flat_names(module), flat_values(module).tolist()))
        weight = self.tensors["weight"].double().numpy()
        values = weight.ravel().tolist()
        if self.spec.bias:
            values += self.tensors["bias"].double().numpy().tolist()
        return dict(zip(self.spec.parameter_names(), values))

    def module(self) -> torch.nn.Module:
        """A network's float64 module with the saved weights."""
        module = self.spec.build_network()
        module.load_state_dict(self.tensors)
        return module.eval()


def from_bytes(data: bytes, *, what: str) -> ModelFile:
    """Read a model file; a file that is not a gdflow model is a one-line error naming `what`."""
    try:
        tensors = load_tensors(data)
        metadata = _metadata(data)
    except (SafetensorError, ValueError, KeyError) as exc:
        raise GdflowError(f"{what}: its file is not a safetensors model file ({exc})") from None
    if metadata.get("format") != FORMAT or "gdflow" not in metadata:
        raise GdflowError(
            f"{what}: its file was not written by gdflow (format {metadata.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    return ModelFile(spec=ModelSpec.from_json(metadata["gdflow"]), tensors=tensors)


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's `__metadata__`: an 8-byte little-endian length, then JSON."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    return dict(header.get("__metadata__") or {})
