"""Files written whole or not at all, under a name nobody can guess or plant.

The temporary file is made by ``tempfile.mkstemp`` in the target's own folder (so ``os.replace`` is a rename
on one file system), opened exclusively with mode 0600 (a symlink planted there cannot redirect the write),
flushed to disk with ``fsync``, then renamed over the target. An error or Ctrl-C leaves the old file or
none, never half a file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path


def _mode(target: Path) -> int:
    """The target's own mode when it exists, else what a plain open() would give (0666 less the umask)."""
    try:
        return os.stat(target).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder if str(folder) else ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _regular_or_new(target: Path) -> None:
    """The target is a regular file or missing: a rename over a device (/dev/full, as root), a FIFO, a link
    or a folder would replace it with a file, not write to it."""
    try:
        found = os.lstat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(found.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a device, FIFO, link or folder); name a file")


def check_writable(path: Path | str) -> None:
    """Raise ``OSError`` now if ``write_text(path, ...)`` would fail later for want of a folder, of the right
    to write there, or of a regular file: a temporary file is made and removed in the folder, which is the
    only test that holds for root and on a read-only or immutable folder."""
    target = Path(path)
    _regular_or_new(target)
    descriptor, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.")
    os.close(descriptor)
    os.unlink(tmp)


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically; raises ``OSError`` (the caller names the flag or file)."""
    target = Path(path)
    _regular_or_new(target)
    descriptor, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _mode(target))  # mkstemp's 0600 would hide a report or export from its other readers
        os.replace(tmp, target)
        _sync_folder(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
