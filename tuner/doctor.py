"""Read-only advice before measuring: the CPU, what disturbs timings now, and which runtimes can run here.

Nothing is changed: no governor, no affinity, no process is touched. It answers in seconds because it never
imports a framework; a runtime counts as available when its interpreter exists and can find the package.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tuner import interrupt
from tuner.capability import ARM_FLAG, differing_caps, top_cap
from tuner.disturbance import DEFAULT_LIMIT, sample
from tuner.errors import UsageError
from tuner.runtime import NVIDIA_DRIVER, Runtime, gpu_driver, load, names
from tuner.signature import CpuSignature, cpu_signature
from tuner.topology import cpu_quota, physical_cores, quota_warning
from tuner.topology import notes as topology_notes

# Stock TensorFlow on Linux turns oneDNN on by itself for these x86 flags, or on an Arm Neoverse V1 (implementer
# 0x41, part 0xd40; TensorFlow's DefaultOneDnnPolicy): a prediction only, which every probe reads back.
ONEDNN_DEFAULT_ISA = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
ONEDNN_DEFAULT_ARM = {("ARM", "0xd40"): "Neoverse V1"}
BUSY_SHARE = 0.10  # a process using more than 10% of one CPU disturbs measurements
BUSY_LOAD = 0.25  # a 1-minute load average above a quarter of the logical CPUs: the machine was busy


@dataclass(frozen=True)
class Busy:
    pid: int
    name: str
    cpu_share: float


def busy_processes(interval: float = 0.5) -> list[Busy]:
    """Processes that used more than BUSY_SHARE of a CPU over ``interval`` seconds (this one excluded), from
    psutil's per-process CPU times."""
    before: dict[int, tuple[psutil.Process, float]] = {}
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            before[process.pid] = (process, times.user + times.system)
    with interrupt.interruptible():
        time.sleep(interval)
    found = []
    for pid, (process, used) in before.items():
        try:
            times = process.cpu_times()
            share = (times.user + times.system - used) / interval
            if share > BUSY_SHARE:
                found.append(Busy(pid, process.name(), share))
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
    return sorted(found, key=lambda b: -b.cpu_share)


def disturbance_now(cores: list[int], seconds: float = 1.0) -> str:
    """What a trial on ``cores`` would be disturbed by now (tuner/disturbance.py's figure over ``seconds``)."""
    found = sample(cores, seconds)
    verdict = "over" if found.over(DEFAULT_LIMIT) else "within"
    return (
        f"{found.describe()}: {verdict} the default limit of {DEFAULT_LIMIT:.0%} (--max-disturbance), above "
        "which a trial is measured again"
    )


