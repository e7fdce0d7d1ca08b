"""The fast numeric read path gives the general path's arrays, and steps aside when in doubt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gdflow.data.dataset import load_dataset, read_table, select_columns
from gdflow.data.reading import read_numeric
from gdflow.data.sources import Source, source_of


def _source(path: Path) -> Source:
    """The data set at `path`, as `load_dataset` hands it to the fast path."""
    source = source_of(path)
    assert source is not None
    return source


def _frame(rows: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "a": rng.normal(size=rows) * 1e3,
            "count": rng.integers(-50, 50, size=rows),
            "label": ["x"] * rows,
            "c": rng.normal(size=rows).astype(np.float32),
            "target": rng.normal(size=rows),
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_path_arrays_equal_the_general_paths(tmp_path: Path, suffix: str, dtype: str) -> None:
    path = tmp_path / f"data{suffix}"
    frame = _frame()
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    features = ["c", "a", "count"]
    fast = read_numeric(_source(path), features=features, target="target", dtype=dtype)
    assert fast is not None
    x, y, names, target = fast
    general = select_columns(
        read_table(str(path)), features=features, target="target", source=str(path), dtype=dtype
    )
    assert (names, target) == (features, "target") and x.flags.c_contiguous
    assert x.dtype == np.dtype(dtype) and np.array_equal(x, general.x)
    assert np.array_equal(y, general.y)
    loaded = load_dataset(str(path), features=features, target="target", dtype=dtype)
    assert np.array_equal(loaded.x, general.x) and loaded.feature_names == tuple(features)


def test_fast_path_reads_many_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    frame = _frame(1000).drop(columns="label")
    frame.to_parquet(path, row_group_size=100)
    x, y, names, target = read_numeric(_source(path), features=None, target=None, dtype="float64")  # type: ignore[misc]
    assert names == ["a", "count", "c"] and target == "target"
    assert np.array_equal(x, frame[names].to_numpy(np.float64)) and np.array_equal(y, frame.target)


@pytest.mark.parametrize(
    "features,target",
    [
        (None, None),  # the non-numeric 'label' would be a feature
        (["a", "missing"], "target"),
        (["a", "a"], "target"),
        (["a", "target"], "target"),
        ([], "target"),
    ],
)
def test_doubtful_requests_go_to_the_general_path(
    tmp_path: Path, features: list[str] | None, target: str | None
) -> None:
    path = tmp_path / "data.csv"
    _frame(10).to_csv(path, index=False)
    assert read_numeric(_source(path), features=features, target=target, dtype="float32") is None


def test_empty_cells_go_to_the_general_path(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,y\n1,2\n,3\n")
    assert read_numeric(_source(path), features=None, target=None, dtype="float32") is None


@pytest.mark.parametrize(
    "text",
    [
        'a,note,y\n1.5,"one\nline\n\nmore",2\n3,"x",4.25\n-1,"",0\n',  # row count too high
        "a,note,y\r1.5,u,2\r3,v,4.25\r-1,w,0\r",  # lone CR line ends: row count too low
        "a,note,y\r\n1.5,u,2\r\n\r\n3,v,4.25\r\n-1,w,0",  # CRLF, a blank line, no last line end
    ],
)
def test_csv_row_count_off_still_reads_right(tmp_path: Path, text: str) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(text.encode())
    fast = read_numeric(_source(path), features=["a"], target="y", dtype="float32")
    assert fast is not None
    x, y, _, _ = fast
    general = select_columns(
        read_table(str(path)), features=["a"], target="y", source=str(path), dtype="float32"
    )
    assert x.shape == (3, 1) and np.array_equal(x, general.x) and np.array_equal(y, general.y)
    assert np.array_equal(y, np.array([2, 4.25, 0], dtype=np.float32))
