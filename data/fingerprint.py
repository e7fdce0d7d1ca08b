"""A data set's fingerprint: the SHA-256 of its bytes (or of the toy data's values), its size,
rows, and every column's name and type.

Stored with each run, each model version and each prediction batch, so a version says exactly
which data it was trained on and a retrain can tell unchanged data from new. A file is hashed
as stored (a compressed file's compressed bytes); a Parquet folder by a manifest of its files'
relative paths and hashes, so adding, removing, renaming or changing any part changes it. Files
are read in chunks (never held twice), and data that changes while gdflow reads it is an error:
the hash would describe neither version of it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gdflow.config.errors import GdflowError
from gdflow.data.sources import Source, TextFormat, arrow_input, source_of

#: Bytes read at a time: a fingerprint never holds a large file in memory.
CHUNK_BYTES = 1 << 20

#: What `file_state` compares: (relative path, size, modification time in ns) of each file.
State = tuple[tuple[str, int, int], ...]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """`sha256:<hex>` of a file's bytes, read in chunks; of a Parquet folder, of its manifest
    (one `<relative path> <sha256>` line per file, in path order)."""
    file = Path(path).expanduser()
    if file.is_dir():
        source = source_of(file)
        parts = source.parts if source is not None else ()
        return manifest_fingerprint(
            (p.relative_to(file).as_posix(), _file_digest(p)) for p in parts
        )
    return f"sha256:{_file_digest(file)}"


def manifest_fingerprint(entries: Iterable[tuple[str, str]]) -> str:
    """`sha256:<hex>` of a Parquet folder's manifest: one `<relative path> <sha256>` line per
    file, in path order (also from hashes made elsewhere: a Dask worker's, `data.cluster`)."""
    manifest = "".join(f"{name} {digest}\n" for name, digest in entries)
    return f"sha256:{hashlib.sha256(manifest.encode()).hexdigest()}"


def data_fingerprint(path: Optional[str]) -> str:
    """The content hash of `--data` (None: the seed's toy data, from its values)."""
    if path is not None:
        return file_fingerprint(path)
    from gdflow.data.dataset import TOY_X, TOY_Y

    values = np.asarray([*TOY_X, *TOY_Y], dtype=np.float64)
    return f"sha256:{hashlib.sha256(values.tobytes()).hexdigest()}"


def file_state(path: str) -> Optional[State]:
    """What changes when a file (or a folder's files) is rewritten: each file's size and
    modification time; None when it cannot be read (loading it says why)."""
    file = Path(path).expanduser()
    try:
        if file.is_dir():
            source = source_of(file)
            files = source.parts if source is not None else ()
        else:
            files = (file,)
        states = []
        for each in files:
            status = os.stat(each)
            name = each.relative_to(file).as_posix() if each != file else ""
            states.append((name, status.st_size, status.st_mtime_ns))
    except OSError:
        return None
    return tuple(states)


def fingerprint(
    path: Optional[str],
    *,
    rows: int,
    read_from: Optional[State],
    text: Optional[TextFormat] = None,
) -> dict[str, Any]:
    """The fingerprint of `--data` holding `rows` data rows: hash, size, columns and types, and
    for a text file how it was split. `read_from`: the data's `file_state` before it was
    loaded; if it is not in that state once hashed, it changed while gdflow read it
    (GdflowError)."""
    if path is None:
        return {
            "sha256": data_fingerprint(None),
            "bytes": None,
            "rows": rows,
            "columns": [{"name": "x", "type": "double"}, {"name": "y", "type": "double"}],
        }
    digest = file_fingerprint(path)
    state = file_state(path)
    if read_from is not None and state != read_from:
        raise GdflowError(
            f"data file {path!r} changed while gdflow read it; run again once it is written "
            "(writers should write a temporary file and rename it onto the name)"
        )
    source = source_of(Path(path).expanduser())
    result: dict[str, Any] = {
        "sha256": digest,
        "bytes": sum(size for _, size, _ in state or ()),
        "rows": rows,
        "columns": column_types(source, text) if source is not None else [],
    }
    if source is not None and source.is_folder:
        result["files"] = len(source.parts)
    if source is not None and source.compression:
        result["compression"] = source.compression
    if text is not None and source is not None and source.kind == "CSV":
        result["delimiter"] = text.delimiter
        if text.decimal != ".":
            result["decimal"] = text.decimal
    return result


def column_types(source: Source, text: Optional[TextFormat] = None) -> list[dict[str, Any]]:
    """Every column's name and type: Parquet's schema (a folder's first file), or the types
    pyarrow infers from a CSV file's first block."""
    try:
        if source.kind == "Parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(source.parts[0] if source.parts else source.path)
        else:
            import pyarrow.csv as pacsv

            text = text or TextFormat()
            with pacsv.open_csv(
                arrow_input(source),
                parse_options=pacsv.ParseOptions(delimiter=text.delimiter),
                convert_options=pacsv.ConvertOptions(decimal_point=text.decimal),
            ) as reader:
                schema = reader.schema
    except Exception:  # noqa: BLE001 - the data was loaded; types are a description only
        return []
    return [{"name": field.name, "type": str(field.type)} for field in schema]
