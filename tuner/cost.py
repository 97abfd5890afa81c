"""What a measurement costs, from the search trials' own wall and step times: how much confirmation or a
longer benchmark fits in the time left, and the least time a study needs (its floor in the budget)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial

from tuner.policy import MeasurementPolicy
from tuner.records import trial_measurement, trial_seconds


@dataclass(frozen=True)
class CostModel:
    wall_s: float  # median wall time of a search trial, start to exit
    step_s: float  # median time of one step
    policy: MeasurementPolicy  # how the search trials were measured

    @classmethod
    def from_trials(cls, trials: Sequence[FrozenTrial], policy: MeasurementPolicy) -> CostModel | None:
        """From complete trials that stored their wall time; None before any."""
        timed = [
            (seconds, measured)
            for t in trials
            if (seconds := trial_seconds(t.user_attrs)) is not None
            and (measured := trial_measurement(t.user_attrs)) is not None
        ]
        if not timed:
            return None
        wall = statistics.median(seconds for seconds, _ in timed)
        step = statistics.median(measured.median_step_seconds for _, measured in timed)
        return cls(wall, step, policy)

    @classmethod
    def estimate(cls, run_s: float, policy: MeasurementPolicy) -> CostModel:
        """Before any trial is measured: runs of ``run_s`` seconds each (a probe's wall time, say), their
        steps unknown and counted as free, so what is derived from it errs short."""
        return cls(max(0.0, run_s), 0.0, policy)

    @property
    def overhead_s(self) -> float:
        """Seconds of a run outside its counted steps: start, imports, build, tracing, exit."""
        return max(0.0, self.wall_s - (self.policy.warmup + self.policy.timed) * self.step_s)

    def run_s(self, policy: MeasurementPolicy) -> float:
        """Expected wall time of one run measured by ``policy``: a search trial's, plus its extra timed steps."""
        return self.wall_s + max(0, policy.timed - self.policy.timed) * self.step_s

    def rounds_that_fit(self, time_left: float, configs: int, policy: MeasurementPolicy) -> int:
        """Whole interleaved rounds of ``configs`` settings that fit ``time_left``."""
        per_run = self.run_s(policy)
        return math.floor(time_left / (configs * per_run)) if per_run > 0 else 1_000_000

    def scaled(self, factor: float, policy: MeasurementPolicy) -> CostModel:
        """The cost of runs whose steps take ``factor`` times as long (another mode or core count), measured
        by ``policy``; a run's overhead (start, imports, trace) stays as it is."""
        step = self.step_s * factor
        return CostModel(self.overhead_s + (policy.warmup + policy.timed) * step, step, policy)

    def floor_s(self, configs: int, rounds: int, confirm: MeasurementPolicy) -> float:
        """The least time a study needs: each of ``configs`` settings (its baselines and the candidates it
        confirms) measured once by the search, then ``rounds`` interleaved rounds of each by ``confirm``."""
        return configs * (self.run_s(self.policy) + rounds * self.run_s(confirm))
