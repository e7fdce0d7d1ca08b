"""Parquet data sets on a Dask cluster: each file read, checked and kept by a worker.

`connect` reaches the scheduler at `--dask-address` (or starts a `distributed.LocalCluster`
for `local` / `local:N`). `open_cluster` lists the data's Parquet files on a worker (the
workers, not the driver, must see the data: a shared path or an fsspec URL), then has one task
per file read it (`read_part`: its bytes hashed as they are parsed, so the fingerprint
describes exactly the rows trained on), and keeps the rows there as a future. From each file
the driver receives small things only: its row count, the columns' moments (merged in file
order, Chan et al.), the non-finite checks, a classifier's label counts, the file's SHA-256,
and a seeded share of rows for the data checks and the champion's comparison (at most
SAMPLE_ROWS in all, as a streamed data set keeps). Every wait for the workers is bounded:
when none of the tasks finishes for `--cluster-timeout` seconds (every worker gone, say) the
run fails with one line instead of waiting forever. The training that uses these futures is
`training/cluster.py`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from gdflow.config.errors import GdflowError
from gdflow.config.train import CLUSTER_TIMEOUT, LOCAL_ADDRESS, TrainConfig
from gdflow.data.fingerprint import manifest_fingerprint
from gdflow.data.labels import MAX_CLASSES, Label, encode_labels
from gdflow.data.sources import PARQUET_SUFFIXES, is_url, kind_of, local_path
from gdflow.data.streaming import (
    SAMPLE_BYTES,
    SAMPLE_ROWS,
    Moments,
    RowsElsewhere,
    choose_columns,
)

if TYPE_CHECKING:
    from gdflow.data.dataset import Dataset

#: Worker processes of `--dask-address local`.
LOCAL_WORKERS = 2
#: Seconds to wait for the scheduler at `--dask-address` to answer.
CONNECT_SECONDS = 10.0


def cluster_failure(exc: BaseException, what: str) -> GdflowError:
    """The one-line error of a cluster that could not `what` (a GdflowError raised on a worker
    is its own message; a message whose first line ends in ':' keeps its second, e.g. why
    Dask cancelled the futures)."""
    if isinstance(exc, GdflowError):
        return exc
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = (
        " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else "".join(lines[:1])
    )
    name = type(exc).__name__
    return GdflowError(
        f"the Dask cluster could not {what} ({name}{': ' + detail if detail else ''}); "
        "no step was taken on a partial gradient: check the workers' logs and run again"
    )


def cluster_blockers(config: TrainConfig) -> list[str]:
    """What in `config` a run on a Dask cluster cannot do (empty: it can)."""
    found = []
    if config.data is None:
        found.append("the toy data (give --data: a Parquet file or folder the workers can read)")
    elif kind_of(config.data.rstrip("/"))[0] == "CSV":
        found.append(
            "a CSV or TSV --data (the workers read Parquet: write it as a Parquet file or "
            "folder, e.g. pandas.read_csv(...).to_parquet(...))"
        )
    if config.batch_size is not None:
        found.append("--batch-size (the cluster trains full-batch epochs: drop it)")
    if config.stream:
        found.append("--stream (the workers keep the rows in memory: drop it)")
    if config.validation_split:
        found.append("--validation-split (no rows are held out on the cluster: drop it)")
    if config.user_model:
        found.append(
            f"--model {config.model} (a user's model: the cluster trains linear, logistic, "
            "softmax or mlp)"
        )
    if config.lr == "auto" and config.class_weight is not None and not config.network:
        found.append("--lr auto with --class-weight (give --lr)")
    if config.device not in ("cpu", "auto"):
        found.append(f"--device {config.device} (the workers compute on their CPUs: drop it)")
    return found


@dataclass
class Connection:
    """A client of a Dask scheduler, and the local cluster gdflow started for it (if any).
    `wait` and `gather` fail in one line when none of their tasks finishes for
    `cluster_timeout` seconds, so a cluster whose workers are all gone fails the run instead
    of hanging it (Dask itself waits for a worker forever)."""

    client: Any
    address: str
    cluster: Any = None
    #: Seconds without any task finishing after which `wait` and `gather` fail.
    cluster_timeout: float = CLUSTER_TIMEOUT

    @property
    def workers(self) -> int:
        """Workers the scheduler has now."""
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def describe(self) -> str:
        """Where the run trains, for its log: `the Dask cluster at tcp://...` or a local one."""
        if self.cluster is not None:
            return f"a local Dask cluster of {self.workers} worker process(es) ({self.address})"
        return f"the Dask cluster at {self.address} ({self.workers} worker(s))"

    def wait(self, futures: Sequence[Any], what: str) -> None:
        """Wait until every future has finished (a worker lost on the way: Dask recomputes its
        tasks elsewhere); a task's error is raised as it comes. GdflowError (one line) when
        none finishes for `cluster_timeout` seconds; `what`: the tasks, for that line."""
        from distributed import wait

        pending = list(futures)
        while pending:
            try:
                done, waiting = wait(
                    pending, timeout=self.cluster_timeout, return_when="FIRST_COMPLETED"
                )
                for future in done:
                    if future.status != "finished":
                        future.result()  # the task's error, or why it was cancelled
            except TimeoutError:
                raise self._no_answer(what) from None
            except Exception as exc:  # noqa: BLE001 - a worker's error, in one line
                raise cluster_failure(exc, f"finish {what}") from None
            pending = list(waiting)

    def gather(self, futures: Sequence[Any], what: str) -> list[Any]:
        """The futures' results in their order (`wait`, then fetched within
        `cluster_timeout` seconds: a worker lost before its result came back has it computed
        again, or the run fails, never hangs)."""
        from distributed import as_completed

        self.wait(futures, what)
        found: dict[str, Any] = {}
        try:
            for future, value in as_completed(
                futures, with_results=True, timeout=self.cluster_timeout
            ):
                found[future.key] = value
        except TimeoutError:
            raise self._no_answer(what) from None
        return [found[future.key] for future in futures]

    def _no_answer(self, what: str) -> GdflowError:
        return GdflowError(
            f"no Dask worker answered for {self.cluster_timeout:g} s at {self.address} "
            f"({what}): start workers or raise --cluster-timeout"
        )

    def close(self) -> None:
        """Close the client (its futures are released: the workers drop the data), and the
        local cluster if gdflow started it."""
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()


def connect(
    address: str, *, timeout: Optional[float] = None, cluster_timeout: float = CLUSTER_TIMEOUT
) -> Connection:
    """A client of the scheduler at `address` (waiting `timeout` seconds for it to answer), or
    of a new LocalCluster for `local[:N]`; GdflowError (one line, with the fix) when no
    scheduler answers there. `cluster_timeout`: see `Connection`."""
    from distributed import Client, LocalCluster

    local = LOCAL_ADDRESS.fullmatch(address.strip())
    if local:
        workers = int(local.group(1) or LOCAL_WORKERS)
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        try:
            client = Client(cluster)
            return Connection(client, cluster.scheduler_address, cluster, cluster_timeout)
        except BaseException:
            cluster.close()
            raise
    try:
        client = Client(address, timeout=timeout if timeout is not None else CONNECT_SECONDS)
    except (OSError, TimeoutError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GdflowError(
            f"cannot reach the Dask scheduler at {address} ({detail}); start one ('dask "
            "scheduler', then 'dask worker ADDRESS' on each machine), fix --dask-address, or "
            "use --dask-address local"
        ) from None
    return Connection(client, address, cluster_timeout=cluster_timeout)


# --- What runs on the workers -----------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One Parquet file's rows as a worker keeps them: features and raw target in the
    training dtype, and what its bytes hashed to."""

    index: int
    x: np.ndarray
    y: np.ndarray
    digest: str
    size: int


