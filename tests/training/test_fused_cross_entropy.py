"""The fused cross-entropy kernel against autograd's reference ops, alone and inside `fit`, and
the torch ops that train when it cannot be built."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gdflow.training import fused_cross_entropy as fce
from gdflow.training.fused_cross_entropy import (
    FUSED_MIN_ELEMENTS,
    choose_classifier_path,
    fused_cross_entropy,
)
from gdflow.training.loop import Hooks, fit, loss_path_of
from gdflow.training.model import TrainingData
from gdflow.training.optimization import Optimization
from gdflow.training.records import EpochChunk

CPU = torch.device("cpu")
#: The first use of the kernel on a machine compiles it (`cc`, a process); `make setup` builds
#: it beforehand, so that the suite's other tests never start that process.
pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def compiled() -> fce.Kernel:
    """The kernel, built (or taken from the cache) for this machine."""
    found = fce.kernel()
    if found is None:
        pytest.skip(f"the kernel is unavailable here: {fce.kernel_problem()}")
    return found


@pytest.fixture
def fresh_kernel_state() -> Iterator[None]:
    """Forget the loaded kernel before and after a test that changes how it is found."""
    fce._load.cache_clear()
    yield
    fce._load.cache_clear()


def _problem(
    n: int, d: int, classes: int, dtype: torch.dtype, *, scale: float = 1.0, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Rows, targets (0/1 in x's dtype for 2 classes, else int64), positive weights, W, b."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=dtype)
    outputs = 1 if classes == 2 else classes
    w = torch.randn(outputs, d, generator=generator, dtype=dtype) * scale
    b = torch.randn(outputs, generator=generator, dtype=dtype)
    labels = torch.randint(0, classes, (n,), generator=generator)
    y = labels.to(dtype) if classes == 2 else labels
    weights = torch.rand(n, generator=generator, dtype=dtype) + 0.25
    return x, y, weights, w, b


def _reference(
    x: torch.Tensor,
    y: torch.Tensor,
    weights: Optional[torch.Tensor],
    w: torch.Tensor,
    b: Optional[torch.Tensor],
) -> list[torch.Tensor]:
    """Loss, dW and db (if b) by autograd of the ops ClassifierModel.loss uses."""
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_() if b is not None else None
    logits = x @ w.T + (b if b is not None else 0.0)
    if w.shape[0] == 1:
        each = F.binary_cross_entropy_with_logits(logits[:, 0], y, reduction="none")
    else:
        each = F.cross_entropy(logits, y, reduction="none")
    loss = (each * weights).mean() if weights is not None else each.mean()
    loss.backward()
    return [loss.detach(), w.grad, *([b.grad] if b is not None else [])]  # type: ignore[list-item]


def _fused(
    x: torch.Tensor,
    y: torch.Tensor,
    weights: Optional[torch.Tensor],
    w: torch.Tensor,
    b: Optional[torch.Tensor],
    threads: Optional[int] = None,
) -> list[torch.Tensor]:
    """Loss, dW and db (if b) by the kernel, through its autograd Function."""
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_() if b is not None else None
    loss = fused_cross_entropy(x, y, w, b, weights, threads=threads)
    (2.5 * loss).backward()  # a scaled upstream gradient reaches both parameters
    grads = [w.grad / 2.5, *([b.grad / 2.5] if b is not None else [])]  # type: ignore[operator]
    return [loss.detach(), *grads]


def _assert_close(found: list[torch.Tensor], expected: list[torch.Tensor], rel: float) -> None:
    """Each tensor equal to its reference within rel of the reference's largest magnitude."""
    for got, want in zip(found, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        scale = float(want.abs().max())
        error = float((got - want).abs().max())
        assert error <= rel * scale, f"{error:.3g} > {rel:g} x {scale:.3g}"


@pytest.mark.parametrize("classes", [2, 3, 10])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize(("dtype", "rel"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("features", [5, 8, 12, 16, 21, 32, 40])
def test_loss_and_gradients_match_autograd(
    compiled: fce.Kernel,
    classes: int,
    bias: bool,
    weighted: bool,
    dtype: torch.dtype,
    rel: float,
    features: int,
) -> None:
    # 5,003 rows: two chunks of 2,048 and a last block that is not a multiple of the 64-row
    # block, of a vector's 8 or 16 rows or of a group's 16 or 32. Features, for vectors of 8
    # lanes (float64, and float32 without AVX-512) and of 16 (float32 with AVX-512): binary
    # rows of one vector (a group of rows at a time) with a tail (5) or without (8, 16), of two
    # vectors (a group at a time too) with a tail (12, 21) or without (16, 32), and of more (the
    # block in passes: 21, 32, 40)
    x, y, weights, w, b = _problem(5003, features, classes, dtype, scale=0.7)
    args = (x, y, weights if weighted else None, w, b if bias else None)
    _assert_close(_fused(*args, threads=3), _reference(*args), rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("features", [8, 16])
def test_nothing_past_the_last_row_is_read(
    compiled: fce.Kernel, dtype: torch.dtype, features: int
) -> None:
    """The last block holds 24 rows: whole vectors of 8 rows, but not whole groups of 16 or 32
    (binary rows go a group at a time), nor a whole block. The rows after the data are NaN in
    memory, so a read past the last row would make the sums NaN instead of autograd's."""
    n = 4096 + 3 * 64 + 24
    x, y, weights, w, b = _problem(n, features, 2, dtype)
    memory = torch.full((n + 64, features), float("nan"), dtype=dtype)
    memory[:n] = x
    rows = memory[:n]  # contiguous, followed by NaN rows
    for threads in (1, 2):
        found = _fused(rows, y, weights, w, b, threads=threads)
        assert all(bool(torch.isfinite(t).all()) for t in found)
        _assert_close(found, _reference(x, y, weights, w, b), 1e-5)


@pytest.mark.parametrize("classes", range(2, 11))
@pytest.mark.parametrize("features", [1, 8, 16, 17])
def test_every_class_count_and_width(compiled: fce.Kernel, classes: int, features: int) -> None:
    x, y, weights, w, b = _problem(301, features, classes, torch.float64, seed=classes)
    _assert_close(_fused(x, y, weights, w, b), _reference(x, y, weights, w, b), 1e-12)


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("features", [9, 40])
def test_the_result_does_not_depend_on_the_threads(
    compiled: fce.Kernel, classes: int, dtype: torch.dtype, features: int
) -> None:
    """Rows are summed in fixed chunks, each chunk apart, then in order: bit for bit."""
    x, y, weights, w, b = _problem(20_011, features, classes, dtype)
    one = _fused(x, y, weights, w, b, threads=1)
    for threads in (2, 3, 7, 64):
        assert all(torch.equal(a, c) for a, c in zip(one, _fused(x, y, weights, w, b, threads)))


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize(("dtype", "rel"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_extreme_logits_stay_finite_and_exact(
    compiled: fce.Kernel, classes: int, dtype: torch.dtype, rel: float
) -> None:
    """Logits of magnitude around 100 (and a few near 1,000), right and wrong: no overflow
    in exp, no log(0); against autograd in float64 on the same values."""
    x, y, weights, w, b = _problem(3001, 6, classes, dtype, scale=80.0)
    x[:5] *= 10.0
    logits = x.double() @ w.double().T + b.double()
    assert float(logits.abs().median()) > 50 and float(logits.abs().max()) > 700
    found = _fused(x, y, weights, w, b)
    assert all(bool(torch.isfinite(t).all()) for t in found)
    expected = _reference(
        x.double(), y if classes > 2 else y.double(), weights.double(), w.double(), b.double()
    )
    _assert_close(found, [t.to(dtype) for t in expected], rel)


def test_non_finite_rows_give_a_non_finite_loss(compiled: fce.Kernel) -> None:
    """As with the torch ops, so that the stop rules see the run diverge."""
    x, y, weights, w, b = _problem(500, 4, 2, torch.float64)
    x[123, 2] = float("nan")
    assert not torch.isfinite(_fused(x, y, None, w, b)[0])
    assert not torch.isfinite(_reference(x, y, None, w, b)[0])


def test_a_class_index_out_of_range_is_refused(compiled: fce.Kernel) -> None:
    x, y, _, w, b = _problem(200, 3, 4, torch.float32)
    y[150] = 4
    with pytest.raises(ValueError, match=r"class index outside \[0, classes\)"):
        fused_cross_entropy(x, y, w, b)


def test_tensors_the_kernel_cannot_read_are_refused(compiled: fce.Kernel) -> None:
    x, y, _, w, b = _problem(200, 3, 2, torch.float32)
    with pytest.raises(ValueError, match="x must be a contiguous CPU tensor"):
        fused_cross_entropy(x.T.contiguous().T, y, w, b)
    with pytest.raises(ValueError, match="y must be a contiguous CPU tensor of torch.float32"):
        fused_cross_entropy(x, y.double(), w, b)


def _classifier_data(n: int, d: int, classes: int, *, seed: int = 0) -> TrainingData:
    """float64 rows whose classes depend on the features, with weights and validation rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    scores = x @ rng.normal(size=(d, classes)) + rng.normal(scale=0.5, size=(n, classes))
    y = scores.argmax(axis=1)
    family = "logistic" if classes == 2 else "softmax"
    return TrainingData(
        x[:-50],
        y[:-50],
        validation=(x[-50:], y[-50:]),
        family=family,
        n_classes=classes,
        weights=rng.uniform(0.5, 2.0, size=n - 50),
    )


def _names(data: TrainingData) -> dict[str, float]:
    d = data.x.shape[1]
    if data.outputs == 1:
        return {**{f"w_{j}": 0.0 for j in range(d)}, "b": 0.1}
    weights = {f"w_{c}_{j}": 0.0 for c in range(data.outputs) for j in range(d)}
    return {**weights, **{f"b_{c}": 0.1 for c in range(data.outputs)}}


@pytest.mark.parametrize("classes", [2, 6])
def test_fit_on_the_kernel_follows_the_torch_ops_trajectory(
    compiled: fce.Kernel, classes: int
) -> None:
    data = _classifier_data(4000, 7, classes)
    opt = Optimization(lr=0.5, epochs=40, momentum=0.5)
    runs = {}
    for path in ("fused", "direct"):
        chunks: list[EpochChunk] = []
        result = fit(
            data,
            _names(data),
            opt,
            device=CPU,
            hooks=Hooks(on_chunk=chunks.append, chunk_epochs=16),
            loss_path=path,  # type: ignore[arg-type]
        )
        assert result.loss_path == path
        runs[path] = chunks
    for name in ("losses", "params", "grad_norms", "val_losses"):
        fused = np.concatenate([getattr(chunk, name) for chunk in runs["fused"]])
        direct = np.concatenate([getattr(chunk, name) for chunk in runs["direct"]])
        np.testing.assert_allclose(fused, direct, rtol=1e-10, atol=1e-13, err_msg=name)
    losses = np.concatenate([chunk.losses for chunk in runs["direct"]])
    assert losses[-1] < 0.8 * losses[0]  # it trained: the comparison is not of a flat line


def test_strided_rows_and_weights_train_on_the_kernel(compiled: fce.Kernel) -> None:
    """Column-major rows and every-other-element weights (NumPy views) are made contiguous
    once, when the path is chosen, not refused by the kernel."""
    data = _classifier_data(3000, 5, 3)
    assert data.weights is not None
    strided = TrainingData(
        np.asfortranarray(data.x),
        data.y,
        family=data.family,
        n_classes=3,
        weights=np.repeat(data.weights, 2)[::2],
    )
    opt = Optimization(lr=0.5, epochs=5)
    fused = fit(strided, _names(strided), opt, device=CPU, loss_path="fused")
    direct = fit(strided, _names(strided), opt, device=CPU, loss_path="direct")
    assert fused.final_params == pytest.approx(direct.final_params, rel=1e-10, abs=1e-13)


def test_large_full_batch_classifiers_on_the_cpu_take_the_kernel(compiled: fce.Kernel) -> None:
    def path(rows: int, features: int, classes: int = 2) -> str:
        data = TrainingData(
            np.zeros((rows, features)),
            np.zeros(rows, dtype=np.int64),
            family="logistic" if classes == 2 else "softmax",
            n_classes=classes,
        )
        return loss_path_of(data, Optimization(lr=0.1, epochs=10), CPU)

    assert path(FUSED_MIN_ELEMENTS // 16, 16) == "fused"
    assert path(FUSED_MIN_ELEMENTS // 4, 4, classes=7) == "fused"
    assert path(FUSED_MIN_ELEMENTS // 16 - 1, 16) == "direct"  # small: the torch ops, bit for bit
    shape = (FUSED_MIN_ELEMENTS, 4)
    assert choose_classifier_path(shape, full_batch=False, device=CPU) == "direct"
    assert choose_classifier_path(shape, full_batch=True, device=torch.device("cuda")) == "direct"
    assert choose_classifier_path(shape, full_batch=True, device=CPU) == "fused"


def test_a_network_is_never_fused(compiled: fce.Kernel) -> None:
    from gdflow.training.mlp import build_mlp

    data = _classifier_data(FUSED_MIN_ELEMENTS // 4, 4, 3)

    def network(dtype: torch.dtype) -> torch.nn.Module:
        return build_mlp(4, 3, hidden=(5,), activation="tanh", seed=0, dtype=dtype)

    mlp = TrainingData(data.x, data.y, family="mlp", n_classes=3, network=network)
    assert loss_path_of(mlp, Optimization(lr=0.1, epochs=5), CPU) == "direct"
    with pytest.raises(ValueError, match="not networks"):
        fit(mlp, {}, Optimization(lr=0.1, epochs=1), device=CPU, loss_path="fused")


def test_switched_off_by_the_environment_the_torch_ops_train(
    compiled: fce.Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _classifier_data(FUSED_MIN_ELEMENTS // 4 + 50, 4, 2)
    opt = Optimization(lr=0.5, epochs=3)
    assert loss_path_of(data, opt, CPU) == "fused"
    monkeypatch.setenv(fce.DISABLE_VARIABLE, "0")
    assert fce.kernel_problem() == f"switched off by {fce.DISABLE_VARIABLE}=0"
    assert fce.kernel() is None
    assert loss_path_of(data, opt, CPU) == "direct"
    assert fit(data, _names(data), opt, device=CPU).loss_path == "direct"


def test_without_a_working_compiler_the_torch_ops_train(
    fresh_kernel_state: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fce.CACHE_VARIABLE, str(tmp_path / "kernels"))
    monkeypatch.setenv("CC", "false")  # a compiler that fails every build
    problem = fce.kernel_problem()
    assert problem.startswith("false could not build cross_entropy_kernel.c"), problem
    assert list((tmp_path / "kernels").iterdir()) == []  # no half-built library is left
    data = _classifier_data(FUSED_MIN_ELEMENTS // 4 + 50, 4, 3)
    opt = Optimization(lr=0.5, epochs=3)
    assert loss_path_of(data, opt, CPU) == "direct"
    assert fit(data, _names(data), opt, device=CPU).loss_path == "direct"
    with pytest.raises(RuntimeError, match="kernel is unavailable: false could not build"):
        fused_cross_entropy(torch.zeros(3, 2), torch.zeros(3), torch.zeros(1, 2))


def test_the_kernel_is_built_once_into_its_cache(
    fresh_kernel_state: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fce.CACHE_VARIABLE, str(tmp_path))
    built = fce.kernel()
    assert built is not None and built.path.parent == tmp_path
    (library,) = tmp_path.iterdir()
    stamp = library.stat().st_mtime_ns
    fce._load.cache_clear()  # as a new process would: the library is loaded, not rebuilt
    again = fce.kernel()
    assert again is not None and again.path == library
    assert library.stat().st_mtime_ns == stamp
    x, y, weights, w, b = _problem(100, 3, 2, torch.float64)
    _assert_close(_fused(x, y, weights, w, b), _reference(x, y, weights, w, b), 1e-12)