def availability(runtime: Runtime) -> str:
    """'available (...)' or 'not available: why'."""
    try:
        python = runtime.python()
    except UsageError as error:
        reason = runtime.installable()
        return f"not available: {reason or str(error).split(': ', 1)[-1]}"
    package = runtime.framework
    check = f"import importlib.util as u, sys; sys.exit(0 if u.find_spec({package!r}) else 3)"
    try:
        done = subprocess.run([python, "-c", check], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        return f"not available: cannot run {python}: {error}"
    if done.returncode != 0:
        return f"not available: {package} is not installed for {python}"
    return f"available ({python})"


def gpu_line(version_file: Path | None = None, dev: Path = Path("/dev")) -> str:
    """Whether an NVIDIA GPU and its driver are visible, without a framework: the kernel driver's version
    line and the device nodes it made (``/dev/nvidia0`` ...)."""
    driver = gpu_driver(version_file)
    if driver is None:
        missing = version_file or NVIDIA_DRIVER
        return f"GPU            none visible: no NVIDIA driver loaded ({missing} missing); GPU rows are skipped"
    nodes = sorted(p.name for p in dev.glob("nvidia[0-9]*"))
    seen = f"{len(nodes)} device node(s) ({', '.join(nodes)})" if nodes else "no /dev/nvidia* device node"
    return f"GPU            NVIDIA driver loaded: {driver}; {seen}; GPU rows run in runtime tensorflow-gpu"


def caps_line(isa: tuple[str, ...]) -> str:
    """The oneDNN instruction-set caps a CPU with these flags can run and that differ from no cap."""
    if ARM_FLAG in isa:
        return "oneDNN caps    none searched on aarch64 (--search-isa takes x86 caps only)"
    top = top_cap(isa)
    caps = ", ".join(differing_caps(isa)) or "none"
    same = f"; {top} runs as no cap" if top else ""
    return f"oneDNN caps    to search here: {caps}{same} (ONEDNN_MAX_CPU_ISA, --search-isa)"


def onednn_line(sig: CpuSignature) -> str:
    """Whether stock TensorFlow turns oneDNN on by itself on this CPU, and why (ONEDNN_DEFAULT_ISA)."""
    reasons = [flag for flag in ONEDNN_DEFAULT_ISA if flag in sig.isa]
    arm = ONEDNN_DEFAULT_ARM.get((sig.vendor, sig.model))
    if reasons or arm:
        return f"oneDNN         stock TensorFlow turns it on by default here ({', '.join(reasons) or arm})"
    lacks = "not a Neoverse V1" if ARM_FLAG in sig.isa else "no VNNI/BF16/AMX"
    return f"oneDNN         off by default in stock TensorFlow here ({lacks}): knob onednn=true turns it on"


def load_line(load1: float, load5: float, cpus: int) -> list[str]:
    """The load averages, and a warning where the last minute's exceeds BUSY_LOAD of the CPUs."""
    lines = [f"load average   {load1:.2f} (1 min), {load5:.2f} (5 min) on {cpus} CPUs"]
    if load1 > BUSY_LOAD * max(cpus, 1):
        lines.append(
            "  warning: the machine was busy in the last minute; measurements will be noisy. Interleave and repeat."
        )
    return lines


def report() -> list[str]:
    sig = cpu_signature()
    allowed = physical_cores()
    load1, load5, _ = os.getloadavg()
    quota = cpu_quota()
    lines = [
        f"CPU            {sig.model_name} ({sig.vendor}, family {sig.family} model {sig.model}), signature {sig.id}",
        f"cores          {sig.physical_cores} physical, {sig.logical_cpus} logical, {sig.sockets} socket(s), "
        f"{sig.numa_nodes} NUMA node(s), SMT {'on' if sig.smt else 'off'}; this process may use "
        f"{len(allowed)} physical core(s): CPUs {','.join(map(str, allowed))}",
        *(f"  warning: {note}" for note in topology_notes()),
        f"CPU quota      {'none' if quota is None else f'{quota:g} CPUs (cgroup cpu.max or cpu.cfs_quota_us)'}",
        *(f"  warning: {line}" for line in [quota_warning(len(allowed), quota)] if line),
        f"ISA            {' '.join(sig.isa) or 'none of note'}",
        onednn_line(sig),
        caps_line(sig.isa),
        *load_line(load1, load5, sig.logical_cpus),
        gpu_line(),
    ]
    lines.append(f"disturbance    on CPUs {','.join(map(str, allowed))} now: {disturbance_now(list(allowed))}")
    busy = busy_processes()
    lines.append(
        "busy processes " + (", ".join(f"{b.name} (pid {b.pid}, {b.cpu_share:.0%} CPU)" for b in busy) or "none")
    )
    for name in names():
        try:
            runtime = load(name)
        except UsageError as error:  # one bad runtime file does not hide the others
            lines.append(f"runtime        {name}: unreadable: {error}")
            continue
        lines.append(f"runtime        {name}: {runtime.description}")
        lines.append(f"  {availability(runtime)}")
        lines.append(f"  honours {', '.join(runtime.honours)}")
    return lines
