"""A classifier's report: the validation-accuracy curve (0..1 axis) after the loss curve, its
metrics and confusion matrices as markdown tables with escaped class labels; a regression run's
curve artifact stays exactly the loss curve."""

from __future__ import annotations

import base64
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from gdflow.reports.charts import MAX_CURVE_POINTS, PALETTE, accuracy_curve_svg
from gdflow.reports.markdown import (
    accuracy_curve_markdown,
    has_finite_values,
    loss_curve_markdown,
    training_curves_markdown,
)
from gdflow.reports.run_report import summary_markdown

NS = "{http://www.w3.org/2000/svg}"
GOLDEN = Path(__file__).with_name("golden")
SEED_LOSSES = [11.0 * 0.75**k for k in range(99)] + [6.0254e-13]
#: The chart's plot area (640x320 default): left, right, top and bottom in SVG units.
LEFT, RIGHT, TOP, BOTTOM = 72, 620, 34, 274
HOSTILE = "<b>x</b> | y"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{NS}text")]


def polyline(root: ET.Element) -> tuple[ET.Element, list[tuple[float, float]]]:
    (line,) = root.iter(f"{NS}polyline")
    points = [p.split(",") for p in line.get("points", "").split()]
    return line, [(float(x), float(y)) for x, y in points]


