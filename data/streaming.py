"""Parquet data sets larger than memory: read them a record batch at a time, never whole.

`memory_available` says how much memory this process may still use (the smallest of
MemAvailable, its cgroup's limit and RLIMIT_AS / RLIMIT_DATA, each less what is in use);
`stream_plan` decides from it, and from the Parquet footers' row count, whether a run loads its
data or streams it. `open_stream` makes one pass over the data (`scan`): row count, the
columns' mean and co-moments in float64 (merged record batch by record batch, Chan et al.),
the class set of a classifier's target, the same non-finite checks as the in-memory path, and a
seeded sample of rows for the data checks and the champion's comparison. Each epoch then reads
the record batches again (`StreamedData.chunks`), and `shuffled` turns them into mini-batches
through a bounded shuffle buffer. NumPy and pyarrow only: the training loop is
`training/streamed.py`.
"""

from __future__ import annotations

import contextlib
import queue
import resource
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gdflow.config.errors import GdflowError
from gdflow.config.train import TrainConfig
from gdflow.data.labels import MAX_CLASSES, Label, encode_labels
from gdflow.data.sources import Source, is_url

#: Stream when the data's in-memory size exceeds this share of the memory the process may
#: use: the in-memory path holds up to about four more float64-sized copies at its peak
#: (standardising, the Hessian, least squares), so a quarter is where it stops being safe.
IN_MEMORY_FRACTION = 0.25
#: Rows decoded at a time (one record batch of a row group): bounded whatever the row groups.
READ_ROWS = 65_536
#: Bytes read at a time from a column chunk: pages are read through a buffer of this size
#: instead of each column chunk of a row group being read whole (a 100M-row group is GBs).
READ_BUFFER = 1 << 20
#: Rows of the data kept in memory for the data checks and the champion's comparison, at most,
#: and the bytes they may take.
SAMPLE_ROWS = 65_536
SAMPLE_BYTES = 32 << 20
#: The shuffle buffer's default size: this many batches, and at least MIN_BUFFER_ROWS rows,
#: but at most BUFFER_BYTES of rows.
BUFFER_BATCHES = 64
MIN_BUFFER_ROWS = 65_536
BUFFER_BYTES = 64 << 20
#: A limit at or above this is no limit (cgroup v1 writes 2**63 rounded to a page).
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Memory:
    """How many bytes this process may still use, and which limit says so."""

    available: int
    what: str


def _meminfo(proc: Path) -> Optional[int]:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _status_bytes(proc: Path, key: str) -> int:
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom(proc: Path, root: Path) -> Optional[int]:
    """The cgroup's limit less its usage (v2: memory.max, v1: memory.limit_in_bytes), for the
    process's own cgroup when it is visible, else the mount's root; None without a limit."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    own = {}
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        own[controllers] = path.lstrip("/")
    candidates = [
        (root / own.get("", "") / "memory.max", root / own.get("", "") / "memory.current"),
        (root / "memory.max", root / "memory.current"),
        (
            root / "memory" / own.get("memory", "") / "memory.limit_in_bytes",
            root / "memory" / own.get("memory", "") / "memory.usage_in_bytes",
        ),
        (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes"),
    ]
    for limit_file, usage_file in candidates:
        limit = _read_int(limit_file)
        if limit is not None:
            if limit >= _UNLIMITED:
                return None
            return max(0, limit - (_read_int(usage_file) or 0))
        if limit_file.exists():  # "max": no limit
            return None
    return None


def memory_available(
    proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> Optional[Memory]:
    """The bytes this process may still allocate: the smallest of MemAvailable, its cgroup's
    limit less usage, and RLIMIT_AS / RLIMIT_DATA less its address space / data segment
    (None where none of them is known)."""
    found: list[Memory] = []
    available = _meminfo(proc)
    if available is not None:
        found.append(Memory(available, "MemAvailable"))
    cgroup = _cgroup_headroom(proc, cgroup_root)
    if cgroup is not None:
        found.append(Memory(cgroup, "the cgroup's memory limit"))
    for name, limit_id, key in (
        ("RLIMIT_AS", resource.RLIMIT_AS, "VmSize"),
        ("RLIMIT_DATA", resource.RLIMIT_DATA, "VmData"),
    ):
        soft, _ = resource.getrlimit(limit_id)
        if soft != resource.RLIM_INFINITY and soft < _UNLIMITED:
            found.append(Memory(max(0, soft - _status_bytes(proc, key)), name))
    return min(found, key=lambda m: m.available) if found else None


def size_text(size: float) -> str:
    """Bytes for a log line: `812 MiB`, `3.2 GiB`."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{int(size)} B"


