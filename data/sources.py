"""Where `--data` lives and how its bytes are read.

A data set is a CSV-like text file (`.csv`, `.tsv`, `.tab` or `.txt`), optionally compressed
(`.gz`, `.bz2`, `.xz`, `.zst`), a Parquet file (`.parquet`, `.pq`), or a folder of Parquet files
(a partitioned data set, read as one table: its files in path order, `key=value` folder names
as columns). It may be local or at any fsspec URL (`s3://...`, `https://...`); a remote data
set is copied, streamed in chunks, into a temporary folder for the run (`local_copy`), so it is
read, checked and fingerprinted exactly as a local one, and the copy is deleted afterwards.

A CSV's delimiter is `--delimiter` when given, else detected from its first lines
(`detect_delimiter`): the one candidate (`,` `;` tab `|`) that splits every sampled line into
the header's number of columns, the suffix's usual one (`,` for .csv, tab for .tsv) when
several do, or a clear error asking for `--delimiter` when that does not decide it. A file
using `;` with decimal commas (`1,5`), as European spreadsheets write it, is read that way.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from gdflow.config.errors import GdflowError
from gdflow.config.storage_options import storage_options_from_env
from gdflow.config.train import parse_delimiter as delimiter_of

#: Compressed text files, by their last suffix.
COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
#: Text table suffixes and their usual delimiter (None: detect it).
TEXT_SUFFIXES: dict[str, Optional[str]] = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": None}
PARQUET_SUFFIXES = (".parquet", ".pq")
#: Delimiters `detect_delimiter` considers, in the order it prefers them when tied.
DELIMITERS = (",", ";", "\t", "|")
#: Environment variable holding fsspec options (JSON) for a remote `--data`.
DATA_OPTIONS_ENV = "GDFLOW_DATA_OPTIONS"
#: Bytes (decompressed) of a text file sampled to detect its delimiter.
SAMPLE_BYTES = 64 * 1024
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
_DECIMAL_POINT = re.compile(r"^[+-]?\d*\.\d+$")


@dataclass(frozen=True)
class TextFormat:
    """How a text table is split: its delimiter and decimal mark, and whether either was
    detected rather than given (`note` says what was detected, for the run's log)."""

    delimiter: str = ","
    decimal: str = "."
    note: Optional[str] = None


@dataclass(frozen=True)
class Source:
    """A local data file or folder, what it holds and how it is compressed."""

    path: Path
    kind: str  # "CSV" or "Parquet"
    compression: Optional[str] = None
    #: A Parquet folder's files in path order (empty for a single file).
    parts: tuple[Path, ...] = ()

    @property
    def is_folder(self) -> bool:
        """Whether this is a folder of Parquet files."""
        return bool(self.parts)


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def is_url(text: str) -> bool:
    """Whether `--data` names a remote fsspec URL (`file://` and plain paths are local)."""
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() == "file":
        return False
    return re.fullmatch(r"[A-Za-z][\w+.-]*", scheme) is not None


def local_path(text: str) -> Path:
    """The local path of `--data` (a `file://` URL's path, `~` expanded)."""
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    return Path(text).expanduser()


def kind_of(name: str) -> tuple[Optional[str], Optional[str]]:
    """(kind, compression) by file name: ("CSV", "gzip") for `u.csv.gz`; (None, None) when
    the name says neither."""
    suffixes = Path(name).suffixes
    compression = COMPRESSIONS.get(suffixes[-1].lower()) if suffixes else None
    last = _text_suffix(name)
    if last in TEXT_SUFFIXES:
        return "CSV", compression
    if last in PARQUET_SUFFIXES and compression is None:
        return "Parquet", None
    return None, compression


def source_of(path: str | Path, *, given: Optional[str] = None) -> Optional[Source]:
    """The Source of a local file or folder, or None when gdflow cannot read it (the caller
    says why: `unsupported`). A folder is a Parquet data set when it holds Parquet files."""
    file = Path(path)
    if file.is_dir():
        parts = parquet_parts(file)
        return Source(file, "Parquet", None, parts) if parts else None
    kind, compression = kind_of(file.name)
    return Source(file, kind, compression) if kind else None


def parquet_parts(folder: Path) -> tuple[Path, ...]:
    """The Parquet files of a (partitioned) folder in path order, leaving out hidden and
    bookkeeping files (`.crc`, `_SUCCESS`, `_metadata`) as Spark, Dask and pyarrow write them."""
    found = []
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder).parts
        if any(part.startswith((".", "_")) for part in relative) or not file.is_file():
            continue
        if file.suffix.lower() in PARQUET_SUFFIXES:
            found.append(file)
    return tuple(found)


