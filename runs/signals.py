"""Stop training cleanly on Ctrl-C (SIGINT) or SIGTERM: end the epoch, write it, end cancelled.

While `stop_on_signals()` is active (in the main thread, around the training loop), either
signal only asks training to stop; the loop then writes the epochs it holds and the run is
recorded `cancelled`. A second signal falls back to the handler in place before (Python's
KeyboardInterrupt, Prefect's termination), so a stuck run can still be interrupted.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import Optional

#: Signals that ask a run to stop; their conventional exit status is 128 + the number.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: Optional[signal.Signals] = None
_depth = 0
_lock = threading.Lock()


def stop_requested() -> Optional[str]:
    """The name of the signal that asked training to stop (e.g. "SIGTERM"), or None."""
    return _requested.name if _requested is not None else None


def requested_signal() -> Optional[signal.Signals]:
    """The signal that asked the last training in this process to stop, or None."""
    return _requested


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a stop request for the duration of the block (main thread
    only: elsewhere signals cannot be handled, and the block only reads the request)."""
    global _requested, _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _lock:
        _depth += 1
        outermost = _depth == 1
        if outermost:
            _requested = None
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if outermost else {}

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        global _requested
        if _requested is None:
            _requested = signal.Signals(signum)
            return
        _restore(previous)  # asked twice: do what would have happened without us
        signal.raise_signal(signum)

    try:
        if outermost:
            for sig in STOP_SIGNALS:
                signal.signal(sig, handler)
        yield
    finally:
        with _lock:
            _depth -= 1
        if outermost:
            _restore(previous)


def _restore(previous: Mapping[signal.Signals, object]) -> None:
    """Put back the handlers that were in place before `stop_on_signals`."""
    for sig, old in previous.items():
        if old is not None and signal.getsignal(sig) is not old:
            signal.signal(sig, old)  # type: ignore[arg-type]
