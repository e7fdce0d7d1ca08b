"""Streaming a Parquet data set: the memory this process may use, the decision to stream, the
one pass's statistics and checks, and the shuffle buffer's batches."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gdflow.config.errors import GdflowError
from gdflow.config.train import TrainConfig
from gdflow.data.dataset import Labels, load_dataset, load_streamed
from gdflow.data.sources import source_of
from gdflow.data.streaming import (
    IN_MEMORY_FRACTION,
    Memory,
    Moments,
    buffer_rows,
    memory_available,
    prefetched,
    shuffled,
    stream_plan,
)


def _write(path: Path, frame: pd.DataFrame, row_group_size: int = 100) -> Path:
    frame.to_parquet(path, row_group_size=row_group_size, index=False)
    return path


def _frame(rows: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(size=rows) * 1e3 + 5e3,
            "n": rng.integers(-50, 50, size=rows),
            "c": rng.normal(size=rows).astype(np.float32),
            "y": rng.normal(size=rows),
        }
    )


# --- memory ---------------------------------------------------------------------------------


def _proc(tmp_path: Path, *, available_kib: int, cgroup: str = "0::/\n") -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_kib} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "status").write_text("VmSize:\t1024 kB\nVmData:\t512 kB\n")
    return proc


def test_memory_is_the_smallest_of_meminfo_and_the_cgroup_limit(tmp_path: Path) -> None:
    proc = _proc(tmp_path, available_kib=4 << 20)  # 4 GiB available
    root = tmp_path / "cgroup"
    root.mkdir()
    assert memory_available(proc, root) == Memory(4 << 30, "MemAvailable")
    (root / "memory.max").write_text("max\n")
    assert memory_available(proc, root) == Memory(4 << 30, "MemAvailable")
    (root / "memory.max").write_text(str(3 << 30))
    (root / "memory.current").write_text(str(1 << 30))
    assert memory_available(proc, root) == Memory(2 << 30, "the cgroup's memory limit")


def test_a_cgroup_v1_limit_of_the_processs_own_group_counts(tmp_path: Path) -> None:
    proc = _proc(tmp_path, available_kib=8 << 20, cgroup="4:memory:/jobs/7\n0::/\n")
    group = tmp_path / "cgroup" / "memory" / "jobs" / "7"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text(str(1 << 30))
    (group / "memory.usage_in_bytes").write_text(str(1 << 28))
    found = memory_available(proc, tmp_path / "cgroup")
    assert found == Memory((1 << 30) - (1 << 28), "the cgroup's memory limit")
    (group / "memory.limit_in_bytes").write_text(str(2**63 - 4096))  # v1's "no limit"
    assert memory_available(proc, tmp_path / "cgroup") == Memory(8 << 30, "MemAvailable")


def test_rlimit_as_counts_less_the_address_space_in_use(tmp_path: Path) -> None:
    proc = _proc(tmp_path, available_kib=8 << 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = 1 << 30
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip("the hard RLIMIT_AS is below 1 GiB already")
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        found = memory_available(proc, tmp_path / "none")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert found == Memory(limit - 1024 * 1024, "RLIMIT_AS")  # VmSize 1024 kB in use


# --- the decision -----------------------------------------------------------------------------


def _plan(config: TrainConfig, path: Path, available: int) -> tuple[bool, str | None]:
    source = source_of(path)
    assert source is not None
    plan = stream_plan(config, source, memory=Memory(available, "MemAvailable"), name=str(path))
    return plan.stream, plan.reason


def test_data_streams_when_it_exceeds_a_quarter_of_the_memory(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.parquet", _frame(1000))
    config = TrainConfig(data=str(path), batch_size=10)
    size = 1000 * 4 * 4  # rows x columns x float32
    assert _plan(config, path, int(size / IN_MEMORY_FRACTION)) == (False, None)
    stream, reason = _plan(config, path, int(size / IN_MEMORY_FRACTION) - 1)
    assert stream and reason == (
        f"Streaming {path}: 15.6 KiB as float32 > 25% of the 62.5 KiB this process may use "
        "(MemAvailable)"
    )
    # float64 doubles the size; --features counts only the columns chosen
    assert _plan(config.model_copy(update={"dtype": "float64"}), path, 2 * size)[0]
    chosen = config.model_copy(update={"features": ["a"]})
    assert not _plan(chosen, path, int(size / IN_MEMORY_FRACTION) - 1)[0]


def test_stream_given_streams_small_data_and_says_so(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.parquet", _frame(100))
    config = TrainConfig(data=str(path), batch_size=10, stream=True)
    assert _plan(config, path, 1 << 40) == (True, f"Streaming {path}: --stream given")


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({}, "full-batch training (give --batch-size N)"),
        ({"batch_size": 8, "validation_split": 0.2}, "--validation-split"),
        ({"batch_size": 8, "model": "mlp"}, "--model mlp"),
        (
            {"batch_size": 8, "model": "logistic", "class_weight": "balanced", "lr": "auto"},
            "--lr auto with --class-weight (give --lr)",
        ),
    ],
)
def test_stream_given_to_a_run_that_cannot_stream_is_one_line(
    tmp_path: Path, options: dict[str, object], why: str
) -> None:
    path = _write(tmp_path / "d.parquet", _frame(100))
    config = TrainConfig.model_validate({"data": str(path), "stream": True, **options})
    with pytest.raises(GdflowError, match="^--stream cannot stream this run: ") as info:
        _plan(config, path, 1 << 40)
    assert why in str(info.value) and "\n" not in str(info.value)


def test_csv_data_is_never_streamed(tmp_path: Path) -> None:
    path = tmp_path / "d.csv.gz"
    _frame(100).to_csv(path, index=False)
    streamed = TrainConfig(data=str(path), batch_size=8, stream=True)
    with pytest.raises(GdflowError, match="gzip-compressed CSV data \\(streaming reads Parquet"):
        _plan(streamed, path, 1 << 40)
    assert _plan(streamed.model_copy(update={"stream": False}), path, 1) == (False, None)


def test_data_too_large_for_a_run_that_cannot_stream_fails_before_reading(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "d.parquet", _frame(1000))
    full_batch = TrainConfig(data=str(path))
    size = 1000 * 4 * 4
    assert _plan(full_batch, path, size) == (False, None)  # may fit: tried in memory
    with pytest.raises(GdflowError) as info:
        _plan(full_batch, path, size - 1)
    assert str(info.value) == (
        f"{path} needs 15.6 KiB as float32 in memory but this process may use 15.6 KiB "
        "(MemAvailable) and the run cannot stream it: full-batch training (give --batch-size N)"
    )


# --- the pass -----------------------------------------------------------------------------------


def test_the_pass_gives_every_rows_moments_in_float64(tmp_path: Path) -> None:
    frame = _frame(1000)
    path = _write(tmp_path / "d.parquet", frame, row_group_size=77)
    streamed = load_streamed(str(path), dtype="float32")
    stream = streamed.stream
    assert stream is not None and streamed.n_rows == 1000 and len(stream.groups) == 13
    z = np.column_stack([load_dataset(str(path)).x, load_dataset(str(path)).y]).astype(np.float64)
    np.testing.assert_allclose(stream.moments.mean, z.mean(axis=0), rtol=1e-12)
    centred = z - z.mean(axis=0)
    np.testing.assert_allclose(stream.moments.comoment, centred.T @ centred, rtol=1e-10)
    np.testing.assert_allclose(np.sqrt(stream.moments.variance), z.std(axis=0), rtol=1e-12)
    assert np.array_equal(stream.abs_max, np.abs(z[:, :3]).max(axis=0))


def test_moments_merge_as_one_block() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 3)) + 1e6  # a large mean: the centred merge keeps precision
    parts = [Moments.of(z[a:b, :2], z[a:b, 2]) for a, b in ((0, 123), (123, 400), (400, 500))]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    whole = Moments.of(z[:, :2], z[:, 2])
    assert merged.rows == 500
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-15)
    # Each value 1e6 carries ~1e-10 of rounding: the co-moments agree to ~1e-7 absolute.
    np.testing.assert_allclose(merged.comoment, whole.comoment, rtol=1e-9, atol=1e-6)


def test_a_small_data_sets_sample_is_all_of_it_and_a_large_ones_is_seeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "d.parquet", _frame(1000))
    streamed = load_streamed(str(path))
    assert np.array_equal(streamed.x, load_dataset(str(path)).x)
    monkeypatch.setattr("gdflow.data.streaming.SAMPLE_ROWS", 100)
    first, again, other = (load_streamed(str(path), seed=s) for s in (3, 3, 4))
    assert first.x.shape == (first.x.shape[0], 3) and 50 < len(first.y) <= 100
    assert first.n_rows == 1000  # every row, not the sample's
    assert np.array_equal(first.x, again.x) and not np.array_equal(first.x, other.x)
    rows = {tuple(row) for row in load_dataset(str(path)).x.tolist()}
    assert all(tuple(row) in rows for row in first.x.tolist())


def test_non_finite_values_fail_with_the_in_memory_paths_line(tmp_path: Path) -> None:
    frame = _frame(1000)
    frame.loc[[250, 731], "c"] = np.nan
    frame["n"] = frame["n"].astype("Int64")
    frame.loc[905, "n"] = None  # a null integer
    path = _write(tmp_path / "d.parquet", frame)
    with pytest.raises(GdflowError) as in_memory:
        load_dataset(str(path))
    with pytest.raises(GdflowError) as streamed:
        load_streamed(str(path))
    assert str(streamed.value) == (
        f"column 'n' in {path} has 1 missing, NaN or infinite value(s) (first in data row 906) "
        "or values too large for float32; clean or drop those rows"
    )
    frame["n"] = 1
    _write(path, frame)
    with pytest.raises(GdflowError) as in_memory:
        load_dataset(str(path))
    with pytest.raises(GdflowError) as streamed:
        load_streamed(str(path))
    assert str(streamed.value) == str(in_memory.value)
    assert "column 'c'" in str(streamed.value) and "2 missing" in str(streamed.value)
    assert "first in data row 251" in str(streamed.value)


def test_values_too_large_for_float32_are_the_same_error(tmp_path: Path) -> None:
    frame = _frame(300)
    frame.loc[120, "a"] = 1e39
    path = _write(tmp_path / "d.parquet", frame)
    with pytest.raises(GdflowError) as in_memory:
        load_dataset(str(path))
    with pytest.raises(GdflowError) as streamed:
        load_streamed(str(path))
    assert str(streamed.value) == str(in_memory.value)


def test_columns_are_chosen_and_refused_as_in_memory(tmp_path: Path) -> None:
    frame = _frame(200)
    frame["label"] = "x"
    path = _write(tmp_path / "d.parquet", frame)
    chosen = load_streamed(str(path), features=["c", "a"], target="n")
    assert chosen.feature_names == ("c", "a") and chosen.target_name == "n"
    assert np.array_equal(chosen.x, load_dataset(str(path), features=["c", "a"], target="n").x)
    with pytest.raises(GdflowError, match="column 'zz' not found in .*; available columns: a, n"):
        load_streamed(str(path), features=["zz"], target="y")
    with pytest.raises(
        GdflowError, match="^column 'label' in .* is not numeric \\(large_string\\)"
    ):
        load_streamed(str(path), features=["a", "label"], target="y")


def test_a_classifiers_classes_and_their_rows_come_from_the_pass(tmp_path: Path) -> None:
    frame = _frame(600)
    frame["y"] = np.random.default_rng(2).choice([7, -1, 3], size=600)
    path = _write(tmp_path / "d.parquet", frame)
    labels = Labels("multiclass", "softmax")
    streamed = load_streamed(str(path), labels=labels)
    in_memory = load_dataset(str(path), labels=labels)
    stream = streamed.stream
    assert stream is not None and streamed.classes == in_memory.classes == (-1, 3, 7)
    assert np.array_equal(streamed.y, in_memory.y)  # class indices, as in memory
    counts = [int((frame["y"] == label).sum()) for label in (-1, 3, 7)]
    assert stream.class_counts is not None and stream.class_counts.tolist() == counts
    with pytest.raises(GdflowError, match="needs exactly two classes"):
        load_streamed(str(path), labels=Labels("binary", "logistic"))
    frame = pd.concat([frame] * 2, ignore_index=True)
    frame["y"] = np.arange(1200)  # a number per row, not a class
    _write(path, frame)
    with pytest.raises(GdflowError, match="has more than 1000 classes"):
        load_streamed(str(path), labels=labels)


def test_a_folders_files_stream_in_path_order(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    frame = _frame(300)
    for i in range(3):
        (folder / f"day={i}").mkdir(parents=True)
        _write(folder / f"day={i}" / "p.parquet", frame.iloc[i * 100 : (i + 1) * 100], 40)
    streamed = load_streamed(str(folder))
    stream = streamed.stream
    assert stream is not None and len(stream.files) == 3 and len(stream.groups) == 9
    x = np.concatenate([chunk for chunk, _ in stream.chunks()])
    assert np.array_equal(x, load_dataset(str(folder)).x)


# --- the shuffle buffer -------------------------------------------------------------------------


def _numbered(rows: int, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Chunks whose rows are their own numbers: x = (id, -id), y = id."""
    ids = np.arange(rows, dtype=np.float64)
    return [
        (np.column_stack([ids[i : i + chunk], -ids[i : i + chunk]]), ids[i : i + chunk])
        for i in range(0, rows, chunk)
    ]


