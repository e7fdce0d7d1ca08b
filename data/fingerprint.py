"""A data set's fingerprint: the SHA-256 of its file's bytes (or of the toy data's values).

Stored with each model version and prediction batch, so a version says exactly which data it
was trained on and a scored file which input it scored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

#: Bytes read at a time: a fingerprint never holds a large file in memory.
CHUNK_BYTES = 1 << 20


def file_fingerprint(path: str | Path) -> str:
    """`sha256:<hex>` of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).expanduser().open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def data_fingerprint(path: Optional[str]) -> str:
    """The fingerprint of `--data` (None: the seed's toy data, from its values)."""
    if path is not None:
        return file_fingerprint(path)
    from gdflow.data.dataset import TOY_X, TOY_Y

    values = np.asarray([*TOY_X, *TOY_Y], dtype=np.float64)
    return f"sha256:{hashlib.sha256(values.tobytes()).hexdigest()}"
