"""`gdflow run` and `gdflow predict` on data where it lives: a semicolon-separated,
gzip-compressed CSV and a partitioned Parquet folder on an S3-compatible server."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.processes import GdflowMain


def test_a_remote_compressed_semicolon_csv_trains_and_a_remote_folder_is_scored(
    gdflow_main: GdflowMain, database_url: str, tmp_path: Path, s3_bucket: str
) -> None:
    import s3fs

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 2))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": 3 * x[:, 0] - x[:, 1] + 1})
    (tmp_path / "u.csv.gz").write_bytes(gzip.compress(frame.to_csv(index=False, sep=";").encode()))
    parts = tmp_path / "score"
    for i in range(2):
        (parts / f"day={i}").mkdir(parents=True)
        frame.iloc[i * 5 : i * 5 + 5][["a", "b"]].to_parquet(parts / f"day={i}" / "p.parquet")
    s3 = s3fs.S3FileSystem(skip_instance_cache=True)
    s3.put(str(tmp_path / "u.csv.gz"), f"{s3_bucket}/u.csv.gz")
    s3.put(str(parts), f"{s3_bucket}/score", recursive=True)

    url = f"s3://{s3_bucket}/u.csv.gz"
    run = ["run", "--data", url, "--epochs", "300", "--lr", "0.1", "--log-every", "0"]
    done = gdflow_main(run, database_url=database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "saved model u version 1" in done.stdout
    shown = gdflow_main(["show", "1", "--format", "json"], database_url=database_url, cwd=tmp_path)
    details = json.loads(shown.stdout)
    found = details["data_fingerprint"]
    assert found["rows"] == 300 and found["compression"] == "gzip" and found["delimiter"] == ";"
    assert [c["name"] for c in found["columns"]] == ["a", "b", "y"]
    assert details["config"]["data"] == url
    assert abs(details["final_params"]["w_a"] - 3) < 0.05

    predicted = gdflow_main(
        ["predict", "--model", "u", "--data", f"s3://{s3_bucket}/score", "--output", "out.csv"],
        database_url=database_url,
        cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    out = pd.read_csv(tmp_path / "out.csv")
    assert len(out) == 10
    params = details["final_params"]
    expected = params["w_a"] * out["a"] + params["w_b"] * out["b"] + params.get("b", 0.0)
    assert np.allclose(out["prediction"], expected, rtol=1e-6)

    missing = gdflow_main(
        ["run", "--data", f"s3://{s3_bucket}/nope.csv", "--epochs", "5"],
        database_url=database_url,
        cwd=tmp_path,
    )
    assert missing.returncode != 0
    assert f"data 's3://{s3_bucket}/nope.csv' not found" in missing.stderr
