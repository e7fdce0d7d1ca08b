"""The model store on a real local folder and on a real S3-compatible server (moto's, on
loopback: tests/s3_server.py): atomic writes, checked reads, and one-line errors for missing,
corrupt and unreachable files."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gdflow.config.errors import GdflowError
from gdflow.registry.store import (
    STORE_OPTIONS_ENV,
    ModelStore,
    StoredFile,
    mask_store_url,
    sha256_checksum,
    store_options_from_env,
)
from tests.processes import free_port
from tests.s3_server import point_aws_at

KEY = "toy/3/model.safetensors"
WHAT = "model toy version 3"
DATA = bytes(range(256)) * 64 + b"the end"


def one_line(error: pytest.ExceptionInfo[GdflowError]) -> str:
    """The error's message, checked to be one line."""
    message = str(error.value)
    assert message and len(message.splitlines()) == 1, message
    return message


def leftovers(folder: Path) -> list[str]:
    """Temporary files of a write, anywhere under `folder`."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith(".tmp"))


def flip_byte(data: bytes, at: int = 100) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def test_sha256_checksum() -> None:
    assert sha256_checksum(b"abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert sha256_checksum(b"abc") != sha256_checksum(b"abd")


# --- a local folder --------------------------------------------------------------------------


def test_local_put_get_round_trip(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "store"))
    stored = store.put(KEY, DATA)
    assert stored == StoredFile(
        key=KEY, size=len(DATA), checksum="sha256:" + hashlib.sha256(DATA).hexdigest()
    )
    path = tmp_path / "store" / "toy" / "3" / "model.safetensors"
    assert path.read_bytes() == DATA  # the key's contents, parent folders created
    assert store.location(KEY) == str(path)
    assert store.exists(KEY) and not store.exists("toy/4/model.safetensors")
    assert store.get(stored, what=WHAT) == DATA
    assert leftovers(tmp_path) == []
    assert store.shown == str(tmp_path / "store")


def test_local_put_replaces_the_file(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path))
    store.put(KEY, b"first")
    second = store.put(KEY, b"second version")
    assert (tmp_path / KEY).read_bytes() == b"second version"
    assert store.get(second, what=WHAT) == b"second version"


def test_relative_home_and_file_url_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = ModelStore("models")
    monkeypatch.chdir("/")  # the folder was resolved when the store was made
    relative.put(KEY, b"relative")
    assert (tmp_path / "models" / KEY).read_bytes() == b"relative"

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = ModelStore("~/gdflow-models")
    home.put(KEY, b"home")
    assert (tmp_path / "home" / "gdflow-models" / KEY).read_bytes() == b"home"
    assert home.shown == str(tmp_path / "home" / "gdflow-models")

    url = ModelStore(f"file://{tmp_path}/by-url")
    stored = url.put(KEY, b"url")
    assert (tmp_path / "by-url" / KEY).read_bytes() == b"url"
    assert url.is_local and url.get(stored, what=WHAT) == b"url"


def test_local_write_failing_part_way_leaves_no_file(tmp_path: Path) -> None:
    """A real failure in the middle of the write: the process may write files of at most
    64 KiB (RLIMIT_FSIZE, which binds root too), so writing 1 MiB fails with EFBIG after
    64 KiB went to the temporary file. The key keeps its previous file and no temp file is
    left; a new key gets no file at all."""
    store = ModelStore(str(tmp_path / "store"))
    old = store.put(KEY, b"previous version")
    big = os.urandom(1 << 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(GdflowError) as replacing:
            store.put(KEY, big)
        with pytest.raises(GdflowError) as adding:
            store.put("toy/4/model.safetensors", big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)
    message = one_line(replacing)
    assert message.startswith(f"model store {tmp_path / 'store'}: cannot write {KEY}: ")
    assert "File too large (EFBIG)" in message and "--model-store" in message
    assert one_line(adding)
    assert store.get(old, what=WHAT) == b"previous version"
    assert not (tmp_path / "store" / "toy" / "4" / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "store" / "toy" / "4").iterdir()) == []
    assert leftovers(tmp_path) == []


def test_local_failed_rename_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file is written in full, then the rename onto the key fails."""
    seen: list[str] = []

    def failing_replace(source: str, target: str) -> None:
        seen.append(source)
        assert Path(source).read_bytes() == DATA  # written whole, fsynced, beside the key
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "replace", failing_replace)
    store = ModelStore(str(tmp_path))
    with pytest.raises(GdflowError) as caught:
        store.put(KEY, DATA)
    assert "No space left on device (ENOSPC)" in one_line(caught)
    name = Path(seen[0]).name
    assert Path(seen[0]).parent == tmp_path / "toy" / "3"
    assert name.startswith(".model.safetensors.") and name.endswith(".tmp")
    assert not (tmp_path / KEY).exists()
    assert leftovers(tmp_path) == []


