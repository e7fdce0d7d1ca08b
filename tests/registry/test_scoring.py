"""Scoring a table with a saved model: feature columns found by name, invalid cells named or
skipped and counted, a classifier's label and probabilities, and outputs written whole (CSV or
Parquet) or not at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gdflow.config.errors import GdflowError
from gdflow.data.dataset import read_table
from gdflow.registry.model_file import ModelSpec
from gdflow.registry.predictor import Predictor
from gdflow.registry.scoring import Scored, features_of, score, write_table
from gdflow.registry.versions import predictor_of

WHAT = "model toy version 1"
#: prediction = 2a - b + 1
REGRESSOR = predictor_of(
    ModelSpec("linear", "regression", ("a", "b"), "y", None, True, 1),
    {"w_a": 2.0, "w_b": -1.0, "b": 1.0},
)


def _softmax(classes: tuple[str, ...]) -> Predictor:
    spec = ModelSpec("softmax", "multiclass", ("a", "b"), "kind", classes, True, len(classes))
    names = spec.parameter_names()
    return predictor_of(spec, dict(zip(names, np.random.default_rng(3).normal(size=len(names)))))


def _csv(tmp_path: Path, text: str) -> pd.DataFrame:
    """The table of a CSV file with `text`, read as `gdflow predict` reads its input."""
    path = tmp_path / "input.csv"
    path.write_text(text)
    return read_table(str(path))


def _score(
    frame: pd.DataFrame, predictor: Predictor = REGRESSOR, on_invalid: str = "error"
) -> Scored:
    return score(predictor, frame, on_invalid=on_invalid, source="input.csv", what=WHAT)


# --- features -----------------------------------------------------------------------------


def test_a_missing_feature_column_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    frame = _csv(tmp_path, "a,c\n1,2\n")
    with pytest.raises(GdflowError) as caught:
        features_of(frame, REGRESSOR.spec, source="input.csv", what=WHAT)
    assert str(caught.value) == (
        f"input.csv has no column 'b', which {WHAT} needs (its features: a, b); add the column(s)"
    )


@pytest.mark.parametrize(
    "cell,shown",
    [("", "nan"), ("NaN", "nan"), ("abc", "'abc'"), ("inf", "inf"), ("-inf", "-inf")],
    ids=["empty", "nan", "text", "inf", "-inf"],
)
def test_an_invalid_cell_is_an_error_naming_its_column_and_first_data_row(
    tmp_path: Path, cell: str, shown: str
) -> None:
    frame = _csv(tmp_path, f"a,b\n1,2\n3,{cell}\n5,6\n7,{cell}\n")
    with pytest.raises(GdflowError) as caught:
        _score(frame)
    assert str(caught.value) == (
        "input.csv: 2 row(s) cannot be scored: column 'b' has a missing, NaN, infinite or "
        f"non-numeric value ({shown} in data row 2); clean them or pass --on-invalid skip to "
        "score the others"
    )


def test_skip_scores_the_valid_rows_and_counts_the_others(tmp_path: Path) -> None:
    frame = _csv(tmp_path, "a,b,id\n1,2,r1\n,6,r2\n3,abc,r3\n4,inf,r4\n5,1,r5\n")
    scored = _score(frame, on_invalid="skip")
    assert (scored.rows_in, scored.rows_out, scored.skipped) == (5, 2, 3)
    assert scored.frame["id"].tolist() == ["r1", "r5"]
    assert scored.frame["prediction"].tolist() == [1.0, 10.0]  # 2a - b + 1


def test_features_are_taken_by_name_and_other_columns_kept_in_order(tmp_path: Path) -> None:
    frame = _csv(tmp_path, "id,b,note,a\nx,1,hello,3\ny,4,,0.5\n")
    scored = _score(frame)
    assert list(scored.frame.columns) == ["id", "b", "note", "a", "prediction"]
    assert scored.frame["prediction"].tolist() == [6.0, -2.0]
    assert scored.frame["id"].tolist() == ["x", "y"]


def test_boolean_features_are_read_as_zero_and_one() -> None:
    frame = pd.DataFrame({"a": [True, False], "b": [False, True]})
    assert _score(frame).frame["prediction"].tolist() == [3.0, 0.0]


# --- outputs ------------------------------------------------------------------------------


def test_a_classifier_gives_its_label_and_one_probability_per_class() -> None:
    classifier = _softmax(("setosa", "versicolor", "virginica"))
    x = np.random.default_rng(1).normal(size=(25, 2))
    scored = _score(pd.DataFrame({"a": x[:, 0], "b": x[:, 1]}), classifier)
    columns = ["p_setosa", "p_versicolor", "p_virginica"]
    assert list(scored.frame.columns) == ["a", "b", "prediction", *columns]
    table = scored.frame[columns].to_numpy()
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(table, classifier.outputs(x), rtol=1e-13)
    expected = [("setosa", "versicolor", "virginica")[i] for i in table.argmax(axis=1)]
    assert scored.frame["prediction"].tolist() == expected
    assert len(set(expected)) > 1  # the labels are not all one class


def test_a_binary_classifier_gives_both_probabilities() -> None:
    spec = ModelSpec("logistic", "binary", ("a", "b"), "y", ("no", "yes"), True, 1)
    classifier = predictor_of(spec, {"w_a": 1.0, "w_b": -1.0, "b": 0.0})
    scored = _score(pd.DataFrame({"a": [3.0, -3.0], "b": [0.0, 0.0]}), classifier)
    assert scored.frame["prediction"].tolist() == ["yes", "no"]
    np.testing.assert_allclose(scored.frame["p_yes"], 1 / (1 + np.exp([-3.0, 3.0])))
    np.testing.assert_allclose(scored.frame["p_no"] + scored.frame["p_yes"], 1.0)


def test_an_input_with_a_prediction_column_keeps_it_and_gets_prediction_2() -> None:
    frame = pd.DataFrame({"a": [1.0], "b": [2.0], "prediction": ["theirs"], "p_r": [0.5]})
    scored = _score(frame, _softmax(("r", "g")))
    added = ["prediction_2", "p_r_2", "p_g"]
    assert list(scored.frame.columns) == ["a", "b", "prediction", "p_r", *added]
    assert scored.frame["prediction"].tolist() == ["theirs"]
    assert scored.frame["prediction_2"].tolist()[0] in ("r", "g")
    frame["prediction_2"] = [0]
    assert "prediction_3" in _score(frame).frame.columns


# --- write_table --------------------------------------------------------------------------


def _scored_frame() -> pd.DataFrame:
    frame = pd.DataFrame({"id": ["x", "y", "z"], "a": [0.1, 1 / 3, -2.5], "b": [1.0, 2.0, 1e-300]})
    return _score(frame).frame


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".PARQUET"])
def test_written_tables_read_back_equal(tmp_path: Path, suffix: str) -> None:
    frame = _scored_frame()
    path = write_table(frame, str(tmp_path / f"out{suffix}"))
    assert path == tmp_path / f"out{suffix}"
    if suffix == ".csv":
        back = pd.read_csv(path)
    else:
        back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False, check_exact=True)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left


def test_a_write_onto_a_folder_fails_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(GdflowError, match=r"^cannot write --output .*out\.csv: ") as caught:
        write_table(_scored_frame(), str(tmp_path / "out.csv"))
    assert "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == ["out.csv"] and os.listdir(tmp_path / "out.csv") == []


def test_a_table_parquet_refuses_leaves_the_former_output_alone(tmp_path: Path) -> None:
    """pyarrow's refusal of a column of mixed types is one line that says what to do."""
    target = tmp_path / "out.parquet"
    target.write_bytes(b"yesterday's predictions")
    mixed = pd.DataFrame({"a": [1.0, 2.0], "b": [0.0, 0.0], "note": [1, "one"]})  # not one type
    with pytest.raises(
        GdflowError, match=r"^cannot write --output .*out\.parquet \(Arrow"
    ) as caught:
        write_table(_score(mixed).frame, str(target))
    assert "\n" not in str(caught.value) and "write CSV instead" in str(caught.value)
    assert os.listdir(tmp_path) == ["out.parquet"]
    assert target.read_bytes() == b"yesterday's predictions"


class _DiskFull(pd.DataFrame):
    """A table whose Parquet write stops half way, as on a full disk."""

    def to_parquet(self, path: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        with open(path, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_that_stops_half_way_leaves_the_former_output_whole(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    target.write_bytes(b"yesterday's predictions")
    with pytest.raises(GdflowError) as caught:
        write_table(_DiskFull(_scored_frame()), str(target))
    assert str(caught.value) == f"cannot write --output {target}: No space left on device"
    assert os.listdir(tmp_path) == ["out.parquet"]
    assert target.read_bytes() == b"yesterday's predictions"


def test_a_missing_output_folder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(GdflowError) as caught:
        write_table(_scored_frame(), str(tmp_path / "nowhere" / "out.csv"))
    assert str(caught.value) == (
        f"--output {tmp_path}/nowhere/out.csv: folder '{tmp_path}/nowhere' does not exist"
    )
    assert os.listdir(tmp_path) == []
