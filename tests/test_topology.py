"""Topology: one hardware thread per physical core, and core counts checked against what is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tuner.errors import TopologyError, UsageError
from tuner.topology import (
    core_set,
    cpu_quota,
    default_core_counts,
    efficiency_cpus,
    kinds,
    notes,
    packages_of,
    parse_core_counts,
    partition,
    physical_cores,
    quota_warning,
    sockets_for,
    splits,
)


def fake_sys(root: Path, cpus: dict[int, tuple[int, int]]) -> Path:
    """A /sys/devices/system/cpu tree: logical CPU -> (package id, core id)."""
    for cpu, (package, core) in cpus.items():
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return root


# One socket, two cores with two hardware threads each, siblings numbered apart as Linux usually does.
SMT = {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)}


def test_smt_siblings_collapse_to_one_cpu_per_core(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, SMT)
    # CPUs 0 and 2 share core 0, 1 and 3 share core 1: the lowest-numbered thread of each core is kept.
    assert physical_cores([0, 1, 2, 3], root) == [0, 1]


def test_adjacent_smt_siblings(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, {0: (0, 0), 1: (0, 0)})
    # Two logical CPUs on one core are one physical core.
    assert physical_cores([0, 1], root) == [0]


def test_allowed_set_is_respected(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, SMT)
    # Only allowed CPUs are used: with 0 and 1 excluded, their siblings 2 and 3 stand for the two cores.
    assert physical_cores([2, 3], root) == [2, 3]
    # Allowed CPUs on one core give that core once.
    assert physical_cores({0, 2}, root) == [0]


def test_same_core_id_on_two_sockets_is_two_cores(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, {0: (0, 0), 1: (1, 0)})
    # core_id restarts on each package, so the package id is part of a core's identity.
    assert physical_cores([0, 1], root) == [0, 1]


def test_missing_topology_counts_each_cpu_as_a_core(tmp_path: Path) -> None:
    # Without /sys topology files every logical CPU is taken as its own core rather than failing.
    assert physical_cores([0, 1, 2], tmp_path) == [0, 1, 2]


def test_real_machine_cores_are_allowed_cpus() -> None:
    cores = physical_cores()
    # On this machine the chosen CPUs are a non-empty subset of the process's affinity, one per core.
    assert cores
    assert set(cores) <= os.sched_getaffinity(0)
    assert cores == sorted(cores)


def test_core_set_takes_the_first_cores(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, SMT)
    # A count N always maps to the same first N physical cores, never to SMT siblings.
    assert core_set(1, [0, 1, 2, 3], root) == (0,)
    assert core_set(2, [0, 1, 2, 3], root) == (0, 1)


def test_core_set_too_many_names_the_count(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, SMT)
    # Four logical CPUs are only two physical cores; asking for 3 fails, naming both numbers.
    with pytest.raises(TopologyError, match="3 cores asked for, but this process may use only 2 physical cores"):
        core_set(3, [0, 1, 2, 3], root)


def test_core_set_zero_is_a_usage_error(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, SMT)
    # Zero cores is bad input, not a topology limit.
    with pytest.raises(UsageError):
        core_set(0, [0, 1, 2, 3], root)


@pytest.mark.parametrize(
    ("available", "expected"),
    [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (9, [1, 2, 4, 8, 9])],
)
def test_default_core_counts(available: int, expected: list[int]) -> None:
    # 1, the powers of two below the available count, and the count itself, without duplicates.
    assert default_core_counts(available) == expected


@pytest.mark.parametrize(
    ("packages", "expected"),
    [
        ([28, 28], [1, 2, 4, 8, 16, 28, 56]),  # a 2 x 28 Xeon: one socket, both; no 32 (28 + 4)
        ([32, 32], [1, 2, 4, 8, 16, 32, 64]),  # sockets of a power of two: as on one socket
        ([6, 6], [1, 2, 4, 6, 12]),  # no 8 (6 + 2)
        ([8, 8, 8, 8], [1, 2, 4, 8, 16, 32]),  # one, two and four sockets
        ([1] * 8, [1, 2, 4, 8]),  # a VM of 8 one-core sockets: powers of two are whole sockets
    ],
)
def test_default_core_counts_on_several_sockets_take_whole_ones(packages: list[int], expected: list[int]) -> None:
    # Past the first socket, a default count is whole sockets: a study on 28 + 4 cores would measure the
    # second socket's four as much as the count, and no launcher's one-instance-per-socket would fit it.
    assert default_core_counts(sum(packages), packages) == expected


def test_a_quota_on_two_sockets_stops_at_whole_sockets() -> None:
    # Under a quota of 30 CPUs on 2 x 28 cores: one socket is the most; 30 would span both.
    assert parse_core_counts(None, 56, 30.0, [28, 28]) == [1, 2, 4, 8, 16, 28]
    # Under 20, inside the first socket: 20 itself is a count.
    assert parse_core_counts(None, 56, 20.0, [28, 28]) == [1, 2, 4, 8, 16, 20]


def test_sockets_for_counts_only_equal_shares(tmp_path: Path) -> None:
    # Two sockets of three cores, numbered round-robin.
    root = fake_sys_smt(tmp_path, {cpu: (cpu % 2, cpu // 2) for cpu in range(6)})
    # 4 cores are 3 + 1: not "one instance per socket" (instances must split cores equally); 6 are 3 + 3.
    assert sockets_for(core_set(4, range(6), root), root) == 1
    assert sockets_for(core_set(6, range(6), root), root) == 2


def test_parse_core_counts_none_gives_defaults() -> None:
    # No --cores means the default ladder.
    assert parse_core_counts(None, 6) == [1, 2, 4, 6]


def test_default_core_counts_stop_at_a_cpu_quota(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Kubernetes limits.cpu 2.5 on a 16-core node: studies on 4 cores or more would measure the throttling.
    assert parse_core_counts(None, 16, 2.5) == [1, 2]
    # A quota under one CPU still leaves the 1-core study; a quota above the cores changes nothing.
    assert parse_core_counts(None, 16, 0.5) == [1] and parse_core_counts(None, 6, 8.0) == [1, 2, 4, 6]
    # Counts named with --cores are the user's: measured (each study warns of the quota), not cut.
    assert parse_core_counts("4,16", 16, 2.5) == [4, 16]
    from tuner import cli

    monkeypatch.setattr(cli, "physical_cores", lambda: list(range(16)))
    monkeypatch.setattr(cli, "cpu_quota", lambda: 2.5)
    # The commands say where the quota cut their default counts, in one warning line.
    assert cli._core_counts(None) == [1, 2]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "quota allows 2.5 CPUs' time: core counts up to 2 of the 16" in err
    assert cli._core_counts("8") == [8] and capsys.readouterr().err == ""


def test_parse_core_counts_sorts_and_dedups() -> None:
    # Order and repeats in user input do not matter; spaces are ignored.
    assert parse_core_counts("4, 1,2,4", 4) == [1, 2, 4]


@pytest.mark.parametrize("text", ["a", "0", "-1", "", "1,,2", "1.5", "2x", "1,a"])
def test_parse_core_counts_refuses_junk(text: str) -> None:
    # Anything but positive integers is a usage error naming --cores.
    with pytest.raises(UsageError, match="--cores"):
        parse_core_counts(text, 4)


def test_parse_core_counts_refuses_unicode_digits() -> None:
    # A superscript two is not a core count and should be a UsageError, not a ValueError traceback.
    with pytest.raises(UsageError):
        parse_core_counts("²", 4)


def test_parse_core_counts_too_many() -> None:
    # More cores than available is a topology limit, and the message names the count asked for.
    with pytest.raises(TopologyError, match="8 cores asked for, but only 4"):
        parse_core_counts("1,8", 4)


# -- faults from real machines -------------------------------------------------------------------------


def test_round_robin_numbering_across_two_sockets_keeps_a_core_set_in_one_package(tmp_path: Path) -> None:
    # Even CPUs on package 0, odd on package 1, as some BIOSes number them.
    root = fake_sys(tmp_path, {cpu: (cpu % 2, cpu // 2) for cpu in range(8)})
    # Cores are ordered by package first, so a 2-core (and a 4-core) set stays inside package 0.
    assert core_set(2, range(8), root) == (0, 2)
    assert core_set(4, range(8), root) == (0, 2, 4, 6)


def test_core_id_restarting_per_die_is_two_cores(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, {0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1)})
    for cpu, die in ((0, 0), (1, 1), (2, 0), (3, 1)):
        (root / f"cpu{cpu}" / "topology" / "die_id").write_text(f"{die}\n")
    # core_id 0 on die 0 and on die 1 are different cores: four cores, not two.
    assert physical_cores(range(4), root) == [0, 2, 1, 3]


def test_missing_topology_files_are_said_not_hidden(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, {0: (0, 0), 1: (0, 0)})
    # CPUs 2 and 3 have no topology files: each is taken as a core, after the known ones, and the notes say so.
    assert physical_cores(range(4), root) == [0, 2, 3]
    (note,) = notes(range(4), root)
    assert "CPUs 2,3" in note and "may be counted as two" in note
    assert notes([0, 1], root) == []
    # A CPU without files is never merged with a known core whose core_id happens to equal its number.
    root = fake_sys(tmp_path / "collide", {0: (0, 1)})
    assert physical_cores([0, 1], root) == [0, 1]


def test_two_socket_64_core_smt_machine(tmp_path: Path) -> None:
    # 2 packages x 32 cores x 2 threads, CPUs numbered round-robin across the packages (even: package 0),
    # the first threads 0-63 and their siblings 64-127.
    cpus = {cpu: (cpu % 2, (cpu % 64) // 2) for cpu in range(128)}
    root = fake_sys(tmp_path, cpus)
    cores = physical_cores(range(128), root)
    # One hardware thread per core: 64 cores, package 0's 32 first; a 32-core set is package 0 alone.
    assert len(cores) == 64 and cores[:32] == list(range(0, 64, 2)) and cores[32:] == list(range(1, 64, 2))
    assert core_set(32, range(128), root) == tuple(range(0, 64, 2))


def _cgroup(tmp_path: Path, quotas: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for folder, text in quotas.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/docker/abc\n")
    return root, proc


def test_cgroup_quota_is_read_and_warned_about(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, {"docker/abc": "150000 100000", "docker": "max 100000"})
    # docker --cpus 1.5: the container's own cpu.max says 1.5 CPUs' time.
    assert cpu_quota(root, proc) == 1.5
    # Two cores measured under 1.5 CPUs' time would be throttled: a warning; one core would not.
    warning = quota_warning(2, 1.5)
    assert warning is not None and "1.5 CPUs" in warning
    assert quota_warning(1, 1.5) is None


def test_quota_of_a_parent_group_counts_and_no_quota_is_none(tmp_path: Path) -> None:
    root, proc = _cgroup(tmp_path, {"docker/abc": "max 100000", "docker": "100000 100000"})
    # The tightest limit on the way to the root applies.
    assert cpu_quota(root, proc) == 1.0
    root, proc = _cgroup(tmp_path / "free", {"docker/abc": "max 100000"})
    assert cpu_quota(root, proc) is None
    # A cgroup v1 line whose controller has no quota files under this root: no quota known.
    (tmp_path / "v1").write_text("4:cpu,cpuacct:/\n")
    assert cpu_quota(root, tmp_path / "v1") is None


def _v1(root: Path, folder: str, quota: int, period: int = 100000) -> None:
    group = root / "cpu,cpuacct" / folder
    group.mkdir(parents=True, exist_ok=True)
    (group / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (group / "cpu.cfs_period_us").write_text(f"{period}\n")


def test_cgroup_v1_quota_is_read_where_the_cpu_controller_is_mounted(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _v1(root, "", -1)  # the root group: no limit
    _v1(root, "docker", -1)
    _v1(root, "docker/abc", 200000)
    proc = tmp_path / "proc-cgroup"
    # An older Docker, RHEL 7/8 or EKS node: the cpu controller on v1 (a hybrid host has a '0::' line too).
    proc.write_text("12:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n0::/docker/abc\n")
    # docker --cpus 2 on v1: cpu.cfs_quota_us 200000 per 100000 us is 2 CPUs' time; -1 above it is none.
    assert cpu_quota(root, proc) == 2.0
    assert quota_warning(4, cpu_quota(root, proc)) is not None
    # Inside the container without a cgroup namespace: /proc names the host's path, but the mount shows the
    # container's own group at its root. The quota is read there, not lost.
    inside = tmp_path / "inside"
    _v1(inside, "", 150000)
    assert cpu_quota(inside, proc) == 1.5


def fake_sys_smt(root: Path, cpus: dict[int, tuple[int, int]]) -> Path:
    """``fake_sys`` plus die_id and thread_siblings_list, as Linux writes them: logical CPU -> (package, core)."""
    fake_sys(root, cpus)
    for cpu, key in cpus.items():
        siblings = ",".join(str(other) for other, other_key in sorted(cpus.items()) if other_key == key)
        topo = root / f"cpu{cpu}" / "topology"
        (topo / "die_id").write_text("0\n")
        (topo / "thread_siblings_list").write_text(f"{siblings}\n")
    return root


# Two sockets of two cores with two hardware threads each, CPUs numbered round-robin across the packages:
# cpu0 pkg0 core0, cpu1 pkg1 core0, cpu2 pkg0 core1, cpu3 pkg1 core1, then cpu4..7 are their SMT siblings.
TWO_SOCKETS_SMT = {cpu: (cpu % 2, (cpu // 2) % 2) for cpu in range(8)}


def test_cores_fill_one_numa_node_of_a_split_socket_before_the_next(tmp_path: Path) -> None:
    # One package split in two NUMA nodes (Intel SNC2, AMD NPS2) whose core ids alternate between the nodes.
    root = fake_sys_smt(tmp_path, {cpu: (0, cpu) for cpu in range(4)})
    for cpu in range(4):
        (root / f"cpu{cpu}" / f"node{cpu % 2}").mkdir()
    # A 2-core study stays in node 0 (its memory near both), and two instances of two cores get a node each.
    assert physical_cores(range(4), root) == [0, 2, 1, 3] and core_set(2, range(4), root) == (0, 2)
    assert partition(core_set(4, range(4), root), 2, root) == [(0, 2), (1, 3)]


def test_a_hybrid_cpu_gives_performance_cores_first_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "devices" / "system" / "cpu"
    # Firmware that numbers the four E-cores first (CPUs 0-3, one thread each), then two P-cores with SMT
    # (CPUs 4-7); the kernel lists the E-cores in /sys/devices/cpu_atom/cpus.
    fake_sys_smt(root, {0: (0, 0), 1: (0, 1), 2: (0, 2), 3: (0, 3), 4: (0, 8), 5: (0, 8), 6: (0, 12), 7: (0, 12)})
    (tmp_path / "devices" / "cpu_atom").mkdir()
    (tmp_path / "devices" / "cpu_atom" / "cpus").write_text("0-3\n")
    assert efficiency_cpus(root) == {0, 1, 2, 3}
    # A 2-core study runs on the two P-cores, not on E-cores because their core ids come first.
    assert physical_cores(range(8), root) == [4, 6, 0, 1, 2, 3] and core_set(2, range(8), root) == (4, 6)
    # The machine's notes say it is hybrid; a core set of P-cores only has nothing to say, one that takes
    # E-cores too is named as mixing them.
    (line,) = notes(range(8), root)
    assert "hybrid CPU: 2 performance and 4 efficiency cores" in line and "CPUs 0,1,2,3" in line
    assert notes([4, 6], root) == []
    # Without the kernel's list (AMD, older kernels, a container), nothing is claimed.
    (tmp_path / "devices" / "cpu_atom" / "cpus").write_text("garbage\n")
    assert efficiency_cpus(root) == frozenset() and physical_cores(range(8), root)[0] == 0


def test_an_arm_big_little_cpu_gives_its_fastest_cores_first_from_cpu_capacity(tmp_path: Path) -> None:
    root = tmp_path / "devices" / "system" / "cpu"
    # An ARM DynamIQ phone or board: four little cores (CPUs 0-3, capacity 400), three middle ones (4-6, 800) and
    # one big (7, 1024). No cpu_atom list: the kernel states each CPU's relative speed in cpu_capacity.
    fake_sys(root, {cpu: (0, cpu) for cpu in range(8)})
    for cpu in range(8):
        (root / f"cpu{cpu}" / "cpu_capacity").write_text(f"{400 if cpu < 4 else 800 if cpu < 7 else 1024}\n")
    assert kinds(root) == {0: 2, 1: 2, 2: 2, 3: 2, 4: 1, 5: 1, 6: 1, 7: 0}
    assert efficiency_cpus(root) == {0, 1, 2, 3, 4, 5, 6}
    # A 1-core study runs on the big core, a 4-core one on the big and the middle cores, never on a little core
    # while a faster one is free; before, core ids put the little cores first.
    assert physical_cores(range(8), root) == [7, 4, 5, 6, 0, 1, 2, 3] and core_set(4, range(8), root) == (7, 4, 5, 6)
    (line,) = notes(range(8), root)
    assert "hybrid CPU: 1 performance and 7 efficiency cores" in line
    # A process allowed only the middle and little cores still hears that its cores are of two kinds.
    (line,) = notes(range(7), root)
    assert "hybrid CPU: 3 performance and 4 efficiency cores" in line and "CPUs 0,1,2,3" in line
    # Equal capacities (an ARM server such as Graviton, and x86 kernels, list 1024 on every core) claim nothing
    # and keep the order.
    for cpu in range(8):
        (root / f"cpu{cpu}" / "cpu_capacity").write_text("1024\n")
    assert efficiency_cpus(root) == frozenset() and physical_cores(range(8), root) == list(range(8))
    assert notes(range(8), root) == []


def test_capacity_never_outranks_the_socket_and_a_few_percent_is_one_kind(tmp_path: Path) -> None:
    root = tmp_path / "devices" / "system" / "cpu"
    # Two sockets of two cores with SMT (siblings numbered apart); CPPC firmware gives one boosted core per socket
    # 1024 and the rest 1009, as some arm64 servers do. Each SMT sibling states its core's capacity.
    fake_sys_smt(root, {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1), 4: (0, 0), 5: (0, 1), 6: (1, 0), 7: (1, 1)})
    for cpu in range(8):
        (root / f"cpu{cpu}" / "cpu_capacity").write_text(f"{1024 if cpu in (1, 3, 5, 7) else 1009}\n")
    # 1009 is within 10% of 1024: one kind, no hybrid note, and the order is the topology's, socket by socket.
    assert set(kinds(root).values()) == {0} and efficiency_cpus(root) == frozenset()
    assert physical_cores(range(8), root) == [0, 1, 2, 3] and notes(range(8), root) == []
    # A real second kind on both sockets orders within each socket: a 2-core set stays in socket 0 and takes its
    # fast core first, not the fast cores of both sockets.
    for cpu in range(8):
        (root / f"cpu{cpu}" / "cpu_capacity").write_text(f"{1024 if cpu in (1, 3, 5, 7) else 512}\n")
    assert physical_cores(range(8), root) == [1, 0, 3, 2] and packages_of(core_set(2, range(8), root), root) == 1


def test_partition_one_socket_two_cores(tmp_path: Path) -> None:
    root = fake_sys_smt(tmp_path, {0: (0, 0), 1: (0, 1)})
    cores = core_set(2, [0, 1], root)
    # One package: one instance takes both cores, two instances take one core each, in order.
    assert partition(cores, 1, root) == [(0, 1)]
    assert partition(cores, 2, root) == [(0,), (1,)]
    # Both cores are on one package.
    assert packages_of(cores, root) == 1


def test_partition_two_sockets_round_robin_smt_one_group_per_socket(tmp_path: Path) -> None:
    root = fake_sys_smt(tmp_path, TWO_SOCKETS_SMT)
    cores = core_set(4, range(8), root)
    # core_set orders by package: socket 0's cores (CPUs 0, 2) first, then socket 1's (1, 3); no SMT sibling.
    assert cores == (0, 2, 1, 3)
    # The four cores span both sockets.
    assert packages_of(cores, root) == 2
    # Two instances of two cores: one group per socket, never CPUs 0 and 1 together.
    assert partition(cores, 2, root) == [(0, 2), (1, 3)]
    # Four instances: one core each, each trivially inside one socket.
    assert partition(cores, 4, root) == [(0,), (2,), (1,), (3,)]


def test_partition_refuses_one_of_several_groups_spanning_sockets(tmp_path: Path) -> None:
    # Two sockets of three cores, numbered round-robin: CPUs 0, 2, 4 on package 0 and 1, 3, 5 on package 1.
    root = fake_sys_smt(tmp_path, {cpu: (cpu % 2, cpu // 2) for cpu in range(6)})
    cores = core_set(4, range(6), root)
    assert cores == (0, 2, 4, 1)
    with pytest.raises(UsageError) as error:
        partition(cores, 2, root)
    # Two instances of two cores: the second (CPUs 4 and 1) would span both packages: refused in one line.
    assert "instance 1 (CPUs 4,1) would span packages 0,1" in str(error.value)
    assert "\n" not in str(error.value)
    # One instance takes the whole set across both sockets, as a trial's one process does (and tf-default
    # and the heuristic are measured so on a 2-socket core set): `tuner exec` and `recommend` can start it.
    assert partition(cores, 1, root) == [(0, 2, 4, 1)]
    assert partition(core_set(3, range(6), root), 1, root) == [(0, 2, 4)]
    assert splits(cores, root) == (1, 4)


def test_partition_refuses_a_count_that_does_not_divide(tmp_path: Path) -> None:
    root = fake_sys_smt(tmp_path, {0: (0, 0), 1: (0, 1), 2: (0, 2)})
    # Three cores cannot be shared equally by two instances: one line saying the count must divide.
    with pytest.raises(UsageError, match="must divide"):
        partition((0, 1, 2), 2, root)
    # Zero instances is a usage error, not a division by zero.
    with pytest.raises(UsageError, match="at least 1"):
        partition((0, 1, 2), 0, root)


def test_partition_without_topology_files_is_one_package(tmp_path: Path) -> None:
    # Without /sys topology every CPU is taken as package 0, so any dividing count is accepted.
    assert partition((0, 1, 2, 3), 2, tmp_path) == [(0, 1), (2, 3)]