def streaming_blockers(config: TrainConfig) -> list[str]:
    """What in `config` needs every row in memory (empty: the run can stream)."""
    found = []
    if config.data is not None and is_url(config.data):
        found.append("a remote --data (streaming reads local files: copy it to a local disk)")
    if config.batch_size is None:
        found.append("full-batch training (give --batch-size N)")
    if config.validation_split:
        found.append("--validation-split (no rows are held out while streaming)")
    if config.network:
        found.append(f"--model {config.model} (streaming trains linear, logistic or softmax)")
    if config.lr == "auto" and config.class_weight is not None:
        found.append("--lr auto with --class-weight (give --lr)")
    return found


@dataclass(frozen=True)
class Plan:
    """Whether a run streams its data, and the run log's line saying why (None: in memory)."""

    stream: bool
    reason: Optional[str] = None


def stream_plan(
    config: TrainConfig, source: Source, *, memory: Optional[Memory], name: str
) -> Plan:
    """Stream when --stream is given, or when the chosen columns in the training dtype (rows
    from the Parquet footers) exceed IN_MEMORY_FRACTION of the memory the process may use.
    GdflowError when --stream is given but the run cannot stream, or when the data cannot fit
    in memory and the run cannot stream."""
    blockers = streaming_blockers(config)
    if source.kind != "Parquet":
        what = f"{source.compression}-compressed CSV" if source.compression else "CSV"
        blockers.insert(0, f"{what} data (streaming reads Parquet files and folders)")
    if config.stream:
        if blockers:
            raise GdflowError(f"--stream cannot stream this run: {'; '.join(blockers)}")
        return Plan(True, f"Streaming {name}: --stream given")
    if source.kind != "Parquet" or memory is None:
        return Plan(False)
    import pyarrow.parquet as pq

    try:
        if config.features:
            n_columns = len(config.features) + 1
        else:  # every column (a pandas index column too: an estimate)
            first = source.parts[0] if source.parts else source.path
            n_columns = len(pq.read_schema(first).names)
        size = parquet_rows(source) * n_columns * np.dtype(config.dtype).itemsize
    except (OSError, ValueError):  # not Parquet after all: loading it says why
        return Plan(False)
    if size <= IN_MEMORY_FRACTION * memory.available:
        return Plan(False)
    shown = f"{size_text(size)} as {config.dtype}"
    if blockers:
        if size <= memory.available:
            return Plan(False)  # may fit: the in-memory path is tried
        raise GdflowError(
            f"{name} needs {shown} in memory but this process may use "
            f"{size_text(memory.available)} ({memory.what}) and the run cannot stream it: "
            f"{'; '.join(blockers)}"
        )
    return Plan(
        True,
        f"Streaming {name}: {shown} > {IN_MEMORY_FRACTION:.0%} of the "
        f"{size_text(memory.available)} this process may use ({memory.what})",
    )


def parquet_rows(source: Source) -> int:
    """Rows of a Parquet file or folder, from the footers only."""
    import pyarrow.parquet as pq

    return sum(int(pq.ParquetFile(f).metadata.num_rows) for f in source.parts or (source.path,))


def choose_columns(
    names: Sequence[str], *, features: Optional[Sequence[str]], target: Optional[str], source: str
) -> tuple[list[str], str]:
    """(features, target) among `names`, picked and checked: one rule for every reader
    (`dataset.select_columns`, the streamed and the cluster data)."""
    from gdflow.data.dataset import MAX_FEATURES

    target_name = target if target is not None else names[-1]
    chosen = [n for n in names if n != target_name] if features is None else list(features)
    for name in [*chosen, target_name]:
        if name not in names:
            raise GdflowError(
                f"column {name!r} not found in {source}; available columns: {', '.join(names)}"
            )
    if len(set(chosen)) != len(chosen):
        dupes = sorted({name for name in chosen if chosen.count(name) > 1})
        raise GdflowError(f"--features names {', '.join(dupes)} more than once; list each once")
    if target_name in chosen:
        raise GdflowError(
            f"column {target_name!r} is both a feature and the target; drop it from --features"
        )
    if not chosen:
        raise GdflowError(f"{source} has no feature columns besides the target {target_name!r}")
    if len(chosen) > MAX_FEATURES:
        raise GdflowError(
            f"{source}: {len(chosen)} feature columns, more than the {MAX_FEATURES} gdflow "
            "trains on; choose some with --features"
        )
    return chosen, target_name


