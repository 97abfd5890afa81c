"""Where a measurement was made: the CPU signature, one definition used everywhere.

The signature holds what changes kernel choice and scaling (vendor, model, family/model/stepping, cores,
sockets, NUMA nodes, SMT, ISA features) and a short stable id derived from them, so results can be looked
up by the CPU they were measured on.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from tuner.topology import core_key

# ISA features that change which oneDNN/Eigen/ACL kernels run: x86's ``flags``, then aarch64's ``Features``
# (no x86 flag has those names, so an x86 signature is the same with or without them).
ISA_FLAGS = (
    "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "asimddp", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # native bf16 arithmetic: x86, aarch64
# aarch64 /proc/cpuinfo has no vendor or model name: its "CPU implementer" code names the vendor, and
# "CPU part" the core (the Arm Neoverse parts of the cloud servers named; others stay as their code).
ARM_IMPLEMENTERS = {
    "0x41": "ARM", "0x42": "Broadcom", "0x43": "Cavium", "0x46": "Fujitsu", "0x48": "HiSilicon",
    "0x4e": "NVIDIA", "0x50": "APM", "0x51": "Qualcomm", "0x61": "Apple", "0xc0": "Ampere",
}  # fmt: skip
ARM_PARTS = {
    ("0x41", "0xd0c"): "Neoverse-N1", ("0x41", "0xd40"): "Neoverse-V1", ("0x41", "0xd49"): "Neoverse-N2",
    ("0x41", "0xd4f"): "Neoverse-V2", ("0x41", "0xd8e"): "Neoverse-N3", ("0x41", "0xd84"): "Neoverse-V3",
}  # fmt: skip


@dataclass(frozen=True)
class CpuSignature:
    vendor: str
    model_name: str
    family: str
    model: str
    stepping: str
    physical_cores: int
    logical_cpus: int
    sockets: int
    numa_nodes: int
    smt: bool
    isa: tuple[str, ...]

    @property
    def id(self) -> str:
        """Short stable id: a hash of every field, so any difference in the CPU gives another id."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "isa": list(self.isa), "id": self.id}


def _cpuinfo(path: Path) -> tuple[dict[str, str], list[tuple[int, int]], list[int]]:
    """The first CPU's block, (physical id, core id) per logical CPU, and the logical CPUs' numbers."""
    first: dict[str, str] = {}
    cores: list[tuple[int, int]] = []
    numbers: list[int] = []
    block: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        text = ""
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if "processor" in block:
                first = first or block
                cores.append((int(block.get("physical id", 0)), int(block.get("core id", len(cores)))))
                numbers.append(int(block["processor"]) if block["processor"].isdigit() else len(numbers))
            block = {}
            continue
        key, _, value = line.partition(":")
        block[key.strip()] = value.strip()
    return first, cores, numbers


def _sys_cores(numbers: list[int], sys_cpu: Path) -> list[tuple[int, int]] | None:
    """(package, core) per logical CPU from /sys, where /proc/cpuinfo names neither (aarch64): without it
    a 2-socket Ampere or an SMT core would count every logical CPU as a core of one socket. None where /sys
    lacks any of them: each logical CPU then counts as a core, as before."""
    keys = [core_key(cpu, sys_cpu) for cpu in numbers]
    if not keys or any(key is None for key in keys):
        return None
    found = [key for key in keys if key is not None]
    ids = {key: n for n, key in enumerate(sorted(set(found)))}
    return [(key[0], ids[key]) for key in found]


def _number(text: str) -> str:
    """A variant or revision as Arm writes it (r1p1), from /proc/cpuinfo's 0x1 and 1; else the text as it is."""
    try:
        return str(int(text, 0))
    except ValueError:
        return text


def cpu_signature(
    cpuinfo: Path = Path("/proc/cpuinfo"), nodes: Path = Path("/sys/devices/system/node")
) -> CpuSignature:
    """Read this machine's signature (the whole machine, not only this process's allowed CPUs)."""
    info, cores, numbers = _cpuinfo(cpuinfo)
    flags = set(info.get("flags", info.get("Features", "")).split())
    numa = len(list(nodes.glob("node[0-9]*"))) if nodes.exists() else 1
    # x86 names itself; aarch64 has only the implementer and part codes. A key that is there stays as it is,
    # even empty (as some hypervisors print it): the ids of signatures stored before are kept.
    implementer, part = info.get("CPU implementer", "").lower(), info.get("CPU part", "").lower()
    arm = ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}") if implementer else None
    if arm:  # /sys beside the NUMA nodes' folder: /sys/devices/system/cpu
        cores = _sys_cores(numbers, nodes.parent / "cpu") or cores
    logical = len(cores) or os.cpu_count() or 1
    physical = len(set(cores)) or logical
    vendor = info.get("vendor_id", arm or platform.machine())
    arm_name = f"{arm} {ARM_PARTS.get((implementer, part), f'part {part}')}" if arm else None
    model_name = info.get("model name", arm_name or platform.processor() or "unknown")
    arm_stepping = f"r{_number(info.get('CPU variant', ''))}p{_number(info.get('CPU revision', ''))}" if arm else ""
    return CpuSignature(
        vendor=vendor,
        model_name=model_name,
        family=info.get("cpu family", info.get("CPU architecture", "")),
        model=info.get("model", part),
        stepping=info.get("stepping", arm_stepping),
        physical_cores=physical,
        logical_cpus=logical,
        sockets=len({socket for socket, _ in cores}) or 1,
        numa_nodes=max(numa, 1),
        smt=logical > physical,
        isa=tuple(flag for flag in ISA_FLAGS if flag in flags),
    )