def test_local_store_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    store = ModelStore(str(tmp_path / "not-a-folder"))
    with pytest.raises(GdflowError) as caught:
        store.put(KEY, DATA)
    message = one_line(caught)
    assert f"model store {tmp_path / 'not-a-folder'}: cannot write {KEY}: " in message
    assert "(ENOTDIR)" in message or "(EEXIST)" in message


def test_local_corrupt_file(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path))
    stored = store.put(KEY, DATA)
    path = tmp_path / KEY
    path.write_bytes(flip_byte(DATA))
    with pytest.raises(GdflowError) as caught:
        store.get(stored, what=WHAT)
    message = one_line(caught)
    assert message.startswith(f"{WHAT}: its file {path} is corrupt (sha256:")
    assert f"expected {stored.checksum})" in message
    assert message.endswith("promote another version")

    path.write_bytes(DATA[:-1])  # truncated
    with pytest.raises(GdflowError) as truncated:
        store.get(stored, what=WHAT)
    assert f"is corrupt ({len(DATA) - 1} bytes, expected {len(DATA)})" in one_line(truncated)


def test_local_missing_file(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path))
    stored = store.put(KEY, DATA)
    store.delete(KEY)
    store.delete(KEY)  # missing is not an error
    assert not store.exists(KEY)
    with pytest.raises(GdflowError) as caught:
        store.get(stored, what=WHAT)
    assert one_line(caught) == (
        f"{WHAT}: its file {tmp_path / KEY} is missing from the model store; restore it or "
        "promote another version"
    )
    gone = ModelStore(str(tmp_path / "no-such-folder"))
    with pytest.raises(GdflowError) as folder:
        gone.get(stored, what=WHAT)
    assert "its folder does not exist" in one_line(folder)


@pytest.mark.parametrize("key", ["", "/abs/x", "a/../b", "a//b", "./a", "a\\b"])
def test_invalid_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(GdflowError) as caught:
        ModelStore(str(tmp_path)).put(key, b"x")
    assert "invalid file key" in one_line(caught)
    assert list(tmp_path.iterdir()) == []


# --- options, URLs -------------------------------------------------------------------------


def test_store_options_from_env() -> None:
    assert store_options_from_env({}) == {}
    assert store_options_from_env({STORE_OPTIONS_ENV: "  "}) == {}
    assert store_options_from_env({STORE_OPTIONS_ENV: '{"anon": true}'}) == {"anon": True}
    with pytest.raises(GdflowError) as bad:
        store_options_from_env({STORE_OPTIONS_ENV: '{"secret": "hunter2"'})
    message = one_line(bad)
    assert (
        message.startswith(f"${STORE_OPTIONS_ENV} is not valid JSON") and "hunter2" not in message
    )
    with pytest.raises(GdflowError) as not_object:
        store_options_from_env({STORE_OPTIONS_ENV: '["a"]'})
    assert "not an object" in one_line(not_object)


