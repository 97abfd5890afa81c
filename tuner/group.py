"""Several pinned instances measured as one trial: their steps over the window they all ran in, summed.

Launchers run N copies of a model, each on cores/N cores, and count their summed throughput (PyTorch's
``run_cpu``, Intel's model-zoo, OpenVINO's streams). A trial with ``instances = N`` does the same: N workers
start together (each waits at a barrier until all are built), each runs its warm-up and timed steps, and each
reports when its timed steps ended on CLOCK_MONOTONIC, one clock for every process. The common window runs
from the latest first timed step to the earliest last one: only while all instances run does their sum mean
anything (the last one alone would have the machine to itself). Each instance's steps inside the window are
kept; the k-th group step is the k-th such step of every instance, and its rate is the sum of their rates. The
group's timed-loop rate (tf_cnn_benchmarks' figure) is the sum of each instance's in-window loop rate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuner.errors import WorkerBadOutput

SLACK_S = 1e-3  # clock rounding between a step's end stamp and its own duration


def padded_steps(timed: int) -> int:
    """Timed steps each instance runs, so that ``timed`` of them fall in the common window: instances do
    not start their timed loops at exactly the same moment, so a few steps at either edge fall outside."""
    return timed + max(2, math.ceil(timed / 4))


@dataclass(frozen=True)
class Instance:
    """One instance's timed steps: durations and end stamps (monotonic seconds)."""

    cores: tuple[int, ...]
    seconds: tuple[float, ...]
    ends: tuple[float, ...]

    @classmethod
    def from_result(cls, cores: Sequence[int], result: dict[str, Any]) -> Instance:
        seconds, ends = result.get("timed_seconds"), result.get("timed_ends")
        if (
            not isinstance(seconds, list)
            or not isinstance(ends, list)
            or len(seconds) != len(ends)
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in [*seconds, *ends])
        ):
            raise WorkerBadOutput("an instance's result has no matching timed steps and end stamps")
        return cls(tuple(cores), tuple(float(s) for s in seconds), tuple(float(e) for e in ends))

    def begins(self) -> list[float]:
        return [end - seconds for end, seconds in zip(self.ends, self.seconds, strict=True)]

    def inside(self, start: float, stop: float) -> list[float]:
        """Durations of the steps that ran wholly inside [start, stop]."""
        return [
            s
            for s, b, e in zip(self.seconds, self.begins(), self.ends, strict=True)
            if b >= start - SLACK_S and e <= stop + SLACK_S
        ]


@dataclass(frozen=True)
class GroupSteps:
    """The group as one measurement: per-step seconds for the group's batch (instances x batch)."""

    step_seconds: tuple[float, ...]
    loop_seconds: float
    window_seconds: float
    per_instance: list[dict[str, Any]]


def combine(instances: Sequence[Instance], batch: int, keep: int) -> GroupSteps:
    """The group's steps over the common window, at most ``keep`` of them; raises when the instances' timed
    steps did not run together (one finished before another began)."""
    start = max(min(i.begins()) for i in instances)
    stop = min(max(i.ends) for i in instances)
    inside = [i.inside(start, stop) for i in instances]
    count = min(len(steps) for steps in inside)
    if stop <= start or count == 0:
        raise WorkerBadOutput(
            "the instances' timed steps did not run at the same time (no step of every instance in a common "
            "window): the machine could not run them side by side"
        )
    count = min(count, keep)
    group_batch = batch * len(instances)
    rates = [sum(batch / steps[k] for steps in inside) for k in range(count)]
    loop_rate = sum(batch * len(steps) / math.fsum(steps) for steps in inside)
    per_instance = [
        {
            "cores": list(instance.cores),
            "steps_in_window": len(steps),
            "median_step_seconds": statistics.median(steps),
            "images_per_sec": batch / statistics.median(steps),
        }
        for instance, steps in zip(instances, inside, strict=True)
    ]
    return GroupSteps(
        step_seconds=tuple(group_batch / rate for rate in rates),
        loop_seconds=count * group_batch / loop_rate,
        window_seconds=stop - start,
        per_instance=per_instance,
    )
