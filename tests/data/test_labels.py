"""A classifier's target column: labels of any type encoded as class indices, bad labels refused
in one line that names the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gdflow.config.errors import GdflowError
from gdflow.data.dataset import Labels, load_dataset, split_validation
from gdflow.data.labels import MAX_CLASSES, encode_labels

BINARY = Labels("binary", "logistic")
MULTICLASS = Labels("multiclass", "softmax")


def _csv(tmp_path: Path, target: list[str], name: str = "data.csv") -> str:
    """A CSV with one feature column x = 1, 2, ... and the given target cells."""
    path = tmp_path / name
    rows = [f"{i + 1},{cell}" for i, cell in enumerate(target)]
    path.write_text("x,label\n" + "\n".join(rows) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("cells", "labels", "classes", "expected"),
    [
        (["0", "1", "1", "0"], BINARY, (0, 1), [0, 1, 1, 0]),
        (["no", "yes", "yes", "no"], BINARY, ("no", "yes"), [0, 1, 1, 0]),
        (["true", "false", "true", "true"], BINARY, (False, True), [1, 0, 1, 1]),
        (["b", "c", "a", "b", "c"], MULTICLASS, ("a", "b", "c"), [1, 2, 0, 1, 2]),
        (["3", "1", "2", "10"], MULTICLASS, (1, 2, 3, 10), [2, 0, 1, 3]),
    ],
)
def test_labels_of_any_type_become_class_indices_in_sorted_class_order(
    cells: list[str],
    labels: Labels,
    classes: tuple[object, ...],
    expected: list[int],
    tmp_path: Path,
) -> None:
    dataset = load_dataset(_csv(tmp_path, cells), target="label", labels=labels)
    assert dataset.classes == classes
    assert [type(c) for c in dataset.classes] == [type(c) for c in classes]  # 1 is not True
    assert dataset.y.tolist() == expected
    assert dataset.feature_names == ("x",)


@pytest.mark.parametrize(
    ("cells", "labels", "message"),
    [
        (["a", "b", "c", "a"], BINARY, "--model logistic needs exactly two classes"),
        (["a", "a", "a"], BINARY, "has one class only ('a')"),
        (["a", "a", "a"], MULTICLASS, "has one class only ('a')"),
        (["a", "", "b", "a"], BINARY, "1 empty or NaN label(s) (first in data row 2)"),
        (["1", "nan", "0", "1"], BINARY, "1 empty or NaN label(s) (first in data row 2)"),
    ],
)
def test_bad_labels_fail_in_one_line_with_the_fix(
    cells: list[str], labels: Labels, message: str, tmp_path: Path
) -> None:
    with pytest.raises(GdflowError) as error:
        load_dataset(_csv(tmp_path, cells), target="label", labels=labels)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_more_classes_than_the_limit_are_refused() -> None:
    values = np.arange(MAX_CLASSES + 1).astype(float)
    with pytest.raises(GdflowError, match=f"more than the {MAX_CLASSES}"):
        encode_labels(values, task="multiclass", model="softmax", column="id", source="f.csv")


def test_a_text_target_for_regression_says_to_choose_a_classifier(tmp_path: Path) -> None:
    with pytest.raises(GdflowError) as error:
        load_dataset(_csv(tmp_path, ["a", "b", "a"]), target="label")
    assert "column 'label'" in str(error.value)
    assert "--model logistic or softmax" in str(error.value)


def test_a_validation_class_unseen_in_training_is_refused(tmp_path: Path) -> None:
    # Class c has a single row: whichever split holds it, find the seed that sends it to
    # validation; every other class has many rows on both sides.
    cells = ["a", "b"] * 20 + ["c"]
    dataset = load_dataset(_csv(tmp_path, cells), target="label", labels=MULTICLASS)
    seeds = [s for s in range(50) if 40 in np.random.default_rng(s).permutation(41)[:8]]
    with pytest.raises(GdflowError) as error:
        split_validation(dataset, 0.2, seed=seeds[0])
    assert "class(es) 'c' appear only in the validation rows" in str(error.value)
    kept = next(s for s in range(50) if s not in seeds)
    assert split_validation(dataset, 0.2, seed=kept).classes == ("a", "b", "c")