def test_credentials_are_masked() -> None:
    assert mask_store_url("s3://AKIA:hunter2@bucket/models") == "s3://***@bucket/models"
    assert mask_store_url("https://u:p@host/x?token=abc&a=1") == "https://***@host/x?token=***&a=1"
    assert ModelStore("sftp://me:hunter2@host/models").shown == "sftp://***@host/models"
    assert ModelStore("s3://bucket/models").shown == "s3://bucket/models"


def test_errors_mask_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A driver's message quoting the URL or the options does not show the credentials."""
    point_aws_at(monkeypatch, f"http://127.0.0.1:{free_port()}", tmp_path)
    options = {"key": "AKIAEXAMPLE", "secret": "s3cr3t"}
    store = ModelStore("s3://AKIA:hunter2@bucket/models", storage_options=options)
    with pytest.raises(GdflowError) as caught:
        store.put(KEY, DATA)  # botocore: 'Invalid bucket name "AKIA:hunter2@bucket"'
    message = one_line(caught)
    assert message.startswith("model store s3://***@bucket/models: cannot write ")
    assert "Invalid bucket name" in message
    assert "hunter2" not in message and "AKIA" not in message and "s3cr3t" not in message


def test_unknown_protocol() -> None:
    with pytest.raises(GdflowError) as caught:
        ModelStore("nosuchproto://x/y").put(KEY, b"x")
    assert "unknown protocol 'nosuchproto'" in one_line(caught)


def test_memory_store_round_trip() -> None:
    """A non-local fsspec filesystem through the remote code path (pipe_file, cat_file)."""
    import fsspec

    store = ModelStore("memory://gdflow-test-store")
    stored = store.put(KEY, DATA)
    memory = fsspec.filesystem("memory")
    assert memory.cat_file(f"/gdflow-test-store/{KEY}") == DATA
    assert store.get(stored, what=WHAT) == DATA
    memory.pipe_file(f"/gdflow-test-store/{KEY}", flip_byte(DATA))
    with pytest.raises(GdflowError) as caught:
        store.get(stored, what=WHAT)
    assert f"memory://gdflow-test-store/{KEY} is corrupt" in one_line(caught)
    store.delete(KEY)
    assert not store.exists(KEY)


# --- a real S3-compatible server ------------------------------------------------------------


def test_s3_put_get_round_trip(s3_bucket: str) -> None:
    """Endpoint and credentials come from the AWS_* environment alone (no storage options)."""
    import s3fs

    store = ModelStore(f"s3://{s3_bucket}/models")
    stored = store.put(KEY, DATA)
    assert stored == StoredFile(KEY, len(DATA), "sha256:" + hashlib.sha256(DATA).hexdigest())
    direct = s3fs.S3FileSystem(skip_instance_cache=True)
    assert direct.cat_file(f"{s3_bucket}/models/{KEY}") == DATA
    assert store.exists(KEY) and not store.exists("toy/4/model.safetensors")
    assert store.get(stored, what=WHAT) == DATA
    assert store.location(KEY) == f"s3://{s3_bucket}/models/{KEY}"
    store.delete(KEY)
    store.delete(KEY)  # missing is not an error
    assert not direct.exists(f"{s3_bucket}/models/{KEY}")