@dataclass(frozen=True)
class Moments:
    """Row count, mean and co-moment matrix sum((z - mean)(z - mean)^T) of the columns z
    (features, then the target), in float64; merged pairwise as Chan et al. do."""

    rows: int
    mean: np.ndarray
    comoment: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> Moments:
        """The moments of one block of rows (features `x`, target `y`), in one float64 copy."""
        z = np.empty((x.shape[0], x.shape[1] + 1))
        z[:, :-1] = x
        z[:, -1] = y
        mean = z.mean(axis=0)
        z -= mean
        return cls(z.shape[0], mean, z.T @ z)

    def merge(self, other: Moments) -> Moments:
        """The moments of both blocks' rows together."""
        if self.rows == 0:
            return other
        n = self.rows + other.rows
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.rows / n)
        extra = np.outer(delta, delta) * (self.rows * other.rows / n)
        return Moments(n, mean, self.comoment + other.comoment + extra)

    @property
    def variance(self) -> np.ndarray:
        """Each column's population variance (ddof 0, as NumPy's std)."""
        return np.diag(self.comoment) / max(self.rows, 1)


class RowsElsewhere:
    """What this process knows of a data set whose rows are not in its memory (streamed from
    its files, or kept by a Dask cluster's workers, `data.cluster`): one pass's moments and
    each feature's largest |value|, the feature names, and a classifier's raw target value of
    each class."""

    moments: Moments
    abs_max: np.ndarray
    feature_names: tuple[str, ...]
    class_values: Optional[np.ndarray]

    @property
    def rows(self) -> int:
        """Rows of the data set."""
        return self.moments.rows

    @property
    def n_features(self) -> int:
        """Feature columns."""
        return len(self.feature_names)

    def encode(self, y: np.ndarray) -> np.ndarray:
        """A classifier's raw labels as class indices (in y's dtype); y itself otherwise."""
        if self.class_values is None:
            return y
        return np.searchsorted(self.class_values, y).astype(y.dtype)


@dataclass(frozen=True)
class StreamedData(RowsElsewhere):
    """A Parquet data set read a record batch at a time, and what one pass found in it."""

    files: tuple[Path, ...]
    feature_names: tuple[str, ...]
    target_name: str
    dtype: str
    #: (file index, row group, rows) of every row group, in file order.
    groups: tuple[tuple[int, int, int], ...]
    moments: Moments
    #: The largest |value| of each feature (for the error when their squares overflow).
    abs_max: np.ndarray
    #: A classifier's classes in order, the raw target value of each, and its row count.
    classes: Optional[tuple[Label, ...]] = None
    class_values: Optional[np.ndarray] = None
    class_counts: Optional[np.ndarray] = None
    #: The run log's line saying why the data streams.
    reason: str = ""
    #: Rows decoded at a time.
    read_rows: int = READ_ROWS

    def chunks(
        self, order: Optional[Sequence[int] | np.ndarray] = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) of each record batch in the training dtype, row groups in `order` (indices
        into `groups`; None: file order); a classifier's y holds its raw labels."""
        import pyarrow.parquet as pq

        columns = [*self.feature_names, self.target_name]
        opened: dict[int, Any] = {}  # one file open at a time
        for index in order if order is not None else range(len(self.groups)):
            file, group, _ = self.groups[index]
            with _read_errors(self.files[file]):
                if file not in opened:
                    opened = {file: pq.ParquetFile(self.files[file], buffer_size=READ_BUFFER)}
                batches = opened[file].iter_batches(
                    batch_size=self.read_rows, row_groups=[group], columns=columns, use_threads=True
                )
            while True:
                with _read_errors(self.files[file]):
                    batch = next(batches, None)
                if batch is None:
                    break
                yield _arrays(batch, len(columns), self.dtype)


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """pyarrow's errors reading `path` as one GdflowError line (the file may have changed)."""
    import pyarrow as pa

    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GdflowError(
            f"cannot read {path} as Parquet ({detail}); check the file is valid Parquet and "
            "unchanged since the run started"
        ) from None


