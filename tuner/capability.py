"""What a runtime can run on this CPU, read back by the probe: the space and the baselines follow it.

Stock TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX; elsewhere it
runs plain Eigen, which has no NCHW convolution on CPU ("Conv2D op currently only supports the NHWC tensor
format on the CPU"). Which settings can run is therefore a fact of the machine, not of the search-space file.
The rules here are named predicates over a setting's knobs and the probe's facts. Before a study starts, a
knob value that can never run is taken out of its space, a baseline that cannot run is set aside with its
reason (and its runnable part measured under another name), and a sampled combination that cannot run is
skipped unmeasured; each is logged once and stored on the study.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna.distributions import CategoricalDistribution, IntDistribution

from tuner.allocator import SYSTEM, missing_reason
from tuner.errors import SearchSpaceError
from tuner.runtime import OPENMP_KNOBS
from tuner.settings import ONEDNN_DEFAULT, Settings
from tuner.space import SearchSpace

if TYPE_CHECKING:
    from tuner.workload import Workload


@dataclass(frozen=True)
class Capabilities:
    """The probe's read-back that decides what can run. ``onednn_default`` is whether oneDNN ran with the
    probe's settings (TF_ENABLE_ONEDNN_OPTS unset unless the space fixes it); None when unknown, and then
    nothing is taken out."""

    onednn_default: bool | None = None
    openmp: str | None = None
    openmp_known: bool = False  # whether the probe read the OpenMP library back (then None means none loaded)
    allocators: tuple[str, ...] | None = None  # the allocators installed here; None: unknown, nothing taken out
    bf16_instructions: bool | None = None  # the CPU has avx512_bf16, amx_bf16 or aarch64's bf16; None: unknown
    cpu_isa: frozenset[str] | None = None  # the CPU's ISA flags (signature.ISA_FLAGS); None: unknown
    precisions: tuple[str, ...] = ("fp32",)  # precisions the user allowed (--allow-precision)
    force_precision: bool = False  # search an allowed precision even without the CPU's instructions for it
    splits: tuple[int, ...] | None = None  # instance counts the study's cores split into (topology.splits)
    model_file: bool = False  # the model is loaded from a file: its layout and precision are its own
    latency: bool = False  # the objective is a request's latency: one request at a time

    @classmethod
    def from_probe(
        cls, facts: Mapping[str, Any], allow_precision: Collection[str] = (), force_precision: bool = False
    ) -> Capabilities:
        onednn = facts.get("onednn")
        openmp = facts.get("openmp")
        allocators = facts.get("allocators")
        bf16 = facts.get("bf16_instructions")
        isa = facts.get("cpu_isa")
        return cls(
            onednn_default=onednn if isinstance(onednn, bool) else None,
            openmp=openmp if isinstance(openmp, str) else None,
            openmp_known="openmp" in facts,
            allocators=tuple(a for a in allocators if isinstance(a, str)) if isinstance(allocators, list) else None,
            bf16_instructions=bf16 if isinstance(bf16, bool) else None,
            cpu_isa=frozenset(f for f in isa if isinstance(f, str)) if isinstance(isa, list) else None,
            precisions=("fp32", *sorted(set(allow_precision) - {"fp32"})),
            force_precision=force_precision,
        )

    def for_workload(self, workload: Workload) -> Capabilities:
        """These capabilities for ``workload``: a model file keeps its own layout and precision, and a latency
        objective times one request at a time."""
        return dataclasses.replace(self, model_file=workload.ref.kind != "app", latency=workload.goal.latency)

    def without_openmp(self) -> bool:
        """The probe read back that no OpenMP library was loaded: OMP_*/KMP_* then change nothing."""
        return self.openmp_known and self.openmp is None

    def onednn(self, params: Mapping[str, Any]) -> bool | None:
        """Whether oneDNN runs with these knobs: an explicit on/off, else TensorFlow's choice on this CPU."""
        value = params.get("onednn", ONEDNN_DEFAULT)
        if value == ONEDNN_DEFAULT:
            return self.onednn_default
        if not isinstance(value, bool):
            raise ValueError(f"onednn must be true, false or {ONEDNN_DEFAULT!r}, not {value!r}")
        return value

    def effective(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with ``onednn = "default"`` replaced by what it means here, so that two settings that
        run alike (default and explicit on, on a CPU where TensorFlow turns oneDNN on) count as one."""
        resolved = dict(params)
        if resolved.get("onednn") == ONEDNN_DEFAULT and self.onednn_default is not None:
            resolved["onednn"] = self.onednn_default
        return resolved

    def label(self, params: Mapping[str, Any]) -> str:
        return Settings.from_params(self.effective(params)).label()

    def to_dict(self) -> dict[str, Any]:
        return {
            "onednn_default": self.onednn_default,
            "openmp": self.openmp,
            "allocators": None if self.allocators is None else list(self.allocators),
            "bf16_instructions": self.bf16_instructions,
            "cpu_isa": None if self.cpu_isa is None else sorted(self.cpu_isa),
            "precisions": list(self.precisions),
            "force_precision": self.force_precision,
            "model_file": self.model_file,
            "latency": self.latency,
        }


OPENMP_INERT = "this runtime's process loads no OpenMP library (read back by the probe), so OMP_*/KMP_* do nothing"


Rule = Callable[[Mapping[str, Any], Capabilities], str | None]  # why these knobs cannot run here, or None


def _nchw_needs_onednn(params: Mapping[str, Any], caps: Capabilities) -> str | None:
    if params.get("data_format") != "NCHW" or caps.onednn(params) is not False:
        return None
    how = "by default on this CPU" if params.get("onednn", ONEDNN_DEFAULT) == ONEDNN_DEFAULT else "in this setting"
    return f"NCHW needs oneDNN (plain Eigen has no NCHW convolution on CPU), and oneDNN is off {how}"


def _allocator_installed(params: Mapping[str, Any], caps: Capabilities) -> str | None:
    name = params.get("allocator", SYSTEM)
    if caps.allocators is None or name == SYSTEM or name in caps.allocators:
        return None
    return missing_reason(name)


def _instances_fit(params: Mapping[str, Any], caps: Capabilities) -> str | None:
    count = params.get("instances", 1)
    if caps.splits is None or count in caps.splits or count == 1:
        return None
    return f"{count} instances cannot split these cores without one spanning two sockets"


def _precision_opted_in(params: Mapping[str, Any], caps: Capabilities) -> str | None:
    precision = params.get("precision", "fp32")
    if precision in caps.precisions:
        return None
    return f"{precision} changes the model's numerics: searched only with --allow-precision {precision}"


def bf16_emulated(params: Mapping[str, Any], caps: Capabilities) -> str | None:
    """Why a bf16 setting would run here without bf16 instructions (emulated: converted to fp32 and back, slower
    than fp32 where measured), or None: fp32, or bf16 on instructions the CPU and oneDNN's cap have."""
    if params.get("precision") != "bf16":
        return None
    if caps.bf16_instructions is False:  # the flags that would have it, on this CPU's architecture where known
        isa = caps.cpu_isa
        flags = "avx512_bf16, amx_bf16, bf16" if isa is None else "bf16" if ARM_FLAG in isa else "avx512_bf16, amx_bf16"
        return f"this CPU has no bf16 instructions ({flags})"
    cap = params.get("onednn_isa", ONEDNN_DEFAULT)
    if cap != ONEDNN_DEFAULT and "avx512_bf16" not in ISA_NEEDS.get(cap, ()):
        return f"oneDNN capped at {cap} has no bf16 instructions"
    # Plain Eigen's bf16 converts to fp32 and back: on the AVX-512 BF16 EPYC it ran at 0.70x of fp32, where oneDNN's
    # ran at 1.39x (ResNet-50 inference, 1 core; studies/bf16-onednn-off-1core.log). Off by default on a
    # Neoverse V2 with bf16, and wherever onednn=false.
    if caps.onednn(params) is False:
        return "with oneDNN off, bf16 runs on plain Eigen, without bf16 instructions"
    return None


def emulated_note(params: Mapping[str, Any], caps: Capabilities) -> str | None:
    """What a benchmark record of these settings says of them where their bf16 runs emulated (``bf16_emulated``),
    or None: benchmark and the main job store it as ``emulated``, and the table shows it in the row's note."""
    why = bf16_emulated(params, caps)
    return None if why is None else f"bf16 emulated: {why}"


def _bf16_instructions(params: Mapping[str, Any], caps: Capabilities) -> str | None:
    why = None if caps.force_precision else bf16_emulated(params, caps)
    return None if why is None else f"{why}: bf16 would be emulated (--force-precision)"


# The CPU flags (/proc/cpuinfo, as signature.ISA_FLAGS keeps them) each ONEDNN_MAX_CPU_ISA value needs, each with
# those of the caps it includes in oneDNN's order. oneDNN's AVX512_CORE also needs avx512dq, which every CPU with
# avx512bw and avx512vl has; its AMX level (AVX10_1_512_AMX in oneDNN 3.5 on) also fp16 flags the signature does
# not keep. The cap matters with oneDNN off too: stock TensorFlow's Eigen contractions (matmul, and convolutions
# Eigen runs as matmuls) call oneDNN's sgemm, which obeys it (studies/isa-cap-matmul-1core.log).
ARM_FLAG = "asimd"  # every aarch64 CPU lists it, no x86 one does: the caps above are x86's only
_AVX2 = ("avx2", "fma")
_AVX512 = (*_AVX2, "avx512f", "avx512bw", "avx512vl")
ISA_NEEDS: dict[str, tuple[str, ...]] = {
    "avx2": _AVX2,
    "avx2_vnni": (*_AVX2, "avx_vnni"),
    "avx512_core": _AVX512,
    "avx512_core_vnni": (*_AVX512, "avx512_vnni"),
    "avx512_core_bf16": (*_AVX512, "avx512_vnni", "avx512_bf16"),
    "avx512_core_amx": (*_AVX512, "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"),
}


def top_cap(cpu_isa: Collection[str]) -> str | None:
    """The cap that includes every cap this CPU can run (AVX2 alone: avx2): capped there, oneDNN runs as with no
    cap. None where two caps the CPU runs do not include each other (avx2_vnni and the AVX-512 ones)."""
    fitting = [isa for isa, needs in ISA_NEEDS.items() if set(needs) <= set(cpu_isa)]
    every = {flag for isa in fitting for flag in ISA_NEEDS[isa]}
    return next((isa for isa in fitting if set(ISA_NEEDS[isa]) >= every), None)


def differing_caps(cpu_isa: Collection[str]) -> list[str]:
    """The caps that can run on this CPU and differ from no cap: each is a setting of its own."""
    caps = Capabilities(cpu_isa=frozenset(cpu_isa))
    return [isa for isa in ISA_NEEDS if _isa_in_cpu({"onednn_isa": isa}, caps) is None]


def _isa_in_cpu(params: Mapping[str, Any], caps: Capabilities) -> str | None:
    isa = params.get("onednn_isa", ONEDNN_DEFAULT)
    if isa == ONEDNN_DEFAULT or caps.cpu_isa is None:
        return None
    missing = [flag for flag in ISA_NEEDS.get(isa, ()) if flag not in caps.cpu_isa]
    if missing:
        return f"this CPU has no {', '.join(missing)}: capping oneDNN at {isa} would run what a lower cap runs"
    if isa == top_cap(caps.cpu_isa):
        return f"{isa} is the highest cap this CPU runs: capped there, oneDNN runs as with no cap (default)"
    return None


def _layout_of_model_file(params: Mapping[str, Any], caps: Capabilities) -> str | None:
    if not caps.model_file:
        return None
    if params.get("data_format", "NHWC") != "NHWC":
        return "a model loaded from a file keeps the layout it was built with: data_format does not apply"
    if params.get("precision", "fp32") != "fp32":
        return "a model loaded from a file keeps the precision it was saved with: the bf16 policy does not apply"
    return None


def _one_request_at_a_time(params: Mapping[str, Any], caps: Capabilities) -> str | None:
    if not caps.latency or params.get("instances", 1) == 1:
        return None
    return "a latency objective times one request at a time: more instances split its cores and add no speed to it"


@dataclass(frozen=True)
class Repair:
    """How a rule's runnable part of a setting is made, and the suffix that names it (heuristic-nhwc)."""

    suffix: str
    change: Callable[[Mapping[str, Any]], dict[str, Any]]


RULES: dict[str, Rule] = {
    "nchw_needs_onednn": _nchw_needs_onednn,
    "allocator_installed": _allocator_installed,
    "instances_fit_sockets": _instances_fit,
    "precision_opted_in": _precision_opted_in,
    "bf16_instructions": _bf16_instructions,
    "isa_in_cpu": _isa_in_cpu,
    "model_file_layout": _layout_of_model_file,
    "one_request_at_a_time": _one_request_at_a_time,
}
REPAIRS: dict[str, Repair] = {
    "nchw_needs_onednn": Repair("nhwc", lambda p: {**p, "data_format": "NHWC"}),
    "allocator_installed": Repair("system-malloc", lambda p: {**p, "allocator": SYSTEM}),
    "model_file_layout": Repair("nhwc", lambda p: {**p, "data_format": "NHWC", "precision": "fp32"}),
    "one_request_at_a_time": Repair("1-instance", lambda p: {**p, "instances": 1}),
}


def unrunnable(params: Mapping[str, Any], caps: Capabilities) -> tuple[str, str] | None:
    """(rule, reason) of the first rule these knobs break on this machine, or None if they can run."""
    for name, rule in RULES.items():
        reason = rule(params, caps)
        if reason is not None:
            return name, reason
    return None


def narrow(
    space: SearchSpace, caps: Capabilities, cores: int, keep: Collection[str] = ()
) -> tuple[SearchSpace, list[str]]:
    """``space`` without what cannot run or cannot matter here, and one line per thing taken out, saying why:
    the categorical choices that cannot run with any value of the other categorical knobs (integer knobs
    decide nothing here), and the OpenMP knobs it varies when no OpenMP library is loaded, unless ``keep``
    names them (``--allow-inert``)."""
    dists = space.distributions(cores)
    knobs = {name: dict(spec) for name, spec in space.data["knobs"].items()}
    excluded: list[str] = []
    if caps.without_openmp():
        for name in [n for n in OPENMP_KNOBS if n in dists and not dists[n].single() and n not in keep]:
            del knobs[name], dists[name]
            excluded.append(f"{name} taken out: {OPENMP_INERT} (--allow-inert {name} searches it anyway)")
    if caps.latency and "instances" in dists and not dists["instances"].single():
        knobs["instances"] = {"type": "int", "low": 1, "high": 1}
        dists["instances"] = IntDistribution(1, 1)
        excluded.append(f"instances above 1 taken out: {_one_request_at_a_time({'instances': 2}, caps)}")
    categorical = {n: list(d.choices) for n, d in dists.items() if isinstance(d, CategoricalDistribution)}
    names = list(categorical)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*categorical.values())]
    for name in names:
        kept = []
        for choice in categorical[name]:
            reasons = [unrunnable(c, caps) for c in combos if c[name] == choice]
            first = reasons[0] if reasons else None
            if first is not None and all(reasons):
                excluded.append(f"{name}={_text(choice)} taken out: {first[1]}")
            else:
                kept.append(choice)
        if not kept:
            raise SearchSpaceError(f"{space.path}: knobs.{name}: no choice can run on this machine ({excluded[-1]})")
        if len(kept) < len(categorical[name]):
            knobs[name]["choices"] = kept
    if not excluded:
        return space, []
    return SearchSpace(space.path, {**space.data, "knobs": knobs}), excluded


