"""CPU signature: read from /proc/cpuinfo and /sys nodes, with a short id that changes with any field."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from tuner.signature import BF16_FLAGS, ISA_FLAGS, CpuSignature, cpu_signature

# Flags in the kernel's order (not ISA_FLAGS order), with some that do not matter for kernel choice.
FLAGS = "fpu sse2 avx512f fma avx2 amx_tile avx ht avx512_vnni"


def cpuinfo_text(sockets: int = 2, cores: int = 2, threads: int = 2, flags: str = FLAGS) -> str:
    """A /proc/cpuinfo with one block per logical CPU, numbered socket-major as on Intel servers."""
    blocks = []
    processor = 0
    for _thread in range(threads):
        for socket in range(sockets):
            for core in range(cores):
                blocks.append(
                    f"processor\t: {processor}\n"
                    "vendor_id\t: GenuineIntel\n"
                    "cpu family\t: 6\n"
                    "model\t\t: 143\n"
                    "model name\t: Intel(R) Xeon(R) Fake 8480\n"
                    "stepping\t: 8\n"
                    f"physical id\t: {socket}\n"
                    f"siblings\t: {cores * threads}\n"
                    f"core id\t\t: {core}\n"
                    f"flags\t\t: {flags}\n"
                )
                processor += 1
    return "\n".join(blocks) + "\n"


def fake_machine(tmp_path: Path, numa: int = 2, **kwargs: object) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(cpuinfo_text(**kwargs))  # type: ignore[arg-type]
    nodes = tmp_path / "node"
    for node in range(numa):
        (nodes / f"node{node}").mkdir(parents=True)
    (nodes / "possible").mkdir(parents=True)  # not a node directory; must not be counted
    return cpuinfo, nodes


def test_two_sockets_two_cores_two_threads(tmp_path: Path) -> None:
    sig = cpu_signature(*fake_machine(tmp_path))
    # 8 logical CPUs on 4 distinct (socket, core) pairs in 2 sockets: SMT is on.
    assert sig.logical_cpus == 8
    assert sig.physical_cores == 4
    assert sig.sockets == 2
    assert sig.smt is True
    # NUMA nodes are counted from nodeN directories only.
    assert sig.numa_nodes == 2


def test_identity_fields_come_from_the_first_block(tmp_path: Path) -> None:
    sig = cpu_signature(*fake_machine(tmp_path))
    # Vendor, model name and family/model/stepping are copied as text.
    assert sig.vendor == "GenuineIntel"
    assert sig.model_name == "Intel(R) Xeon(R) Fake 8480"
    assert (sig.family, sig.model, sig.stepping) == ("6", "143", "8")


def test_isa_is_a_subset_in_isa_flags_order(tmp_path: Path) -> None:
    sig = cpu_signature(*fake_machine(tmp_path))
    # Only the kernel-relevant flags are kept, in ISA_FLAGS order whatever the kernel's order was.
    assert sig.isa == ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")
    assert list(sig.isa) == [f for f in ISA_FLAGS if f in sig.isa]


def test_no_smt(tmp_path: Path) -> None:
    sig = cpu_signature(*fake_machine(tmp_path, numa=1, sockets=1, cores=4, threads=1))
    # One thread per core: logical equals physical and SMT is off.
    assert (sig.logical_cpus, sig.physical_cores, sig.sockets, sig.smt) == (4, 4, 1, False)


def test_missing_nodes_dir_counts_one_node(tmp_path: Path) -> None:
    cpuinfo, _ = fake_machine(tmp_path)
    # Without /sys/devices/system/node (some containers) the machine is one NUMA node.
    assert cpu_signature(cpuinfo, tmp_path / "absent").numa_nodes == 1


def test_id_is_stable_and_short(tmp_path: Path) -> None:
    paths = fake_machine(tmp_path)
    first, second = cpu_signature(*paths), cpu_signature(*paths)
    # The same machine read twice gives the same 12-hex-digit id, so results can be looked up by it.
    assert first.id == second.id
    assert re.fullmatch(r"[0-9a-f]{12}", first.id)


def test_id_changes_when_a_flag_changes(tmp_path: Path) -> None:
    base = cpu_signature(*fake_machine(tmp_path / "a"))
    no_amx = cpu_signature(*fake_machine(tmp_path / "b", flags=FLAGS.replace("amx_tile", "")))
    # A CPU without AMX runs other kernels, so it must not share an id with one that has it.
    assert no_amx.isa != base.isa
    assert no_amx.id != base.id


def test_id_ignores_irrelevant_flags(tmp_path: Path) -> None:
    base = cpu_signature(*fake_machine(tmp_path / "a"))
    other = cpu_signature(*fake_machine(tmp_path / "b", flags=FLAGS + " rdrand"))
    # Flags outside ISA_FLAGS do not change kernel choice, so they do not change the id.
    assert other.id == base.id


def test_id_changes_with_any_field(tmp_path: Path) -> None:
    sig = cpu_signature(*fake_machine(tmp_path))
    # Every field enters the hash: a different core count alone gives another id.
    assert replace(sig, physical_cores=2).id != sig.id


def test_to_dict_carries_id_and_list_isa(tmp_path: Path) -> None:
    sig = cpu_signature(*fake_machine(tmp_path))
    data = sig.to_dict()
    # The stored form is JSON-friendly (a list, not a tuple) and carries the id beside the fields.
    assert data["id"] == sig.id
    assert data["isa"] == list(sig.isa)
    assert data["physical_cores"] == 4


def test_unreadable_cpuinfo_falls_back(tmp_path: Path) -> None:
    sig = cpu_signature(tmp_path / "no-cpuinfo", tmp_path / "no-nodes")
    # Without /proc/cpuinfo the counts fall back to os.cpu_count() and no ISA is claimed.
    assert sig.logical_cpus >= 1
    assert sig.physical_cores == sig.logical_cpus
    assert sig.sockets == 1
    assert sig.isa == ()


def test_arm_trailer_block_is_not_a_cpu(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nFeatures\t: fp asimd\nCPU part\t: 0xd08\n\n"
        "processor\t: 1\nFeatures\t: fp asimd\nCPU part\t: 0xd08\n\n"
        "Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4\n"
    )
    # Two processor blocks are two CPUs; the board description after them is not a third.
    assert cpu_signature(cpuinfo, tmp_path / "none").logical_cpus == 2


def _arm(part: str, features: str) -> str:
    block = (
        "processor\t: {n}\nBogoMIPS\t: 2100.00\nFeatures\t: " + features + "\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: " + part + "\nCPU revision\t: 1\n\n"
    )
    return "".join(block.format(n=n) for n in range(4))


def test_aarch64_cpus_are_told_apart_by_their_part_and_features(tmp_path: Path) -> None:
    (tmp_path / "n1").write_text(_arm("0xd0c", "fp asimd evtstrm aes crc32 atomics asimddp"))
    (tmp_path / "v1").write_text(_arm("0xd40", "fp asimd asimddp sve i8mm bf16 svebf16"))
    n1, v1 = (cpu_signature(tmp_path / name, tmp_path / "none") for name in ("n1", "v1"))
    # No vendor_id, model name or flags on aarch64: the implementer, part and Features stand in, so a
    # Graviton2 (Neoverse-N1) and a Graviton3 (Neoverse-V1) are two CPUs, not one "unknown". The stepping is
    # written as Arm writes it (r1p1 for variant 0x1, revision 1).
    assert (n1.vendor, n1.model_name, n1.family, n1.model, n1.stepping) == (
        "ARM", "ARM Neoverse-N1", "8", "0xd0c", "r1p1"
    )  # fmt: skip
    assert v1.model_name == "ARM Neoverse-V1" and n1.id != v1.id
    assert n1.isa == ("asimd", "asimddp") and v1.isa == ("asimd", "asimddp", "sve", "bf16", "i8mm")
    # The V1's bf16 is native bf16 arithmetic: a bf16 precision is not taken out as emulated there.
    assert BF16_FLAGS & set(v1.isa) and not BF16_FLAGS & set(n1.isa)


def test_aarch64_sockets_and_cores_come_from_sys_where_cpuinfo_has_none(tmp_path: Path) -> None:
    from tests.test_topology import fake_sys

    (tmp_path / "cpuinfo").write_text(_arm("0xd0c", "fp asimd"))  # four logical CPUs, no physical or core id
    (tmp_path / "node" / "node0").mkdir(parents=True)
    (tmp_path / "node" / "node1").mkdir(parents=True)
    fake_sys(tmp_path / "cpu", {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)})
    sig = cpu_signature(tmp_path / "cpuinfo", tmp_path / "node")
    # A 2-socket Arm server (two Neoverse-N1 cores per socket here): /sys beside the NUMA nodes names the
    # packages, where /proc/cpuinfo names none. Core ids restart per socket, and still count as four cores.
    assert (sig.sockets, sig.physical_cores, sig.logical_cpus, sig.smt) == (2, 4, 4, False)
    # SMT siblings (one socket, two cores of two threads) are counted once, and SMT shows as on.
    smt = tmp_path / "smt"
    fake_sys(smt / "cpu", {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)})
    sig = cpu_signature(tmp_path / "cpuinfo", smt / "node")
    assert (sig.sockets, sig.physical_cores, sig.logical_cpus, sig.smt) == (1, 2, 4, True)
    # Without /sys topology (a container that hides it), each logical CPU is a core, as before.
    assert cpu_signature(tmp_path / "cpuinfo", tmp_path / "none" / "node").physical_cores == 4


def test_an_empty_vendor_or_model_name_is_kept_as_it_was_stored(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: \nmodel name\t: \nflags\t\t: avx2\n\n")
    sig = cpu_signature(cpuinfo, tmp_path / "none")
    # Some hypervisors print these keys empty: they stay empty (no fallback), so the signature id of a CPU
    # measured by an earlier version is the same id now.
    assert (sig.vendor, sig.model_name) == ("", "")


def test_real_machine_signature_reads() -> None:
    sig = cpu_signature()
    # This machine's signature reads without error and is self-consistent.
    assert isinstance(sig, CpuSignature)
    assert sig.logical_cpus >= sig.physical_cores >= 1
    assert sig.sockets >= 1
    assert sig.numa_nodes >= 1
    assert sig.smt == (sig.logical_cpus > sig.physical_cores)
    assert set(sig.isa) <= set(ISA_FLAGS)
    assert re.fullmatch(r"[0-9a-f]{12}", sig.id)
