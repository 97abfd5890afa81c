"""What `tuner tune` and `tuner run` share: a runtime made ready (its space loaded, its probe run), one
budget policy, and one way to configure a study.

The budget policy: each study gets a share of the time still left, weighted by what its steps cost
(training about three inference steps; one core about twice two cores), so a study that overruns takes
from the studies after it, never from the total. A weight says nothing of a run's fixed cost (process
start, imports, trace), so a share is never below the study's floor: what its baselines and the shortest
confirmation need (``Yardstick``, from the cost of a study measured before, or a probe's wall time before
any); a floor taken is taken from the shares of the others, and floors that do not all fit are cut alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuner.capability import ARM_FLAG, Capabilities, differing_caps, plan_baselines, top_cap
from tuner.confirm import MIN_ROUNDS
from tuner.cost import CostModel
from tuner.errors import TunerError, UsageError, WorkerError
from tuner.models import ModelRef, as_ref, source_of
from tuner.policy import BURST, CONFIRM, MeasurementPolicy, for_mode
from tuner.probe import fixed_knobs, probe
from tuner.runner import Runner, TaskSpec
from tuner.runtime import Runtime
from tuner.settings import Settings
from tuner.signature import CpuSignature
from tuner.space import SearchSpace, with_batches, with_isa
from tuner.space import load as load_space
from tuner.study import StudyConfig
from tuner.topology import core_set, sockets_for
from tuner.workload import Workload, check_batch_search

MODE_WEIGHT = {"train": 3.0, "infer": 1.0}  # a train step costs about three inference steps


def weight(mode: str, cores: int, most_cores: int) -> float:
    """A study's relative cost: its mode's step cost, times how much slower its core count runs."""
    return MODE_WEIGHT[mode] * most_cores / cores


def share(time_left: float | None, weights: Sequence[float], floors: Sequence[float] = ()) -> float | None:
    """The next study's share of ``time_left`` (None: no budget): its weight over the weights of every study
    still to run, ``weights[0]`` being its own, but never less than its floor, ``floors[0]`` (see
    ``shares``)."""
    if time_left is None:
        return None
    return shares(max(0.0, time_left), weights, floors)[0]


def shares(time_left: float, weights: Sequence[float], floors: Sequence[float] = ()) -> list[float]:
    """``time_left`` split by ``weights``, each share at least its floor (missing floors are 0): a study
    whose weighted share falls short of its floor gets its floor, and the others split what is left by
    weight again, until none falls short. Floors that add up to more than ``time_left`` are cut in the same
    proportion, so that the shares still add up to the time left."""
    lows = [*floors, *[0.0] * (len(weights) - len(floors))]
    if sum(lows) > time_left:
        lows = [low * (time_left / sum(lows)) for low in lows]
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(len(weights)) if i not in fixed]
        pool = max(0.0, time_left - sum(fixed.values()))
        total = sum(weights[i] for i in free)
        weighted = {i: pool * (weights[i] / total if total > 0 else 0.0) for i in free}
        short = [i for i in free if weighted[i] < lows[i]]
        if not short:
            return [fixed[i] if i in fixed else weighted[i] for i in range(len(weights))]
        fixed.update((i, lows[i]) for i in short)


@dataclass(frozen=True)
class Yardstick:
    """What runs cost, to set the floors of studies not measured yet: a measured study's cost model and its
    weight, or before any study, ``CostModel.estimate`` from a probe's wall time (weight 1, steps free)."""

    cost: CostModel
    weight: float = 1.0

    def floor_s(self, config: StudyConfig, baselines: int, weight: float, confirms: bool = True) -> float:
        """The least a study of ``weight`` needs: its baselines and candidates measured once by its search,
        then MIN_ROUNDS interleaved rounds of confirmation (none for a search alone, ``confirms`` False); its
        steps scaled from the yardstick's by weight, each run's overhead as measured."""
        cost = self.cost.scaled(weight / self.weight if self.weight > 0 else 1.0, config.policy)
        return cost.floor_s(baselines + config.candidates, MIN_ROUNDS if confirms else 0, config.confirm_policy)


def baseline_count(ready: Prepared, cores: int) -> int:
    """How many baselines a study on ``cores`` cores measures with this runtime, as ``StudyRun`` plans them
    from the probe's read-back."""
    named = ready.space.baselines(cores, sockets_for(core_set(cores)))
    return len(plan_baselines(named, Capabilities.from_probe(ready.facts)).runnable)


@dataclass(frozen=True)
class Prepared:
    """A runtime ready to tune: its search space, what its probe read back, the runner for its trials."""

    runtime: Runtime
    space: SearchSpace
    facts: dict[str, Any]
    runner: Runner
    inert: tuple[str, ...] = field(default=())  # knobs searched although the runtime ignores them
    model_facts: dict[str, Any] = field(default_factory=dict)  # a model file's check (``check_model``)

    def describe(self) -> str:
        f = self.facts
        onednn = "on" if f.get("onednn") is True else "off" if f.get("onednn") is False else "unknown"
        inert = f"; inert knobs searched anyway: {', '.join(self.inert)}" if self.inert else ""
        isa = f", kernels for {f['onednn_isa']}" if f.get("onednn_isa") else ""
        return (
            f"probe: {self.runtime.name} runs TensorFlow {f.get('framework_version')}, oneDNN {onednn} "
            f"(runtime {f.get('onednn_runtime') or 'not reported'}{isa}), OpenMP {f.get('openmp') or 'none'}, "
            f"{f.get('gpus') or 0} GPU{inert}"
        )


