"""Resolve a device string (auto, cpu, cuda, cuda:N, mps) to one torch can use, or say why not."""

from __future__ import annotations

import torch

from gdflow.config.errors import GdflowError


def _mps_available() -> bool:
    """True when Apple's Metal backend is built into torch and usable."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str) -> torch.device:
    """Return the torch device for `spec`; `auto` picks cuda, then mps, then cpu."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise GdflowError(
                "device 'mps' is not available (no Apple Metal GPU visible to torch); "
                "use --device cpu or --device auto"
            )
        return torch.device("mps")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
            raise GdflowError(
                f"device {spec!r} is not available (torch {torch.__version__}: {build}); "
                "use --device cpu or --device auto"
            )
        device = torch.device(spec)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise GdflowError(
                f"device {spec!r} is not available: {count} CUDA device(s) visible "
                f"(cuda:0..cuda:{count - 1}); pick one of them or --device auto"
            )
        return device
    raise GdflowError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
