"""Memory allocators a trial can preload: the system's (glibc), TCMalloc and jemalloc.

The launchers users know preload one of them for throughput (PyTorch's ``run_cpu``: TCMalloc if found, else
jemalloc with ``MALLOC_CONF`` below; Intel's model-zoo: TCMalloc). Here the allocator is a searched knob.
Only the distribution's own libraries are preloaded, found under fixed system folders by fixed file names:
nothing user-supplied, stored or imported ever reaches ``LD_PRELOAD``. A library that is missing makes its
choice unavailable here; the study takes it out with the command that installs it (tuner/capability.py).
The worker reads back which allocator its process really mapped (``facts.allocator``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

SYSTEM = "system"
ALLOCATORS = (SYSTEM, "tcmalloc", "jemalloc")
# The shared objects the distributions ship (Debian/Ubuntu: libtcmalloc-minimal4, libjemalloc2).
LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
PACKAGES = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}
FOLDERS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)
# jemalloc as PyTorch's run_cpu configures it for throughput (torch/backends/xeon/run_cpu.py).
JEMALLOC_CONF = (
    "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000"
)


def _installed(path: Path, owner: int) -> bool:
    """A regular file owned by ``owner`` (root: as a package installs it) that nobody else may write, in
    folders that nobody else may write either (a library swapped in by another user is never preloaded)."""
    try:
        real = path.resolve(strict=True)  # follows the distribution's own link (.so.4 -> .so.4.5.10)
        for item in (real, *real.parents):
            info = item.stat()
            if info.st_uid != owner or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return False
        return stat.S_ISREG(real.stat().st_mode)
    except OSError:
        return False


def find(name: str, folders: tuple[str, ...] = FOLDERS, owner: int = 0) -> Path | None:
    """The library of allocator ``name`` under the fixed system folders, or None; see ``_installed``."""
    for folder in folders:
        for library in LIBRARIES.get(name, ()):
            if _installed(Path(folder) / library, owner):
                return Path(folder) / library
    return None


def available(folders: tuple[str, ...] = FOLDERS) -> list[str]:
    """The allocators a trial can use on this machine, the system's always first."""
    return [SYSTEM, *(name for name in LIBRARIES if find(name, folders) is not None)]


def missing_reason(name: str) -> str:
    return f"{name} is not installed here (Debian/Ubuntu: apt-get install {PACKAGES[name]})"


class AllocatorMissing(LookupError):
    """The allocator's library is not on this machine."""


def environ(name: str, folders: tuple[str, ...] = FOLDERS) -> dict[str, str]:
    """The variables that make a child process use allocator ``name`` (none for the system's)."""
    if name == SYSTEM:
        return {}
    if name not in LIBRARIES:
        raise ValueError(f"unknown allocator {name!r}; known: {', '.join(ALLOCATORS)}")
    path = find(name, folders)
    if path is None:
        raise AllocatorMissing(missing_reason(name))
    text = os.fspath(path)
    if any(c in text for c in ": \t\n"):  # LD_PRELOAD separators: a fixed folder never holds them
        raise AllocatorMissing(f"{name}: library path {text!r} cannot be preloaded")
    env = {"LD_PRELOAD": text}
    if name == "jemalloc":
        env["MALLOC_CONF"] = JEMALLOC_CONF
    return env
