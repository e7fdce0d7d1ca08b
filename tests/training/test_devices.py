"""Device strings: cpu always works, auto falls back, an absent accelerator is an error."""

from __future__ import annotations

import pytest
import torch

from gdflow.config.errors import GdflowError
from gdflow.training.devices import resolve_device

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


def test_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(not (NO_CUDA and NO_MPS), reason="an accelerator is present")
def test_auto_falls_back_to_cpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is available here")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_missing_cuda_is_an_error_not_a_fallback(spec: str) -> None:
    with pytest.raises(GdflowError, match=f"device '{spec}' is not available.*--device cpu"):
        resolve_device(spec)


@pytest.mark.skipif(not NO_MPS, reason="MPS is available here")
def test_missing_mps_is_an_error() -> None:
    with pytest.raises(GdflowError, match="device 'mps' is not available"):
        resolve_device("mps")


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_cuda_index_beyond_the_visible_devices() -> None:
    with pytest.raises(GdflowError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_unknown_device() -> None:
    with pytest.raises(GdflowError, match="unknown device"):
        resolve_device("tpu")
