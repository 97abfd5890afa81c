"""What a study optimises: throughput (samples per second at the batch size) or a request's latency.

Every measurement keeps its raw step times; a step's rate is batch / step seconds. Each objective is one
statistic of those rates, higher being better, so that the search, confirmation's verdict and its bootstrap
interval all rank by it alike:

- ``throughput``: the median per-step rate, samples per second (the default, as before);
- ``latency``: the median request time (p50; a step is one request of ``batch`` samples, batch 1 by default),
  minimised, which is the median rate;
- ``p99``: the 99th-percentile request time, minimised, which is the rate's 1st percentile. A percentile
  this far out needs at least ``P99_MIN_STEPS`` steps: runs of this objective time that many, and a p99 from
  fewer steps is never stored (``None``, shown as "needs 100 steps").

Latency objectives time more steps per run (``timed``) than throughput: batch-1 steps are short, and the
stored p99 comes from confirmation's pooled rounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from tuner.errors import UsageError
from tuner.policy import MeasurementPolicy

P99_MIN_STEPS = 100  # with fewer, the 99th percentile is the slowest step or an interpolation next to it


def quantile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation between order statistics (numpy's default, type 7)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("a quantile of no values")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_ms(step_seconds: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of request times in milliseconds; None for a tail quantile (above p90) from fewer
    than ``P99_MIN_STEPS`` steps."""
    if not step_seconds or (q > 0.9 and len(step_seconds) < P99_MIN_STEPS):
        return None
    return 1000.0 * quantile(step_seconds, q)


@dataclass(frozen=True)
class Objective:
    name: str
    rate_quantile: float  # the statistic of per-step rates that ranks settings (higher is better)
    burst_timed: int  # at least this many timed steps per search run
    confirm_timed: int  # and per confirmation round
    default_batch: int

    @property
    def latency(self) -> bool:
        return self.name != "throughput"

    def score(self, rates: Iterable[float]) -> float:
        return quantile(rates, self.rate_quantile)

    def policy(self, policy: MeasurementPolicy, confirm: bool = False) -> MeasurementPolicy:
        """``policy`` with at least the steps this objective needs per run."""
        return replace(policy, timed=max(policy.timed, self.confirm_timed if confirm else self.burst_timed))

    def describe(self, rate: float, batch: int) -> str:
        """A value of the statistic as people read it: '25.31 img/s', 'p50 39.51 ms', 'p99 48.20 ms'."""
        if not self.latency:
            return f"{rate:.2f} img/s"
        return f"{'p50' if self.name == 'latency' else 'p99'} {1000.0 * batch / rate:.2f} ms"

    def unit(self) -> str:
        return "img/s" if not self.latency else f"{'p50' if self.name == 'latency' else 'p99'} ms"


OBJECTIVES = {
    "throughput": Objective("throughput", 0.5, burst_timed=1, confirm_timed=1, default_batch=32),
    # p50: a median from 20 steps per search run; 3 confirmation rounds of 40 pool 120 steps for the p99.
    "latency": Objective("latency", 0.5, burst_timed=20, confirm_timed=40, default_batch=1),
    "p99": Objective("p99", 0.01, burst_timed=P99_MIN_STEPS, confirm_timed=P99_MIN_STEPS, default_batch=1),
}


def get(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, not {name!r}")
    return OBJECTIVES[name]
