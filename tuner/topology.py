"""Which cores a trial may use: physical cores of this process's allowed set, one hardware thread each.

The topology comes from /sys (physical_package_id, die_id and core_id per logical CPU; core_id restarts on
each package and die). Cores are ordered by package, NUMA node, die and core, not by CPU number, so a study on
N cores stays inside one package (and node) where N fits (CPUs numbered round-robin across sockets would
otherwise span both). A
core count N always maps to the same N physical cores, so every trial of a study measures on the same silicon.
Where the topology files are missing, each logical CPU is taken as a core and ``notes`` says so; a cgroup CPU
quota (``cpu.max``, or v1's ``cpu.cfs_quota_us``, as ``docker --cpus`` sets) that would throttle trials is
read by ``cpu_quota``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tuner.errors import TopologyError, UsageError

SYS_CPU = Path("/sys/devices/system/cpu")
CGROUP = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read_int(path: Path, default: int) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return default


def core_key(cpu: int, root: Path = SYS_CPU) -> tuple[int, int, int, int] | None:
    """(package, NUMA node, die, core) of a logical CPU; None where its topology files are missing."""
    topo = root / f"cpu{cpu}" / "topology"
    core = _read_int(topo / "core_id", -1)
    if core < 0:
        return None
    return _read_int(topo / "physical_package_id", 0), _node(cpu, root), _read_int(topo / "die_id", 0), core


def _node(cpu: int, root: Path) -> int:
    """The NUMA node of a logical CPU (its ``nodeN`` link), 0 where none is listed: several per package where
    the CPU splits its sockets (Intel SNC, AMD NPS2/NPS4), and a core set then fills one node before the next."""
    found = [int(link.name[4:]) for link in (root / f"cpu{cpu}").glob("node*") if link.name[4:].isdigit()]
    return min(found, default=0)


TIER = 0.9  # a CPU below 90% of a faster kind's capacity is a slower kind (big.LITTLE: 0.3 to 0.8 of the big)


def efficiency_cpus(root: Path = SYS_CPU, among: Iterable[int] | None = None) -> frozenset[int]:
    """The logical CPUs of a hybrid CPU's efficiency cores: Intel's E-cores, which Linux lists in
    /sys/devices/cpu_atom/cpus (``16-23``, ``16-19,24``); else, where the kernel gives CPUs different
    ``cpuN/cpu_capacity`` (ARM big.LITTLE and DynamIQ), those of ``among`` (default: every CPU) slower than its
    fastest kind; none elsewhere."""
    atom = _atom_cpus(root)
    return atom if atom is not None else frozenset(cpu for cpu, kind in kinds(root, among).items() if kind > 0)


def _atom_cpus(root: Path) -> frozenset[int] | None:
    """Intel's E-cores as the kernel lists them in /sys/devices/cpu_atom/cpus; None without the file, none
    where it is not in the kernel's list format (nothing is claimed then)."""
    try:
        text = (root.parent.parent / "cpu_atom" / "cpus").read_text().strip()
    except OSError:
        return None
    found: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        if not re.fullmatch(r"[0-9]+", low) or (high and not re.fullmatch(r"[0-9]+", high)):
            return frozenset()
        found.update(range(int(low), int(high or low) + 1))
    return frozenset(found)


def kinds(root: Path = SYS_CPU, among: Iterable[int] | None = None) -> dict[int, int]:
    """Each logical CPU's kind by ``cpu_capacity``, 0 for the fastest of ``among`` (default: every CPU that
    states one), 1 for the next ... A kind begins below ``TIER`` of the one before, so the few percent that
    CPPC firmware gives boosted cores of one kind (1024 against 1009) make no second kind. A CPU whose file
    is missing or unreadable is left out."""
    wanted = None if among is None else set(among)
    capacity = {}
    for path in root.glob("cpu[0-9]*/cpu_capacity"):
        number, value = path.parent.name[3:], _read_int(path, -1)
        if number.isdigit() and value > 0 and (wanted is None or int(number) in wanted):
            capacity[int(number)] = value
    tops: list[int] = []  # the fastest capacity of each kind, fastest kind first
    for value in sorted(set(capacity.values()), reverse=True):
        if not tops or value < TIER * tops[-1]:
            tops.append(value)
    return {cpu: max(i for i, top in enumerate(tops) if value <= top) for cpu, value in capacity.items()}