def test_s3_storage_options_reach_the_server(
    s3_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint and credentials given as storage options, with no AWS_ENDPOINT_URL."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    store = ModelStore(f"s3://{s3_bucket}/models", storage_options=options)
    stored = store.put(KEY, b"through options")
    assert store.get(stored, what=WHAT) == b"through options"


def test_s3_corrupt_file(s3_bucket: str) -> None:
    import s3fs

    store = ModelStore(f"s3://{s3_bucket}/models")
    stored = store.put(KEY, DATA)
    direct = s3fs.S3FileSystem(skip_instance_cache=True)
    direct.pipe_file(f"{s3_bucket}/models/{KEY}", flip_byte(DATA))
    with pytest.raises(GdflowError) as caught:
        store.get(stored, what=WHAT)
    message = one_line(caught)
    assert message.startswith(f"{WHAT}: its file s3://{s3_bucket}/models/{KEY} is corrupt (")
    assert f"expected {stored.checksum})" in message


def test_s3_missing_file(s3_bucket: str) -> None:
    store = ModelStore(f"s3://{s3_bucket}/models")
    stored = StoredFile(KEY, len(DATA), sha256_checksum(DATA))
    with pytest.raises(GdflowError) as caught:
        store.get(stored, what=WHAT)
    assert one_line(caught) == (
        f"{WHAT}: its file s3://{s3_bucket}/models/{KEY} is missing from the model store; "
        "restore it or promote another version"
    )


def test_s3_missing_bucket(s3_endpoint: str) -> None:
    store = ModelStore("s3://gdflow-no-such-bucket/models")
    with pytest.raises(GdflowError) as writing:
        store.put(KEY, DATA)
    message = one_line(writing)
    assert message.startswith(f"model store s3://gdflow-no-such-bucket/models: cannot write {KEY}")
    assert "its bucket gdflow-no-such-bucket does not exist" in message
    assert "--model-store" in message and "AWS_ENDPOINT_URL" in message
    with pytest.raises(GdflowError) as reading:
        store.get(StoredFile(KEY, len(DATA), sha256_checksum(DATA)), what=WHAT)
    assert "its bucket gdflow-no-such-bucket does not exist" in one_line(reading)


def test_s3_unreachable_endpoint_fails_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A loopback port nobody listens on: a one-line error in seconds, not minutes of
    retries."""
    dead = f"http://127.0.0.1:{free_port()}"
    point_aws_at(monkeypatch, dead, tmp_path)
    store = ModelStore("s3://bucket/models")
    for action, call in (
        ("write", lambda: store.put(KEY, DATA)),
        ("read", lambda: store.get(StoredFile(KEY, 1, "sha256:0"), what=WHAT)),
    ):
        started = time.monotonic()
        with pytest.raises(GdflowError) as caught:
            call()
        elapsed = time.monotonic() - started
        message = one_line(caught)
        assert elapsed < 10, f"{elapsed:.1f} s to report an unreachable store"
        assert message.startswith(f"model store s3://bucket/models: cannot {action} {KEY}: ")
        assert "Could not connect to the endpoint URL" in message and dead in message
        assert "--model-store / $GDFLOW_MODEL_STORE" in message


@pytest.fixture
def dropping_endpoint() -> Iterator[tuple[str, list[int]]]:
    """A loopback endpoint that accepts each connection, reads the request and closes it
    without an answer; yield its URL and the list of connections it took (one per try)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    taken: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                taken.append(1)
                connection.settimeout(2)
                try:
                    connection.recv(65536)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", taken
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_s3_failing_endpoint_is_tried_at_most_twice(
    dropping_endpoint: tuple[str, list[int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No long retry loops: a server that drops every request gets two tries per operation
    (botocore's standard mode, total_max_attempts 2), each on at most two connections (aiohttp
    sends a request again once on a fresh connection when the first is closed unanswered).
    botocore's default would make 5 tries, and s3fs would repeat those 5 times: 50."""
    url, taken = dropping_endpoint
    point_aws_at(monkeypatch, url, tmp_path)
    store = ModelStore("s3://bucket/models")
    for action, call in (
        ("write", lambda: store.put(KEY, DATA)),
        ("read", lambda: store.get(StoredFile(KEY, 1, "sha256:0"), what=WHAT)),
    ):
        taken.clear()
        with pytest.raises(GdflowError) as caught:
            call()
        assert one_line(caught).startswith(f"model store s3://bucket/models: cannot {action} ")
        assert 1 <= len(taken) <= 4, f"{len(taken)} connections for one {action}"
