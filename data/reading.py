"""Fast read path for numeric CSV (any delimiter, plain or compressed) and Parquet files or
folders: pyarrow batches straight into NumPy.

Only the chosen columns are read, a block (CSV) or row group and column (Parquet) at a time,
each copied (and cast to the training dtype) straight into the final C-ordered arrays. Peak
memory stays near one copy of the data plus a block per thread: no pandas frame, whole-file
float64 table or second copy is made.

The work is shared by a thread per usable CPU, each filling its own rows of the arrays
(pyarrow parses and decodes without the GIL):
- Parquet: a row group per thread (their first rows are in the files' metadata).
- CSV: pyarrow's streaming reader parses on one thread, so a large plain CSV is cut at line
  ends into ranges of `RANGE_BYTES`, whose first rows the pass that counts the rows also finds.
  A file with a quote character, or whose ranges do not parse to the rows counted (blank
  lines), is read in one stream.

Anything unusual (missing or duplicate names, a non-numeric column, empty cells, a parse error)
returns None, and `tasks.data` reads the file the general way, which reports the problem.
Values are converted as the general path converts them (numbers parsed as float64, or read as
stored from Parquet, then cast to the training dtype), so both paths give the same arrays
(CSV integers beyond 2**53 aside).
"""

from __future__ import annotations

import codecs
import contextlib
import io
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gdflow.data.sources import Source, TextFormat, arrow_input, open_bytes, usable_cpus

#: Size of the byte ranges of a plain CSV parsed side by side (a file of at most one range is
#: read in one stream).
RANGE_BYTES = 1 << 26

#: A block of rows and its columns (pyarrow arrays: the chosen features, then the target).
Batch = tuple[int, Iterator[Any]]
#: Part of a data set that one thread reads: its first row, its rows, and its batches.
Piece = tuple[int, int, Callable[[], Generator[Batch, None, None]]]


def read_numeric(
    source: Source,
    *,
    features: Optional[Sequence[str]],
    target: Optional[str],
    dtype: str,
    skip: Sequence[str] = (),
    text: TextFormat = TextFormat(),  # noqa: B008 - frozen, safe as a default
    range_bytes: int = RANGE_BYTES,
) -> Optional[tuple[np.ndarray, np.ndarray, list[str], str]]:
    """(x, y, feature names, target name) of a numeric data set, or None to use the general
    path. `skip`: columns that are not data (the file's row index); `text`: a CSV's format;
    `range_bytes`: the size of a CSV's ranges parsed side by side."""
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
            arrays = _csv_arrays(source, text, names, chosen, np.dtype(dtype), range_bytes)
        else:
            pieces, rows = _parquet_pieces(source.parts or (source.path,), chosen)
            arrays = _fill_pieces(pieces, len(chosen) - 1, np.dtype(dtype), rows)
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


@dataclass(frozen=True)
class _Layout:
    """A CSV's data rows, and the ranges it may be parsed in side by side.

    `rows` counts line ends: exact for the usual file; a quoted field holding a line end or a
    blank line makes it too high (the arrays are shrunk at the end), and lone-CR line ends make
    it too low (the arrays grow). Either way the values read are the same. `ranges` holds
    (first byte, end byte, first row, rows) of each range, each ending at a line end; it is
    empty when the file is to be read in one stream (compressed, holds a quote character or
    fits in one range)."""

    rows: int
    ranges: tuple[tuple[int, int, int, int], ...] = ()


