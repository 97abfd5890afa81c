"""Ctrl-C and SIGTERM that stop the tool without landing half-way through a write.

Python raises KeyboardInterrupt wherever the main thread happens to be. Landing inside Optuna's trial
bookkeeping, a SQLAlchemy commit or a garbage-collector callback, it left trials RUNNING, printed
"Exception ignored" tracebacks, or deadlocked on a lock that was never released. So while ``handling()``
is active the handler only records the signal, and the stop is raised at safe places:

- inside ``interruptible()``: the waits that take time (a worker's pipe, a sleep, a pip build), where
  raising at once is safe because the caller's cleanup (kill the worker, fail the trial) is in place;
- at ``checkpoint()``: between trials, studies and benchmark rounds.

A second signal raises at once wherever it lands: the user insists.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_pending: int | None = None  # the signal received and not yet raised
_depth = 0  # > 0 while the main thread is inside interruptible()


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    again = _pending is not None
    _pending = signum
    if again or _depth > 0:
        raise KeyboardInterrupt


def requested() -> int | None:
    """The signal that asked to stop, if one came."""
    return _pending


def checkpoint() -> None:
    """Raise KeyboardInterrupt here if a stop was asked for."""
    if _pending is not None:
        raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """A wait where a signal raises at once (and one already received raises on entry)."""
    global _depth
    checkpoint()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


@contextmanager
def handling() -> Iterator[None]:
    """Defer SIGINT and SIGTERM to safe places for the duration; restore the previous handlers after."""
    global _pending, _depth
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _pending, _depth = None, 0
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _pending, _depth = None, 0
