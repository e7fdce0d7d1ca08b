"""A multilayer perceptron (`--model mlp`) as a torch module, and its parameters by name.

Layers: Linear(d, h1), activation, ..., Linear(h_last, outputs), built with a seeded generator
so a run's initial weights depend only on `--seed`. Its parameters are named and flattened in
the module's order (`0.weight[i,j]`, `0.bias[i]`, ...), which is how they are recorded and
stored; `load_flat` puts such values back into a module of the same architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: Activations between hidden layers, by their `--activation` name.
ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "gelu": torch.nn.GELU}
#: Hidden layer widths of an MLP when --hidden is not given.
DEFAULT_HIDDEN = (64,)


def build_mlp(
    n_features: int,
    outputs: int,
    *,
    hidden: Sequence[int],
    activation: str,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Sequential:
    """The MLP with PyTorch's default initialisation drawn from a generator seeded by `seed`
    (the global random state is left as it was)."""
    widths = [n_features, *hidden, outputs]
    layers: list[torch.nn.Module] = []
    with torch.random.fork_rng(devices=[]):  # Linear() draws from the global generator
        for i, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
            layers.append(torch.nn.Linear(width_in, width_out, dtype=dtype))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
    module = torch.nn.Sequential(*layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module:
            if isinstance(layer, torch.nn.Linear):
                bound = 1.0 / layer.in_features**0.5  # PyTorch's default: U(-1/sqrt(in), ...)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    return module


@dataclass(frozen=True)
class MLPShape:
    """An MLP's architecture and seed: called with a dtype, it builds the seeded network
    (`build_mlp`). Plain values, so it pickles: a Dask worker builds the network from it and
    loads the driver's parameters into it."""

    n_features: int
    outputs: int
    hidden: tuple[int, ...]
    activation: str
    seed: int = 0

    def __call__(self, dtype: torch.dtype) -> torch.nn.Sequential:
        """The network in `dtype`, with its seeded initial weights."""
        return build_mlp(
            self.n_features,
            self.outputs,
            hidden=self.hidden,
            activation=self.activation,
            seed=self.seed,
            dtype=dtype,
        )


def flat_names(module: torch.nn.Module) -> list[str]:
    """Every scalar parameter's name, in the module's order: `0.weight[i,j]`, `0.bias[i]`."""
    names = []
    for name, tensor in module.named_parameters():
        for index in np.ndindex(*tensor.shape):
            names.append(f"{name}[{','.join(map(str, index))}]")
    return names


def flat_values(module: torch.nn.Module) -> np.ndarray:
    """Every scalar parameter's value in float64, in the order of `flat_names`."""
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
        return flat.double().cpu().numpy()


def load_flat(module: torch.nn.Module, values: Sequence[float] | np.ndarray) -> torch.nn.Module:
    """Put values (in the order of `flat_names`) into the module's parameters; return it."""
    flat = torch.as_tensor(np.asarray(values, dtype=np.float64))
    start = 0
    with torch.no_grad():
        for tensor in module.parameters():
            count = tensor.numel()
            tensor.copy_(flat[start : start + count].reshape(tensor.shape))
            start += count
    if start != len(flat):
        raise ValueError(f"{len(flat)} values for a module of {start} parameters")
    return module


def fold_standardization(
    values: np.ndarray,
    *,
    first_width: int,
    outputs: int,
    mean: np.ndarray,
    scale: np.ndarray,
    y_mean: float,
) -> np.ndarray:
    """Rows of flat MLP parameters trained on standardised features x' = (x - mean) / scale
    (and a target centred by y_mean) -> the same network on the original x and y: the first
    layer's weights (first_width x d, stored first) divided by the scale, its bias (next) less
    the weights times the mean, and y_mean added to the output layer's bias (stored last)."""
    flat = np.array(values, dtype=np.float64, copy=True)
    d = scale.shape[0]
    n_weights = first_width * d
    weights = flat[..., :n_weights].reshape(*flat.shape[:-1], first_width, d) / scale
    flat[..., n_weights : n_weights + first_width] -= weights @ mean
    flat[..., :n_weights] = weights.reshape(*flat.shape[:-1], n_weights)
    if y_mean:
        flat[..., -outputs:] += y_mean
    return flat
