"""Rendering for the Prefect UI: loss-curve SVG, data URIs, table rows and markdown reports."""

from __future__ import annotations

import base64
import math
import xml.etree.ElementTree as ET

import pytest

from gdflow.reports.charts import (
    MAX_CURVE_POINTS,
    downsample_indices,
    loss_curve_svg,
    loss_curves_svg,
    svg_data_uri,
)
from gdflow.reports.comparisons import sweep_markdown, trend_markdown
from gdflow.reports.markdown import escape_markdown, loss_curve_markdown
from gdflow.reports.run_report import metrics_table_rows, summary_markdown

NS = "{http://www.w3.org/2000/svg}"
SEED_LOSSES = [11.0 * 0.75**k for k in range(99)] + [6.0254e-13]
MALICIOUS = "<script>alert(1)</script> | pipe | **bold**"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def polyline_points(root: ET.Element) -> list[tuple[float, float]]:
    (line,) = root.iter(f"{NS}polyline")
    return [tuple(float(c) for c in p.split(",")) for p in line.get("points", "").split()]


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{NS}text")]


def test_seed_curve_uses_a_log_axis_and_falls_monotonically() -> None:
    svg = loss_curve_svg(range(1, 101), SEED_LOSSES)
    assert svg.startswith("<svg")
    root = parse(svg)
    size = (root.get("width"), root.get("height"), root.get("viewBox"))
    assert size == ("640", "320", "0 0 640 320")
    assert "sans-serif" in root.get("font-family", "")
    labels = texts(root)
    assert "loss (log scale)" in labels and "epoch" in labels and "Training loss" in labels
    assert "1e-12" in labels and "1e+00" in labels
    points = polyline_points(root)
    assert len(points) == 100
    xs, ys = zip(*points)
    assert all(a < b for a, b in zip(xs, xs[1:]))
    assert all(a < b for a, b in zip(ys, ys[1:]))  # loss falls, so SVG y grows
    assert all(0 <= x <= 640 and 0 <= y <= 320 for x, y in points)


def test_flat_curve_is_linear_and_single_point_renders() -> None:
    root = parse(loss_curve_svg([1, 2, 3], [2.5, 2.5, 2.5]))
    assert "loss" in texts(root) and "loss (log scale)" not in texts(root)
    assert len({y for _, y in polyline_points(root)}) == 1
    single = parse(loss_curve_svg([7], [0.5]))
    assert len(polyline_points(single)) == 1
    assert "7" in texts(single)


def test_non_finite_values_are_skipped_and_zero_keeps_a_log_axis() -> None:
    root = parse(loss_curve_svg(range(6), [10.0, None, math.nan, math.inf, 1e-6, 0.0]))
    assert len(polyline_points(root)) == 2
    assert "loss (log scale)" in texts(root)
    mixed = parse(loss_curve_svg(range(3), [-1.0, 0.0, 1000.0]))
    assert "loss" in texts(mixed) and len(polyline_points(mixed)) == 3


def test_empty_curve_renders_the_note() -> None:
    for epochs, losses in [([], []), ([1, 2], [None, math.nan])]:
        root = parse(loss_curve_svg(epochs, losses))
        assert "no finite loss values" in texts(root)
        assert not list(root.iter(f"{NS}polyline"))


def test_long_curve_is_downsampled_keeping_the_ends() -> None:
    n = 100_000
    root = parse(loss_curve_svg(range(n), [1.0 + 1.0 / (k + 1) for k in range(n)]))
    points = polyline_points(root)
    assert len(points) == MAX_CURVE_POINTS
    assert points[0][0] == pytest.approx(72) and points[-1][0] == pytest.approx(620)


def test_title_is_xml_escaped_and_sizes_are_checked() -> None:
    root = parse(loss_curve_svg([1, 2], [1.0, 2.0], title="a < b & <c>", width=300, height=200))
    assert "a < b & <c>" in texts(root)
    assert root.get("viewBox") == "0 0 300 200"
    with pytest.raises(ValueError):
        loss_curve_svg([1, 2], [1.0])


