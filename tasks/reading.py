"""Fast read path for numeric CSV and Parquet files: pyarrow batches straight into NumPy.

Only the chosen columns are read, one record batch at a time, each converted into a small
(rows, columns) block of the training dtype; the blocks are then copied into the final C-ordered
arrays and freed as they go. Peak memory stays near one copy of the data, and no pandas frame,
float64 intermediate or strided copy is made.

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

#: Rows per record batch read from a file (CSV blocks are sized to about this many rows).
BATCH_ROWS = 1 << 18


def read_numeric(
    path: str,
    *,
    features: Optional[Sequence[str]],
    target: Optional[str],
    dtype: str,
) -> Optional[tuple[np.ndarray, np.ndarray, list[str], str]]:
    """(x, y, feature names, target name) of a numeric file, or None to use the general path."""
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq") or not file.is_file():
        return None
    try:
        if suffix == ".csv":
            names = _csv_names(file)
        else:
            import pyarrow.parquet as pq

            names = list(pq.ParquetFile(file).schema_arrow.names)
        chosen = _choose(names, features, target)
        if chosen is None:
            return None
        batches = _csv_batches(file, chosen) if suffix == ".csv" else _parquet_batches(file, chosen)
        blocks = _blocks(batches, chosen, np.dtype(dtype))
    except Exception:  # noqa: BLE001 - the general path reads the file again and says why
        return None
    if blocks is None or not blocks:
        return None
    x, y = _assemble(blocks, len(chosen) - 1, np.dtype(dtype))
    return x, y, chosen[:-1], chosen[-1]


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


def _csv_names(file: Path) -> list[str]:
    import pyarrow.csv as pacsv

    with pacsv.open_csv(file) as reader:
        return list(reader.schema.names)


def _csv_batches(file: Path, chosen: list[str]) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    convert = pacsv.ConvertOptions(
        include_columns=chosen, column_types={name: pa.float64() for name in chosen}
    )
    # About BATCH_ROWS rows of up to ~20 bytes a value per block.
    block = max(1 << 20, min(BATCH_ROWS * 20 * len(chosen), 1 << 28))
    with pacsv.open_csv(
        file, read_options=pacsv.ReadOptions(block_size=block), convert_options=convert
    ) as reader:
        yield from reader


def _parquet_batches(file: Path, chosen: list[str]) -> Iterator[Any]:
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(file).iter_batches(batch_size=BATCH_ROWS, columns=chosen)


def _blocks(batches: Iterator[Any], chosen: list[str], dtype: np.dtype) -> Optional[list[Any]]:
    """Each batch as a (rows, columns) block of `dtype`; None on a non-numeric or empty cell."""
    import pyarrow as pa

    blocks = []
    for batch in batches:
        block = np.empty((batch.num_rows, len(chosen)), dtype=dtype)
        for j, name in enumerate(chosen):
            column = batch.column(batch.schema.get_field_index(name))
            kind = column.type
            if column.null_count or not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
                return None
            with np.errstate(over="ignore", invalid="ignore"):  # make_dataset reports overflow
                block[:, j] = column.to_numpy()
        blocks.append(block)
    return blocks


def _assemble(blocks: list[Any], n_features: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Copy the blocks into C-ordered x and y, freeing each block once copied."""
    n = sum(block.shape[0] for block in blocks)
    x = np.empty((n, n_features), dtype=dtype)
    y = np.empty(n, dtype=dtype)
    start = 0
    blocks.reverse()
    while blocks:
        block = blocks.pop()
        stop = start + block.shape[0]
        x[start:stop] = block[:, :n_features]
        y[start:stop] = block[:, n_features]
        start = stop
        del block
    return x, y