def physical_cores(allowed: Iterable[int] | None = None, root: Path = SYS_CPU) -> list[int]:
    """One logical CPU (the lowest-numbered) per physical core in ``allowed``, ordered by package, NUMA node,
    then a hybrid CPU's kind (performance cores before efficiency cores, by ``cpu_capacity`` the big cores
    before the middle and the little ones, so that a study on fewer cores than a package has fast ones runs on
    those only), die and core. A CPU without topology files is taken as a core of its own (see ``notes``)."""
    cpus = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    atom, kind = _atom_cpus(root) or frozenset(), kinds(root)  # cpu_capacity read once (efficiency_cpus would again)
    first: dict[tuple[int, int, int, int], int] = {}
    for cpu in cpus:
        key = core_key(cpu, root) or (-1, 0, 0, cpu)  # unknown: its own core, after no known one
        first.setdefault(key, cpu)

    def order(item: tuple[tuple[int, int, int, int], int]) -> tuple[int, ...]:
        (package, node, die, core), cpu = item
        return package < 0, package, node, cpu in atom, kind.get(cpu, 0), die, core

    return [cpu for _, cpu in sorted(first.items(), key=order)]


def notes(allowed: Iterable[int] | None = None, root: Path = SYS_CPU) -> list[str]:
    """What the topology cannot vouch for: logical CPUs without topology files (SMT siblings may then be
    counted as cores)."""
    cpus = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    unknown = [cpu for cpu in cpus if core_key(cpu, root) is None]
    found = []
    if unknown:
        found.append(
            f"no topology files for CPUs {','.join(map(str, unknown))} under {root}: each is taken as a physical "
            "core, so hardware threads of one core may be counted as two"
        )
    slow, cores = efficiency_cpus(root, cpus), physical_cores(cpus, root)
    mixed = [cpu for cpu in cores if cpu in slow]
    if mixed and len(mixed) < len(cores):
        found.append(
            f"a hybrid CPU: {len(cores) - len(mixed)} performance and {len(mixed)} efficiency cores here "
            f"(E-cores: CPUs {','.join(map(str, mixed))}); core counts take P-cores first, and a study on more "
            "cores mixes the two kinds, which run the same thread at different speeds"
        )
    return found