def test_data_uri_decodes_back_and_markdown_embeds_it() -> None:
    svg = loss_curve_svg([1, 2], [3.0, 1.0], title="λ ✓")
    uri = svg_data_uri(svg)
    prefix = "data:image/svg+xml;base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri[len(prefix) :]).decode("utf-8") == svg
    md = loss_curve_markdown([1, 2], [3.0, 1.0], title="run #1")
    assert md.startswith("### run \\#1\n\n![loss curve](data:image/svg+xml;base64,")


def test_downsample_indices() -> None:
    assert downsample_indices(0, 5) == []
    assert downsample_indices(1, 5) == [0]
    assert downsample_indices(5, 5) == [0, 1, 2, 3, 4]
    assert downsample_indices(10, 3) == [0, 5, 9]
    big = downsample_indices(10**6, 200)
    assert len(big) == 200 and big[0] == 0 and big[-1] == 10**6 - 1
    assert all(a < b for a, b in zip(big, big[1:]))
    gaps = {b - a for a, b in zip(big, big[1:])}
    assert max(gaps) - min(gaps) <= 1
    for bad in (1, 0):
        with pytest.raises(ValueError):
            downsample_indices(10, bad)


def test_metrics_table_rows() -> None:
    params = [{"w": 1.0 + k / 3, "b": None} for k in range(1000)]
    rows = metrics_table_rows(range(1, 1001), [None] + [1 / 3] * 999, params, ["w", "b"])
    assert len(rows) == 200
    assert list(rows[0]) == ["epoch", "loss", "w", "b"]
    assert rows[0] == {"epoch": 1, "loss": None, "w": 1.0, "b": None}
    assert rows[-1]["epoch"] == 1000 and rows[-1]["loss"] == 0.33333333
    assert rows[-1]["w"] == float(f"{1 + 999 / 3:.8g}")
    with pytest.raises(ValueError):
        metrics_table_rows([1], [1.0, 2.0], [{}], [])


def test_escape_markdown() -> None:
    assert escape_markdown("<a href='x'>&</a>") == "&lt;a href='x'&gt;&amp;&lt;/a&gt;"
    escaped = "\\*\\*b\\*\\* \\| \\[l\\]\\(u\\) \\`c\\` \\#\\_"
    assert escape_markdown("**b** | [l](u) `c` #_") == escaped
    assert escape_markdown("a\\b") == "a\\\\b"


def seed_summary(**overrides: object) -> dict[str, object]:
    summary: dict[str, object] = {
        "run_id": 3,
        "status": "completed",
        "stop_reason": "max_epochs",
        "epochs_done": 100,
        "max_epochs": 100,
        "final_loss": 6.0254e-13,
        "final_params": {"w": 1.99999976},
        "evaluation": {
            "predictions": [{"input": [5.0], "output": 9.9999988}],
            "train_loss": 6.0254e-13,
            "least_squares": {"params": {"w": 2.0}, "loss": 0.0},
            "param_distance": 2.4e-7,
            "loss_gap": 6.0254e-13,
        },
        "config": {"lr": 0.01, "epochs": 100, "predict": [[5.0], [1.0, 2.0]], "data": None},
        "error": None,
        "device": "cpu",
        "database_url": "sqlite:////home/you/.gdflow/gdflow.db",
        "seconds": 0.42,
    }
    summary.update(overrides)
    return summary


def test_summary_of_the_seed_run() -> None:
    md = summary_markdown(seed_summary())
    assert md.startswith("## Run 3: completed\n")
    assert "100 / 100" in md and "cpu" in md and "0.42 s" in md
    assert "- f(5) = 10.000" in md
    assert "| parameter | trained | least squares | difference |" in md
    assert "| w | 1.9999998 | 2 | -2.4e-07 |" in md
    assert "**final loss:** 6.0254e-13" in md
    assert "| lr | 0\\.01 |" in md and "| predict | 5\\.0; 1\\.0, 2\\.0 |" in md
    assert "`gdflow metrics 3`" in md and "gdflow\\.db" in md