def prepare(
    runtime: Runtime,
    runner: Runner,
    most_cores: int,
    space: SearchSpace | None = None,
    inert: Sequence[str] = (),
    log: Callable[[str], None] = lambda line: None,
) -> Prepared:
    """Load the runtime's space (unless given) and run its probe; raises ``TunerError`` on either."""
    space = space or load_space(runtime.space, most_cores)
    log(f"probing {runtime.name}: one short run, to read back what it really runs with ...")
    facts = probe(runner, runtime, core_set(1), fixed_knobs(space))
    return Prepared(runtime, space, facts, runner, tuple(inert))


def check_model(ready: Prepared, model: ModelRef | str, log: Callable[[str], None] = lambda line: None) -> Prepared:
    """A model file (or an application at another input shape) loaded once in a worker before any trial: it
    loads, its inputs are known (else a line asking for --input-shape), its FLOPs are counted. A failure is
    one ``TunerError`` line; the facts (parameters, inputs, FLOPs per sample) are stored on its studies."""
    ref = as_ref(model)
    if source_of(ref) is None:
        return ready
    settings = Settings.from_params(fixed_knobs(ready.space))
    try:
        result = ready.runner.compute(TaskSpec("describe", settings, core_set(1), model=ref))
    except WorkerError as error:
        raise TunerError(f"model {ref.label}: {error}") from None
    facts = result.get("model_facts")
    if not isinstance(facts, dict):
        raise TunerError(f"model {ref.label}: its check came back without the model's facts")
    facts = {**facts, "flops_per_sample": result.get("flops_per_image"), "kind": ref.kind}
    inputs = ", ".join(f"{i.get('name')} {i.get('shape')} {i.get('dtype')}" for i in facts.get("inputs") or [])
    log(f"model {ref.label}: {facts.get('params')} parameters; inputs {inputs}")
    return dataclasses.replace(ready, model_facts=facts)


@dataclass(frozen=True)
class StudyOptions:
    """How each study searches and confirms; the defaults are `tuner run`'s."""

    trials: int = 20
    candidates: int = 1
    confirm_policy: MeasurementPolicy = CONFIRM
    sampler: str = "tpe"
    pruner: str = "none"
    seed: int = 0
    allow_precision: tuple[str, ...] = ()  # bf16 changes numerics: searched only when asked for
    force_precision: bool = False
    search_batch: tuple[int, ...] = ()  # batch sizes searched beside the study's own (--search-batch)
    search_isa: bool = False  # oneDNN's instruction-set cap searched too (--search-isa)

    def __post_init__(self) -> None:
        if self.trials < 1 or self.candidates < 1:
            raise TunerError(f"trials ({self.trials}) and candidates ({self.candidates}) must be at least 1")

    def space(self, ready: Prepared, workload: Workload) -> SearchSpace:
        """The prepared space, with the batch searched where ``search_batch`` asks (throughput only: a latency
        objective's batch is the request, so it is not the tuner's to change), and oneDNN's instruction-set cap
        where ``search_isa`` asks (only on a runtime that declares the knob)."""
        space = isa_space(ready.runtime, ready.space, ready.facts.get("cpu_isa")) if self.search_isa else ready.space
        if not self.search_batch:
            return space
        check_batch_search(workload.objective)
        return with_batches(space, self.search_batch, workload.batch_size)


def isa_space(runtime: Runtime, space: SearchSpace, cpu_isa: Any = None) -> SearchSpace:
    """``space`` with oneDNN's instruction-set cap searched (--search-isa), on a runtime that declares it and a
    CPU (its ISA flags, where known: the probe's ``cpu_isa``) where some cap differs from no cap."""
    if "onednn_isa" not in runtime.honours:
        raise UsageError(f"--search-isa: runtime {runtime.name} does not declare the onednn_isa knob")
    if isinstance(cpu_isa, list) and ARM_FLAG in cpu_isa:
        raise UsageError(
            "--search-isa: oneDNN's instruction-set caps are searched on x86 CPUs only (avx2 to avx512_core_amx); "
            "aarch64's (asimd, sve_128 to sve_512) are not: nothing to search on this CPU"
        )
    if isinstance(cpu_isa, list) and not differing_caps(cpu_isa):
        raise UsageError(
            "--search-isa: no oneDNN cap runs otherwise than no cap on this CPU "
            f"({top_cap(cpu_isa) or 'none of avx2 and up'} at most): nothing to search"
        )
    return with_isa(space)


def study_config(
    ready: Prepared,
    workload: Workload,
    cores: int,
    signature: CpuSignature,
    budget_s: float | None,
    options: StudyOptions,
) -> StudyConfig:
    """The one way a study is configured, by `tuner tune` and by `tuner run`."""
    return StudyConfig(
        workload=workload,
        cores=core_set(cores),
        space=options.space(ready, workload),
        signature=signature,
        runtime=ready.runtime.name,
        python=str(getattr(ready.runner, "python", "")),
        trials=options.trials,
        budget_s=budget_s,
        policy=workload.goal.policy(for_mode(BURST, workload.mode)),
        confirm_policy=workload.goal.policy(for_mode(options.confirm_policy, workload.mode), confirm=True),
        candidates=options.candidates,
        sampler=options.sampler,
        pruner=options.pruner,
        seed=options.seed,
        probe=ready.facts,
        model_facts=ready.model_facts,
        inert=ready.inert,
        allow_precision=options.allow_precision,
        force_precision=options.force_precision,
    )