def unsupported(path: str) -> str:
    """The one-line reason gdflow cannot read `path`, with the fix."""
    name = Path(path.rstrip("/")).name
    suffix = "".join(Path(name).suffixes[-2:]) or "(none)"
    return (
        f"cannot read {path!r}: unsupported file type {suffix!r}; use .csv, .tsv (optionally "
        "compressed: .gz, .bz2, .xz, .zst), .parquet, or a folder of .parquet files"
    )


def open_bytes(source: Source) -> Any:
    """The file's bytes, decompressed, as a binary stream with `read` and `readinto` (the
    caller closes it)."""
    if source.compression == "xz":  # not among pyarrow's codecs
        import lzma

        return lzma.open(source.path, "rb")
    import pyarrow as pa

    return pa.input_stream(str(source.path), compression=source.compression)


def arrow_input(source: Source) -> Any:
    """The decompressed bytes as pyarrow's CSV reader takes them."""
    if source.compression == "xz":
        import pyarrow as pa

        return pa.PythonFile(open_bytes(source), mode="r")
    if source.compression is None:
        return str(source.path)
    return open_bytes(source)


def read_head(source: Source, limit: int) -> bytes:
    """Up to `limit` bytes of the decompressed text."""
    with contextlib.closing(open_bytes(source)) as handle:
        return bytes(handle.read(limit))


def parse_delimiter(text: Optional[str]) -> Optional[str]:
    """`--delimiter` as a character (config.train's rules); None when not given."""
    if text is None or text == "":
        return None
    value = delimiter_of(text)
    if value is None:
        raise GdflowError(
            f"--delimiter {text!r} is not a delimiter; give one character such as ',' ';' '|' "
            "or the word tab"
        )
    return value


def text_format(source: Source, delimiter: Optional[str], *, name: str) -> TextFormat:
    """How to split the text table `source`: `delimiter` when given, else detected."""
    if source.kind != "CSV":
        return TextFormat()
    try:
        sample = read_head(source, SAMPLE_BYTES).decode("utf-8-sig", errors="replace")
    except Exception as exc:  # noqa: BLE001 - a corrupt or truncated compressed file
        what = f"{source.compression}-compressed CSV" if source.compression else "CSV"
        raise GdflowError(
            f"cannot read {name!r} as {what} ({_first_line(exc)}); check the file is valid {what}"
        ) from None
    usual = TEXT_SUFFIXES.get(_text_suffix(source.path.name))
    if delimiter is not None:
        return TextFormat(delimiter, decimal_mark(sample, delimiter))
    chosen, note = detect_delimiter(sample, usual=usual, name=name)
    decimal = decimal_mark(sample, chosen)
    if decimal != ".":
        note = f"{note or f'delimiter {chosen!r}'}, decimal comma"
    return TextFormat(chosen, decimal, note)