def test_summary_escapes_user_strings() -> None:
    md = summary_markdown(
        seed_summary(
            status="failed",
            final_params={MALICIOUS: 1.0},
            evaluation=None,
            config={"target": MALICIOUS, "data": "a\nb|c"},
            error="bad <b>value</b>\n| not a table |",
        )
    )
    assert "<script>" not in md and "<b>" not in md and "**bold**" not in md
    assert "&lt;script&gt;alert\\(1\\)&lt;/script&gt; \\| pipe \\| \\*\\*bold\\*\\*" in md
    assert "| target | &lt;script&gt;" in md
    assert "| data | a b\\|c |" in md
    assert "> bad &lt;b&gt;value&lt;/b&gt;\n> \\| not a table \\|" in md
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| parameter"):
            assert line.replace("\\|", "").count("|") in (3, 5)  # two or four cells


def test_trend_table_is_newest_first_with_the_union_of_parameters() -> None:
    runs = [
        {
            "run_id": 1,
            "started_at": "2026-01-01 10:00",
            "status": "completed",
            "epochs_done": 100,
            "final_loss": 1e-3,
            "final_params": {"w": 1.9},
        },
        {
            "run_id": 3,
            "started_at": "2026-01-03 10:00",
            "status": "failed",
            "epochs_done": 5,
            "final_loss": None,
            "final_params": None,
        },
        {
            "run_id": 2,
            "started_at": "2026-01-02 10:00",
            "status": "completed",
            "epochs_done": 100,
            "final_loss": 2e-2,
            "final_params": {"w": 1.8, "b": 0.5},
        },
    ]
    md = trend_markdown(runs, title="Trend <x>")
    assert md.startswith("## Trend &lt;x&gt;\n")
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0] == "| run | started | status | epochs | final loss | w | b |"
    assert [row.split("|")[1].strip() for row in table[2:]] == ["3", "2", "1"]
    assert table[3].endswith("| 0.02 | 1.8 | 0.5 |")
    assert table[4].endswith("| 0.001 | 1.9 | — |")
    uri = md.split("![final loss by run](")[1].rstrip(")\n")
    root = parse(base64.b64decode(uri.split(",", 1)[1]).decode("utf-8"))
    assert "Final loss by run" in texts(root) and "run" in texts(root)
    assert len(polyline_points(root)) == 2


def test_trend_without_enough_losses_has_no_chart() -> None:
    one = [
        {
            "run_id": 1,
            "started_at": "t",
            "status": "completed",
            "epochs_done": 1,
            "final_loss": 1.0,
            "final_params": {"w": 1.0},
        }
    ]
    assert "![" not in trend_markdown(one, title="t")
    assert "No runs recorded yet." in trend_markdown([], title="t")


def polylines(root: ET.Element) -> list[ET.Element]:
    return list(root.iter(f"{NS}polyline"))


def test_overlaid_curves_share_axes_with_one_polyline_and_colour_each() -> None:
    series = [
        ("lr 0.001", range(1, 101), [11.0 * 0.978**k for k in range(100)]),
        ("lr 0.01", range(1, 101), SEED_LOSSES),
        ("lr 1", range(1, 4), [11.0, 2.1e6, math.inf]),
    ]
    root = parse(loss_curves_svg(series, title="Sweep 1"))
    assert (root.get("width"), root.get("height")) == ("640", "360")
    lines = polylines(root)
    assert [len(line.get("points", "").split()) for line in lines] == [100, 100, 2]
    colours = [line.get("stroke") for line in lines]
    assert len(set(colours)) == 3
    labels = texts(root)
    assert "Sweep 1" in labels and "loss (log scale)" in labels and "epoch" in labels
    assert {"lr 0.001", "lr 0.01", "lr 1"} <= set(labels)
    # shared axes: the first points (epoch 1, loss 11) of the first two curves coincide
    firsts = [line.get("points", "").split()[0] for line in lines]
    assert firsts[0] == firsts[1] == firsts[2]


