"""Named measurement policies: how many warm-up and timed steps, repeats and the hard timeout.

Chosen from measurements on the development machine (2 cores, see README): the first step (graph trace)
is timed apart and never counted; after it, ResNet-50 step times settle within one or two steps, and
per-step spread is a few percent, so a burst of 5 timed steps has a median good to a few percent while the
process start, import and trace dominate its cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tuner.errors import UsageError


@dataclass(frozen=True)
class MeasurementPolicy:
    """How one measurement is taken. ``rounds`` is the interleaved repeats used by confirmation."""

    name: str
    warmup: int
    timed: int
    timeout_s: float
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.timed < 1 or self.timeout_s <= 0 or self.rounds < 1:
            raise UsageError(f"invalid measurement policy {self}")


BURST = MeasurementPolicy("burst", warmup=2, timed=5, timeout_s=600.0)
# Rounds, not steps, are the independent units of confirmation: same burst length, three rounds at least.
CONFIRM = MeasurementPolicy("confirm", warmup=2, timed=5, timeout_s=900.0, rounds=3)
# Warm-up steps after the trace, by mode, for bursts and confirmation rounds. Over 88 stored inference
# trials (two studies' databases, ResNet-50, 1 and 2 cores) the first step after the trace is +0.4% to
# +0.8% above the timed median (p90 +3% to +4%) and the second is as settled as the timed steps, so one is
# enough; training's first is +7% (p90 +30%) and its second +0.7% to +2.6%, so training keeps two.
WARMUP = {"train": 2, "infer": 1}


def for_mode(policy: MeasurementPolicy, mode: str) -> MeasurementPolicy:
    """``policy`` with the warm-up that ``mode`` needs (see WARMUP)."""
    return replace(policy, warmup=WARMUP.get(mode, policy.warmup))


# tf_cnn_benchmarks' conventions: 10 warm-up batches not counted, then 100 timed batches.
FULL = MeasurementPolicy("full", warmup=10, timed=100, timeout_s=3600.0)
