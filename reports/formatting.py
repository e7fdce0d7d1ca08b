"""Numbers as text, shared by the terminal tables and the markdown reports: one way to round."""

from __future__ import annotations

from typing import Optional


def format_number(value: Optional[float], digits: int = 8, *, missing: str = "") -> str:
    """A number in at most `digits` significant digits (nan and inf as such); `missing` for None."""
    if value is None:
        return missing
    return f"{float(value):.{digits}g}"


def rounded(value: Optional[float]) -> Optional[float]:
    """The value in 8 significant digits, as a float; None stays None."""
    return None if value is None else float(format_number(value))
