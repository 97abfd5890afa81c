"""What `tuner tune` and `tuner run` share: a runtime made ready (its space loaded, its probe run), one
budget policy, and one way to configure a study.

The budget policy: each study gets a share of the time still left, weighted by what its steps cost
(training about three inference steps; one core about twice two cores), so a study that overruns takes
from the studies after it, never from the total.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuner.errors import TunerError
from tuner.policy import BURST, CONFIRM, MeasurementPolicy, for_mode
from tuner.probe import fixed_knobs, probe
from tuner.runner import Runner
from tuner.runtime import Runtime
from tuner.signature import CpuSignature
from tuner.space import SearchSpace
from tuner.space import load as load_space
from tuner.study import StudyConfig
from tuner.topology import core_set
from tuner.workload import Workload

MODE_WEIGHT = {"train": 3.0, "infer": 1.0}  # a train step costs about three inference steps


def weight(mode: str, cores: int, most_cores: int) -> float:
    """A study's relative cost: its mode's step cost, times how much slower its core count runs."""
    return MODE_WEIGHT[mode] * most_cores / cores


def share(time_left: float | None, weights: Sequence[float]) -> float | None:
    """The next study's share of ``time_left`` (None: no budget): its weight over the weights of every study
    still to run, ``weights[0]`` being its own."""
    if time_left is None:
        return None
    total = sum(weights)
    return max(0.0, time_left) * (weights[0] / total if total > 0 else 0.0)


@dataclass(frozen=True)
class Prepared:
    """A runtime ready to tune: its search space, what its probe read back, the runner for its trials."""

    runtime: Runtime
    space: SearchSpace
    facts: dict[str, Any]
    runner: Runner
    inert: tuple[str, ...] = field(default=())  # knobs searched although the runtime ignores them

    def describe(self) -> str:
        f = self.facts
        onednn = "on" if f.get("onednn") is True else "off" if f.get("onednn") is False else "unknown"
        inert = f"; inert knobs searched anyway: {', '.join(self.inert)}" if self.inert else ""
        return (
            f"probe: {self.runtime.name} runs TensorFlow {f.get('framework_version')}, oneDNN {onednn} "
            f"(runtime {f.get('onednn_runtime')}), OpenMP {f.get('openmp') or 'none'}, "
            f"{f.get('gpus') or 0} GPU{inert}"
        )


def prepare(
    runtime: Runtime, runner: Runner, most_cores: int, space: SearchSpace | None = None, inert: Sequence[str] = ()
) -> Prepared:
    """Load the runtime's space (unless given) and run its probe; raises ``TunerError`` on either."""
    space = space or load_space(runtime.space, most_cores)
    facts = probe(runner, runtime, core_set(1), fixed_knobs(space))
    return Prepared(runtime, space, facts, runner, tuple(inert))


@dataclass(frozen=True)
class StudyOptions:
    """How each study searches and confirms; the defaults are `tuner run`'s."""

    trials: int = 20
    candidates: int = 1
    confirm_policy: MeasurementPolicy = CONFIRM
    sampler: str = "tpe"
    pruner: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1 or self.candidates < 1:
            raise TunerError(f"trials ({self.trials}) and candidates ({self.candidates}) must be at least 1")


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
        space=ready.space,
        signature=signature,
        runtime=ready.runtime.name,
        python=str(getattr(ready.runner, "python", "")),
        trials=options.trials,
        budget_s=budget_s,
        policy=for_mode(BURST, workload.mode),
        confirm_policy=for_mode(options.confirm_policy, workload.mode),
        candidates=options.candidates,
        sampler=options.sampler,
        pruner=options.pruner,
        seed=options.seed,
        probe=ready.facts,
        inert=ready.inert,
    )
