"""Load training data: the seed's toy data, or columns of a data set (`data.sources`)."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from gdflow.config.errors import GdflowError
from gdflow.data.labels import Label, check_validation_classes, encode_labels
from gdflow.data.reading import read_numeric
from gdflow.data.sources import (
    DELIMITERS,
    Source,
    TextFormat,
    open_bytes,
    parse_delimiter,
    read_head,
    source_of,
    text_format,
    unsupported,
)
from gdflow.data.streaming import StreamedData, choose_columns, open_stream

if TYPE_CHECKING:  # pandas is imported where a file is read: the toy run never needs it
    import pandas as pd

    from gdflow.data.cluster import ClusterData

#: The seed tutorial's toy data: y is twice x.
TOY_X = (1.0, 2.0, 3.0, 4.0, 5.0)
TOY_Y = (2.0, 4.0, 6.0, 8.0, 10.0)

#: Columns a data file may have, at most: wider files (a "CSV bomb") are refused before parsing.
MAX_COLUMNS = 10_000
#: Feature columns a model may have, at most (the Hessian and least squares are d x d).
MAX_FEATURES = 1_000
#: Bytes of a CSV header row, at most (the parser's block: a longer row cannot be read).
MAX_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class Dataset:
    """Training rows `x` (rows x features) and `y`, optional validation rows, and names."""

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str
    source: str
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    #: Columns of the file left out as its row index (written by pandas' to_csv/to_parquet).
    index_columns: tuple[str, ...] = ()
    #: A classifier's classes in order; `y` (and `y_val`) hold class indices. None: regression.
    classes: Optional[tuple[Label, ...]] = None
    #: The data's fingerprint (`data.fingerprint`): hash, size, rows, columns and types.
    fingerprint: Optional[dict[str, Any]] = None
    #: How the file was read, when that is worth saying: "gzip CSV, detected delimiter ';'".
    read_as: Optional[str] = None
    #: A text file's delimiter and decimal mark, as given or detected (None: not text).
    text: Optional[TextFormat] = None
    #: A data set streamed from its files (`data.streaming`): then `x` and `y` hold a seeded
    #: sample of its rows only (for the data checks and the champion's comparison).
    stream: Optional[StreamedData] = None
    #: A data set kept on a Dask cluster's workers (`data.cluster`): then too `x` and `y` hold
    #: a seeded sample of its rows only.
    cluster: Optional[ClusterData] = None

    @property
    def n_rows(self) -> int:
        """Number of examples (of a streamed or cluster data set: all of them, not only the
        sample's)."""
        if self.stream is not None:
            return self.stream.rows
        if self.cluster is not None:
            return self.cluster.rows
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return int(self.x.shape[1])


def make_dataset(
    x: Sequence[Sequence[float]] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    feature_names: Sequence[str],
    target_name: str,
    source: str,
    dtype: str = "float32",
) -> Dataset:
    """Check shapes and values and build a Dataset; raise GdflowError on bad input."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        x_arr = np.asarray(x, dtype=dtype)
        y_arr = np.asarray(y, dtype=dtype)
    if x_arr.ndim == 1:
        x_arr = x_arr.reshape(-1, 1)
    if x_arr.ndim != 2 or y_arr.ndim != 1:
        raise GdflowError(
            f"{source}: features must be a table and the target a single column "
            f"(got shapes {x_arr.shape} and {y_arr.shape})"
        )
    if x_arr.shape[0] != y_arr.shape[0]:
        raise GdflowError(
            f"{source}: features have {x_arr.shape[0]} rows but the target has "
            f"{y_arr.shape[0]}; give one target value per row"
        )
    if x_arr.shape[0] == 0:
        raise GdflowError(f"{source} has no data rows; add rows or point --data at another file")
    if x_arr.shape[1] != len(feature_names):
        raise GdflowError(
            f"{source}: {x_arr.shape[1]} feature columns but {len(feature_names)} names"
        )
    columns = [*feature_names, target_name]
    values = [*(x_arr[:, j] for j in range(x_arr.shape[1])), y_arr]
    for name, column in zip(columns, values):
        bad = ~np.isfinite(column)
        if bad.any():
            first = int(np.argmax(bad)) + 1
            raise GdflowError(
                f"column {name!r} in {source} has {int(bad.sum())} missing, NaN or infinite "
                f"value(s) (first in data row {first}) or values too large for {dtype}; "
                "clean or drop those rows"
            )
    return Dataset(
        x=np.ascontiguousarray(x_arr),
        y=np.ascontiguousarray(y_arr),
        feature_names=tuple(feature_names),
        target_name=target_name,
        source=source,
    )


def load_toy(dtype: str = "float32") -> Dataset:
    """Return the seed tutorial's five points, y = 2x."""
    return make_dataset(
        [[v] for v in TOY_X],
        TOY_Y,
        feature_names=["x"],
        target_name="y",
        source="toy:y=2x",
        dtype=dtype,
    )


def resolve(path: str) -> Source:
    """The local data file or Parquet folder `path` names; GdflowError with the fix when it is
    missing, empty, or of a kind gdflow does not read."""
    file = Path(path).expanduser()
    if not file.exists():
        raise GdflowError(f"data file {path!r} not found; check the path given to --data")
    source = source_of(file)
    if source is None:
        if file.is_dir():
            raise GdflowError(
                f"--data {path!r} is a folder with no .parquet files; pass a CSV or Parquet "
                "file, or a folder of Parquet files (a partitioned data set)"
            )
        raise GdflowError(unsupported(path))
    if not source.is_folder and file.stat().st_size == 0:
        raise GdflowError(f"data file {path!r} is empty; add a header row and data rows")
    return source


def read_table(
    path: str,
    *,
    csv_index: bool = False,
    delimiter: Optional[str] = None,
    text: Optional[TextFormat] = None,
) -> pd.DataFrame:
    """Read a data set (see `data.sources`) into a DataFrame; raise GdflowError with the fix
    on failure. `csv_index`: the CSV's first column is its row index (Parquet's index is in its
    metadata); `delimiter`: --delimiter; `text`: the CSV's format when already worked out."""
    import pandas as pd

    source = resolve(path)
    kind = source.kind
    try:
        if kind == "CSV":
            if text is None:
                text = text_format(source, parse_delimiter(delimiter), name=path)
            with contextlib.closing(open_bytes(source)) as stream:
                return pd.read_csv(
                    stream,
                    engine="pyarrow",
                    sep=text.delimiter,
                    decimal=text.decimal,
                    index_col=0 if csv_index else None,
                )
        if source.is_folder:
            return _read_parquet_parts(source.parts)
        return pd.read_parquet(source.path)
    except GdflowError:
        raise
    except PermissionError:
        raise GdflowError(
            f"cannot read data file {path!r}: permission denied; make it readable"
        ) from None
    except pd.errors.EmptyDataError:
        raise GdflowError(
            f"data file {path!r} has no header row or no data rows; add a header row and data rows"
        ) from None
    except UnicodeDecodeError:
        raise GdflowError(
            f"data file {path!r} is not UTF-8 text; re-save it as UTF-8 CSV"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a malformed file
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "straddl" in detail:  # pyarrow: a row longer than its 1 MiB block
            detail = f"a row is longer than {MAX_HEADER_BYTES >> 20} MiB"
        what = f"{source.compression}-compressed {kind}" if source.compression else kind
        raise GdflowError(
            f"cannot parse {path!r} as {what} ({detail}); check the file is valid {what}"
        ) from None


def _read_parquet_parts(parts: Sequence[Path]) -> pd.DataFrame:
    """The Parquet files of a folder as one table, in path order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(part) for part in parts]
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def check_header(path: str, text: TextFormat = TextFormat()) -> tuple[str, ...]:  # noqa: B008
    """Check a data set's column names before parsing it: UTF-8, at most MAX_COLUMNS, no
    duplicates (which pandas would silently rename `x.1`), every column named, and for a
    Parquet folder the same columns in every file. Return the columns that hold the row index,
    which are not data: a CSV's first column when its name is empty (as `DataFrame.to_csv`
    writes the index), a Parquet file's index columns named in its pandas metadata (as
    `DataFrame.to_parquet` writes them). Missing files are read_table's (`resolve`)."""
    file = Path(path).expanduser()
    source = source_of(file) if file.exists() else None
    if source is None or (not source.is_folder and file.stat().st_size == 0):
        return ()
    kind = source.kind
    index: tuple[str, ...] = ()
    try:
        if kind == "CSV":
            header = _csv_header(source, path, text)
            index = ("",) if header[:1] == [""] and len(header) > 1 else ()
        else:
            header, index = _parquet_header(source.parts[0] if source.parts else file)
            for part in source.parts[1:]:
                other, _ = _parquet_header(part)
                if sorted(other) != sorted(header):
                    raise GdflowError(
                        f"{part} has columns {', '.join(other)} but {source.parts[0]} has "
                        f"{', '.join(header)}; write every file of {path!r} with the same columns"
                    )
    except (OSError, ValueError):
        return ()  # unreadable or not Parquet: read_table says so
    # The CSV index is the first column only (its name, "", may recur: an error below).
    names = header[len(index) :] if kind == "CSV" else [n for n in header if n not in index]
    if len(names) > MAX_COLUMNS:
        raise GdflowError(
            f"data file {path!r} has {len(names)} columns, more than the {MAX_COLUMNS} gdflow "
            "reads; keep only the columns to train on"
        )
    dupes = sorted({name for name in names if names.count(name) > 1})
    if dupes:
        raise GdflowError(
            f"data file {path!r} has duplicate column names {dupes}; give each column its own name"
        )
    if "" in names:
        position = header.index("", len(index) if kind == "CSV" else 0) + 1
        raise GdflowError(
            f"column {position} of data file {path!r} has no name; name every column in the "
            "header row (or remove a trailing comma)"
        )
    return index


