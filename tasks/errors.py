"""The one exception gdflow raises for problems a user can fix: its message is one line."""


class GdflowError(Exception):
    """A user-fixable problem; `str(error)` names the problem and how to fix it, on one line."""


class DivergedError(GdflowError):
    """Training produced a NaN or infinite loss; the run is recorded as diverged."""