def images(markdown: str) -> list[tuple[str, str]]:
    """(alt text, decoded SVG) of each data-URI image in the markdown, in order."""
    found = re.findall(r"!\[([^\]]*)\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return [(alt, base64.b64decode(data).decode("utf-8")) for alt, data in found]


def y_ticks(root: ET.Element) -> dict[str, float]:
    """The y axis's tick labels (right-aligned left of the plot) and their SVG heights."""
    return {
        t.text or "": float(t.get("y", "nan")) - 4
        for t in root.iter(f"{NS}text")
        if t.get("text-anchor") == "end"
    }


# --- the accuracy curve ------------------------------------------------------------------------


def test_accuracy_curve_spans_zero_to_one_whatever_the_values() -> None:
    accuracies = [0.5 + 0.01 * k for k in range(10)]  # 0.5 .. 0.59
    root = parse(accuracy_curve_svg(range(1, 11), accuracies))
    assert (root.get("width"), root.get("height")) == ("640", "320")
    labels = texts(root)
    assert "Validation accuracy" in labels and "epoch" in labels
    assert "validation accuracy" in labels  # the y axis's title
    assert not any("log scale" in t for t in labels) and "loss" not in labels
    ticks = y_ticks(root)
    assert list(ticks) == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    assert ticks["0"] == pytest.approx(BOTTOM) and ticks["1"] == pytest.approx(TOP)
    line, points = polyline(root)
    assert line.get("stroke") == PALETTE[1]  # not the loss curve's blue
    assert len(points) == 10
    # y = bottom - accuracy * plot height: 0.5 sits half-way, rising accuracy goes up
    assert points[0] == pytest.approx((LEFT, BOTTOM - 0.5 * (BOTTOM - TOP)))
    assert points[-1][0] == pytest.approx(RIGHT)
    assert points[-1][1] == pytest.approx(BOTTOM - 0.59 * (BOTTOM - TOP))
    assert all(a[1] > b[1] for a, b in zip(points, points[1:]))
    assert len(list(root.iter(f"{NS}circle"))) == 10  # a short curve shows its points


def test_accuracy_curve_extremes_missing_epochs_and_a_single_point() -> None:
    root = parse(accuracy_curve_svg([1, 2, 3, 4, 5], [0.0, None, math.nan, 1.0, 1.0]))
    _, points = polyline(root)
    assert [y for _, y in points] == pytest.approx([BOTTOM, TOP, TOP])
    assert list(y_ticks(root)) == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    single = parse(accuracy_curve_svg([7], [0.75]))
    _, points = polyline(single)
    assert len(points) == 1 and points[0][1] == pytest.approx(BOTTOM - 0.75 * (BOTTOM - TOP))
    assert "7" in texts(single)


def test_accuracy_curve_without_values_shows_the_note() -> None:
    for epochs, accuracies in [([], []), ([1, 2], [None, math.nan])]:
        root = parse(accuracy_curve_svg(epochs, accuracies))
        assert "no finite validation accuracy values" in texts(root)
        assert not list(root.iter(f"{NS}polyline"))


def test_long_accuracy_curve_is_downsampled_keeping_the_ends() -> None:
    n = 50_000
    accuracies = [1.0 - 0.5 / (k + 1) for k in range(n)]
    root = parse(accuracy_curve_svg(range(1, n + 1), accuracies))
    _, points = polyline(root)
    assert len(points) == MAX_CURVE_POINTS
    assert points[0][0] == pytest.approx(LEFT) and points[-1][0] == pytest.approx(RIGHT)
    assert not list(root.iter(f"{NS}circle"))
    epoch_ticks = [
        int(t.text or "")
        for t in root.iter(f"{NS}text")
        if t.get("y") == str(BOTTOM + 16)  # the x axis's tick labels, under the plot
    ]
    assert epoch_ticks == [10000, 20000, 30000, 40000, 50000]


def test_accuracy_curve_title_is_escaped_and_lengths_are_checked() -> None:
    svg = accuracy_curve_svg([1, 2], [0.5, 0.6], title="<script>alert(1)</script>")
    assert "<script>" not in svg
    assert "<script>alert(1)</script>" in texts(parse(svg))
    with pytest.raises(ValueError):
        accuracy_curve_svg([1, 2], [0.5])


# --- the curve artifact's markdown -------------------------------------------------------------


def test_regression_curve_markdown_is_the_loss_curve_byte_for_byte() -> None:
    golden = (GOLDEN / "curve.md").read_text(encoding="utf-8")
    epochs = list(range(1, 101))
    for accuracies in (None, [], [None] * 100, [math.nan] * 100):
        md = training_curves_markdown(epochs, SEED_LOSSES, accuracies, loss_title="Loss *x*")
        assert md == golden
    assert loss_curve_markdown(epochs, SEED_LOSSES, title="Loss *x*") == golden


def test_classifier_curve_markdown_has_the_accuracy_curve_after_the_loss_curve() -> None:
    epochs = list(range(1, 21))
    losses = [0.7 * 0.9**k for k in range(20)]
    accuracies = [min(1.0, 0.4 + 0.05 * k) for k in range(20)]
    md = training_curves_markdown(
        epochs,
        losses,
        accuracies,
        loss_title="Run 2: training loss",
        accuracy_title="Run 2: validation accuracy <b>",
    )
    assert md.startswith(loss_curve_markdown(epochs, losses, title="Run 2: training loss"))
    assert md.index("### Run 2: training loss") < md.index("### Run 2: validation accuracy")
    assert "### Run 2: validation accuracy &lt;b&gt;\n" in md
    (loss_alt, loss_svg), (acc_alt, acc_svg) = images(md)
    assert (loss_alt, acc_alt) == ("loss curve", "validation accuracy curve")
    assert "loss" in texts(parse(loss_svg))
    acc = parse(acc_svg)
    assert "Run 2: validation accuracy <b>" in texts(acc)
    assert list(y_ticks(acc)) == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    assert len(polyline(acc)[1]) == 20
    standalone = accuracy_curve_markdown(epochs, accuracies, title="Run 2: validation accuracy <b>")
    assert md.endswith(standalone)
    with pytest.raises(ValueError):
        training_curves_markdown(epochs, losses, accuracies[:-1])


def test_has_finite_values() -> None:
    assert not has_finite_values(None) and not has_finite_values([])
    assert not has_finite_values([None, math.nan, math.inf])
    assert has_finite_values([None, 0.0])


# --- the summary -------------------------------------------------------------------------------


def classifier_summary(classes: list[Any], **overrides: Any) -> dict[str, Any]:
    """A finished softmax run's summary, as `tasks.artifacts` builds it."""
    evaluation: dict[str, Any] = {
        "classes": classes,
        "train_loss": 0.31,
        "train": {
            "log_loss": 0.31,
            "accuracy": 0.9,
            "macro_f1": 0.8812345,
            "confusion_matrix": [[5, 1, 0], [0, 4, 1], [0, 0, 9]],
        },
        "validation": {
            "log_loss": 0.42,
            "accuracy": 0.75,
            "macro_f1": 0.7,
            "confusion_matrix": [[2, 0, 1], [1, 1, 0], [0, 0, 3]],
        },
        "optimum": {"loss": 0.3, "relative_gap": 0.0333, "reason": None},
        "predictions": [
            {
                "input": [1.0, 2.0],
                "class": classes[0],
                "probabilities": {str(c): p for c, p in zip(classes, (0.7, 0.2, 0.1))},
            }
        ],
    }
    summary: dict[str, Any] = {
        "run_id": 7,
        "status": "completed",
        "stop_reason": "max_epochs",
        "epochs_done": 50,
        "max_epochs": 50,
        "final_loss": 0.31,
        "final_params": {"w_x_0": 1.5, "w_x_1": -0.5, "b_0": 0.25},
        "evaluation": evaluation,
        "config": {"model": "softmax", "epochs": 50},
        "database_url": "sqlite:///m.db",
    }
    summary.update(overrides)
    return summary


def table(md: str, heading: str) -> list[list[str]]:
    """The cells of the markdown table under `heading`, row by row (escaped pipes kept)."""
    section = md.split(heading + "\n\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in section.splitlines():
        assert line.startswith("| ") or line.startswith("|---"), line
        cells = re.split(r"(?<!\\)\|", line)
        assert cells[0] == "" and cells[-1] == ""  # the line starts and ends with a pipe
        rows.append([c.strip() for c in cells[1:-1]])
    return rows


def test_classifier_summary_shows_metrics_and_confusion_matrices() -> None:
    md = summary_markdown(classifier_summary(["cat", "dog", "fish"]))
    metrics = table(md, "### Metrics of the trained model")
    assert metrics[0] == ["data", "log loss", "accuracy", "macro F1"]
    assert metrics[1] == ["---", "---:", "---:", "---:"]
    assert metrics[2:] == [
        ["train", "0.31", "0.9", "0.8812"],
        ["validation", "0.42", "0.75", "0.7"],
    ]
    train = table(md, "#### Confusion matrix (train)")
    assert train[0] == ["true \\ predicted", "cat", "dog", "fish"]
    assert train[2:] == [
        ["cat", "5", "1", "0"],
        ["dog", "0", "4", "1"],
        ["fish", "0", "0", "9"],
    ]
    validation = table(md, "#### Confusion matrix (validation)")
    assert validation[2:] == [
        ["cat", "2", "0", "1"],
        ["dog", "1", "1", "0"],
        ["fish", "0", "0", "3"],
    ]
    assert md.index("(train)") < md.index("(validation)") < md.index("### Predictions")
    # no least-squares columns: a classifier's optimum is a loss, shown with the losses
    assert table(md, "### Parameters")[0] == ["parameter", "trained"]
    assert "least squares" not in md
    assert "**exact optimum loss:** 0.3 · **relative gap:** 0.0333" in md
    assert "- f(1, 2) = cat (P: cat 0.700, dog 0.200, fish 0.100)" in md


def test_classifier_summary_escapes_class_labels() -> None:
    classes = ["<b>", "a|b", "x\ny *z*"]
    md = summary_markdown(classifier_summary(classes))
    assert "<b>" not in md and "x\ny" not in md
    matrix = table(md, "#### Confusion matrix (validation)")
    assert matrix[0] == ["true \\ predicted", "&lt;b&gt;", "a\\|b", "x y \\*z\\*"]
    assert [row[0] for row in matrix[2:]] == ["&lt;b&gt;", "a\\|b", "x y \\*z\\*"]
    assert all(len(row) == 4 for row in matrix)  # the pipe in a label made no extra cell
    assert "- f(1, 2) = &lt;b&gt; (P: &lt;b&gt; 0.700, a\\|b 0.200, x y \\*z\\* 0.100)" in md


def test_binary_classifier_with_numeric_classes_and_no_validation_split() -> None:
    summary = classifier_summary([0, 1, 2])
    evaluation = summary["evaluation"]
    evaluation["classes"] = [0, 1]
    evaluation["train"] = {
        "log_loss": 0.2,
        "accuracy": 0.95,
        "roc_auc": 0.99,
        "precision": 1.0,
        "recall": 0.9,
        "f1": 0.947,
        "confusion_matrix": [[10, 0], [1, 9]],
    }
    del evaluation["validation"]
    evaluation["optimum"] = {"loss": None, "relative_gap": None, "reason": "separable <data>"}
    md = summary_markdown(summary)
    metrics = table(md, "### Metrics of the trained model")
    assert metrics[0] == ["data", "log loss", "accuracy", "ROC AUC", "precision", "recall", "F1"]
    assert [row[0] for row in metrics[2:]] == ["train"]
    assert table(md, "#### Confusion matrix (train)")[2:] == [["0", "10", "0"], ["1", "1", "9"]]
    assert "(validation)" not in md
    assert "**exact optimum:** none (separable &lt;data&gt;)" in md


def test_a_regression_summary_keeps_its_columns() -> None:
    evaluation = {
        "train": {"mse": 1.5, "rmse": 1.2247, "mae": 1.0, "r2": 0.9},
        "least_squares": {"params": {"w": 2.0}, "loss": 1.0},
        "param_distance": 0.0,
        "loss_gap": 0.0,
    }
    md = summary_markdown(classifier_summary(["a"], final_params={"w": 2.0}, evaluation=evaluation))
    assert table(md, "### Parameters")[0] == [
        "parameter",
        "trained",
        "least squares",
        "difference",
    ]
    assert table(md, "### Metrics of the trained model")[0] == ["data", "MSE", "RMSE", "MAE", "R²"]
    assert "Confusion matrix" not in md
