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

# ISA features that change which oneDNN/Eigen kernels run.
ISA_FLAGS = (
    "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip


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


def _cpuinfo(path: Path) -> tuple[dict[str, str], list[tuple[int, int]]]:
    first: dict[str, str] = {}
    cores: list[tuple[int, int]] = []
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
            block = {}
            continue
        key, _, value = line.partition(":")
        block[key.strip()] = value.strip()
    return first, cores


def cpu_signature(
    cpuinfo: Path = Path("/proc/cpuinfo"), nodes: Path = Path("/sys/devices/system/node")
) -> CpuSignature:
    """Read this machine's signature (the whole machine, not only this process's allowed CPUs)."""
    info, cores = _cpuinfo(cpuinfo)
    flags = set(info.get("flags", "").split())
    numa = len(list(nodes.glob("node[0-9]*"))) if nodes.exists() else 1
    logical = len(cores) or os.cpu_count() or 1
    physical = len(set(cores)) or logical
    return CpuSignature(
        vendor=info.get("vendor_id", platform.machine()),
        model_name=info.get("model name", platform.processor() or "unknown"),
        family=info.get("cpu family", ""),
        model=info.get("model", ""),
        stepping=info.get("stepping", ""),
        physical_cores=physical,
        logical_cpus=logical,
        sockets=len({socket for socket, _ in cores}) or 1,
        numa_nodes=max(numa, 1),
        smt=logical > physical,
        isa=tuple(flag for flag in ISA_FLAGS if flag in flags),
    )
