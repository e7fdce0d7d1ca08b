"""Hostile and malformed input, in process: any config or data file gives a result or one line.

Property-based (hypothesis): generated option dictionaries must build a TrainConfig or fail with
a one-line message; generated CSV bytes, CSV tables and Parquet tables must load into a Dataset
or fail with a one-line GdflowError, never another exception. A curated list names the cases
from issue #6 (empty, header-only, duplicate names, non-UTF-8, a CSV bomb, a directory...).
"""

from __future__ import annotations

import csv
import io
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdflow.cli.main import CliError, config_from_args
from gdflow.config.errors import GdflowError, one_line
from gdflow.config.train import TrainConfig
from gdflow.data.dataset import MAX_COLUMNS, Dataset, load_dataset

#: Examples per property: the whole file runs in seconds on two busy cores.
FAST = settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def assert_one_line(message: str) -> None:
    """A user-facing message: not empty, and one line whatever `str.splitlines` counts."""
    assert message.strip(), "empty message"
    assert len(message.splitlines()) == 1, f"not one line: {message!r}"


def load_or_one_line(path: Path, **kwargs: Any) -> Dataset | GdflowError:
    """Load `path`; a GdflowError is returned after its message is checked to be one line."""
    try:
        dataset = load_dataset(str(path), **kwargs)
    except GdflowError as error:
        assert_one_line(str(error))
        return error
    assert dataset.n_rows >= 1 and dataset.n_features >= 1
    assert np.isfinite(dataset.x).all() and np.isfinite(dataset.y).all()
    return dataset


def assert_loaded_as_written(data: Dataset, frame: pd.DataFrame, dtype: str = "float32") -> None:
    """The loaded rows are the frame's named columns, in order, cast once to `dtype`."""
    by_name = {str(name): frame[name] for name in frame.columns}

    def column(name: str) -> np.ndarray:
        return np.asarray(pd.to_numeric(by_name[name]), dtype=np.float64).astype(dtype)

    expected_x = np.column_stack([column(name) for name in data.feature_names])
    tolerance = {"rtol": float(np.finfo(dtype).eps), "atol": float(np.finfo(dtype).tiny)}
    assert data.x.dtype == data.y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(data.x, expected_x, **tolerance)
    np.testing.assert_allclose(data.y.reshape(-1), column(data.target_name), **tolerance)


# --- the config -------------------------------------------------------------------------------

FIELDS = sorted(TrainConfig.model_fields)
texts = st.text(max_size=12)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 1e-320, 1e300, 2**64, 2**64 - 1]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts, numbers.map(str))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.lists(st.lists(scalars, max_size=3)))
option_dicts = st.dictionaries(
    st.one_of(st.sampled_from(FIELDS), st.text(min_size=1, max_size=8)), values, max_size=6
)


@FAST
@given(options=option_dicts)
def test_any_options_build_a_config_or_fail_in_one_line(options: dict[str, Any]) -> None:
    try:
        config = config_from_args(dict(options))
    except CliError as error:
        assert_one_line(str(error))
        return
    # A config that validates is usable: its name, tags and JSON form never fail.
    assert_one_line(config.run_name())
    assert isinstance(config.public_dict(), dict)
    for number in (config.lr, config.init, config.tolerance):
        if isinstance(number, float):
            assert math.isfinite(number), number
    assert 0 <= config.seed <= 2**64 - 1


@FAST
@given(text=st.text(max_size=40))
def test_gdflow_errors_are_one_line_whatever_they_quote(text: str) -> None:
    assert_one_line("x" + str(GdflowError(text)))
    assert one_line(one_line(text)) == one_line(text)  # escaping twice changes nothing


# --- generated files --------------------------------------------------------------------------

awkward_cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e400", "1e-400", "1e300", "0x10", "1,5"]),
    st.sampled_from(['"', '""', "\x00", "true", "FALSE", "  7 ", "é", "\u2028", "1\n2"]),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.text(max_size=6),
)
names = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["x", "y", "x.1", "", 'a"; DROP TABLE runs;--', "<b>", "**b** | c"]),
)


