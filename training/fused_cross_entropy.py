"""Full-batch cross-entropy of a linear classifier in one read of the rows: a small C kernel.

Autograd's version of the logistic or softmax loss reads X twice per epoch (the logits X W^T
and the gradient X^T dZ, each a BLAS gemv that runs at half of memory speed on 16-wide rows)
and makes several passes over n-long temporaries. `cross_entropy_kernel.c` computes, per block
of 64 rows while it is in L1, the logits, the loss (log-sigmoid, log-sum-exp, stable for any
logit) and the gradient of W and b, over row chunks spread across `torch.get_num_threads()`
pthreads; each chunk's sums are kept apart and added in order, so the result does not depend on
the number of threads. It is C with no Python or torch headers: compiled with the system's
`cc` (GCC or Clang) by `make setup` or on first use (about a second), with -march=native, into
a cache keyed by the source, compiler, flags and CPU (`$GDFLOW_KERNEL_CACHE`, else
`$XDG_CACHE_HOME/gdflow/kernels` or `~/.cache/gdflow/kernels`), and called through ctypes,
which releases the GIL.

`fused_cross_entropy` wraps it as a torch.autograd.Function like `fused_mse`: the forward
computes the loss and both gradients, the backward scales them, so `loss.backward()` and a
torch.optim step run as on the reference path. Float64 rows are computed in float64 (equal to
autograd's to about 1e-15); float32 rows in float32, 8 or 16 rows to a vector, with each 64-row
block's sums added into float64 (1e-7 of autograd's).

Where there is no compiler, the cache cannot be written or `GDFLOW_FUSED_KERNEL=0` is set,
`kernel_problem` says why, `fit` keeps the torch ops (`choose_classifier_path`) and the train
task says so in the run's log. GPUs and mini-batches keep the torch ops too.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from gdflow.training.statistics_mse import LossPath

#: Set to 0 (or off, false, no) to keep the torch ops for every classifier.
DISABLE_VARIABLE = "GDFLOW_FUSED_KERNEL"
#: Where the compiled kernel is kept (default: $XDG_CACHE_HOME/gdflow/kernels).
CACHE_VARIABLE = "GDFLOW_KERNEL_CACHE"
#: Full-batch classifier data with at least this many elements (rows x features) on the CPU
#: takes the kernel; smaller data keeps the torch ops (and tests' bit-exact trajectories).
#: Measured (an epoch's CPU time on one thread): a 10-class softmax is faster on the kernel
#: from a few hundred rows, logistic regression about even up to 4,096 x 16 and 1.4x faster at
#: 16,384 x 16; below 2^16 elements an epoch costs well under a millisecond either way.
FUSED_MIN_ELEMENTS = 1 << 16

#: Rows x features x outputs that a thread takes at least (about 0.1 ms of work): starting and
#: joining a thread costs tens of microseconds, more on a busy machine.
WORK_PER_THREAD = 1 << 18

_HERE = Path(__file__).resolve().parent
SOURCES = (
    _HERE / "cross_entropy_kernel.c",
    _HERE / "cross_entropy_rows.h",
    _HERE / "comoment.h",  # the least-squares statistics (statistics_mse), in the same library
)
#: Tried in order: tuned for this machine's CPU, then portable. GCC's tuning for Intel's
#: AVX-512 CPUs vectorises loops 256 bits wide; the kernel's loops over rows (exp, log, the
#: gradient) run 512 bits wide with -mprefer-vector-width=512: the logistic epoch on 1M x 16
#: float32 took 9.8-11.1 ms against 11.7-12.9 ms, side by side on the 2-core Intel VM
#: (/proc/cpuinfo: avx512f). Where there is no AVX-512 the flag changes nothing.
FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd"),
    ("-O3", "-fopenmp-simd"),
)
#: -fno-trapping-math lets GCC vectorise the loss loops' selects (`v < 0 ? v : -v`, exp's
#: underflow to 0): without it, where there is no AVX-512 to mask them, GCC kept those loops
#: scalar ("control flow in loop"), and the logistic epoch on 1M x 16 float32 took 12-13 ms on
#: two Zen 3 threads against 5.3-5.7 ms with it (softmax, 10 classes: 82-91 against 50 ms). The
#: kernel never reads the floating-point exception flags; each operation rounds as before, but
#: the loops now vectorised add their lanes in another order, so sums can differ in the last
#: bits from the scalar build's (a double softmax's by 9e-13), as between any two -march builds.
_COMMON_FLAGS = ("-std=gnu11", "-fno-trapping-math", "-fPIC", "-shared", "-pthread")
_ERRORS = {1: "a class index outside [0, classes) in the rows", 2: "out of memory"}


def _bind(library: ctypes.CDLL, prefix: str, argtypes: list[Any]) -> dict[torch.dtype, Any]:
    """The library's entries `<prefix>_float` and `<prefix>_double` (returning an int status),
    by the dtype of the rows they take."""
    entries = {}
    for dtype, name in ((torch.float32, "float"), (torch.float64, "double")):
        entry = getattr(library, f"{prefix}_{name}")
        entry.argtypes = argtypes
        entry.restype = ctypes.c_int
        entries[dtype] = entry
    return entries


class Kernel:
    """The compiled kernel, loaded: `run` fills the loss and gradient sums of some rows."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        self._entries = _bind(
            library, "gdflow_cross_entropy", [pointer] * 5 + [size] * 4 + [pointer]
        )
        self._comoments = _bind(library, "gdflow_comoment", [pointer] * 2 + [size] * 3 + [pointer])

    def comoment(
        self, x: torch.Tensor, y: torch.Tensor, *, threads: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The column means of z = (x, y) and the co-moment matrix sum (z - m)(z - m)^T, in
        float64, of rows x (n, d) and targets y (n,) of one dtype, float32 or float64, CPU and
        contiguous (comoment.h; the same bits for any number of threads)."""
        n, d = x.shape
        if x.dtype not in self._comoments or y.dtype != x.dtype or tuple(y.shape) != (n,):
            raise ValueError(f"co-moment kernel: rows of {x.dtype}, targets of {y.dtype}")
        if x.device.type != "cpu" or not (x.is_contiguous() and y.is_contiguous()):
            raise ValueError("co-moment kernel: x and y must be contiguous CPU tensors")
        p = d + 1
        out = torch.empty(1 + p + p * p + p, dtype=torch.float64)
        status = self._comoments[x.dtype](
            x.data_ptr(), y.data_ptr(), n, d, max(1, threads), out.data_ptr()
        )
        if status != 0:
            raise MemoryError("the co-moment kernel could not allocate its buffers")
        return out[1 : 1 + p], out[1 + p : 1 + p + p * p].view(p, p)

    def run(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: Optional[torch.Tensor],
        w: torch.Tensor,
        b: Optional[torch.Tensor],
        *,
        threads: int,
    ) -> torch.Tensor:
        """The sums over the rows x (n, d), in float64: the loss, then dloss/dW (k x d, row by
        row) and dloss/db (k). One output (k = 1): the binary loss of 0/1 targets y in x's
        dtype; several: the softmax loss of int64 class indices y. All CPU and contiguous."""
        n, d = x.shape
        k = w.shape[0]
        _check(x, y, weights, w, b, binary=k == 1)
        out = torch.empty(1 + k * d + k, dtype=torch.float64)
        status = self._entries[x.dtype](
            x.data_ptr(),
            y.data_ptr(),
            weights.data_ptr() if weights is not None else None,
            w.data_ptr(),
            b.data_ptr() if b is not None else None,
            n,
            d,
            k,
            max(1, threads),
            out.data_ptr(),
        )
        if status == 2:
            raise MemoryError("the fused cross-entropy kernel could not allocate its buffers")
        if status != 0:
            raise ValueError(f"fused cross-entropy: {_ERRORS.get(status, f'error {status}')}")
        return out


def _check(
    x: torch.Tensor,
    y: torch.Tensor,
    weights: Optional[torch.Tensor],
    w: torch.Tensor,
    b: Optional[torch.Tensor],
    *,
    binary: bool,
) -> None:
    """Refuse what the kernel cannot read: other dtypes or devices, strided tensors, shapes."""
    n, d = x.shape
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"fused cross-entropy: rows of {x.dtype}; float32 or float64 only")
    wanted: list[tuple[str, Optional[torch.Tensor], torch.dtype, tuple[int, ...]]] = [
        ("x", x, x.dtype, (n, d)),
        ("y", y, x.dtype if binary else torch.int64, (n,)),
        ("weights", weights, x.dtype, (n,)),
        ("W", w, x.dtype, (w.shape[0], d)),
        ("b", b, x.dtype, (w.shape[0],)),
    ]
    for name, tensor, dtype, shape in wanted:
        if tensor is None:
            continue
        if tensor.device.type != "cpu" or tensor.dtype != dtype or not tensor.is_contiguous():
            raise ValueError(
                f"fused cross-entropy: {name} must be a contiguous CPU tensor of {dtype}"
            )
        if tuple(tensor.shape) != shape:
            raise ValueError(f"fused cross-entropy: {name} has shape {tuple(tensor.shape)}")


def _cache_dir() -> Path:
    """Where compiled kernels are kept."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gdflow" / "kernels"


def _compiler() -> Optional[str]:
    """The C compiler: $CC, else cc, gcc or clang on the PATH."""
    if os.environ.get("CC"):
        return os.environ["CC"]
    return next((found for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None)


def _cpu() -> str:
    """What -march=native depends on: the machine and, on Linux, its CPU's model and flags
    (read from /proc: platform.processor() would start a process)."""
    described = [platform.machine()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                described.append(line)
                if len(described) >= 4:
                    break
    except OSError:
        pass
    return "\n".join(described)


def _compile(compiler: str, target: Path) -> str:
    """Build the kernel into `target` (atomically: a temporary file, then a rename, so that
    processes compiling at once never load a half-written library); '' or the last error."""
    error = ""
    for flags in FLAG_SETS:
        handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
        os.close(handle)
        command = [compiler, *flags, *_COMMON_FLAGS, "-o", temporary, str(SOURCES[0])]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as failure:
            done = None
            error = str(failure)
        if done is not None and done.returncode == 0:
            os.replace(temporary, target)
            return ""
        if done is not None:
            error = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        Path(temporary).unlink(missing_ok=True)
    return error


@functools.cache
def _load() -> tuple[Optional[Kernel], str]:
    """The kernel, compiled once per machine and loaded once per process, or why not."""
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler (cc, gcc or clang) on the PATH"
    key = hashlib.sha256()
    for source in SOURCES:
        key.update(source.read_bytes())
    key.update("\0".join([compiler, repr(FLAG_SETS), repr(_COMMON_FLAGS), _cpu()]).encode())
    cache = _cache_dir()
    target = cache / f"cross_entropy-{key.hexdigest()[:20]}.so"
    try:
        if not target.exists():
            cache.mkdir(parents=True, exist_ok=True)
            error = _compile(compiler, target)
            if error:
                return None, f"{compiler} could not build {SOURCES[0].name}: {error}"
        return Kernel(ctypes.CDLL(str(target)), target), ""
    except OSError as failure:
        return None, f"the kernel could not be built or loaded in {cache}: {failure}"


def kernel() -> Optional[Kernel]:
    """The loaded kernel, or None (`kernel_problem` says why)."""
    return None if kernel_problem() else _load()[0]


def kernel_problem() -> str:
    """Why the kernel cannot be used ('' when it can): switched off by the environment, no
    compiler, a failed build or load."""
    if os.environ.get(DISABLE_VARIABLE, "").strip().lower() in ("0", "off", "false", "no"):
        return f"switched off by {DISABLE_VARIABLE}={os.environ[DISABLE_VARIABLE]}"
    return _load()[1]


def worth_fusing(shape: tuple[int, ...], *, full_batch: bool, device: torch.device) -> bool:
    """Whether a linear classifier's full-batch loss on rows of this shape is worth the kernel:
    the CPU, full batches, at least FUSED_MIN_ELEMENTS values."""
    if not full_batch or device.type != "cpu" or len(shape) != 2:
        return False
    return shape[0] * shape[1] >= FUSED_MIN_ELEMENTS


def choose_classifier_path(
    shape: tuple[int, ...], *, full_batch: bool, device: torch.device
) -> LossPath:
    """`fused` for a linear classifier the kernel serves (`worth_fusing`, the kernel built),
    else `direct`: the torch ops (mini-batches, GPUs, small data, no kernel)."""
    if worth_fusing(shape, full_batch=full_batch, device=device) and kernel() is not None:
        return "fused"
    return "direct"


def threads_for(work: int) -> int:
    """Threads for rows x features x outputs = `work`: torch.get_num_threads(), but one per
    WORK_PER_THREAD at least, so that small data does not wait for threads to start."""
    return max(1, min(torch.get_num_threads(), work // WORK_PER_THREAD))


class _FusedCrossEntropy(torch.autograd.Function):
    """The mean (weighted) cross-entropy with both gradients computed in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        w: torch.Tensor,
        b: Optional[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weights: Optional[torch.Tensor],
        compiled: Kernel,
        threads: int,
    ) -> torch.Tensor:
        n = x.shape[0]
        k, d = w.shape
        sums = compiled.run(x, y, weights, w.detach(), _detached(b), threads=threads)
        sums /= n
        ctx.save_for_backward(sums[1 : 1 + k * d].view(k, d).to(w.dtype), sums[1 + k * d :])
        ctx.has_bias, ctx.dtype = b is not None, w.dtype
        return sums[0].to(w.dtype)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_output: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], ...]:
        grad_w, grad_b = ctx.saved_tensors
        bias = grad_b.to(ctx.dtype) * grad_output if ctx.has_bias else None
        return grad_w * grad_output, bias, None, None, None, None, None


def _detached(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return tensor.detach() if tensor is not None else None


def fused_cross_entropy(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
    *,
    threads: Optional[int] = None,
) -> torch.Tensor:
    """The mean (weighted) cross-entropy of logits x @ w.T + b, differentiable in w and b: for
    w of one row, F.binary_cross_entropy_with_logits of targets y (0/1, x's dtype); for several,
    F.cross_entropy of class indices y (int64). Each row's loss is multiplied by its weight and
    the sum divided by the rows. Threads: torch.get_num_threads() unless given."""
    compiled = kernel()
    if compiled is None:
        raise RuntimeError(f"the fused cross-entropy kernel is unavailable: {kernel_problem()}")
    count = threads if threads is not None else threads_for(x.shape[0] * x.shape[1] * w.shape[0])
    loss: torch.Tensor = _FusedCrossEntropy.apply(w, b, x, y, weights, compiled, count)
    return loss