def test_overlay_skips_series_without_finite_values_and_escapes_labels() -> None:
    series = [
        (MALICIOUS, [1, 2, 3], [3.0, 2.0, 1.5]),
        ("all nan", [1, 2], [math.nan, None]),
        ("one point", [2], [2.5]),
    ]
    svg = loss_curves_svg(series, title="<t>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    root = parse(svg)
    assert len(polylines(root)) == 2
    assert "loss" in texts(root) and "loss (log scale)" not in texts(root)
    assert MALICIOUS in texts(root) and "all nan (no finite loss)" in texts(root)
    assert "<t>" in texts(root)
    assert len(list(root.iter(f"{NS}circle"))) == 1  # a one-point curve still shows


def test_overlay_without_data_shows_the_note_and_long_legends_are_cut() -> None:
    root = parse(loss_curves_svg([], title="empty"))
    assert "no finite loss values" in texts(root) and not polylines(root)
    many = [(f"run {k}", [1, 2], [1.0 + k, 0.5 + k]) for k in range(40)]
    root = parse(loss_curves_svg(many, title="many"))
    assert len(polylines(root)) == 40
    assert any(t.startswith("+ ") and t.endswith(" more") for t in texts(root))
    dashed = [line for line in polylines(root) if line.get("stroke-dasharray")]
    assert len(dashed) == 20  # series 11-20 and 31-40 reuse the palette, dashed
    with pytest.raises(ValueError):
        loss_curves_svg([("bad", [1, 2], [1.0])], title="t")


def sweep_rows() -> list[dict[str, object]]:
    columns = ["run", "lr", "status", "stop reason", "epochs", "final loss", "best loss"]
    values = [
        (3, 0.001, "completed", "max_epochs", 100, 0.134, 0.134, None, 1.89),
        (1, 0.01, "completed", "max_epochs", 100, 6e-13, 6e-13, None, 2.0),
        (2, 1.0, "diverged", MALICIOUS, 3, None, 11.0, None, 9263.0),
    ]
    return [dict(zip([*columns, "val loss", "w"], row)) for row in values]


def test_sweep_markdown_marks_the_best_row_and_names_it() -> None:
    md = sweep_markdown(sweep_rows(), best_run_id=1, title="Sweep 1 <lr>")
    assert md.startswith("## Sweep 1 &lt;lr&gt;\n")
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0] == (
        "| best | run | lr | status | stop reason | epochs | final loss | best loss | val loss "
        "| w |"
    )
    assert len(table) == 5
    starred = [row for row in table[2:] if row.startswith("| ★ |")]
    assert len(starred) == 1 and starred[0].startswith("| ★ | 1 | 0.01 | completed |")
    assert "**Best:** run 1 with lr 0.01 (final loss 6e-13): w = 2" in md
    assert "<script>" not in md and "&lt;script&gt;alert\\(1\\)" in md
    for line in table:
        assert line.replace("\\|", "").count("|") == 11


def test_sweep_markdown_without_a_best_run() -> None:
    md = sweep_markdown(sweep_rows()[2:], best_run_id=None, title="Sweep 2")
    assert "★" not in md and "No run completed" in md
    assert "No runs recorded." in sweep_markdown([], best_run_id=None, title="t")
    validated = [{**sweep_rows()[1], "val loss": 0.25}]
    assert "(validation loss 0.25)" in sweep_markdown(validated, best_run_id=1, title="t")


def test_summary_shows_metrics_diagnostics_and_escaped_warnings() -> None:
    evaluation = {
        "predictions": [],
        "train_loss": 1.0,
        "train": {"mse": 1.5, "rmse": 1.2247, "mae": 1.0, "r2": 0.9},
        "validation": {"mse": 2.5, "rmse": 1.5811, "mae": 1.25, "r2": 0.8},
        "least_squares": {"params": {"w": 2.0}, "loss": 1.0},
        "param_distance": 0.0,
        "loss_gap": 0.0,
    }
    md = summary_markdown(
        {
            "run_id": 4,
            "status": "completed",
            "epochs_done": 10,
            "max_epochs": 10,
            "final_params": {"w": 2.0},
            "evaluation": evaluation,
            "best_epoch": 9,
            "best_loss": 0.5,
            "max_stable_lr": 0.0909,
            "condition_number": 12.5,
            "warnings": ["<script>alert(1)</script> lr too large"],
            "database_url": "db",
        }
    )
    assert "| train | 1.5 | 1.2247 | 1 | 0.9 |" in md
    assert "| validation | 2.5 | 1.5811 | 1.25 | 0.8 |" in md
    assert "**best epoch:** 9" in md and "**condition number:** 12.5" in md
    assert "<script>" not in md and "&lt;script&gt;" in md
