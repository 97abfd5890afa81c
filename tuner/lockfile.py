"""Advisory file locks (``flock``) shared by processes and users: the host's measurement lock, which keeps two
measurements off the same cores at once, and each managed environment's lock, which keeps a build from
clearing an environment that another tuner is building or running trials from.

A lock file is opened safely (``open_lock``) and held for a ``with`` block (``held``); a wait is announced
once and can be interrupted with Ctrl-C. Closing the descriptor releases the lock, and the kernel releases it
when a process dies, so a crash never leaves a lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tuner import interrupt
from tuner.errors import TunerError


class LockError(TunerError):
    """A lock file cannot be used: a fault of this host, not of the settings measured."""

    reason = "lock"


def open_lock(path: Path, what: str = "the measurement lock") -> int:
    """A descriptor of the lock file, for ``flock``; one line (``LockError``, never a worker failure) if it is
    unsafe.

    Opened read-only (``flock`` needs no more, so a lock file another user created serves every user),
    never through a symbolic link (``O_NOFOLLOW``: a link planted in /tmp cannot make the tool create or
    touch another file), never blocking on open (``O_NONBLOCK``: a FIFO in its place cannot hang the tool),
    and it must be a regular file. Created, world-readable, only if missing."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(3):
        try:
            descriptor = os.open(path, flags)
        except FileNotFoundError:
            try:
                made = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                continue  # another process made it first
            except OSError as error:
                raise LockError(f"cannot create {what} {path}: {error.strerror}") from None
            os.fchmod(made, 0o644)  # readable by every user whatever this process's umask
            os.close(made)
            continue
        except OSError as error:
            raise LockError(f"cannot use {what} {path}: {error.strerror} (a link, or not ours?)") from None
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise LockError(f"{what} {path} is not a regular file: remove it and run again")
        return descriptor
    raise LockError(f"cannot create {what} {path}")


class Busy(Exception):
    """The lock is held by another process, and the caller asked not to wait (``held(..., wait=False)``)."""


STILL_S = 30.0  # how often a long wait says so


@contextlib.contextmanager
def held(
    path: Path,
    note: Callable[[], None],
    *,
    shared: bool = False,
    what: str = "the measurement lock",
    wait: bool = True,
    missing_ok: bool = False,
    still: Callable[[float, bool], None] = lambda waited_s, got: None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """Hold the lock at ``path`` (exclusive, or ``shared`` with other holders of a shared lock) for the block.
    If another process holds it, ``note()`` is called once and the wait goes on until the lock is free (Ctrl-C
    while waiting stops at once), ``still(seconds so far, False)`` every ``STILL_S`` and ``still(seconds,
    True)`` once it is taken after such a line; with ``wait`` False, ``Busy`` is raised instead. With ``missing_ok``, a
    lock file that is missing and cannot be made (a folder shared read-only, made before it had locks: no
    one who cannot make it can write there either) leaves the block unlocked; an unsafe one is still refused."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        descriptor = open_lock(path, what)
    except LockError:
        if not missing_ok or path.exists() or path.is_symlink():
            raise
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise Busy(f"{what} {path} is held by another process") from None
            note()
            # Blocked in flock (the kernel wakes waiters as the lock is freed; a poller could lose every race
            # to a holder taking it again between its trials), while a thread says every STILL_S it waits.
            began, taken = clock(), threading.Event()

            def say() -> None:
                while not taken.wait(STILL_S):
                    still(clock() - began, False)

            reminder = threading.Thread(target=say, name="tuner-lock-wait", daemon=True)
            reminder.start()
            try:
                with interrupt.interruptible():
                    fcntl.flock(descriptor, mode)
            finally:
                taken.set()
                reminder.join()
            if clock() - began >= STILL_S:
                still(clock() - began, True)
        yield
    finally:
        os.close(descriptor)