def cpu_quota(cgroup: Path = CGROUP, proc: Path = PROC_CGROUP) -> float | None:
    """CPUs' worth of time this process's cgroup may use, the tightest limit from its own group up to the
    root: ``cpu.max`` (cgroup v2) or ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (v1, under the ``cpu``
    controller's mount, as older Docker, RHEL 7/8 and EKS nodes have it); None without a quota. ``docker
    --cpus 1.5`` gives 1.5: trials on 2 cores would be throttled."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        fields = line.split(":", 2)  # 'ID:CONTROLLERS:PATH'; v2's unified line is '0::PATH'
        if len(fields) != 3:
            continue
        number, controllers, path = fields
        if number == "0" and not controllers:
            quotas += _limits(cgroup, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            for mount in dict.fromkeys((cgroup / controllers, cgroup / "cpu")):
                if mount.is_dir():
                    quotas += _limits(mount, path, _v1_limit)
                    break
    return min(quotas) if quotas else None


def _limits(top: Path, path: str, limit: Callable[[Path], float | None]) -> list[float]:
    """Each ``limit`` from the group ``path`` up to ``top``, the hierarchy's mount. Where the group is not
    there as named (a container that sees its own group at the mount's root, without a cgroup namespace),
    the longest tail of ``path`` that is, else the root."""
    parts = [part for part in path.split("/") if part]
    folder = next(
        (top.joinpath(*parts[i:]) for i in range(len(parts)) if top.joinpath(*parts[i:]).is_dir()), top
    ).resolve()
    found = []
    while True:
        value = limit(folder)
        if value is not None:
            found.append(value)
        if folder == top.resolve() or folder == folder.parent:
            return found
        folder = folder.parent


def _v2_limit(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None  # -1: no quota
    except (OSError, ValueError):
        return None


def quota_warning(cores: int, quota: float | None) -> str | None:
    """A line when a quota would throttle a study on ``cores`` cores, else None."""
    if quota is None or quota >= cores:
        return None
    return (
        f"a cgroup CPU quota allows {quota:g} CPUs' time, fewer than the {cores} cores measured: trials will be "
        "throttled and slower than the hardware (cpu.max; docker --cpus)"
    )


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


def default_core_counts(available: int, packages: Sequence[int] = ()) -> list[int]:
    """1, the powers of two below ``available``, and ``available`` itself. On several packages
    (``packages``: how many of the cores each holds, in ``physical_cores``' order), one, two, four ...
    whole packages too, and no power of two that would take part of a package past the first: on 2 x 28
    cores, 28 and 56 but not 32 (28 + 4, the second socket's share too small to mean anything)."""
    sizes = [size for size in packages if size > 0]
    bounds = {sum(sizes[:k]) for k in range(1, len(sizes) + 1)}  # whole packages, in order
    whole = {sum(sizes[: 2**j]) for j in range(len(sizes).bit_length())}  # 1, 2, 4 ... of them
    first = sizes[0] if len(sizes) > 1 else available
    counts = {available, *(n for n in whole if n < available)}
    power = 1
    while power < available:
        if power <= first or power in bounds:
            counts.add(power)
        power *= 2
    return sorted(counts)


def package_sizes(cores: Iterable[int], root: Path = SYS_CPU) -> list[int]:
    """How many of ``cores`` (in ``physical_cores``' order) each package holds, in that order."""
    sizes: dict[int, int] = {}
    for cpu in cores:
        package = _package(cpu, root)
        sizes[package] = sizes.get(package, 0) + 1
    return list(sizes.values())


def parse_core_counts(
    text: str | None, available: int, quota: float | None = None, packages: Sequence[int] = ()
) -> list[int]:
    """``'1,2,4'`` -> [1, 2, 4]; ``None`` -> the defaults (``default_core_counts``, with the cores of each
    of ``packages``), up to ``available`` and, under a CPU ``quota``, its whole CPUs (a study on more cores
    would measure the throttling, not the cores: asked for by name, it runs with the quota's warning).
    Refuses junk and counts past ``available``."""
    if text is None:
        usable = quota_cores(available, quota)
        below = [n for n in default_core_counts(available, packages) if n <= usable]
        within = len([size for size in packages if size > 0]) < 2 or usable <= packages[0]
        return below if usable in below or not within else [*below, usable]
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


def quota_cores(available: int, quota: float | None) -> int:
    """The most cores a study may use unthrottled: ``available``, or fewer under a ``quota`` (at least 1)."""
    return available if quota is None else max(1, min(available, math.floor(quota)))


def cores_text(count: int) -> str:
    """'1 core', '2 cores': how tables and recommendations name a core count."""
    return f"{count} core" + ("" if count == 1 else "s")


def _package(cpu: int, root: Path) -> int:
    """The package (socket) of a logical CPU; 0 where its topology files are missing (taken as one package)."""
    return _read_int(root / f"cpu{cpu}" / "topology" / "physical_package_id", 0)


def packages_of(cores: Iterable[int], root: Path = SYS_CPU) -> int:
    """How many packages (sockets) the logical CPUs ``cores`` span."""
    return len(package_sizes(cores, root))


def splits(cores: Sequence[int], root: Path = SYS_CPU) -> tuple[int, ...]:
    """The instance counts this core set can be partitioned into: 1, and equal groups none of which spans a
    socket."""
    found = []
    for count in range(1, len(cores) + 1):
        if len(cores) % count == 0:
            try:
                partition(cores, count, root)
            except UsageError:
                continue
            found.append(count)
    return tuple(found)


def sockets_for(cores: Sequence[int], root: Path = SYS_CPU) -> int:
    """The sockets a core set spans, as the launchers' "one instance per socket" counts them: 1 when they
    hold unequal shares of it (instances must split the cores equally)."""
    sizes = package_sizes(cores, root)
    return len(sizes) if sizes and len(set(sizes)) == 1 else 1


def partition(cores: Sequence[int], instances: int, root: Path = SYS_CPU) -> list[tuple[int, ...]]:
    """``cores`` (one logical CPU per physical core, in ``core_set``'s order: package, die, core) split into
    ``instances`` equal consecutive groups, one per instance, none of several spanning two packages (one
    instance takes the whole set, whatever it spans, as a trial of one process does). One ``UsageError``
    line where ``instances`` does not divide the core count or one of several groups would span packages."""
    if instances < 1:
        raise UsageError(f"instances must be at least 1, got {instances}")
    if not cores or len(cores) % instances:
        raise UsageError(
            f"{instances} instances cannot share {len(cores)} cores equally: the instance count must divide it"
        )
    size = len(cores) // instances
    groups = [tuple(cores[start : start + size]) for start in range(0, len(cores), size)]
    for index, group in enumerate(groups):
        if instances > 1 and packages_of(group, root) > 1:
            packages = sorted({_package(cpu, root) for cpu in group})
            raise UsageError(
                f"{instances} instances of {cores_text(size)} on CPUs {','.join(map(str, cores))}: instance "
                f"{index} (CPUs {','.join(map(str, group))}) would span packages "
                f"{','.join(map(str, packages))}: each instance must lie within one package (socket)"
            )
    return groups