@dataclass(frozen=True)
class PartSummary:
    """What the driver receives of one file: its rows' statistics and checks."""

    index: int
    rows: int
    moments: Moments
    abs_max: np.ndarray
    bad: np.ndarray  # non-finite values per column (features, then target)
    first_bad: np.ndarray  # 1-based row of the file of each column's first, 0 for none
    labels: dict[float, int]
    digest: str
    size: int


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unreadable(location: str, exc: BaseException) -> GdflowError:
    return GdflowError(
        f"a Dask worker cannot read {location} ({_first_line(exc)}); the workers must see the "
        "data: a path on a file system they share, or an fsspec URL (s3://...) with "
        "$GDFLOW_DATA_OPTIONS"
    )


def _read_bytes(location: str, options: dict[str, Any]) -> bytes:
    """A file's bytes, local or at an fsspec URL."""
    try:
        if is_url(location):
            import fsspec

            with fsspec.open(location, "rb", **options) as handle:
                return bytes(handle.read())
        return local_path(location).read_bytes()
    except Exception as exc:  # noqa: BLE001 - any driver or OS error: the worker cannot read it
        raise _unreadable(location, exc) from None


def list_parts(location: str, options: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, relative name) of the Parquet file `location`, or of each Parquet file of the
    folder in path order, leaving out hidden and bookkeeping files as `parquet_parts` does
    (run on a worker: the workers must see the data)."""
    try:
        if is_url(location):
            import fsspec

            fs, root = fsspec.core.url_to_fs(location, **options)
            protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
            if fs.isdir(root):
                base = root.rstrip("/")
                # In path order, as parquet_parts lists a local folder ('x=1/…' before
                # 'x=1.5/…'), so that both give the same files in the same order.
                names = sorted(
                    (p[len(base) + 1 :] for p in fs.find(root)),
                    key=lambda name: PurePosixPath(name).parts,
                )
                return [
                    (f"{protocol}://{base}/{name}", name) for name in names if _is_parquet(name)
                ]
            if not fs.exists(root):
                raise FileNotFoundError(location)
            return [(location, PurePosixPath(root).name)]
        path = local_path(location)
        if path.is_dir():
            from gdflow.data.sources import parquet_parts

            return [(str(p), p.relative_to(path).as_posix()) for p in parquet_parts(path)]
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        return [(str(path), path.name)]
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(location, exc) from None


def _is_parquet(relative: str) -> bool:
    parts = PurePosixPath(relative).parts
    hidden = any(part.startswith((".", "_")) for part in parts)
    return not hidden and PurePosixPath(relative).suffix.lower() in PARQUET_SUFFIXES


def read_schema(location: str, options: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(name, type, numeric) of each column of one Parquet file (its footer only), the
    columns pandas wrote as its index left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _read_bytes(location, options)
    try:
        schema = pq.read_schema(pa.BufferReader(data))
    except Exception as exc:  # noqa: BLE001
        raise GdflowError(
            f"cannot read {location} as Parquet ({_first_line(exc)}); check it is valid Parquet"
        ) from None
    try:
        stored = (schema.pandas_metadata or {}).get("index_columns", [])
    except ValueError:
        stored = []
    index = {name for name in stored if isinstance(name, str)}
    return [
        (f.name, str(f.type), pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
        for f in schema
        if f.name not in index
    ]


def read_part(
    index: int, location: str, columns: Sequence[str], dtype: str, options: dict[str, Any]
) -> Part:
    """One file's chosen columns (features, then the target) in `dtype`, read on a worker:
    its bytes read once, hashed and parsed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _read_bytes(location, options)
    try:
        table = pq.read_table(pa.BufferReader(data), columns=list(columns))
    except Exception as exc:  # noqa: BLE001
        raise GdflowError(
            f"cannot read columns {', '.join(columns)} of {location} as Parquet "
            f"({_first_line(exc)}); write every file with the same numeric columns"
        ) from None
    for name, column in zip(columns, table.columns):
        kind = column.type
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            raise GdflowError(
                f"column {name!r} in {location} is not numeric ({kind}); use numeric columns "
                "for --features and --target (the cluster reads numeric class labels only)"
            )
    n = table.num_rows
    x = np.empty((n, len(columns) - 1), dtype=dtype)
    y = np.empty(n, dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # the summary reports overflow
        for j, column in enumerate(table.columns):
            values = column.to_numpy()  # nulls become NaN
            if j < len(columns) - 1:
                x[:, j] = values
            else:
                y[:] = values
    return Part(index, x, y, hashlib.sha256(data).hexdigest(), len(data))


def checked(part: Part, digest: str, where: str) -> Part:
    """`part` when its bytes are those the run recorded; GdflowError when its worker was lost,
    Dask read the file again and it had changed meanwhile (never a gradient of other rows)."""
    if part.digest != digest:
        raise GdflowError(
            f"{where} changed while the run used it: a lost worker's rows were read again and "
            f"their sha256 is {part.digest[:12]}..., not the {digest[:12]}... this run recorded; "
            "leave the data unchanged while a run trains, then run again"
        )
    return part


def summarize(part: Part, labels: bool) -> PartSummary:
    """The statistics and checks of one kept file (run on its worker)."""
    x, y = part.x, part.y
    d = x.shape[1]
    columns = [*(x[:, j] for j in range(d)), y]
    bad = np.zeros(d + 1, np.int64)
    first_bad = np.zeros(d + 1, np.int64)
    for j, column in enumerate(columns):
        mask = ~np.isfinite(column)
        if mask.any():
            bad[j], first_bad[j] = int(mask.sum()), int(np.argmax(mask)) + 1
    with np.errstate(over="ignore", invalid="ignore"):
        moments = (
            Moments.of(x, y) if len(y) else Moments(0, np.zeros(d + 1), np.zeros((d + 1,) * 2))
        )
        abs_max = (
            np.maximum(x.max(axis=0), -x.min(axis=0)).astype(np.float64) if len(y) else np.zeros(d)
        )
    counts: dict[float, int] = {}
    if labels and not bad[d]:
        values, found = np.unique(y, return_counts=True)
        # One more than MAX_CLASSES is enough for the driver to refuse the column: a number
        # column given as a class label (one value a row) does not travel to the driver.
        keep = MAX_CLASSES + 1
        counts = dict(zip(values[:keep].tolist(), found[:keep].tolist()))
    return PartSummary(
        part.index, len(y), moments, abs_max, bad, first_bad, counts, part.digest, part.size
    )


def sample_part(
    part: Part, share: float, seed: int, digest: str, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded share of one file's rows (each kept with probability `share`)."""
    part = checked(part, digest, where)
    if share >= 1:
        return part.x, part.y
    chosen = np.random.default_rng([seed, part.index]).random(len(part.y)) < share
    return part.x[chosen], part.y[chosen]


# --- The data set as the driver sees it ------------------------------------------------------


@dataclass(frozen=True)
class ClusterData(RowsElsewhere):
    """A Parquet data set kept on a Dask cluster's workers, one future per file, and what the
    driver knows of it: names, row counts, moments, classes and the files' hashes."""

    connection: Connection = field(compare=False, repr=False)
    location: str
    #: Each file's location and its name relative to `location` (the fingerprint's manifest).
    files: tuple[tuple[str, str], ...]
    is_folder: bool
    feature_names: tuple[str, ...]
    target_name: str
    dtype: str
    #: Futures of the files' `Part`s, in file order, held by the workers.
    parts: tuple[Any, ...] = field(compare=False, repr=False)
    part_rows: tuple[int, ...]
    moments: Moments
    abs_max: np.ndarray
    digests: tuple[str, ...]
    sizes: tuple[int, ...]
    schema: tuple[tuple[str, str, bool], ...]
    classes: Optional[tuple[Label, ...]] = None
    class_values: Optional[np.ndarray] = None
    class_counts: Optional[np.ndarray] = None
    options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def expected(self) -> list[tuple[Any, str, str]]:
        """(future of its Part, sha256 the run recorded, where) of each file, in file order:
        what a task on a file's rows checks (`checked`) before it uses them."""
        return [(p, d, where) for p, d, (where, _) in zip(self.parts, self.digests, self.files)]

    @property
    def client(self) -> Any:
        """The Dask client."""
        return self.connection.client

    def fingerprint(self) -> dict[str, Any]:
        """The data's fingerprint as `data.fingerprint.fingerprint` gives it for the same
        file or folder, from the workers' hashes of each file."""
        if self.is_folder:
            digest = manifest_fingerprint(
                (name, d) for (_, name), d in zip(self.files, self.digests)
            )
        else:
            digest = f"sha256:{self.digests[0]}"
        found: dict[str, Any] = {
            "sha256": digest,
            "bytes": sum(self.sizes),
            "rows": self.rows,
            "columns": [{"name": name, "type": kind} for name, kind, _ in self.schema],
        }
        if self.is_folder:
            found["files"] = len(self.files)
        return found


def open_cluster(
    connection: Connection,
    location: str,
    *,
    features: Optional[Sequence[str]],
    target: Optional[str],
    dtype: str,
    labels: Optional[tuple[str, str]] = None,
    seed: int = 0,
    options: Optional[dict[str, Any]] = None,
) -> tuple[ClusterData, np.ndarray, np.ndarray]:
    """The data set at `location` read onto the workers (one kept future per file), checked,
    and a seeded sample of its rows (x, y; a classifier's y as class indices). `labels`:
    (task, model) of a classifier; `options`: fsspec storage options of a URL."""
    options = options or {}
    client = connection.client
    listed = client.submit(list_parts, location, options, pure=False)
    (files,) = connection.gather([listed], f"listing {location}")
    if not files:
        raise GdflowError(
            f"--data {location!r} is a folder with no .parquet files; the cluster reads Parquet "
            "files and folders of them"
        )
    footer = client.submit(read_schema, files[0][0], options, pure=False)
    (schema,) = connection.gather([footer], f"reading the schema of {files[0][0]}")
    names = [name for name, _, _ in schema]
    chosen, target_name = choose_columns(names, features=features, target=target, source=location)
    columns = [*chosen, target_name]
    parts = tuple(
        client.submit(read_part, i, where, columns, dtype, options, pure=False)
        for i, (where, _) in enumerate(files)
    )
    connection.wait(parts, f"reading the {len(parts)} file(s) of {location}")
    summaries = connection.gather(
        [client.submit(summarize, part, labels is not None, pure=False) for part in parts],
        "summarizing the files",
    )
    found = _merge(summaries, columns, [where for where, _ in files], dtype, location)
    total = found.moments.rows
    keep = min(SAMPLE_ROWS, max(1, SAMPLE_BYTES // (len(columns) * np.dtype(dtype).itemsize)))
    share = min(1.0, keep / max(total, 1))
    samples = connection.gather(
        [
            client.submit(sample_part, part, share, seed, s.digest, where, pure=False)
            for part, s, (where, _) in zip(parts, summaries, files)
        ],
        "sampling the files",
    )
    x_sample = np.ascontiguousarray(np.concatenate([x for x, _ in samples])[:keep])
    y_sample = np.ascontiguousarray(np.concatenate([y for _, y in samples])[:keep])
    data = ClusterData(
        connection=connection,
        location=location,
        files=tuple((str(where), str(name)) for where, name in files),
        is_folder=len(files) > 1 or files[0][1] != PurePosixPath(location.rstrip("/")).name,
        feature_names=tuple(chosen),
        target_name=target_name,
        dtype=dtype,
        parts=parts,
        part_rows=tuple(s.rows for s in summaries),
        moments=found.moments,
        abs_max=found.abs_max,
        digests=tuple(s.digest for s in summaries),
        sizes=tuple(s.size for s in summaries),
        schema=tuple(schema),
        options=options,
    )
    if labels is not None:
        task, model = labels
        values = np.array(sorted(found.labels), dtype=dtype)
        _, classes = encode_labels(
            values, task=task, model=model, column=target_name, source=location
        )
        counts = np.array([found.labels[v] for v in sorted(found.labels)], np.int64)
        data = _with_classes(data, classes, values, counts)
        y_sample = data.encode(y_sample)
    return data, x_sample, y_sample


def _with_classes(
    data: ClusterData, classes: tuple[Label, ...], values: np.ndarray, counts: np.ndarray
) -> ClusterData:
    from dataclasses import replace

    return replace(data, classes=classes, class_values=values, class_counts=counts)


@dataclass
class _Merged:
    moments: Moments
    abs_max: np.ndarray
    labels: dict[float, int]


def _merge(
    summaries: Sequence[PartSummary],
    columns: Sequence[str],
    where: Sequence[str],
    dtype: str,
    location: str,
) -> _Merged:
    """The files' summaries merged in file order; GdflowError for the first file with a
    non-finite value, for no rows, and past MAX_CLASSES labels."""
    d = len(columns) - 1
    merged = _Merged(Moments(0, np.zeros(d + 1), np.zeros((d + 1,) * 2)), np.zeros(d), {})
    for summary in sorted(summaries, key=lambda s: s.index):
        for j, name in enumerate(columns):
            if summary.bad[j]:
                raise GdflowError(
                    f"column {name!r} in {where[summary.index]} has {int(summary.bad[j])} "
                    f"missing, NaN or infinite value(s) (first in data row "
                    f"{int(summary.first_bad[j])} of that file) or values too large for "
                    f"{dtype}; clean or drop those rows"
                )
        with np.errstate(over="ignore", invalid="ignore"):
            merged.moments = merged.moments.merge(summary.moments)
            merged.abs_max = np.maximum(merged.abs_max, summary.abs_max)
        for value, count in summary.labels.items():
            merged.labels[value] = merged.labels.get(value, 0) + count
        if len(merged.labels) > MAX_CLASSES:
            raise GdflowError(
                f"column {columns[-1]!r} in {location} has more than {MAX_CLASSES} classes, the "
                "most gdflow trains on; is it a class label? (use --model linear to predict a "
                "number)"
            )
    if merged.moments.rows == 0:
        raise GdflowError(f"data {location!r} has a header but no data rows; add data rows")
    return merged


def load_cluster(
    connection: Connection,
    location: str,
    *,
    features: Optional[Sequence[str]] = None,
    target: Optional[str] = None,
    dtype: str = "float32",
    labels: Optional[tuple[str, str]] = None,
    seed: int = 0,
    options: Optional[dict[str, Any]] = None,
) -> Dataset:
    """A Parquet file or folder read onto the cluster's workers (`open_cluster`): the Dataset
    holds a seeded sample of its rows, the kept data (`Dataset.cluster`) and its fingerprint."""
    from gdflow.data.dataset import Dataset

    data, x, y = open_cluster(
        connection,
        location,
        features=features,
        target=target,
        dtype=dtype,
        labels=labels,
        seed=seed,
        options=options,
    )
    files = len(data.files)
    return Dataset(
        x=x,
        y=y,
        feature_names=data.feature_names,
        target_name=data.target_name,
        source=location,
        classes=data.classes,
        fingerprint=data.fingerprint(),
        read_as=f"Parquet, {files} file(s) read and kept by the Dask workers",
        cluster=data,
    )