@pytest.mark.parametrize(
    ("rows", "chunk", "capacity", "batch"),
    [(1000, 70, 128, 16), (997, 1000, 64, 10), (50, 7, 9, 9), (300, 300, 1000, 32)],
)
def test_every_row_goes_out_once_each_epoch(
    rows: int, chunk: int, capacity: int, batch: int
) -> None:
    rng = np.random.default_rng(0)
    seen = []
    batches = list(
        shuffled(
            iter(_numbered(rows, chunk)),
            batch_size=batch,
            capacity=capacity,
            permutation=rng.permutation,
        )
    )
    for x, y in batches:
        assert np.array_equal(x[:, 0], y) and np.array_equal(x[:, 1], -y)  # rows stay whole
        seen.append(y)
    assert sorted(np.concatenate(seen).tolist()) == list(range(rows))
    sizes = [len(y) for _, y in batches]
    assert sizes[:-1] == [batch] * (len(sizes) - 1) and 0 < sizes[-1] <= batch
    assert len(sizes) == -(-rows // batch)  # as many batches as in memory


def test_a_buffer_holding_every_row_gives_one_permutation_of_them() -> None:
    drawn = []

    def permutation(n: int) -> np.ndarray:
        order = np.random.default_rng(5).permutation(n)
        drawn.append(order)
        return order

    batches = list(
        shuffled(iter(_numbered(100, 30)), batch_size=16, capacity=100, permutation=permutation)
    )
    assert len(drawn) == 1
    assert np.array_equal(np.concatenate([y for _, y in batches]), drawn[0].astype(np.float64))


def test_a_small_buffer_still_mixes_a_sorted_file() -> None:
    """With a buffer of a tenth of the rows, a batch's rows come from far apart in the file."""
    rng = np.random.default_rng(1)
    batches = list(
        shuffled(
            iter(_numbered(10_000, 500)), batch_size=50, capacity=1000, permutation=rng.permutation
        )
    )
    spread = [float(np.ptp(y)) for _, y in batches[: len(batches) // 2]]
    assert np.median(spread) > 500


def test_the_default_buffer_is_64_batches_within_its_bytes() -> None:
    assert buffer_rows(100) == 65_536
    assert buffer_rows(4096) == 64 * 4096
    assert buffer_rows(4096, row_bytes=4000) == (64 << 20) // 4000
    assert buffer_rows(100_000, row_bytes=4000) == 100_000  # never below one batch
    assert buffer_rows(32, 7) == 32 and buffer_rows(8, 500) == 500


def test_prefetched_items_arrive_in_order_and_errors_are_raised_here() -> None:
    assert list(prefetched(iter(range(100)), depth=3)) == list(range(100))

    def failing():  # type: ignore[no-untyped-def]
        yield 1
        raise ValueError("bad row group")

    items = prefetched(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="bad row group"):
        next(items)


def test_a_folder_part_with_another_type_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    frame = _frame(100)
    _write(folder / "a.parquet", frame)
    frame["c"] = frame["c"].astype(str)
    _write(folder / "b.parquet", frame)
    with pytest.raises(GdflowError) as info:
        load_streamed(str(folder))
    assert str(info.value).startswith(f"column 'c' in {folder / 'b.parquet'} is not numeric")


def test_a_file_that_is_not_parquet_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(GdflowError, match=f"^cannot read {path} as Parquet \\(.*\\); check"):
        load_streamed(str(path))
    config = TrainConfig(data=str(path), batch_size=4)
    assert _plan(config, path, 1) == (False, None)  # loading it in memory says why
