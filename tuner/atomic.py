"""Files written whole or not at all, under a name nobody can guess or plant.

The temporary file is made by ``tempfile.mkstemp`` in the target's own folder (so ``os.replace`` is a rename
on one file system), opened exclusively with mode 0600 (a symlink planted there cannot redirect the write),
flushed to disk with ``fsync``, then renamed over the target. An error or Ctrl-C leaves the old file or
none, never half a file.
"""

from __future__ import annotations

import contextlib
import os
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


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically; raises ``OSError`` (the caller names the flag or file)."""
    target = Path(path)
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