def _csv_arrays(
    source: Source,
    text: TextFormat,
    names: list[str],
    chosen: list[str],
    dtype: np.dtype,
    range_bytes: int,
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """x and y of a CSV: its ranges side by side when it has several and there are CPUs to
    share them, else (or when a range has blank lines) in one stream."""
    layout = _csv_layout(source, range_bytes)
    if len(layout.ranges) > 1 and usable_cpus() > 1:
        try:
            pieces = _csv_pieces(source, text, names, chosen, layout)
            return _fill_pieces(pieces, len(chosen) - 1, dtype, layout.rows)
        except _Uneven:
            pass  # read in one stream
    return _fill(_csv_batches(source, text, chosen), chosen, dtype, layout.rows)


def _csv_layout(source: Source, range_bytes: int) -> _Layout:
    """The rows and ranges of a CSV: one pass over the bytes, with no parsing."""
    lines, last = 0, bytearray(b"\n")
    cuts: list[tuple[int, int]] = []  # (byte after a line end, line ends before it)
    plain = source.compression is None
    splittable, offset = plain, 0
    buffer = bytearray(1 << 24)
    with open(source.path, "rb", buffering=0) if plain else open_bytes(source) as handle:
        while size := handle.readinto(buffer):
            if splittable and not cuts:
                header_end = _header_end(buffer, size)
                splittable = header_end > 0
                cuts.append((header_end, 1))
            if splittable and buffer.find(b'"', max(0, cuts[0][0] - offset), size) >= 0:
                splittable = False  # a quoted field may hold a line end: no cut is safe
            while splittable and (cut := cuts[0][0] + range_bytes * len(cuts)) < offset + size:
                end = buffer.find(b"\n", max(0, cut - offset), size)
                if end < 0:
                    break  # the line goes on into the next buffer
                cuts.append((offset + end + 1, lines + buffer.count(b"\n", 0, end + 1)))
            lines += buffer.count(b"\n", 0, size)
            last = buffer[size - 1 : size]
            offset += size
    ends = lines if last == b"\n" else lines + 1  # the last line may have no line end
    rows = max(1, ends - 1)  # less the header
    if not splittable or len(cuts) < 2:
        return _Layout(rows)
    bounds = [*cuts, (offset, ends)]
    ranges = tuple(
        (start, stop, first - 1, stop_line - first)
        for (start, first), (stop, stop_line) in zip(bounds, bounds[1:])
        if stop > start
    )
    return _Layout(rows, ranges)


def _header_end(buffer: bytearray, size: int) -> int:
    """The byte after the header's line end, if the first line is the header as pyarrow reads
    it: not empty (a blank line before it), no lone CR (a line end of its own) and any quote
    characters paired (no line end quoted); else -1."""
    end = buffer.find(b"\n", 0, size)
    line = bytes(buffer[: max(0, end)]).removeprefix(codecs.BOM_UTF8).removesuffix(b"\r")
    if end < 0 or not line or b"\r" in line or line.count(b'"') % 2:
        return -1
    return end + 1


class _Uneven(Exception):
    """A piece gave other rows than its count (a CSV range with blank lines): read the file in
    one stream."""


def _csv_batches(
    source: Source,
    text: TextFormat,
    chosen: list[str],
    *,
    window: Optional[tuple[int, int]] = None,
    names: Optional[list[str]] = None,
) -> Generator[Batch, None, None]:
    """(rows, columns) of each CSV block, numbers parsed as float64: of the whole file, or of
    the bytes in `window` (first byte, end byte), which hold no header: `names` names them."""
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
    read = pacsv.ReadOptions(block_size=1 << 22, column_names=names)
    with contextlib.ExitStack() as stack:
        if window is None:
            data = arrow_input(source)
        else:
            data = stack.enter_context(
                pa.PythonFile(stack.enter_context(_Window(source.path, *window)), mode="r")
            )
        reader = stack.enter_context(
            pacsv.open_csv(
                data, read_options=read, parse_options=parse_options(text), convert_options=convert
            )
        )
        for batch in reader:
            yield batch.num_rows, (batch.column(name) for name in chosen)


class _Window(io.RawIOBase):
    """The bytes of a plain file from `start` up to `stop`, as a readable stream."""

    def __init__(self, path: Path, start: int, stop: int) -> None:
        super().__init__()
        self._file: Optional[io.FileIO] = None
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed with the window
        self._file.seek(start)
        self._left = stop - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        assert self._file is not None
        view = memoryview(buffer).cast("B")[: self._left]
        size = self._file.readinto(view) or 0
        self._left -= size
        return size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _csv_pieces(
    source: Source, text: TextFormat, names: list[str], chosen: list[str], layout: _Layout
) -> list[Piece]:
    """The layout's ranges as pieces for `_fill_pieces`."""
    return [
        (first, count, partial(_csv_batches, source, text, chosen, window=(a, b), names=names))
        for a, b, first, count in layout.ranges
    ]


def _fill_pieces(
    pieces: Sequence[Piece], n_features: int, dtype: np.dtype, rows: int
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """x and y filled a piece per thread (a thread per usable CPU), each piece's batches into
    its own rows; None when a cell is not a number. Raises `_Uneven` when a piece does not
    give the rows it should (a CSV range with a blank line)."""
    if sum(piece[1] for piece in pieces) != rows:
        raise _Uneven
    x = np.empty((rows, n_features), dtype=dtype)
    y = np.empty(rows, dtype=dtype)
    failed, uneven = threading.Event(), threading.Event()

    def fill(first: int, count: int, batches: Callable[[], Generator[Batch, None, None]]) -> None:
        row, end = first, first + count
        if failed.is_set() or uneven.is_set():
            return
        with contextlib.closing(batches()) as blocks:
            for size, columns in blocks:
                if failed.is_set() or uneven.is_set():
                    return
                if row + size > end:
                    uneven.set()
                    return
                if not _copy(columns, x, y, row, size):
                    failed.set()
                    return
                row += size
        if row != end:
            uneven.set()

    workers = max(1, min(usable_cpus(), len(pieces)))
    with ThreadPoolExecutor(workers, thread_name_prefix="gdflow-read") as pool:
        for done in [pool.submit(fill, *piece) for piece in pieces]:
            if done.exception() is not None:
                failed.set()
    if uneven.is_set():
        raise _Uneven
    return None if failed.is_set() else (x, y)


def _parquet_pieces(files: Sequence[Path], chosen: list[str]) -> tuple[list[Piece], int]:
    """A piece for `_fill_pieces` per row group of the files, and their rows."""
    import pyarrow.parquet as pq

    pieces: list[Piece] = []
    rows = 0
    for file in files:
        metadata = pq.ParquetFile(file).metadata
        for group in range(metadata.num_row_groups):
            count = metadata.row_group(group).num_rows
            read = partial(_parquet_group, file, metadata, group, chosen)
            pieces.append((rows, count, read))
            rows += count
    return pieces, rows


def _parquet_group(
    file: Path, metadata: Any, group: int, chosen: list[str]
) -> Generator[Batch, None, None]:
    """(rows, columns) of one row group, one column decoded at a time (decoding a whole row
    group at once holds several times its size in pyarrow's memory pool); `metadata`: the
    file's, read once."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file, metadata=metadata)
    rows = metadata.row_group(group).num_rows
    yield rows, (parquet.read_row_group(group, columns=[name]).column(0) for name in chosen)


def _fill(
    batches: Iterator[Batch], chosen: list[str], dtype: np.dtype, rows_hint: int
) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Copy each batch's columns into x and y; None on a non-numeric or empty cell.

    The arrays start at `rows_hint` rows (the file's row count, so normally they are allocated
    once) and are shrunk at the end if it was too high; untouched pages are never resident. If
    it was too low they grow with `ndarray.resize`, which zero-fills the new capacity and so
    makes all of it resident: a fallback only.
    """
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
        if not _copy(columns, x, y, start, rows):
            return None
        start = stop
    if start != capacity:
        x.resize((start, n_features), refcheck=False)
        y.resize(start, refcheck=False)
    return x, y


def _copy(columns: Iterator[Any], x: np.ndarray, y: np.ndarray, start: int, rows: int) -> bool:
    """Copy a batch's feature columns and then its target into rows `start`.. of x and y;
    False on a non-numeric or empty cell."""
    import pyarrow as pa

    n_features = x.shape[1]
    for j, column in enumerate(columns):
        kind = column.type
        if column.null_count or not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            return False
        with np.errstate(over="ignore", invalid="ignore"):  # make_dataset reports overflow
            if j < n_features:
                x[start : start + rows, j] = column.to_numpy()
            else:
                y[start : start + rows] = column.to_numpy()
    return True
