"""Which cores a trial may use: physical cores of this process's allowed set, one hardware thread each.

The topology comes from /sys (core_id and physical_package_id per logical CPU). A core count N always maps
to the same N physical cores, so every trial of a study measures on the same silicon.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from tuner.errors import TopologyError, UsageError

SYS_CPU = Path("/sys/devices/system/cpu")


def _read_int(path: Path, default: int) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return default


def physical_cores(allowed: Iterable[int] | None = None, root: Path = SYS_CPU) -> list[int]:
    """One logical CPU (the lowest-numbered) per physical core in ``allowed``, in core order."""
    cpus = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    first: dict[tuple[int, int], int] = {}
    for cpu in cpus:
        topo = root / f"cpu{cpu}" / "topology"
        key = (_read_int(topo / "physical_package_id", 0), _read_int(topo / "core_id", cpu))
        first.setdefault(key, cpu)
    return sorted(first.values())


def core_set(count: int, allowed: Iterable[int] | None = None, root: Path = SYS_CPU) -> tuple[int, ...]:
    """The logical CPUs a study on ``count`` cores is pinned to."""
    cores = physical_cores(allowed, root)
    if count < 1:
        raise UsageError(f"core count must be at least 1, got {count}")
    if count > len(cores):
        raise TopologyError(
            f"{count} cores asked for, but this process may use only {len(cores)} physical cores "
            f"(logical CPUs {','.join(map(str, cores))})"
        )
    return tuple(cores[:count])


def default_core_counts(available: int) -> list[int]:
    """1, the powers of two below ``available``, and ``available`` itself."""
    counts = {available}
    power = 1
    while power < available:
        counts.add(power)
        power *= 2
    return sorted(counts)


def parse_core_counts(text: str | None, available: int) -> list[int]:
    """``'1,2,4'`` -> [1, 2, 4]; ``None`` -> the defaults. Refuses junk and counts past ``available``."""
    if text is None:
        return default_core_counts(available)
    counts: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not re.fullmatch(r"[0-9]+", item) or int(item) < 1:
            raise UsageError(f"--cores: {item!r} is not a positive core count (expected e.g. 1,2,4)")
        counts.append(int(item))
    too_many = [c for c in counts if c > available]
    if too_many:
        raise TopologyError(
            f"--cores: {too_many[0]} cores asked for, but only {available} physical cores are available"
        )
    return sorted(set(counts))


def cores_text(count: int) -> str:
    """'1 core', '2 cores': how tables and recommendations name a core count."""
    return f"{count} core" + ("" if count == 1 else "s")
