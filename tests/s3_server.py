"""A real S3-compatible server for the tests: moto's standalone server on a loopback port.

`s3_server` starts `python -m moto.server` once per session (in its own process group, stopped
at the end); `s3_endpoint` points the standard AWS environment of one test at it (dummy
credentials moto accepts, a region, AWS_ENDPOINT_URL, no ~/.aws files); `s3_bucket` creates a
fresh bucket there for one test. Missing moto or s3fs skips those tests, except in CI, where
the `test` extra installs them.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import free_port, start_background, stop_process

#: Dummy credentials: moto accepts any, botocore needs some to sign requests.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"
#: Seconds the server may take to listen (importing moto takes a few on a busy machine).
STARTUP_TIMEOUT = 90


def _require(module: str) -> None:
    if os.environ.get("CI"):
        __import__(module)  # installed by the `test` extra: missing is a failure in CI
    else:
        pytest.importorskip(module)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3-compatible server on loopback for the whole session; yield its endpoint URL."""
    _require("moto.server")
    _require("s3fs")
    port = free_port()
    log = tmp_path_factory.mktemp("s3-server") / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = start_background(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        cwd=Path(log).parent,
        log=log,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"moto's S3 server did not start on port {port}: {log.read_text()[-2000:]}"
                )
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def point_aws_at(monkeypatch: pytest.MonkeyPatch, endpoint_url: str, config_dir: Path) -> None:
    """Set this test's AWS environment to dummy credentials and `endpoint_url`, and hide any
    AWS profile, token or ~/.aws files of the machine."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_dir / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(config_dir / "aws-credentials"))


@pytest.fixture
def s3_endpoint(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The session's S3 server, set as this test's AWS_ENDPOINT_URL with dummy credentials."""
    point_aws_at(monkeypatch, s3_server, tmp_path)
    return s3_server


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the session's S3 server for this test; yield its name."""
    import s3fs

    name = "gdflow-test-" + uuid.uuid4().hex[:12]
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return name