def _csv_header(source: Source, path: str, text: TextFormat) -> list[str]:
    """The first record of a CSV file, decoded as UTF-8 (an optional BOM is dropped)."""
    head = read_head(source, MAX_HEADER_BYTES + 1)
    try:
        decoded = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise GdflowError(
            f"data file {path!r} is not UTF-8 text (byte 0x{head[exc.start]:02x} at offset "
            f"{exc.start}); re-save it as UTF-8 CSV"
        ) from None
    if len(head) > MAX_HEADER_BYTES and "\n" not in decoded and "\r" not in decoded:
        raise GdflowError(
            f"data file {path!r} has a header row longer than {MAX_HEADER_BYTES >> 20} MiB "
            f"(at most {MAX_COLUMNS} columns are read); keep only the columns to train on"
        )
    try:
        return next(csv.reader(io.StringIO(decoded), delimiter=text.delimiter), [])
    except csv.Error as exc:
        raise GdflowError(
            f"cannot parse {path!r} as CSV ({exc}); check the file is valid CSV"
        ) from None


def _parquet_header(file: Path) -> tuple[list[str], tuple[str, ...]]:
    """All columns and the index columns of a Parquet file (read from the footer only)."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(file)
    names = [str(name) for name in schema.names]
    try:
        stored = (schema.pandas_metadata or {}).get("index_columns", [])
    except ValueError:  # pandas metadata that is not JSON: no index known
        stored = []
    # A RangeIndex is stored as a description (a dict), not as a column.
    index = tuple(name for name in stored if isinstance(name, str) and name in names)
    return names, index


def select_columns(
    frame: pd.DataFrame,
    *,
    features: Optional[Sequence[str]],
    target: Optional[str],
    source: str,
    dtype: str = "float32",
    labels: Optional[Labels] = None,
) -> Dataset:
    """Pick feature and target columns, check they are numeric and finite, build a Dataset.
    With `labels` the target holds class labels (any type), encoded as class indices."""
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise GdflowError(f"{source} has duplicate column names {dupes}; rename them")
    if not columns:
        raise GdflowError(f"{source} has no columns; add a header row and data rows")
    feature_names, target_name = choose_columns(
        columns, features=features, target=target, source=source
    )
    for name in feature_names if labels else [*feature_names, target_name]:
        _check_numeric(frame[name], name, source)
    classes = None
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
        x = frame[feature_names].to_numpy(dtype=dtype)
        if labels:
            raw = frame[target_name].astype(object).where(frame[target_name].notna(), None)
            y, classes = labels.encode(raw.to_numpy(), column=target_name, source=source)
        else:
            y = frame[target_name].to_numpy(dtype=dtype)
    dataset = make_dataset(
        x,
        y,
        feature_names=feature_names,
        target_name=target_name,
        source=source,
        dtype=dtype,
    )
    return replace(dataset, classes=classes)


def _check_numeric(column: pd.Series, name: str, source: str) -> None:
    """Raise GdflowError naming the column and its first non-numeric value."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_complex_dtype(column):
        return
    coerced = pd.to_numeric(column, errors="coerce")
    bad = coerced.isna() & column.notna()
    if bad.any():
        row = int(np.argmax(bad.to_numpy())) + 1
        if isinstance(column[bad].iloc[0], bytes):
            raise GdflowError(
                f"column {name!r} in {source} is not UTF-8 text (data row {row}); "
                "re-save the file as UTF-8"
            )
        raise GdflowError(
            f"column {name!r} in {source} is not numeric (value {column[bad].iloc[0]!r} in "
            f"data row {row}); use numeric columns for --features and --target (a target of "
            "class labels needs --model logistic or softmax)"
        )
    raise GdflowError(
        f"column {name!r} in {source} is not numeric ({column.dtype}); "
        "use numeric columns for --features and --target"
    )


