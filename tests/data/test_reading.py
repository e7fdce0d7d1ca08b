"""The fast numeric read path gives the general path's arrays, and steps aside when in doubt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gdflow.data import reading
from gdflow.data.dataset import Dataset, load_dataset, read_table, select_columns
from gdflow.data.reading import _csv_layout, _csv_pieces, _fill_pieces, _Uneven, read_numeric
from gdflow.data.sources import Source, TextFormat, source_of


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


def _numeric_csv(path: Path, rows: int, *, line_end: str = "\n", last_end: bool = True) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=rows),
            "n": rng.integers(-9, 9, size=rows),
            "y": rng.normal(size=rows),
        }
    )
    text = frame.to_csv(index=False, lineterminator=line_end)
    path.write_text(text if last_end else text[: -len(line_end)], newline="")


@pytest.fixture
def cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges are parsed side by side whatever the machine's CPU count (threads still run)."""
    monkeypatch.setattr(reading, "usable_cpus", lambda: 4)


def _general(path: Path, features: list[str] | None, dtype: str) -> Dataset:
    return select_columns(
        read_table(str(path)), features=features, target="y", source=str(path), dtype=dtype
    )


@pytest.mark.parametrize("line_end,last_end", [("\n", True), ("\r\n", False)])
def test_csv_ranges_cover_the_file_at_line_ends(
    tmp_path: Path, line_end: str, last_end: bool
) -> None:
    path = tmp_path / "data.csv"
    _numeric_csv(path, 500, line_end=line_end, last_end=last_end)
    data = path.read_bytes()
    layout = _csv_layout(_source(path), 1000)
    assert layout.rows == 500 and len(layout.ranges) > 10
    assert layout.ranges[0][:3] == (data.index(b"\n") + 1, layout.ranges[0][1], 0)
    assert layout.ranges[-1][1] == len(data)
    for (start, stop, first, count), following in zip(layout.ranges, [*layout.ranges[1:], None]):
        assert data[stop - 1 : stop] == b"\n" or stop == len(data)
        ends = data.count(b"\n", start, stop) + (stop == len(data) and not last_end)
        assert count == ends and (following is None or following[:3:2] == (stop, first + count))


@pytest.mark.usefixtures("cpus")
def test_csv_ranges_are_parsed_side_by_side_into_the_general_paths_arrays(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _numeric_csv(path, 2000, line_end="\r\n", last_end=False)
    source = _source(path)
    layout = _csv_layout(source, 4096)
    general = _general(path, ["n", "a"], "float32")
    pieces = _csv_pieces(source, TextFormat(), ["a", "n", "y"], ["n", "a", "y"], layout)
    parsed = _fill_pieces(pieces, 2, np.dtype("float32"), layout.rows)
    assert len(layout.ranges) > 10 and parsed is not None
    assert np.array_equal(parsed[0], general.x) and np.array_equal(parsed[1], general.y)
    fast = read_numeric(source, features=["n", "a"], target="y", dtype="float32", range_bytes=4096)
    assert fast is not None and np.array_equal(fast[0], general.x)
    assert np.array_equal(fast[1], general.y)


@pytest.mark.usefixtures("cpus")
@pytest.mark.parametrize(
    "change,ranged",
    [
        (lambda text: text.replace("\n", "\n\n", 1200), True),  # blank lines: fewer rows parsed
        (lambda text: text.replace("\nx,", '\n"x",'), False),  # quotes: no ranges at all
        (lambda text: '"x",' + text[2:], True),  # quotes only in the header: ranges
        (lambda text: "\n" + text.replace("x,a,n,y", "0,1,2,y"), False),  # a blank first line
        (lambda text: text.replace("x,a,n,y\n", "x,a,n,y\r", 1), False),  # the header ends in CR
    ],
)
def test_csv_that_ranges_cannot_read_is_still_read_right(
    tmp_path: Path, change: Any, ranged: bool
) -> None:
    path = tmp_path / "data.csv"
    _numeric_csv(path, 2000)
    path.write_text(change("x," + path.read_text().replace("\n", "\nx,")[:-2]))
    source = _source(path)
    features = ["1", "2"] if path.read_text().startswith("\n") else ["a", "n"]
    assert bool(_csv_layout(source, 4096).ranges) == ranged
    fast = read_numeric(source, features=features, target="y", dtype="float64", range_bytes=4096)
    general = _general(path, features, "float64")
    assert fast is not None and fast[0].shape == (2000, 2)
    assert np.array_equal(fast[0], general.x) and np.array_equal(fast[1], general.y)


@pytest.mark.usefixtures("cpus")
def test_csv_range_with_blank_lines_is_read_again_in_one_stream(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _numeric_csv(path, 2000)
    path.write_text(path.read_text().replace("\n", "\n\n", 1200))
    source = _source(path)
    layout = _csv_layout(source, 4096)
    pieces = _csv_pieces(source, TextFormat(), ["a", "n", "y"], ["a", "n", "y"], layout)
    with pytest.raises(_Uneven):
        _fill_pieces(pieces, 2, np.dtype("float64"), layout.rows)


@pytest.mark.usefixtures("cpus")
def test_csv_with_a_bad_cell_in_a_late_range_goes_to_the_general_path(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _numeric_csv(path, 2000)
    lines = path.read_text().splitlines(keepends=True)
    lines[1900] = "oops," + lines[1900].split(",", 1)[1]
    path.write_text("".join(lines))
    source = _source(path)
    layout = _csv_layout(source, 4096)
    pieces = _csv_pieces(source, TextFormat(), ["a", "n", "y"], ["a", "n", "y"], layout)
    assert len(layout.ranges) > 5 and _fill_pieces(pieces, 2, np.dtype("float32"), 2000) is None
    fast = read_numeric(source, features=None, target=None, dtype="float32", range_bytes=4096)
    assert fast is None


@pytest.mark.usefixtures("cpus")
def test_parquet_folder_row_groups_fill_their_own_rows(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    frame = _frame(1000).drop(columns="label")
    for part, start in enumerate(range(0, 1000, 300)):
        frame.iloc[start : start + 300].to_parquet(folder / f"{part}.parquet", row_group_size=70)
    x, y, names, _ = read_numeric(_source(folder), features=None, target=None, dtype="float64")  # type: ignore[misc]
    assert names == ["a", "count", "c"] and x.shape == (1000, 3)
    assert np.array_equal(x, frame[names].to_numpy(np.float64)) and np.array_equal(y, frame.target)
