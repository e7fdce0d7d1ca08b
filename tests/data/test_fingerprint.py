"""A data file's fingerprint: its bytes' SHA-256 (streamed), size, rows, and every column's
name and type; a file rewritten while gdflow reads it is a one-line error."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest

from gdflow.config.errors import GdflowError
from gdflow.data import fingerprint as fp
from gdflow.data.fingerprint import data_fingerprint, file_state, fingerprint


def test_the_hash_is_the_sha256_of_the_bytes_read_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(b"a,y\n" + b"1.5,2\n" * 50_000)
    monkeypatch.setattr(fp, "CHUNK_BYTES", 4096)  # many chunks: the digest must not depend on it
    expected = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert data_fingerprint(str(path)) == expected
    found = fingerprint(str(path), rows=50_000, read_from=file_state(str(path)))
    assert found == {
        "sha256": expected,
        "bytes": path.stat().st_size,
        "rows": 50_000,
        "columns": [{"name": "a", "type": "double"}, {"name": "y", "type": "int64"}],
    }


def test_parquet_columns_keep_their_schema_types(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pd.DataFrame({"n": [1, 2], "x": [0.5, 1.5], "kind": ["a", "b"]}).to_parquet(path, index=False)
    columns = fingerprint(str(path), rows=2, read_from=None)["columns"]
    assert columns == [
        {"name": "n", "type": "int64"},
        {"name": "x", "type": "double"},
        {"name": "kind", "type": "large_string"},  # pandas 3 writes strings as large_string
    ]


def test_one_changed_byte_changes_the_hash_and_the_toy_data_has_its_own(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("x,y\n1,2\n")
    second.write_text("x,y\n1,3\n")
    hashes = {data_fingerprint(str(first)), data_fingerprint(str(second)), data_fingerprint(None)}
    assert len(hashes) == 3
    toy = fingerprint(None, rows=5, read_from=None)
    assert toy["sha256"] == data_fingerprint(None) and toy["rows"] == 5 and toy["bytes"] is None


def test_a_file_rewritten_while_it_is_read_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("x,y\n1,2\n")
    before = file_state(str(path))
    path.write_text("x,y\n1,2\n3,4\n")  # the writer finished after gdflow loaded the old rows
    assert before is not None
    mtime = before[0][2] + 10**9
    os.utime(path, ns=(mtime, mtime))
    with pytest.raises(GdflowError, match="changed while gdflow read it") as caught:
        fingerprint(str(path), rows=1, read_from=before)
    assert "\n" not in str(caught.value)
    assert fingerprint(str(path), rows=2, read_from=file_state(str(path)))["rows"] == 2