@dataclass(frozen=True)
class Labels:
    """How a classifier's target is read: the task ('binary', 'multiclass') and the model."""

    task: str
    model: str

    def encode(
        self, values: Sequence[object] | np.ndarray, *, column: str, source: str
    ) -> tuple[np.ndarray, tuple[Label, ...]]:
        """Class indices of the labels and the classes (see `data.labels`)."""
        return encode_labels(values, task=self.task, model=self.model, column=column, source=source)


def load_dataset(
    path: Optional[str],
    *,
    features: Optional[Sequence[str]] = None,
    target: Optional[str] = None,
    dtype: str = "float32",
    labels: Optional[Labels] = None,
    delimiter: Optional[str] = None,
) -> Dataset:
    """Load the toy data (no path) or the chosen columns of a local data set (`data.sources`:
    CSV or TSV, plain or compressed, a Parquet file or folder). With `labels`, the target holds
    class labels, encoded as class indices (`Dataset.classes`); `delimiter`: --delimiter."""
    if path is None:
        return _with_labels(load_toy(dtype), labels)
    source = resolve(path)
    text = text_format(source, parse_delimiter(delimiter), name=path)
    index = check_header(path, text)
    fast = read_numeric(
        source, features=features, target=target, dtype=dtype, skip=index, text=text
    )
    if fast is not None and len(fast[2]) <= MAX_FEATURES:  # else the general path says why
        x, y, feature_names, target_name = fast
        dataset = make_dataset(
            x, y, feature_names=feature_names, target_name=target_name, source=path, dtype=dtype
        )
        dataset = _with_labels(dataset, labels)
    else:
        frame = read_table(path, csv_index=index == ("",), text=text)
        _check_split(frame, text, path)
        if frame.shape[0] == 0:
            raise GdflowError(f"data file {path!r} has a header but no data rows; add data rows")
        dataset = select_columns(
            frame, features=features, target=target, source=path, dtype=dtype, labels=labels
        )
    return replace(
        dataset,
        index_columns=index,
        read_as=read_as(source, text),
        text=text if source.kind == "CSV" else None,
    )


