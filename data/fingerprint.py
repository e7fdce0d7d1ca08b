"""A data set's fingerprint: the SHA-256 of its file's bytes (or of the toy data's values), its
size, rows, and every column's name and type.

Stored with each run, each model version and each prediction batch, so a version says exactly
which data it was trained on and a retrain can tell unchanged data from new. The file is read
in chunks (never held twice), and a file that changes while gdflow reads it is an error: the
hash would describe neither version of it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gdflow.config.errors import GdflowError

#: Bytes read at a time: a fingerprint never holds a large file in memory.
CHUNK_BYTES = 1 << 20


def file_fingerprint(path: str | Path) -> str:
    """`sha256:<hex>` of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).expanduser().open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def data_fingerprint(path: Optional[str]) -> str:
    """The content hash of `--data` (None: the seed's toy data, from its values)."""
    if path is not None:
        return file_fingerprint(path)
    from gdflow.data.dataset import TOY_X, TOY_Y

    values = np.asarray([*TOY_X, *TOY_Y], dtype=np.float64)
    return f"sha256:{hashlib.sha256(values.tobytes()).hexdigest()}"


def file_state(path: str) -> Optional[tuple[int, int]]:
    """(size, modification time in ns): what changes when a file is rewritten; None when it
    cannot be read (loading it says why)."""
    try:
        status = os.stat(Path(path).expanduser())
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def fingerprint(path: Optional[str], *, rows: int, read_from: Optional[tuple[int, int]]) -> dict:
    """The fingerprint of `--data` holding `rows` data rows: hash, size, columns and types.
    `read_from`: the file's `file_state` before it was loaded; if the file is not in that
    state once hashed, it changed while gdflow read it (GdflowError)."""
    if path is None:
        return {
            "sha256": data_fingerprint(None),
            "bytes": None,
            "rows": rows,
            "columns": [{"name": "x", "type": "double"}, {"name": "y", "type": "double"}],
        }
    digest = file_fingerprint(path)
    if read_from is not None and file_state(path) != read_from:
        raise GdflowError(
            f"data file {path!r} changed while gdflow read it; run again once it is written "
            "(writers should write a temporary file and rename it onto the name)"
        )
    return {
        "sha256": digest,
        "bytes": Path(path).expanduser().stat().st_size,
        "rows": rows,
        "columns": column_types(path),
    }


def column_types(path: str) -> list[dict[str, Any]]:
    """Every column's name and type: Parquet's schema, or the types pyarrow infers from a
    CSV file's first block."""
    file = Path(path).expanduser()
    try:
        if file.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(file)
        else:
            import pyarrow.csv as pacsv

            with pacsv.open_csv(file) as reader:
                schema = reader.schema
    except Exception:  # noqa: BLE001 - the data was loaded; types are a description only
        return []
    return [{"name": field.name, "type": str(field.type)} for field in schema]
