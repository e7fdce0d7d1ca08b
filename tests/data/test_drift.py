"""Drift statistics and schema changes: identical data shows no drift, shifted data is found,
constant columns divide by nothing; property tests over generated columns."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gdflow.data.drift import drift, drifted, profile, schema_changes

columns = arrays(
    np.float64,
    st.tuples(st.integers(5, 200), st.just(2)),
    elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(columns)
def test_identical_data_has_zero_drift(x: np.ndarray) -> None:
    found = drift(profile(x, ["a", "b"]), x, ["a", "b"])
    for values in found.values():
        assert values["mean_shift"] == 0.0
        assert values["psi"] == 0.0
    assert drifted(found, psi=0.2, mean_shift=1.0) == []


@settings(max_examples=60, deadline=None)
@given(columns, st.floats(2.0, 50.0))
def test_a_shift_of_several_deviations_is_found(x: np.ndarray, k: float) -> None:
    spread = x.std(axis=0)
    # A constant column's computed spread may be rounding noise (1e-10 of a value near 1e6),
    # below the values' own resolution: shift such a column by whole units instead.
    resolution = 1e-9 * np.abs(x).max(axis=0)
    shifted = x + k * np.where(spread > resolution, spread, 1.0)
    found = drift(profile(x, ["a", "b"]), shifted, ["a", "b"])
    for name in ("a", "b"):
        assert found[name]["mean_shift"] >= min(k, 1.0) * 0.99 or math.isinf(
            found[name]["mean_shift"]
        )
    assert drifted(found, psi=0.2, mean_shift=1.0) == ["a", "b"]


def test_a_constant_column_compares_its_value_without_dividing_by_zero() -> None:
    x = np.column_stack([np.linspace(0, 1, 50), np.full(50, 3.0)])
    reference = profile(x, ["a", "c"])
    assert reference["c"]["std"] == 0.0
    same = drift(reference, x, ["a", "c"])["c"]
    assert same == {"mean": 3.0, "mean_shift": 0.0, "psi": 0.0}
    moved = drift(reference, np.column_stack([x[:, 0], np.full(50, 4.0)]), ["a", "c"])["c"]
    assert math.isinf(moved["mean_shift"]) and moved["psi"] > 1.0


def test_a_moderate_shift_has_the_textbook_psi() -> None:
    """Deciles of N(0, 1) and data shifted by 0.5 sd: PSI about 0.25 (computed by hand)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200_000, 1))
    found = drift(profile(x, ["a"]), x + 0.5, ["a"])["a"]
    assert abs(found["mean_shift"] - 0.5) < 0.01
    edges = np.quantile(x[:, 0], [i / 10 for i in range(1, 10)])
    old = np.diff(np.concatenate([[0.0], np.mean(x[:, 0, None] <= edges, axis=0), [1.0]]))
    new = np.diff(np.concatenate([[0.0], np.mean(x[:, 0, None] + 0.5 <= edges, axis=0), [1.0]]))
    assert abs(found["psi"] - float(np.sum((new - old) * np.log(new / old)))) < 1e-3


def test_schema_changes_name_each_column() -> None:
    before = [{"name": "a", "type": "double"}, {"name": "b", "type": "double"}]
    assert schema_changes(before, before, classes_before=["x", "y"], classes_after=["x", "y"]) == []
    after = [
        {"name": "b", "type": "string"},
        {"name": "a", "type": "double"},
        {"name": "c", "type": "int64"},
    ]
    assert schema_changes(before, after, classes_before=[0, 1], classes_after=[0, 1, 2]) == [
        "new column 'c'",
        "column 'b' retyped double -> string",
        "columns reordered",
        "classes changed: 0, 1 -> 0, 1, 2",
    ]
    assert schema_changes(before, before[:1]) == ["missing column 'b'"]


def test_values_too_large_for_statistics_are_left_out_without_a_warning() -> None:
    """A column of 1e300s overflows its variance: the profile says so (None) instead of
    storing infinities, no RuntimeWarning escapes, and drift compares the other features."""
    import warnings

    x = np.column_stack([np.linspace(0, 1, 20), np.full(20, 1e300) * np.linspace(1, 2, 20)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reference = profile(x, ["a", "big"])
        found = drift(reference, x, ["a", "big"])
    assert reference["big"]["mean"] is None and reference["big"]["std"] is None
    assert set(found) == {"a"} and found["a"]["psi"] == 0.0
