"""The one exception gdflow raises for problems a user can fix: its message is one line."""

from __future__ import annotations

#: Characters that `str.splitlines` breaks on, shown as escapes so a message stays one line.
_LINE_BREAKS = {
    c: c.encode("unicode_escape").decode("ascii")
    for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
}


def one_line(text: object) -> str:
    """`text` on one line: line breaks (from file names, column names, values) escaped."""
    return "".join(_LINE_BREAKS.get(c, c) for c in str(text))


class GdflowError(Exception):
    """A user-fixable problem; `str(error)` names the problem and how to fix it, on one line."""

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(message))


class DivergedError(GdflowError):
    """Training produced a NaN or infinite loss; the run is recorded as diverged."""


def features_too_large(largest: float) -> GdflowError:
    """The error for features whose squares overflow float64 (|x| above about 1e154)."""
    return GdflowError(
        f"the features are too large to train on: their squares overflow float64 (largest "
        f"|value| {largest:.3g}); divide those columns by a power of ten"
    )