def _arrays(batch: Any, n_columns: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A record batch's columns as a C-ordered (rows, features) array and the target."""
    x = np.empty((batch.num_rows, n_columns - 1), dtype=dtype)
    y = np.empty(batch.num_rows, dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # the scan reports overflow
        for j in range(n_columns):
            values = batch.column(j).to_numpy(zero_copy_only=False)  # nulls become NaN
            if j < n_columns - 1:
                x[:, j] = values
            else:
                y[:] = values
    return x, y


def open_stream(
    source: Source,
    *,
    features: Optional[Sequence[str]],
    target: Optional[str],
    dtype: str,
    skip: Sequence[str] = (),
    labels: Optional[tuple[str, str]] = None,
    seed: int = 0,
    reason: str = "",
    name: str = "",
    read_rows: int = READ_ROWS,
) -> tuple[StreamedData, np.ndarray, np.ndarray]:
    """The streamed data set at `source` after one pass over it (`scan`), and a seeded sample
    of its rows (x, y; a classifier's y as class indices). `skip`: the file's row index
    columns; `labels`: (task, model) of a classifier."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = name or str(source.path)
    files = source.parts or (source.path,)
    with _read_errors(files[0]):
        schema = pq.read_schema(files[0])
    names = [n for n in schema.names if n not in skip]
    chosen, target_name = choose_columns(names, features=features, target=target, source=name)
    groups = []
    for index, file in enumerate(files):
        with _read_errors(file):
            found = schema if index == 0 else pq.read_schema(file)
            metadata = pq.ParquetFile(file).metadata
        for column in [*chosen, target_name]:
            kind = found.field(column).type
            if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
                where = str(file) if source.parts else name
                hint = " (streaming reads numeric class labels only)" if labels else ""
                raise GdflowError(
                    f"column {column!r} in {where} is not numeric ({kind}); use numeric "
                    f"columns for --features and --target{hint}"
                )
        groups += [
            (index, g, metadata.row_group(g).num_rows) for g in range(metadata.num_row_groups)
        ]
    stream = StreamedData(
        files=tuple(files),
        feature_names=tuple(chosen),
        target_name=target_name,
        dtype=dtype,
        groups=tuple(groups),
        moments=Moments(0, np.zeros(len(chosen) + 1), np.zeros((len(chosen) + 1,) * 2)),
        abs_max=np.zeros(len(chosen)),
        reason=reason,
        read_rows=read_rows,
    )
    return scan(stream, labels=labels, seed=seed, name=name)


@dataclass
class _Scan:
    """What the pass has found so far."""

    n_columns: int
    moments: Moments
    abs_max: np.ndarray
    bad: np.ndarray  # non-finite values per column
    first_bad: np.ndarray  # 1-based data row of each column's first, 0 for none
    label_counts: dict[float, int] = field(default_factory=dict)
    rows: int = 0


def scan(
    stream: StreamedData, *, labels: Optional[tuple[str, str]], seed: int, name: str
) -> tuple[StreamedData, np.ndarray, np.ndarray]:
    """One pass over the data: row count, moments, a classifier's classes and their rows, the
    non-finite checks (`dataset.make_dataset`'s one-line error) and a seeded sample of rows
    (each row kept with the same probability, so about SAMPLE_ROWS of them)."""
    d = stream.n_features
    total = sum(rows for _, _, rows in stream.groups)
    keep = min(SAMPLE_ROWS, max(1, SAMPLE_BYTES // ((d + 1) * np.dtype(stream.dtype).itemsize)))
    share = min(1.0, keep / max(total, 1))
    rng = np.random.default_rng(seed)
    state = _Scan(
        d + 1, stream.moments, np.zeros(d), np.zeros(d + 1, np.int64), np.zeros(d + 1, np.int64)
    )
    sample_x, sample_y = [], []
    for x, y in stream.chunks():
        _check_finite(state, x, y)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported later
            state.moments = state.moments.merge(Moments.of(x, y))
            if len(y):
                largest = np.maximum(x.max(axis=0), -x.min(axis=0)).astype(np.float64)
                state.abs_max = np.maximum(state.abs_max, largest)
        if labels is not None and not state.bad[d]:
            _count_labels(state, y, stream.target_name, name)
        if share < 1:
            chosen = rng.random(len(y)) < share
            x, y = x[chosen], y[chosen]
        sample_x.append(x)
        sample_y.append(y)
        state.rows = state.moments.rows  # rows before the next block, for its first bad row
    if state.moments.rows == 0:
        raise GdflowError(f"data file {name!r} has a header but no data rows; add data rows")
    for j, column in enumerate([*stream.feature_names, stream.target_name]):
        if state.bad[j]:
            raise GdflowError(
                f"column {column!r} in {name} has {int(state.bad[j])} missing, NaN or infinite "
                f"value(s) (first in data row {int(state.first_bad[j])}) or values too large "
                f"for {stream.dtype}; clean or drop those rows"
            )
    found = replace(stream, moments=state.moments, abs_max=state.abs_max)
    x_sample = np.ascontiguousarray(np.concatenate(sample_x)[:keep])
    y_sample = np.ascontiguousarray(np.concatenate(sample_y)[:keep])
    if labels is not None:
        task, model = labels
        values = np.array(sorted(state.label_counts), dtype=stream.dtype)
        _, classes = encode_labels(
            values, task=task, model=model, column=stream.target_name, source=name
        )
        counts = np.array([state.label_counts[v] for v in sorted(state.label_counts)], np.int64)
        found = replace(found, classes=classes, class_values=values, class_counts=counts)
        y_sample = found.encode(y_sample)
    return found, x_sample, y_sample


def _count_labels(state: _Scan, y: np.ndarray, column: str, name: str) -> None:
    """Add a block's rows per raw label value; GdflowError past MAX_CLASSES values."""
    values, counts = np.unique(y, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist()):
        state.label_counts[value] = state.label_counts.get(value, 0) + count
    if len(state.label_counts) > MAX_CLASSES:
        raise GdflowError(
            f"column {column!r} in {name} has more than {MAX_CLASSES} classes, the most "
            "gdflow trains on; is it a class label? (use --model linear to predict a number)"
        )


def _check_finite(state: _Scan, x: np.ndarray, y: np.ndarray) -> None:
    """Count each column's non-finite values in the training dtype, and note the first."""
    for j in range(state.n_columns):
        column = x[:, j] if j < state.n_columns - 1 else y
        bad = ~np.isfinite(column)
        if bad.any():
            if not state.bad[j]:
                state.first_bad[j] = state.rows + int(np.argmax(bad)) + 1
            state.bad[j] += int(bad.sum())


def buffer_rows(batch_size: int, requested: Optional[int] = None, *, row_bytes: int = 1) -> int:
    """Rows the shuffle buffer holds: `requested`, else BUFFER_BATCHES batches and at least
    MIN_BUFFER_ROWS, within BUFFER_BYTES (`row_bytes` a row); never fewer than one batch."""
    if requested is None:
        wanted = max(BUFFER_BATCHES * batch_size, MIN_BUFFER_ROWS)
        requested = min(wanted, BUFFER_BYTES // max(row_bytes, 1))
    return max(requested, batch_size)


def shuffled(
    chunks: Iterator[tuple[np.ndarray, np.ndarray]],
    *,
    batch_size: int,
    capacity: int,
    permutation: Callable[[int], np.ndarray],
) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """Mini-batches of `batch_size` rows (the last one what is left) from `chunks`, shuffled
    through a buffer of `capacity` rows: whenever it is full and more rows come, a random half
    of it (`permutation(n)`: a random order of range(n)) goes out as batches and the incoming
    rows take their places. Each row goes out exactly once; when the buffer holds every row,
    the batches are those of one permutation of all rows in the order read."""
    x_buf: Optional[np.ndarray] = None
    y_buf: Optional[np.ndarray] = None
    count = 0  # rows held
    free = np.empty(0, dtype=np.int64)  # slots of the rows sent out, refilled first
    capacity = max(capacity, batch_size)
    out = max(batch_size, (capacity // 2) // batch_size * batch_size)  # rows sent per round
    for x, y in chunks:
        if x_buf is None:
            x_buf = np.empty((capacity, x.shape[1]), dtype=x.dtype)
            y_buf = np.empty(capacity, dtype=y.dtype)
        assert y_buf is not None
        start = 0
        while start < len(y):
            if count == capacity:  # full, and more rows to come: send a random half out
                free = permutation(capacity)[:out]
                for first in range(0, out, batch_size):
                    index = free[first : first + batch_size]
                    yield np.take(x_buf, index, axis=0), np.take(y_buf, index)
                count -= out
            take = min(capacity - count, len(y) - start)
            if len(free):  # into the slots just sent out
                slots, free = free[:take], free[take:]
                _as_rows(x_buf)[slots] = _as_rows(x[start : start + take])
                y_buf[slots] = y[start : start + take]
            else:  # filling up for the first time: in the order read
                x_buf[count : count + take] = x[start : start + take]
                y_buf[count : count + take] = y[start : start + take]
            count += take
            start += take
    if x_buf is None or y_buf is None or count == 0:
        return
    if len(free):  # the slots still holding rows
        held = np.ones(capacity, dtype=bool)
        held[free] = False
        order = np.flatnonzero(held)[permutation(count)]
    else:
        order = permutation(count)
    for first in range(0, count, batch_size):
        index = order[first : first + batch_size]
        yield np.take(x_buf, index, axis=0), np.take(y_buf, index)


def _as_rows(a: np.ndarray) -> np.ndarray:
    """A C-ordered 2-d array as one opaque element per row: indexing it copies whole rows
    (several times faster than indexing the 2-d array)."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).reshape(-1)


def prefetched(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """`items`, produced `depth` ahead on a background thread (pyarrow decodes without the
    GIL, so reading the next record batch overlaps training on this one)."""
    done = object()
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="gdflow-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
