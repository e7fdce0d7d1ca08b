"""The files people have: one 200-row table written as plain, BOM + CRLF, quoted, compressed,
tab-, semicolon- and pipe-separated CSV, Parquet and a partitioned Parquet folder, local and on
an S3-compatible server, all read to the same numbers (and fingerprinted)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gdflow.config.errors import GdflowError
from gdflow.data.dataset import load_dataset, read_table
from gdflow.data.fingerprint import file_fingerprint, file_state, fingerprint
from gdflow.data.sources import (
    detect_delimiter,
    kind_of,
    local_copy,
    parquet_parts,
    source_of,
)


def _table(rows: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    a = np.round(rng.normal(size=rows), 6)
    b = np.round(rng.uniform(-3, 3, size=rows), 6)
    return pd.DataFrame({"a": a, "b": b, "y": np.round(2 * a - b + 0.5, 6)})


def _text(frame: pd.DataFrame, sep: str = ",", decimal: str = ".", **kwargs: object) -> str:
    return frame.to_csv(index=False, sep=sep, decimal=decimal, **kwargs)  # type: ignore[arg-type]


def _zstd(data: bytes) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as stream:
        stream.write(data)
    return sink.getvalue().to_pybytes()


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": _zstd,
}


def _forms(folder: Path, frame: pd.DataFrame) -> dict[str, Path]:
    """The same table in every form gdflow reads; {form: path}."""
    plain = _text(frame).encode()
    forms = {
        "plain.csv": plain,
        "bom-crlf.csv": b"\xef\xbb\xbf" + plain.replace(b"\n", b"\r\n"),
        "quoted.csv": _text(frame, quoting=1).encode(),  # csv.QUOTE_ALL
        "tab.tsv": _text(frame, sep="\t").encode(),
        "semicolon.csv": _text(frame, sep=";").encode(),
        "european.csv": _text(frame, sep=";", decimal=",").encode(),
        "pipe.txt": _text(frame, sep="|").encode(),
        **{f"compressed.csv.{ext}": compress(plain) for ext, compress in COMPRESSORS.items()},
        "compressed.tsv.gz": gzip.compress(_text(frame, sep="\t").encode()),
    }
    paths = {}
    for name, data in forms.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    frame.to_parquet(folder / "table.parquet", index=False)
    paths["table.parquet"] = folder / "table.parquet"
    parts = folder / "parts"
    for i, (start, stop) in enumerate([(0, 70), (70, 150), (150, 200)]):
        (parts / f"day=2026-01-0{i + 1}").mkdir(parents=True)
        frame.iloc[start:stop].to_parquet(parts / f"day=2026-01-0{i + 1}" / "part-0.parquet")
    (parts / "_SUCCESS").write_text("")
    (parts / ".part-0.parquet.crc").write_text("not parquet")
    paths["parts/"] = parts
    return paths


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _forms(tmp_path_factory.mktemp("forms"), _table())


def test_every_form_reads_the_same_numbers(forms: dict[str, Path]) -> None:
    expected = _table()
    for name, path in forms.items():
        data = load_dataset(str(path), dtype="float64")
        assert data.feature_names == ("a", "b") and data.target_name == "y", name
        np.testing.assert_array_equal(data.x, expected[["a", "b"]].to_numpy(), err_msg=name)
        np.testing.assert_array_equal(data.y, expected["y"].to_numpy(), err_msg=name)


def test_the_general_path_reads_every_form_too(forms: dict[str, Path]) -> None:
    """A class-label target goes the pandas way: same rows, labels kept as text."""
    for name, path in forms.items():
        frame = read_table(str(path))
        assert list(frame.columns) == ["a", "b", "y"], name
        assert frame.shape == (200, 3), name
        np.testing.assert_array_equal(frame["y"].to_numpy(), _table()["y"].to_numpy())


def test_what_was_detected_is_said(forms: dict[str, Path]) -> None:
    said = {name: load_dataset(str(path)).read_as for name, path in forms.items()}
    assert said["plain.csv"] is None and said["tab.tsv"] is None  # the suffix's own delimiter
    assert said["semicolon.csv"] == "detected delimiter ';'"
    assert said["european.csv"] == "detected delimiter ';', decimal comma"
    assert said["pipe.txt"] == "detected delimiter '|'"
    assert said["compressed.csv.zst"] == "zstd-compressed CSV"
    assert said["compressed.tsv.gz"] == "gzip-compressed CSV"
    assert said["parts/"] == "Parquet folder of 3 file(s)"


def test_a_given_delimiter_wins_and_a_bad_one_is_one_line(forms: dict[str, Path]) -> None:
    data = load_dataset(str(forms["semicolon.csv"]), delimiter=";")
    assert data.read_as is None and data.n_features == 2
    with pytest.raises(GdflowError, match=r"has one column 'a;b;y'.*pass --delimiter ';'"):
        load_dataset(str(forms["semicolon.csv"]), delimiter=",")
    with pytest.raises(GdflowError, match="--delimiter 'ab' is not a delimiter"):
        load_dataset(str(forms["plain.csv"]), delimiter="ab")


def test_an_ambiguous_delimiter_asks_for_one(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a;b|c;y\n1;2|3;4\n5;6|7;8\n")  # ';' and '|' both split every line in 3
    with pytest.raises(
        GdflowError, match=r"cannot tell the delimiter .* ';' and '\|' .*--delimiter"
    ):
        load_dataset(str(path))
    frame = read_table(str(path), delimiter="|")  # given, it is used
    assert list(frame.columns) == ["a;b", "c;y"]


def test_detect_delimiter_prefers_the_suffix_and_ignores_a_cut_last_line() -> None:
    assert detect_delimiter("a,b;c\n1,2;3\n", usual=",", name="f") == (",", None)
    assert detect_delimiter("a\tb\n1\t2\n", usual=None, name="f") == (
        "\t",
        "detected delimiter tab",
    )
    sample = "a;b\n" + "1;2\n" * 20_000
    assert detect_delimiter(sample[:65536], usual=",", name="f")[0] == ";"


def test_kinds_by_name() -> None:
    assert kind_of("u.csv.gz") == ("CSV", "gzip")
    assert kind_of("U.TSV.ZST") == ("CSV", "zstd")
    assert kind_of("u.parquet") == ("Parquet", None)
    assert kind_of("u.parquet.gz") == (None, "gzip")  # Parquet compresses inside the file
    assert kind_of("u.gz") == (None, "gzip")


def test_unsupported_and_broken_files_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "u.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(GdflowError, match=r"cannot read .* as gzip-compressed CSV") as caught:
        load_dataset(str(tmp_path / "u.csv.gz"))
    assert "\n" not in str(caught.value)
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(_text(_table()).encode())[:-200])
    with pytest.raises(GdflowError, match=r"cut.csv.gz") as caught:
        load_dataset(str(tmp_path / "cut.csv.gz"))
    assert "\n" not in str(caught.value)
    (tmp_path / "u.gz").write_bytes(gzip.compress(b"a,y\n1,2\n"))
    with pytest.raises(GdflowError, match=r"unsupported file type '.gz'; use .csv, .tsv"):
        load_dataset(str(tmp_path / "u.gz"))


def test_a_folder_whose_files_differ_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    _table().iloc[:100].to_parquet(folder / "a.parquet", index=False)
    _table().iloc[100:].rename(columns={"b": "c"}).to_parquet(folder / "b.parquet", index=False)
    with pytest.raises(GdflowError, match=r"b.parquet has columns a, c, y but .*same columns"):
        load_dataset(str(folder))


def test_a_folder_is_read_in_path_order_without_bookkeeping_files(forms: dict[str, Path]) -> None:
    folder = forms["parts/"]
    parts = parquet_parts(folder)
    assert [p.parent.name for p in parts] == ["day=2026-01-01", "day=2026-01-02", "day=2026-01-03"]
    source = source_of(folder)
    assert source is not None and source.kind == "Parquet" and source.is_folder


def test_fingerprints_cover_every_form(forms: dict[str, Path], tmp_path: Path) -> None:
    hashes = set()
    for name, path in forms.items():
        data = load_dataset(str(path))
        found = fingerprint(
            str(path), rows=data.n_rows, read_from=file_state(str(path)), text=data.text
        )
        assert found["rows"] == 200 and found["bytes"] > 0, name
        assert [c["name"] for c in found["columns"]] == ["a", "b", "y"], name
        hashes.add(found["sha256"])
    assert len(hashes) == len(forms)  # every form's bytes differ
    european = fingerprint(
        str(forms["european.csv"]),
        rows=200,
        read_from=None,
        text=load_dataset(str(forms["european.csv"])).text,
    )
    assert european["delimiter"] == ";" and european["decimal"] == ","
    assert [c["type"] for c in european["columns"]] == ["double"] * 3

    folder = tmp_path / "copy"
    shutil.copytree(forms["parts/"], folder)
    first = file_fingerprint(folder)
    assert first == file_fingerprint(forms["parts/"])  # where it lives does not matter
    (folder / "day=2026-01-03" / "part-0.parquet").rename(folder / "day=2026-01-03" / "p.parquet")
    renamed = file_fingerprint(folder)
    assert renamed != first
    _table().iloc[:5].to_parquet(folder / "day=2026-01-03" / "extra.parquet")
    assert file_fingerprint(folder) not in (first, renamed)
    (folder / "_SUCCESS").write_text("bookkeeping is not data")
    assert file_fingerprint(folder) == file_fingerprint(folder)


def test_a_folder_changed_while_read_is_an_error(forms: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(forms["parts/"], folder)
    before = file_state(str(folder))
    _table().iloc[:5].to_parquet(folder / "day=2026-01-03" / "late.parquet")
    with pytest.raises(GdflowError, match="changed while gdflow read it"):
        fingerprint(str(folder), rows=200, read_from=before)


def test_remote_data_on_s3_reads_and_fingerprints_as_local(
    forms: dict[str, Path], s3_bucket: str
) -> None:
    import s3fs

    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    s3.put(str(forms["compressed.csv.gz"]), f"{s3_bucket}/in/u.csv.gz")
    s3.put(str(forms["parts/"]), f"{s3_bucket}/in/parts", recursive=True)
    for local, remote in [("compressed.csv.gz", "in/u.csv.gz"), ("parts/", "in/parts")]:
        url = f"s3://{s3_bucket}/{remote}"
        with local_copy(url) as copy:
            data = load_dataset(str(copy), dtype="float64")
            assert file_fingerprint(copy) == file_fingerprint(forms[local]), local
            kept = copy
        assert not kept.exists()  # the temporary copy is gone
        np.testing.assert_array_equal(data.y, _table()["y"].to_numpy())
    with pytest.raises(GdflowError, match=r"data 's3://.*/in/missing.csv' not found"):
        with local_copy(f"s3://{s3_bucket}/in/missing.csv"):
            pass
    with pytest.raises(GdflowError, match=r"s3://.*/in/u.csv.gz.*--delimiter 'ab'|not a delim"):
        with local_copy(f"s3://{s3_bucket}/in/u.csv.gz") as copy:
            load_dataset(str(copy), delimiter="ab")


def test_bad_data_options_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDFLOW_DATA_OPTIONS", "{not json")
    with pytest.raises(GdflowError, match=r"\$GDFLOW_DATA_OPTIONS is not valid JSON"):
        with local_copy("s3://bucket/u.csv"):
            pass
