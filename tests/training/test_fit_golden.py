"""`fit` against recorded outputs: every chunk and verdict, bit for bit, across its options.

The golden file was written by the loop before it was split into modules (issue 11), and
`statistics_full_batch` by the first loop with the sufficient-statistics path (issue 15); any
change to the numbers, the chunking, the stop rules or the verdict texts shows up here.
Regenerate only for an intended change: `python -m tests.training.test_fit_golden --write`.

The last bits depend on the CPU: MKL takes other code paths on other vendors' CPUs, and torch
dispatches to the widest instruction set there is (on an Intel AVX-512 machine 12 of the 16
cases differ from the AMD recording, by 1e-16 to 3e-6 relative, and one near-tie moves a best
epoch). So `fit_cases.json` is the reference: a run equal to it passes. Any other run must agree
with it within `RTOL` (every epoch, name, verdict and stop the same), and where this platform
has its own recording (`fit_cases.<vendor>-<instruction set>-<threads>.json`, written by
`--write-platform` against the current reference) it must equal that bit for bit too.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch

from gdflow.data.dataset import load_toy
from gdflow.training.loop import Hooks, fit
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization
from gdflow.training.records import EpochChunk

GOLDEN = Path(__file__).with_name("golden") / "fit_cases.json"
CPU = torch.device("cpu")
#: How far another platform's floats may be from the reference's, relative to the largest value
#: of their series (so that values near zero, such as a converged run's gradient norms, compare).
RTOL = 1e-5


def _linear(n: int, features: int, dtype: type, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = x @ np.linspace(1.5, -2.0, features) + 0.7 + rng.normal(scale=0.1, size=n)
    return x.astype(dtype), y.astype(dtype)


def _toy() -> tuple[np.ndarray, np.ndarray]:
    data = load_toy("float32")
    return data.x, data.y


def _stop_after(epochs: int) -> Callable[[], Optional[str]]:
    calls = {"n": 0}

    def should_stop() -> Optional[str]:
        calls["n"] += 1
        return "SIGTERM" if calls["n"] >= epochs else None

    return should_stop


#: name -> (data, initial, optimization, validation rows, chunk_epochs, stop after n epochs)
CASES: dict[str, dict[str, Any]] = {
    "seed": {"data": "toy", "opt": {"lr": 0.01, "epochs": 100}, "chunk": 7},
    "seed_one_chunk": {"data": "toy", "opt": {"lr": 0.01, "epochs": 100}, "chunk": 4096},
    "momentum_step_validation": {
        "data": "linear64",
        "opt": {
            "lr": 0.05,
            "epochs": 300,
            "momentum": 0.9,
            "nesterov": True,
            "lr_schedule": "step",
            "lr_step_epochs": 40,
            "lr_gamma": 0.7,
        },
        "validation": 40,
        "chunk": 50,
    },
    "adam_cosine_minibatch": {
        "data": "linear32",
        "opt": {"lr": 0.02, "epochs": 60, "optimizer": "adam", "lr_schedule": "cosine"},
        "batch": {"batch_size": 16, "seed": 3},
        "validation": 30,
        "chunk": 9,
    },
    "converged": {
        "data": "toy",
        "opt": {"lr": 0.01, "epochs": 100, "tolerance": 1e-4, "patience": 3},
        "chunk": 11,
    },
    "plateaued": {
        "data": "toy",
        "opt": {"lr": 0.01, "epochs": 200, "plateau_epochs": 10},
        "chunk": 13,
    },
    "plateaued_tolerance": {
        "data": "linear64",
        "opt": {
            "lr": 0.01,
            "epochs": 2000,
            "tolerance": 1e-3,
            "patience": 10**6,
            "plateau_epochs": 5,
        },
        "chunk": 64,
    },
    "diverged_loss_limit": {"data": "toy", "opt": {"lr": 1.0, "epochs": 100}, "chunk": 2},
    "diverged_nonfinite_loss": {
        "data": "toy",
        "opt": {"lr": 1.0, "epochs": 100, "diverge_factor": float("inf")},
        "chunk": 5,
    },
    "diverged_nonfinite_params": {"data": "toy", "opt": {"lr": 1e38, "epochs": 10}, "chunk": 5},
    "diverged_first_epoch": {
        "data": "toy",
        "initial": 1e30,
        "opt": {"lr": 0.01, "epochs": 10},
        "chunk": 5,
    },
    "cancelled": {"data": "toy", "opt": {"lr": 0.01, "epochs": 100}, "chunk": 10, "stop": 23},
    "cancelled_at_the_end": {
        "data": "toy",
        "opt": {"lr": 0.01, "epochs": 30},
        "chunk": 100,
        "stop": 30,
    },
    "fused_full_batch": {"data": "large32", "opt": {"lr": 0.1, "epochs": 6}, "chunk": 4},
    "statistics_full_batch": {
        "data": "large32",
        "opt": {"lr": 0.1, "epochs": 40},
        "validation": 1000,
        "chunk": 16,
    },
    "no_bias": {"data": "linear64", "bias": False, "opt": {"lr": 0.05, "epochs": 40}, "chunk": 16},
}


def _run(case: dict[str, Any]) -> dict[str, Any]:
    """Run one case and return everything it produced, floats as exact hex strings."""
    kind = case["data"]
    if kind == "toy":
        x, y = _toy()
    elif kind == "large32":
        x, y = _linear(70_000, 4, np.float32)
    else:
        x, y = _linear(200, 3, np.float64 if kind == "linear64" else np.float32)
    validation = None
    if case.get("validation"):
        n = case["validation"]
        x, y, validation = x[n:], y[n:], (x[:n], y[:n])
    if x.shape[1] == 1:
        initial = {"w": float(case.get("initial", 1.0))}
    else:
        initial = {f"w_{i}": 0.0 for i in range(x.shape[1])}
    if case.get("bias", x.shape[1] > 1):
        initial["b"] = 0.0
    opt = Optimization(**case["opt"], **case.get("batch", {}))
    chunks: list[EpochChunk] = []
    stop = _stop_after(case["stop"]) if case.get("stop") else None
    hooks = Hooks(
        on_chunk=chunks.append, should_stop=stop, chunk_epochs=case["chunk"], flush_seconds=1e9
    )
    result = fit(TrainingData(x, y, validation), initial, opt, device=CPU, hooks=hooks)
    return {"chunks": [_chunk(c) for c in chunks], "result": _result(result)}


def _hex(values: Any) -> list[str]:
    return [float(v).hex() for v in np.asarray(values, dtype=np.float64).ravel()]


def _chunk(chunk: EpochChunk) -> dict[str, Any]:
    return {
        "epochs": [int(e) for e in chunk.epochs],
        "losses": _hex(chunk.losses),
        "grad_norms": _hex(chunk.grad_norms),
        "params": _hex(chunk.params),
        "names": list(chunk.names),
        "lrs": _hex(chunk.lrs),
        "val_losses": None if chunk.val_losses is None else _hex(chunk.val_losses),
    }


def _result(result: Any) -> dict[str, Any]:
    fields = ("epochs_done", "stop_reason", "diverged_at", "best_epoch", "verdict_detail", "lr")
    out = {name: getattr(result, name) for name in fields}
    out["final_params"] = {k: float(v).hex() for k, v in result.final_params.items()}
    for name in ("final_loss", "best_loss"):
        value = getattr(result, name)
        out[name] = None if value is None else float(value).hex()
    return out


def platform_key() -> str:
    """What decides the last bits on this machine: the CPU's vendor, the instruction set torch
    dispatches to and its threads (reductions split by thread), e.g. `GenuineIntel-AVX512-1`.
    `make test` runs this file on one thread."""
    vendor = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    return f"{vendor}-{torch.backends.cpu.get_cpu_capability()}-{torch.get_num_threads()}"


def _platform_file() -> Path:
    return GOLDEN.with_name(f"fit_cases.{platform_key()}.json")


def _reference_digest() -> str:
    return hashlib.sha256(GOLDEN.read_bytes()).hexdigest()


def _platform_recording() -> Optional[dict[str, Any]]:
    """This platform's own recording, if it was made against the current reference."""
    path = _platform_file()
    if not path.exists():
        return None
    recorded = json.loads(path.read_text())
    return recorded["cases"] if recorded["reference_sha256"] == _reference_digest() else None