@dataclass(frozen=True)
class BaselinePlan:
    """The baselines a study measures here, and why the others are not measured."""

    runnable: dict[str, dict[str, Any]]
    notes: dict[str, str] = field(default_factory=dict)  # baseline name -> "not runnable here: ..." / "same as"
    stand_ins: dict[str, str] = field(default_factory=dict)  # a baseline that cannot run -> its runnable part

    def not_runnable(self) -> dict[str, str]:
        return {name: note for name, note in self.notes.items() if note.startswith(NOT_RUNNABLE)}


NOT_RUNNABLE = "not runnable here"


def plan_baselines(baselines: Mapping[str, Mapping[str, Any]], caps: Capabilities) -> BaselinePlan:
    """Each baseline that can run here, in order; one that cannot is noted with its reason and replaced by
    its runnable part under a suffixed name (the reference heuristic in NCHW becomes ``heuristic-nhwc``);
    one that runs exactly as an earlier baseline here (oneDNN on where it is on by default) is noted as the
    same and measured once."""
    runnable: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    stand_ins: dict[str, str] = {}
    seen: dict[str, str] = {}

    def add(name: str, params: dict[str, Any]) -> None:
        label = caps.label(params)
        if label in seen:
            notes[name] = f"same as {seen[label]} on this CPU"
            return
        seen[label] = name
        runnable[name] = params

    for name, params in baselines.items():
        broken = unrunnable(params, caps)
        if broken is None:
            add(name, dict(params))
            continue
        rule, reason = broken
        notes[name] = f"{NOT_RUNNABLE}: {reason}"
        repair = REPAIRS.get(rule)
        if repair is not None:
            fixed = repair.change(params)
            if unrunnable(fixed, caps) is None:
                stand_ins[name] = f"{name}-{repair.suffix}"
                add(stand_ins[name], fixed)
    return BaselinePlan(runnable, notes, stand_ins)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
