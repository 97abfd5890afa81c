"""Files written whole or not at all, under a name nobody can guess or plant.

The temporary file is made by ``tempfile.mkstemp`` in the target's own folder (so ``os.replace`` is a rename
on one file system), opened exclusively with mode 0600 (a symlink planted there cannot redirect the write),
flushed to disk with ``fsync``, then renamed over the target. An error or Ctrl-C leaves the old file or
none, never half a file. A writer killed outright (SIGKILL) leaves its temporary file behind: its name says
which host and process made it, and the next write to the same target removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import stat
import tempfile
from pathlib import Path

from tuner.owner import gone, identity, start_ticks


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


def _host() -> str:
    """This host, boot and PID namespace, hashed: where a pid in a temporary file's name means a process."""
    me = identity()
    return hashlib.sha256(f"{me['host']}\0{me['boot_id']}\0{me['pid_ns']}".encode()).hexdigest()[:8]


def _prefix(target: Path) -> str:
    """``.NAME.tmp-HOST-PID-START-``: the temporary file's owner, for ``_remove_stale``."""
    return f".{target.name}.tmp-{_host()}-{os.getpid()}-{start_ticks(os.getpid()) or 0}-"


def _remove_stale(target: Path) -> None:
    """Remove the temporary files of ``target`` that a killed writer left: made by this user, on this host,
    boot and PID namespace, by a process that no longer runs (``owner.gone``: its pid gone, or taken by a
    process started at another time). Another machine's, another user's, or a live writer's stay."""
    folder = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(re.escape(f".{target.name}.tmp-{_host()}-") + r"([0-9]{1,7})-([0-9]{1,20})-[A-Za-z0-9_]+")
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = pattern.fullmatch(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
                continue
            pid, started = int(match.group(1)), int(match.group(2))
            if pid != os.getpid() and gone({"host": host, "pid": pid, "start": started or None}):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def check_writable(path: Path | str) -> None:
    """Raise ``OSError`` now if ``write_text(path, ...)`` would fail later for want of a folder, of the right
    to write there, or of a regular file: a temporary file is made and removed in the folder, which is the
    only test that holds for root and on a read-only or immutable folder."""
    target = Path(path)
    _regular_or_new(target)
    descriptor, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=_prefix(target))
    os.close(descriptor)
    os.unlink(tmp)


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically; raises ``OSError`` (the caller names the flag or file)."""
    target = Path(path)
    _regular_or_new(target)
    _remove_stale(target)
    descriptor, tmp = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=_prefix(target))
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