@st.composite
def csv_tables(draw: st.DrawFn) -> bytes:
    """A CSV written by the csv module: any header (duplicates too), any cells, ragged rows."""
    width = draw(st.integers(min_value=0, max_value=5))
    header = draw(st.lists(names, min_size=width, max_size=width))
    rows = draw(
        st.lists(st.lists(awkward_cells, min_size=0, max_size=width + 1), min_size=0, max_size=6)
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(header)
    writer.writerows(rows)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return out.getvalue().encode(encoding, errors="replace")


@FAST
@given(content=st.one_of(csv_tables(), st.binary(max_size=200)))
def test_any_csv_bytes_load_or_fail_in_one_line(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.csv"
        path.write_bytes(content)
        load_or_one_line(path)


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    """A DataFrame of 0-4 columns of floats (NaN, inf, huge, tiny), ints, text or booleans."""
    width = draw(st.integers(min_value=0, max_value=4))
    rows = draw(st.integers(min_value=0, max_value=5))
    kinds = st.sampled_from(["float", "int", "text", "bool"])
    columns: dict[str, list[Any]] = {}
    for _ in range(width):
        kind = draw(kinds)
        cell: st.SearchStrategy[Any] = {
            "float": st.floats(allow_nan=True, allow_infinity=True),
            "int": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "text": st.text(max_size=5),
            "bool": st.booleans(),
        }[kind]
        name = draw(names.filter(lambda n: n not in columns))
        columns[name] = draw(st.lists(cell, min_size=rows, max_size=rows))
    return pd.DataFrame(columns)


@FAST
@given(frame=frames(), dtype=st.sampled_from(["float32", "float64"]))
def test_any_parquet_table_loads_or_fails_in_one_line(frame: pd.DataFrame, dtype: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.parquet"
        frame.to_parquet(path)
        result = load_or_one_line(path, dtype=dtype)
        if isinstance(result, Dataset):  # what loads is what was written, column by column
            assert list(result.feature_names) + [result.target_name] == [
                str(c) for c in frame.columns
            ]
            assert_loaded_as_written(result, frame, dtype)


@FAST
@given(
    frame=frames(),
    features=st.one_of(st.none(), st.lists(names, max_size=3)),
    target=st.one_of(st.none(), names),
)
def test_any_column_choice_loads_or_fails_in_one_line(
    frame: pd.DataFrame, features: list[str] | None, target: str | None
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.csv"
        frame.to_csv(path, index=False)
        result = load_or_one_line(path, features=features, target=target)
        if isinstance(result, Dataset):
            if features is not None:
                assert list(result.feature_names) == features
            if target is not None:
                assert result.target_name == target
            assert_loaded_as_written(result, frame)


# --- the cases named in issue #6 --------------------------------------------------------------

#: name -> (file content, the start of the one-line error; None: it trains).
CURATED: dict[str, tuple[bytes, str | None]] = {
    "empty.csv": (b"", "is empty"),
    "newlines-only.csv": (b"\n\n\n", "no header row or no data rows"),
    "header-only.csv": (b"a,y\n", "has a header but no data rows"),
    "header-only-no-newline.csv": (b"a,y", "no header row or no data rows"),
    "duplicate-names.csv": (b"x,x,y\n1,2,3\n4,5,6\n", r"duplicate column names \['x'\]"),
    "latin-1.csv": ("é,y\n1,2\n3,4\n".encode("latin-1"), "is not UTF-8 text"),
    "latin-1-cell.csv": ("a,y\n1,2\n\xe9,4\n".encode("latin-1"), "is not UTF-8 text"),
    "utf-16.csv": ("a,y\n1,2\n3,4\n".encode("utf-16"), "is not UTF-8 text"),
    "nan-cell.csv": (b"a,y\n1,2\nnan,3\n", "column 'a' .* missing, NaN or infinite"),
    "inf-cell.csv": (b"a,y\n1,2\n2,-inf\n", "column 'y' .* missing, NaN or infinite"),
    "huge-1e300.csv": (b"a,y\n1e300,2\n3,4\n", "too large for float32"),
    "huge-1e400.csv": (b"a,y\n1e400,2\n3,4\n", "NaN or infinite"),
    "tiny-denormal.csv": (b"a,y\n1e-310,2\n3,4\n5e-45,6\n", None),
    "ragged-row.csv": (b"a,y\n1,2,3\n", "cannot parse"),
    "unclosed-quote.csv": (b'a,y\n"1,2\n3,4\n', "cannot parse"),
    "binary.csv": (bytes(range(256)), "is not UTF-8 text"),
    "wide-header.csv": (
        ",".join(f"c{i}" for i in range(MAX_COLUMNS + 1)).encode() + b"\n",
        f"has {MAX_COLUMNS + 1} columns",
    ),
    "csv-bomb.csv": (
        b",".join(b"c%d" % i for i in range(200_000)) + b"\n" + b"1," * 199_999 + b"1\n",
        "has a header row longer than 1 MiB",
    ),
    "long-row.csv": (b"a,y\n" + b"1" * (3 << 20) + b",2\n", "a row is longer than 1 MiB"),
    "not-parquet.parquet": (b"PAR1 but not really", "cannot parse"),
    "hostile-names.csv": (
        b'"a""; DROP TABLE runs;--","<script>alert(1)</script>","**bold** | pipe",'
        b'"[x](javascript:alert(1))",y\n1,2,3,4,5\n2,3,4,5,6\n',
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(CURATED))
def test_named_hostile_files(name: str, tmp_path: Path) -> None:
    content, expected = CURATED[name]
    path = tmp_path / name
    path.write_bytes(content)
    result = load_or_one_line(path)
    if expected is None:
        assert isinstance(result, Dataset), result
        assert_loaded_as_written(result, pd.read_csv(io.BytesIO(content)))
    else:
        assert isinstance(result, GdflowError)
        assert re.search(expected, str(result)), str(result)


def test_hostile_column_names_are_kept_verbatim(tmp_path: Path) -> None:
    content, _ = CURATED["hostile-names.csv"]
    (tmp_path / "d.csv").write_bytes(content)
    data = load_dataset(str(tmp_path / "d.csv"))
    assert data.feature_names == (
        'a"; DROP TABLE runs;--',
        "<script>alert(1)</script>",
        "**bold** | pipe",
        "[x](javascript:alert(1))",
    )
    assert data.target_name == "y"
    np.testing.assert_array_equal(data.x, np.array([[1, 2, 3, 4], [2, 3, 4, 5]], np.float32))
    np.testing.assert_array_equal(data.y.reshape(-1), np.array([5, 6], np.float32))


def test_a_directory_or_duplicate_parquet_names_fail_in_one_line(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert "is a folder with no .parquet files" in str(load_or_one_line(folder))
    table = pa.table([pa.array([1.0, 2.0])] * 3, names=["x", "x", "y"])
    pq.write_table(table, tmp_path / "dupes.parquet")
    assert "duplicate column names ['x']" in str(load_or_one_line(tmp_path / "dupes.parquet"))


def test_a_file_name_with_a_line_break_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "two\nlines.csv"
    path.write_bytes(b"a,y\n1,\n")
    message = str(load_or_one_line(path))
    assert "two\\nlines.csv" in message


@pytest.mark.parametrize("standardize", [False, True])
def test_features_whose_squares_overflow_float64_fail_in_one_line(standardize: bool) -> None:
    from gdflow.data.dataset import make_dataset
    from gdflow.training.conditioning import analyse
    from gdflow.training.preprocessing import TrainingProblem

    data = make_dataset(
        [[1e300], [3.0], [5.0]],
        [1.0, 2.0, 3.0],
        feature_names=["a"],
        target_name="y",
        source="huge",
        dtype="float64",
    )
    with pytest.raises(GdflowError, match="too large to train on") as caught:
        problem = TrainingProblem.prepare(data, {"w": 1.0, "b": 0.0}, standardize=standardize)
        analyse(problem.x, bias=True, lr=0.01)
    assert_one_line(str(caught.value))
