"""The model store: where saved model files live, a local folder or any fsspec URL.

A store is named by `--model-store` / `$GDFLOW_MODEL_STORE`: a folder (relative, absolute or
`~/...`), `file:///...`, or a remote fsspec URL such as `s3://bucket/prefix` (needs s3fs:
`pip install 'gdflow[s3]'`) or `memory://...`. Files are addressed by keys, '/'-separated paths
relative to the store's root.

Writes are atomic: nothing half-written is ever visible under a key. In a folder a file is
written beside its key under a temporary name (".<name>.<random>.tmp"), flushed, fsynced and
renamed onto the key; on a remote store the bytes go up in one `pipe_file` call (an S3 PUT, or a
multipart upload that is completed in one step, makes the object appear whole or not at all).
Reads check each file's size and sha256 against what was recorded when it was written.

S3 credentials and endpoint come the standard way (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, ~/.aws), which botocore reads, plus fsspec storage options given as a JSON
object in $GDFLOW_MODEL_STORE_OPTIONS (`store_options_from_env`). An unreachable store fails in
seconds: short connect/read timeouts and at most one retry.

No Prefect and no torch here; fsspec is imported only for a remote store.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from gdflow.config.errors import GdflowError
from gdflow.config.storage_options import storage_options_from_env

#: Environment variable holding the model store's fsspec storage options, as a JSON object.
STORE_OPTIONS_ENV = "GDFLOW_MODEL_STORE_OPTIONS"

#: Protocols served by the local filesystem code (atomic rename) rather than fsspec.
_LOCAL_PROTOCOLS = ("file", "local")
#: fsspec protocols of S3: they get the short timeouts below unless the options say otherwise.
_S3_PROTOCOLS = ("s3", "s3a")
#: Protocols whose first path segment is a bucket/container that may be missing.
_BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss")
#: botocore client settings for S3: an unreachable endpoint fails within seconds. A connection
#: is given 3 s, a response 10 s between reads; botocore tries a request at most twice.
_S3_CONFIG: dict[str, Any] = {
    "connect_timeout": 3,
    "read_timeout": 10,
    "retries": {"total_max_attempts": 2, "mode": "standard"},
}
#: The extra that installs each remote driver, for the error that says to install it.
_EXTRAS = {"s3": "s3", "s3a": "s3"}
#: Names of URL query parameters whose values are secrets (masked in `shown`).
_SECRET_PARAMETER = re.compile(r"(?i)(secret|token|password|passwd|key|signature|sig|credential)")


@dataclass(frozen=True)
class StoredFile:
    """A file written to a model store: its key, size in bytes and `sha256:<hex>` checksum."""

    key: str
    size: int
    checksum: str


def sha256_checksum(data: bytes) -> str:
    """`sha256:<hex digest>` of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def store_options_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The fsspec storage options in $GDFLOW_MODEL_STORE_OPTIONS (a JSON object); {} if unset."""
    return storage_options_from_env(environ, STORE_OPTIONS_ENV)


def mask_store_url(url: str) -> str:
    """`url` with credentials masked: `user:password@` (or `token@`) and secret query values."""
    masked = re.sub(r"(://)[^/@?#]*@", r"\1***@", url)
    if "?" not in masked:
        return masked
    head, _, query = masked.partition("?")
    parts = []
    for item in query.split("&"):
        name, sep, value = item.partition("=")
        parts.append(f"{name}=***" if sep and value and _SECRET_PARAMETER.search(name) else item)
    return head + "?" + "&".join(parts)


def _split_protocol(url: str) -> tuple[Optional[str], str]:
    """(protocol, rest) of an fsspec URL; (None, url) for a plain path. A chained URL
    (`simplecache::s3://...`) gives the protocol of its last link, where the files are."""
    if "::" in url:
        protocol, _ = _split_protocol(url.rsplit("::", 1)[1])
        return protocol or "file", url
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", url)
    if match and len(match.group(1)) > 1:  # a one-letter "protocol" is a Windows drive
        return match.group(1).lower(), match.group(2)
    return None, url


def _reason(exc: BaseException) -> str:
    """The OS's or driver's reason for a failure, on one line (whitespace runs collapsed)."""
    if isinstance(exc, OSError) and exc.strerror:
        code = errno.errorcode.get(exc.errno or 0)
        return f"{exc.strerror} ({code})" if code else exc.strerror
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _secrets_of(url: str, options: Mapping[str, Any]) -> list[str]:
    """Strings that must not appear in a message: a URL's user info (`user:password`, and
    the password alone) and the string values of secret-looking storage options, at any
    depth."""
    found: list[str] = []
    for info in re.findall(r"://([^/@?#]*)@", url):
        found += [info, info.partition(":")[2]]

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for name, item in value.items():
                walk(item, secret or bool(_SECRET_PARAMETER.search(str(name))))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item, secret)
        elif secret and isinstance(value, str):
            found.append(value)

    walk(options, False)
    # Longest first, so that a password inside a user:password pair is masked with the pair.
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


class ModelStore:
    """The model files of one store; see the module docstring. The filesystem is created on
    first use, so constructing a store never touches the network."""

    def __init__(self, url: str, *, storage_options: Optional[dict[str, Any]] = None) -> None:
        if not url or not url.strip():
            raise GdflowError(
                "the model store is empty; pass --model-store or set $GDFLOW_MODEL_STORE to a "
                "folder or an fsspec URL such as s3://bucket/prefix"
            )
        self.url = url.strip()
        self._options: dict[str, Any] = dict(storage_options or {})
        protocol, rest = _split_protocol(self.url)
        self._protocol = protocol
        #: The local folder's absolute path, or None for a remote (fsspec) store.
        self._folder: Optional[str] = None
        if "::" not in self.url and (protocol is None or protocol in _LOCAL_PROTOCOLS):
            path = self.url if protocol is None else rest
            self._folder = os.path.abspath(os.path.expanduser(path))
        self._secrets = _secrets_of(self.url, self._options)
        self._fs: Any = None
        self._root = ""  # the remote root in the filesystem's own terms (bucket/prefix)

    @property
    def shown(self) -> str:
        """The store, safe to print: a folder's absolute path, a URL with credentials masked."""
        return self._folder if self._folder is not None else mask_store_url(self.url)

    @property
    def is_local(self) -> bool:
        return self._folder is not None

    def location(self, key: str) -> str:
        """Where the file of `key` is, safe to print (an absolute path or a masked URL)."""
        if self._folder is not None:
            return os.path.join(self._folder, *key.split("/"))
        return self.shown.rstrip("/") + "/" + key

    # --- the operations ------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> StoredFile:
        """Write `data` under `key` atomically (replacing any file there); return its record."""
        self._check_key(key)
        if self._folder is not None:
            self._put_local(key, data)
        else:
            fs = self._filesystem()
            try:
                fs.pipe_file(self._remote_path(key), data)
            except Exception as exc:
                raise self._failure("write", key, exc) from exc
        return StoredFile(key=key, size=len(data), checksum=sha256_checksum(data))

    def get(self, stored: StoredFile, *, what: str) -> bytes:
        """The bytes of a stored file, checked against its size and checksum; `what` names it
        in errors (e.g. "model toy version 3")."""
        key = stored.key
        self._check_key(key)
        try:
            if self._folder is not None:
                with open(self.location(key), "rb") as handle:
                    data = handle.read()
            else:
                data = self._filesystem().cat_file(self._remote_path(key))
        except FileNotFoundError as exc:
            if self._container_missing():
                raise self._failure("read", key, exc, container_missing=True) from exc
            raise GdflowError(
                f"{what}: its file {self.location(key)} is missing from the model store; "
                "restore it or promote another version"
            ) from None
        except GdflowError:
            raise
        except Exception as exc:
            raise self._failure("read", key, exc) from exc
        if len(data) != stored.size:
            found = f"{len(data)} bytes, expected {stored.size}"
        else:
            checksum = sha256_checksum(data)
            if checksum == stored.checksum:
                return bytes(data)
            found = f"{checksum} expected {stored.checksum}"
        raise GdflowError(
            f"{what}: its file {self.location(key)} is corrupt ({found}); restore it from a "
            "backup or promote another version"
        )

    def exists(self, key: str) -> bool:
        """Whether a file is stored under `key`."""
        self._check_key(key)
        try:
            if self._folder is not None:
                return os.path.isfile(self.location(key))
            fs = self._filesystem()
            return bool(fs.exists(self._remote_path(key)))
        except GdflowError:
            raise
        except Exception as exc:
            raise self._failure("read", key, exc) from exc

    def delete(self, key: str) -> None:
        """Remove the file under `key`; a missing file is not an error."""
        self._check_key(key)
        try:
            if self._folder is not None:
                os.remove(self.location(key))
            else:
                self._filesystem().rm_file(self._remote_path(key))
        except FileNotFoundError:
            return
        except GdflowError:
            raise
        except Exception as exc:
            raise self._failure("delete", key, exc) from exc

    # --- local folders ---------------------------------------------------------------------

    def _put_local(self, key: str, data: bytes) -> None:
        """Write to a temporary file beside the key, fsync it, rename it onto the key."""
        target = self.location(key)
        folder, name = os.path.split(target)
        temporary = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            os.makedirs(folder, exist_ok=True)
            # 0o666 less the umask, like any file the user creates (mkstemp would make it 0600).
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, target)
            except BaseException:
                try:
                    os.remove(temporary)
                except OSError:
                    pass
                raise
        except OSError as exc:
            raise self._failure("write", key, exc) from exc
        _fsync_folder(folder)

    # --- remote stores -----------------------------------------------------------------------

    def _filesystem(self) -> Any:
        """The fsspec filesystem of a remote store, created on first use."""
        if self._fs is not None:
            return self._fs
        protocol = self._protocol or ""
        try:
            import fsspec.core
        except ImportError:
            raise GdflowError(
                f"model store {self.shown}: install fsspec (pip install fsspec), which reads "
                "remote model stores"
            ) from None
        options = dict(self._options)
        if protocol in _S3_PROTOCOLS:
            config = dict(_S3_CONFIG)
            config.update(options.get("config_kwargs") or {})
            options["config_kwargs"] = config
        # A filesystem of this store's own: fsspec's shared instance is not changed below.
        options.setdefault("skip_instance_cache", True)
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **options)
        except ImportError as exc:
            raise GdflowError(
                f"model store {self.shown}: install {_driver(protocol, exc)}"
            ) from None
        except ValueError as exc:
            if "Protocol not known" in str(exc):
                raise GdflowError(
                    f"model store {self.shown}: unknown protocol {protocol!r}; use a folder or "
                    "an fsspec URL such as s3://bucket/prefix (--model-store or "
                    "$GDFLOW_MODEL_STORE)"
                ) from None
            raise self._options_error(exc) from exc
        except TypeError as exc:
            raise self._options_error(exc) from exc
        if protocol in _S3_PROTOCOLS and hasattr(fs, "retries"):
            # s3fs retries some errors (timeouts, throttling) 5 times on top of botocore's own
            # attempts; botocore's retries (above) are enough.
            fs.retries = 1
        self._fs, self._root = fs, str(root).rstrip("/")
        return fs

    def _remote_path(self, key: str) -> str:
        self._filesystem()
        return f"{self._root}/{key}"

    def _container_missing(self) -> bool:
        """Whether the store's folder (local) or bucket (remote) itself is missing."""
        if self._folder is not None:
            return not os.path.isdir(self._folder)
        if self._protocol not in _BUCKET_PROTOCOLS:
            return False
        bucket = self._root.split("/", 1)[0]
        try:
            return bool(bucket) and not self._filesystem().exists(bucket)
        except Exception:
            return False  # the file's own error is reported instead

    # --- errors ----------------------------------------------------------------------------

    def _failure(
        self,
        action: str,
        key: str,
        exc: BaseException,
        *,
        container_missing: Optional[bool] = None,
    ) -> GdflowError:
        """The one-line error for a store that cannot be reached, read or written; a missing
        folder or bucket (looked up only after a "not found") is named as such."""
        if container_missing is None:  # a folder being written to is created: not looked up
            container_missing = (
                isinstance(exc, FileNotFoundError)
                and (self._folder is None or action == "read")
                and self._container_missing()
            )
        if container_missing and self._folder is not None:
            reason = "its folder does not exist"
        elif container_missing:
            reason = f"its bucket {self._root.split('/', 1)[0]} does not exist"
        else:
            reason = self._scrub(_reason(exc))
        if self._folder is not None and action == "read":
            check = "that the folder exists and is readable"
        elif self._folder is not None:
            check = "that the folder is writable and has free space"
        elif self._protocol in _S3_PROTOCOLS:
            check = (
                "the bucket, the endpoint and the credentials (AWS_ENDPOINT_URL, "
                f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ${STORE_OPTIONS_ENV})"
            )
        else:
            check = f"the store's credentials and options (${STORE_OPTIONS_ENV})"
        return GdflowError(
            f"model store {self.shown}: cannot {action} {key}: {reason}; check --model-store / "
            f"$GDFLOW_MODEL_STORE and {check}"
        )

    def _scrub(self, text: str) -> str:
        """`text` with the store's credentials masked (drivers quote URLs and options)."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _options_error(self, exc: BaseException) -> GdflowError:
        return GdflowError(
            f"model store {self.shown}: its storage options are not accepted "
            f"({self._scrub(_reason(exc))}); "
            f"fix ${STORE_OPTIONS_ENV}"
        )

    def _check_key(self, key: str) -> None:
        parts = key.split("/")
        if not key or "\\" in key or "\0" in key or any(p in ("", ".", "..") for p in parts):
            raise GdflowError(
                f"model store {self.shown}: invalid file key {key!r}: a key is a relative "
                "'/'-separated path without empty, '.' or '..' parts"
            )

    def __repr__(self) -> str:
        return f"ModelStore({self.shown!r})"


def _driver(protocol: str, exc: ImportError) -> str:
    """What to install for a protocol whose fsspec implementation is missing."""
    extra = _EXTRAS.get(protocol)
    module = getattr(exc, "name", None)
    try:
        from fsspec.registry import known_implementations

        module = str(known_implementations[protocol]["class"]).split(".", 1)[0]
    except (ImportError, KeyError):
        pass
    module = module or f"the fsspec driver of {protocol}://"
    if extra:
        return f"{module} (pip install 'gdflow[{extra}]')"
    return f"{module} (pip install {module})"


def _fsync_folder(folder: str) -> None:
    """Make a rename in `folder` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
