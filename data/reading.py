"""Fast read path for numeric CSV (any delimiter, plain or compressed) and Parquet files or
folders: pyarrow batches straight into NumPy.

Only the chosen columns are read, a block (CSV) or row group and column (Parquet) at a time,
each copied (and cast to the training dtype) straight into the final C-ordered arrays. Peak
memory stays near one copy of the data plus a block: no pandas frame, whole-file float64 table
or second copy is made.

Anything unusual (missing or duplicate names, a non-numeric column, empty cells, a parse error)
returns None, and `tasks.data` reads the file the general way, which reports the problem.
Values are converted as the general path converts them (numbers parsed as float64, or read as
stored from Parquet, then cast to the training dtype), so both paths give the same arrays
(CSV integers beyond 2**53 aside).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gdflow.data.sources import Source, TextFormat, arrow_input, open_bytes


def read_numeric(
    source: Source,
    *,
    features: Optional[Sequence[str]],
    target: Optional[str],
    dtype: str,
    skip: Sequence[str] = (),
    text: TextFormat = TextFormat(),  # noqa: B008 - frozen, safe as a default
) -> Optional[tuple[np.ndarray, np.ndarray, list[str], str]]:
    """(x, y, feature names, target name) of a numeric data set, or None to use the general
    path. `skip`: columns that are not data (the file's row index); `text`: a CSV's format."""
    try:
        if source.kind == "CSV":
            names = _csv_names(source, text)
        else:
            import pyarrow.parquet as pq

            names = list(pq.ParquetFile(_first_part(source)).schema_arrow.names)
        chosen = _choose([name for name in names if name not in skip], features, target)
        if chosen is None:
            return None
        if source.kind == "CSV":
            batches, rows_hint = _csv_batches(source, text, chosen), _csv_rows(source)
        else:
            files = source.parts or (source.path,)
            batches = (b for file in files for b in _parquet_batches(file, chosen))
            rows_hint = sum(_parquet_rows(file) for file in files)
        arrays = _fill(batches, chosen, np.dtype(dtype), rows_hint)
    except Exception:  # noqa: BLE001 - the general path reads the file again and says why
        return None
    if arrays is None or arrays[0].shape[0] == 0:
        return None
    return arrays[0], arrays[1], chosen[:-1], chosen[-1]


def _first_part(source: Source) -> Path:
    return source.parts[0] if source.parts else source.path


def _choose(
    names: list[str], features: Optional[Sequence[str]], target: Optional[str]
) -> Optional[list[str]]:
    """Feature names then the target, as the general path picks them; None when in doubt."""
    if not names or len(set(names)) != len(names):
        return None
    target_name = target if target is not None else names[-1]
    feature_names = [n for n in names if n != target_name] if features is None else list(features)
    chosen = [*feature_names, target_name]
    if not feature_names or len(set(chosen)) != len(chosen) or not set(chosen) <= set(names):
        return None
    return chosen


def _csv_names(source: Source, text: TextFormat) -> list[str]:
    import pyarrow.csv as pacsv

    with pacsv.open_csv(arrow_input(source), parse_options=parse_options(text)) as reader:
        return list(reader.schema.names)


def parse_options(text: TextFormat) -> Any:
    """pyarrow's CSV parse options for the format (its delimiter)."""
    import pyarrow.csv as pacsv

    return pacsv.ParseOptions(delimiter=text.delimiter)


def _csv_rows(source: Source) -> int:
    """Data rows of a CSV by counting line ends, one pass over the bytes with no parsing.

    Exact for the usual file; a quoted field holding a line end or a blank line makes it too
    high (the arrays are shrunk at the end), and lone-CR line ends make it too low (the arrays
    grow). Either way the values read are the same."""
    lines, last = 0, bytearray(b"\n")
    buffer = bytearray(1 << 24)
    plain = source.compression is None
    with open(source.path, "rb", buffering=0) if plain else open_bytes(source) as handle:
        while size := handle.readinto(buffer):
            lines += buffer.count(b"\n", 0, size)
            last = buffer[size - 1 : size]
    if last != b"\n":
        lines += 1  # the last line has no line end
    return max(1, lines - 1)  # less the header


def _csv_batches(
    source: Source, text: TextFormat, chosen: list[str]
) -> Iterator[tuple[int, Iterator[Any]]]:
    """(rows, columns) of each CSV block, numbers parsed as float64."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    convert = pacsv.ConvertOptions(
        include_columns=chosen,
        column_types={name: pa.float64() for name in chosen},
        decimal_point=text.decimal,
    )
    # 4 MiB blocks: the reader's read-ahead blocks and their float64 columns, which its memory
    # pool keeps, stay small beside the arrays being filled (16 MiB: 0.5x the float32 matrix
    # more at peak, no faster).
    with pacsv.open_csv(
        arrow_input(source),
        read_options=pacsv.ReadOptions(block_size=1 << 22),
        parse_options=parse_options(text),
        convert_options=convert,
    ) as reader:
        for batch in reader:
            yield batch.num_rows, (batch.column(name) for name in chosen)


def _parquet_rows(file: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(file).metadata.num_rows)


def _parquet_batches(file: Path, chosen: list[str]) -> Iterator[tuple[int, Iterator[Any]]]:
    """(rows, columns) of each row group, one column decoded at a time (decoding a whole row
    group at once holds several times its size in pyarrow's memory pool)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    for group in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        yield rows, (parquet.read_row_group(group, columns=[name]).column(0) for name in chosen)


def _fill(
    batches: Iterator[tuple[int, Iterator[Any]]], chosen: list[str], dtype: np.dtype, rows_hint: int
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Copy each batch's columns into x and y; None on a non-numeric or empty cell.

    The arrays start at `rows_hint` rows (the file's row count, so normally they are allocated
    once) and are shrunk at the end if it was too high; untouched pages are never resident. If
    it was too low they grow with `ndarray.resize`, which zero-fills the new capacity and so
    makes all of it resident: a fallback only.
    """
    import pyarrow as pa

    n_features = len(chosen) - 1
    capacity = max(1, rows_hint)
    x = np.empty((capacity, n_features), dtype=dtype)
    y = np.empty(capacity, dtype=dtype)
    start = 0
    for rows, columns in batches:
        stop = start + rows
        if stop > capacity:
            capacity = max(stop, 2 * capacity)
            x.resize((capacity, n_features), refcheck=False)
            y.resize(capacity, refcheck=False)
        for j, column in enumerate(columns):
            kind = column.type
            if column.null_count or not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
                return None
            with np.errstate(over="ignore", invalid="ignore"):  # make_dataset reports overflow
                if j < n_features:
                    x[start:stop, j] = column.to_numpy()
                else:
                    y[start:stop] = column.to_numpy()
        start = stop
    if start != capacity:
        x.resize((start, n_features), refcheck=False)
        y.resize(start, refcheck=False)
    return x, y
