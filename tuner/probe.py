"""A one-trial probe before tuning: what the runtime really loads and applies, checked against its declaration.

The probe runs the tiny model once with distinctive OpenMP values where the runtime claims to honour them,
and reads back from the process which OpenMP library is loaded, oneDNN's threading runtime (from its
verbose mode) and the values OpenMP reports. A runtime whose declaration the probe contradicts is refused.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import CategoricalDistribution

from tuner.allocator import available as available_allocators
from tuner.errors import TunerError, WorkerError
from tuner.policy import MeasurementPolicy
from tuner.runner import Runner, TrialSpec
from tuner.runtime import OPENMP_KNOBS, Runtime
from tuner.settings import Settings
from tuner.signature import BF16_FLAGS, cpu_signature
from tuner.space import SearchSpace
from tuner.workload import Workload

PROBE = MeasurementPolicy("probe", warmup=0, timed=1, timeout_s=300.0)
PROBE_BLOCKTIME = 7  # distinctive: no runtime defaults to it, so reading it back proves the variable was applied
FACTS = (
    "framework_version",
    "onednn",
    "onednn_runtime",
    "onednn_isa",
    "openmp",
    "omp_max_threads",
    "kmp_blocktime",
    "python",
    "gpus",
)


def fixed_knobs(space: SearchSpace) -> dict[str, Any]:
    """Knobs with a single choice in ``space`` (oneDNN off for plain Eigen): every trial runs with them."""
    return {
        name: dist.choices[0]
        for name, dist in space.distributions(1).items()
        if isinstance(dist, CategoricalDistribution) and dist.single()
    }


def probe(
    runner: Runner, runtime: Runtime, cores: tuple[int, ...], fixed: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run the probe and verify the runtime's declaration; return the facts to store on its studies.

    ``fixed`` holds the knobs every trial of the space has (oneDNN off for plain Eigen), so the probe
    reports the runtime as the trials will run it.
    """
    openmp = [knob for knob in OPENMP_KNOBS if knob in runtime.honours]
    params = dict(fixed or {})
    if openmp:
        params.update(KMP_BLOCKTIME=PROBE_BLOCKTIME, OMP_NUM_THREADS=1)
    settings = Settings.from_params(params)
    spec = TrialSpec(settings, Workload("tiny", "infer", 8), cores[:1], PROBE, probe=True)
    try:
        facts = runner.run(spec).facts
    except WorkerError as error:  # its message carries the worker's own reason
        raise TunerError(f"probe of runtime {runtime.name} failed: {error}") from None
    found = {key: facts.get(key) for key in FACTS}
    if openmp and not found["openmp"]:
        raise TunerError(
            f"runtime {runtime.name} declares OpenMP knobs ({', '.join(openmp)}) but its process loaded no "
            "OpenMP library: the environment holds another build"
        )
    if openmp and (found["kmp_blocktime"] != PROBE_BLOCKTIME or found["omp_max_threads"] != 1):
        raise TunerError(
            f"runtime {runtime.name}: OpenMP read back KMP_BLOCKTIME={found['kmp_blocktime']} and "
            f"omp_max_threads={found['omp_max_threads']}, not the {PROBE_BLOCKTIME} and 1 that were set"
        )
    found["inert"] = [knob for knob in OPENMP_KNOBS if not found["openmp"]]
    found.update(machine_facts())
    return found


def machine_facts() -> dict[str, Any]:
    """Controller-side facts the space follows: the allocators installed here (their libraries are preloaded
    from fixed system folders), whether the CPU has bf16 instructions, and its ISA flags (which oneDNN caps
    can differ from a lower one). (Tests with fake workers fix them, so that their spaces do not depend on the
    machine the suite runs on.)"""
    isa = cpu_signature().isa
    bf16 = bool(BF16_FLAGS & set(isa))
    return {"allocators": available_allocators(), "bf16_instructions": bf16, "cpu_isa": list(isa)}