def detect_delimiter(sample: str, *, usual: Optional[str], name: str) -> tuple[str, Optional[str]]:
    """(delimiter, note) for text whose first lines are `sample`: the one candidate splitting
    every sampled line into the header's column count (note None when it is the suffix's
    usual one); GdflowError when the lines do not decide it."""
    lines = sample.splitlines()
    if len(sample) >= SAMPLE_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last sampled line may be cut short
    lines = [line for line in lines if line.strip()][:50]
    if not lines:
        return usual or ",", None
    consistent = []
    for candidate in DELIMITERS:
        try:
            rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=candidate))
        except csv.Error:
            continue
        width = len(rows[0])
        if width > 1 and all(len(row) == width for row in rows):
            consistent.append(candidate)
    if usual in consistent or (not consistent and usual):
        return str(usual), None
    if len(consistent) == 1:
        return consistent[0], f"detected delimiter {_shown(consistent[0])}"
    if not consistent:
        return ",", None  # one column, or ragged rows: the reader says what is wrong
    shown = " and ".join(_shown(c) for c in consistent)
    raise GdflowError(
        f"cannot tell the delimiter of {name!r}: {shown} each split every line into the same "
        "number of columns; pass --delimiter"
    )


def decimal_mark(sample: str, delimiter: str) -> str:
    """ "," when the text's numbers use decimal commas (only possible with another delimiter:
    `1,5;2,25`), else "."."""
    if delimiter == ",":
        return "."
    lines = [line for line in sample.splitlines()[1:50] if line.strip()]
    fields = [field.strip().strip('"') for line in lines for field in line.split(delimiter)]
    commas = sum(1 for field in fields if _DECIMAL_COMMA.match(field))
    points = sum(1 for field in fields if _DECIMAL_POINT.match(field))
    return "," if commas and not points else "."


def _text_suffix(name: str) -> str:
    """The table suffix of a file name, a compression suffix left out (`.csv` of `u.csv.gz`)."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _shown(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


def data_options(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """fsspec storage options for a remote `--data`, from $GDFLOW_DATA_OPTIONS (JSON)."""
    return storage_options_from_env(environ, DATA_OPTIONS_ENV)


@contextlib.contextmanager
def local_copy(text: str, environ: Mapping[str, str] = os.environ) -> Iterator[Path]:
    """The local path of `--data`: itself, or for a remote URL a temporary copy of the file or
    folder (streamed in chunks; deleted when the block ends)."""
    if not is_url(text):
        yield local_path(text)
        return
    import fsspec

    options = data_options(environ)
    try:
        fs, root = fsspec.core.url_to_fs(text, **options)
        is_folder = fs.isdir(root)
        if not is_folder and not fs.exists(root):
            raise GdflowError(f"data {text!r} not found; check the URL given to --data")
    except GdflowError:
        raise
    except ImportError as exc:
        raise GdflowError(
            f"cannot read {text!r}: {exc}; install the package it names (s3:// needs "
            "`pip install gdflow[s3]`)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any driver error is a data access problem
        raise GdflowError(
            f"cannot reach data {text!r} ({_first_line(exc)}); check the URL and "
            f"${DATA_OPTIONS_ENV} (fsspec storage options, JSON)"
        ) from None
    folder = Path(tempfile.mkdtemp(prefix="gdflow-data-"))
    try:
        name = Path(root.rstrip("/")).name or "data"
        target = folder / name
        try:
            if is_folder:
                for remote in sorted(fs.find(root)):
                    relative = remote[len(root.rstrip("/")) + 1 :]
                    destination = target / relative
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    _download(fs, remote, destination)
            else:
                _download(fs, root, target)
        except Exception as exc:  # noqa: BLE001
            raise GdflowError(
                f"cannot download data {text!r} ({_first_line(exc)}); check the URL, its "
                f"permissions and ${DATA_OPTIONS_ENV}"
            ) from None
        try:
            yield target
        except GdflowError as exc:  # name the URL, not the temporary copy
            raise GdflowError(str(exc).replace(str(target), text)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _download(fs: Any, remote: str, destination: Path, chunk: int = 1 << 22) -> None:
    """Copy one remote file, a chunk at a time."""
    with fs.open(remote, "rb") as source, destination.open("wb") as sink:
        while block := source.read(chunk):
            sink.write(block)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