def load_streamed(
    path: str,
    *,
    features: Optional[Sequence[str]] = None,
    target: Optional[str] = None,
    dtype: str = "float32",
    labels: Optional[Labels] = None,
    seed: int = 0,
    reason: str = "",
) -> Dataset:
    """A Parquet file or folder to stream (`data.streaming`): one pass over it checks it and
    gathers its statistics; the Dataset holds a seeded sample of its rows and the stream."""
    source = resolve(path)
    index = check_header(path)
    stream, x, y = open_stream(
        source,
        features=features,
        target=target,
        dtype=dtype,
        skip=index,
        labels=(labels.task, labels.model) if labels else None,
        seed=seed,
        reason=reason,
        name=path,
    )
    return Dataset(
        x=x,
        y=y,
        feature_names=stream.feature_names,
        target_name=stream.target_name,
        source=path,
        index_columns=index,
        classes=stream.classes,
        read_as=read_as(source, TextFormat()),
        stream=stream,
    )


def _check_split(frame: pd.DataFrame, text: TextFormat, path: str) -> None:
    """A text table read as one column whose name holds another delimiter was split by the
    wrong one: say which to pass."""
    if frame.shape[1] != 1:
        return
    name = str(frame.columns[0])
    other = next((d for d in DELIMITERS if d != text.delimiter and d in name), None)
    if other is not None:
        shown = "tab" if other == "\t" else repr(other)
        raise GdflowError(
            f"{path!r} read with delimiter {text.delimiter!r} has one column {name!r}; its "
            f"columns look separated by {shown}: pass --delimiter {shown}"
        )


