"""Loading data: the toy data, CSV and Parquet columns, and one clear error per malformed input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gdflow.config.errors import GdflowError
from gdflow.data.dataset import load_dataset, load_toy, make_dataset


def _csv(tmp_path: Path, text: str, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_toy_data_is_the_seed() -> None:
    data = load_toy()
    assert data.x.dtype == np.float32 and data.x.shape == (5, 1)
    assert data.x[:, 0].tolist() == [1, 2, 3, 4, 5] and data.y.tolist() == [2, 4, 6, 8, 10]
    assert data.feature_names == ("x",) and data.target_name == "y"


def test_csv_columns_are_selected(tmp_path: Path) -> None:
    path = _csv(tmp_path, "a,b,c,y\n1,2,9,3\n4,5,9,6\n")
    data = load_dataset(path, features=["b", "a"], target="y")
    assert data.feature_names == ("b", "a")
    assert data.x.tolist() == [[2, 1], [5, 4]] and data.y.tolist() == [3, 6]


def test_defaults_are_last_column_target_and_all_others_features(tmp_path: Path) -> None:
    data = load_dataset(_csv(tmp_path, "a,b,y\n1,2,3\n4,5,6\n"))
    assert data.feature_names == ("a", "b") and data.target_name == "y"


def test_parquet_is_read(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pd.DataFrame({"a": [1.0, 2.0], "y": [2.0, 4.0]}).to_parquet(path)
    data = load_dataset(str(path), dtype="float64")
    assert data.x.dtype == np.float64 and data.y.tolist() == [2.0, 4.0]


def test_integer_and_boolean_columns_are_numeric(tmp_path: Path) -> None:
    data = load_dataset(_csv(tmp_path, "a,flag,y\n1,true,3\n2,false,6\n"))
    assert data.x.tolist() == [[1, 1], [2, 0]]


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ("", {}, "is empty"),
        ("a,y\n", {}, "header but no data rows"),
        ("a,y\n1,2\nfoo,3\n", {}, "column 'a' .* is not numeric .*'foo'.* data row 2"),
        ("a,y\n1,2\n,3\n", {}, "column 'a' .* missing, NaN or infinite"),
        ("a,y\n1,2\ninf,3\n", {}, "column 'a' .* missing, NaN or infinite"),
        ("a,y\n1,2\n2,\n", {}, "column 'y' .* missing"),
        (
            "a,y\n1,2\n",
            {"features": ["nope"]},
            "column 'nope' not found .* available columns: a, y",
        ),
        ("a,y\n1,2\n", {"target": "nope"}, "column 'nope' not found"),
        ("a,y\n1,2\n", {"features": ["a", "y"], "target": "y"}, "both a feature and the target"),
        ("y\n1\n", {}, "no feature columns"),
        ("a,b,y\n1,2\n3,4,5,6\n", {}, "cannot parse .* as CSV"),
        ("a,y\n1e39,2\n", {}, "too large for float32"),
    ],
)
def test_malformed_csv_is_a_one_line_error(
    tmp_path: Path, content: str, kwargs: dict, message: str
) -> None:
    with pytest.raises(GdflowError, match=message) as info:
        load_dataset(_csv(tmp_path, content), **kwargs)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GdflowError, match="not found; check the path"):
        load_dataset(str(tmp_path / "nope.csv"))


def test_directory_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "d.csv"
    folder.mkdir()
    with pytest.raises(GdflowError, match="is a folder with no .parquet files"):
        load_dataset(str(folder))


def test_unsupported_file_type(tmp_path: Path) -> None:
    with pytest.raises(GdflowError, match="unsupported file type '.xlsx'.*use .csv, .tsv"):
        load_dataset(_csv(tmp_path, "a,y\n1,2\n", name="data.xlsx"))
    with pytest.raises(GdflowError, match=r"unsupported file type '.csv.7z'"):
        load_dataset(_csv(tmp_path, "a,y\n1,2\n", name="data.csv.7z"))


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("caf\xe9,y\n1,2\n".encode("latin-1"))
    with pytest.raises(GdflowError, match="not UTF-8"):
        load_dataset(str(path))


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(GdflowError, match="cannot parse .* as Parquet"):
        load_dataset(str(path))


def test_duplicate_column_names_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "dupes.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([[1.0], [2.0], [3.0]], names=["a", "a", "y"]), path)
    with pytest.raises(GdflowError):
        load_dataset(str(path))


def test_features_and_target_of_different_lengths() -> None:
    with pytest.raises(GdflowError, match="3 rows but the target has 2"):
        make_dataset([[1], [2], [3]], [1, 2], feature_names=["x"], target_name="y", source="s")


def test_no_rows() -> None:
    with pytest.raises(GdflowError, match="no data rows"):
        make_dataset(np.empty((0, 1)), [], feature_names=["x"], target_name="y", source="s")


def test_duplicate_features_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GdflowError, match="--features names a more than once"):
        load_dataset(_csv(tmp_path, "a,b,y\n1,2,3\n4,5,6\n"), features=["a", "a"])


def _indexed_frame() -> pd.DataFrame:
    """A frame whose index is not a range (a row filtered out), as real data often is."""
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [5.0, 6.0, 7.0, 8.0], "y": [2.0] * 4})
    return frame[frame.a != 2]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("general_path", [False, True])
def test_a_row_index_written_by_pandas_is_not_data(
    tmp_path: Path, suffix: str, general_path: bool
) -> None:
    """`to_csv` writes the index as an unnamed first column, `to_parquet` as a column named in
    its pandas metadata (after the data columns): neither is a feature, nor the target."""
    frame = _indexed_frame()
    if general_path:  # an unused text column makes the fast reader step aside
        frame = frame.assign(note=["p", "q", "r"])
    path = tmp_path / f"data{suffix}"
    frame.to_csv(path) if suffix == ".csv" else frame.to_parquet(path)
    data = load_dataset(str(path), features=["a", "b"] if general_path else None, target="y")
    assert data.feature_names == ("a", "b") and data.target_name == "y"
    assert data.x.tolist() == [[1, 5], [3, 7], [4, 8]] and data.y.tolist() == [2, 2, 2]
    assert data.index_columns == (("",) if suffix == ".csv" else ("__index_level_0__",))
    if not general_path:  # with no --target, the last column (not the index) is the target
        assert load_dataset(str(path)).target_name == "y"


def test_a_parquet_range_index_is_no_column(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pd.DataFrame({"a": [1.0, 2.0], "y": [2.0, 4.0]}).to_parquet(path)
    data = load_dataset(str(path))
    assert data.feature_names == ("a",) and data.index_columns == ()


@pytest.mark.parametrize("header,position", [("a,,y", 2), ("a,b,y,", 4), (",", 2), (",a,,y", 3)])
def test_a_column_without_a_name_is_a_clear_error(
    tmp_path: Path, header: str, position: int
) -> None:
    fields = header.count(",") + 1
    path = _csv(tmp_path, f"{header}\n" + ",".join(["1"] * fields) + "\n")
    with pytest.raises(GdflowError, match=f"column {position} of data file .* has no name"):
        load_dataset(path)