def _is_float(value: Any) -> bool:
    return isinstance(value, str) and (value in ("inf", "-inf", "nan") or "0x" in value)


def _assert_close(got: Any, expected: Any, path: str) -> None:
    """`got` has the reference's structure and non-float values, and its floats are within
    RTOL of the reference's. A best epoch may move along a plateau: its loss is compared."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), path
        for key in expected:
            if key != "best_epoch":
                _assert_close(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list) and expected and _is_float(expected[0]):
        assert isinstance(got, list) and len(got) == len(expected), path
        ours = [float.fromhex(v) for v in got]
        theirs = [float.fromhex(v) for v in expected]
        scale = max((abs(v) for v in theirs if math.isfinite(v)), default=0.0)
        for index, (a, b) in enumerate(zip(ours, theirs)):
            if math.isfinite(b):
                assert abs(a - b) <= RTOL * scale, (path, index, a, b)
            else:
                assert repr(a) == repr(b), (path, index, a, b)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for index, (a, b) in enumerate(zip(got, expected)):
            _assert_close(a, b, f"{path}[{index}]")
    elif _is_float(expected):
        _assert_close([got], [expected], path)
    else:
        assert got == expected, (path, got, expected)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fit_reproduces_the_recorded_run(name: str) -> None:
    got = _run(CASES[name])
    reference = json.loads(GOLDEN.read_text())[name]
    if got == reference:
        return
    _assert_close(got, reference, name)
    own = _platform_recording()
    if own is not None:
        assert got == own[name], f"differs from {_platform_file().name}"


def test_every_case_is_recorded() -> None:
    assert sorted(json.loads(GOLDEN.read_text())) == sorted(CASES)


def test_another_platforms_last_bits_pass_and_a_real_change_does_not() -> None:
    expected = json.loads(GOLDEN.read_text())["seed"]
    nudged = json.loads(json.dumps(expected))
    loss = float.fromhex(nudged["chunks"][0]["losses"][3])
    nudged["chunks"][0]["losses"][3] = (loss * (1 + 1e-7)).hex()
    _assert_close(nudged, expected, "seed")
    nudged["chunks"][0]["losses"][3] = (loss * (1 + 1e-3)).hex()
    with pytest.raises(AssertionError):
        _assert_close(nudged, expected, "seed")
    nudged = json.loads(json.dumps(expected))
    nudged["result"]["stop_reason"] = "converged"
    with pytest.raises(AssertionError):
        _assert_close(nudged, expected, "seed")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({n: _run(c) for n, c in CASES.items()}, indent=1) + "\n")
elif __name__ == "__main__" and sys.argv[1:] == ["--write-platform"]:
    cases = {n: _run(c) for n, c in CASES.items()}
    own = {"reference_sha256": _reference_digest(), "cases": cases}
    _platform_file().write_text(json.dumps(own, indent=1) + "\n")
    print(f"wrote {_platform_file()}")