def read_as(source: Source, text: TextFormat) -> Optional[str]:
    """How `source` was read, for the run's log, when it is more than a plain file:
    "gzip-compressed CSV, detected delimiter ';'", "Parquet folder of 12 files"."""
    if source.is_folder:
        return f"Parquet folder of {len(source.parts)} file(s)"
    parts = []
    if source.compression:
        parts.append(f"{source.compression}-compressed {source.kind}")
    if text.note:
        parts.append(text.note)
    return ", ".join(parts) or None


def _with_labels(dataset: Dataset, labels: Optional[Labels]) -> Dataset:
    """A numeric dataset whose target values are class labels, encoded (unchanged without)."""
    if labels is None:
        return dataset
    y, classes = labels.encode(dataset.y, column=dataset.target_name, source=dataset.source)
    return replace(dataset, y=y.astype(dataset.x.dtype), classes=classes)


def split_validation(dataset: Dataset, fraction: float, *, seed: int) -> Dataset:
    """Hold out a seeded random `fraction` of the rows for validation (0: unchanged)."""
    if fraction <= 0:
        return dataset
    n = dataset.n_rows
    n_val = int(round(n * fraction))
    if n_val < 1 or n - n_val < 1:
        raise GdflowError(
            f"--validation-split {fraction:g} of {n} rows leaves {n - n_val} for training and "
            f"{n_val} for validation; use more rows or another split"
        )
    order = np.random.default_rng(seed).permutation(n)
    train, val = np.sort(order[n_val:]), np.sort(order[:n_val])
    if dataset.classes is not None:
        check_validation_classes(
            dataset.y[train].astype(np.int64),
            dataset.y[val].astype(np.int64),
            dataset.classes,
            split=fraction,
        )
    return replace(
        dataset,
        x=np.ascontiguousarray(dataset.x[train]),
        y=np.ascontiguousarray(dataset.y[train]),
        x_val=np.ascontiguousarray(dataset.x[val]),
        y_val=np.ascontiguousarray(dataset.y[val]),
    )
