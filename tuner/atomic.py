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


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically; raises ``OSError`` (the caller names the flag or file)."""
    target = Path(path)
    descriptor, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a report or export from its other readers
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
