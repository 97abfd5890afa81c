"""Frozen measurement records: raw step times kept, medians and spreads derived.

Rates are per step (batch / step seconds); the headline is the median, spread is the MAD scaled to a
standard deviation (x1.4826, as tf_cnn_benchmarks' jitter) and the coefficient of variation. A record whose
spread is too wide is flagged unstable rather than silently trusted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuner.objective import latency_ms

UNSTABLE_CV = 0.10  # per-step rates spread more than 10%: the burst did not measure one steady state
# Stored measurements come from other machines too (a shared storage, an imported file): every figure derived
# from them must stay a finite number. The largest batch one run measures: a --search-batch batch (4096) on
# each of 64 replicas in each of 1024 instances; a step takes from a nanosecond (no model runs a batch
# faster) to ten million seconds (far past any run's timeout), and a timed loop as long as a million such, so
# rates, loop rates and their inverses stay finite and positive.
MAX_BATCH_SIZE = 4096 * 64 * 1024
MIN_STEP_SECONDS = 1e-9
MAX_STEP_SECONDS = 1e7
MAX_LOOP_SECONDS = 1e13


def seconds_ok(value: Any, high: float = MAX_STEP_SECONDS) -> bool:
    """Whether a worker's ``value`` is a number of seconds a step may take (``high``: ``MAX_LOOP_SECONDS``
    for a timed loop): a real, finite number from ``MIN_STEP_SECONDS``, as ``Measurement`` takes it."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and MIN_STEP_SECONDS <= value <= high


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Sample standard deviation over the mean; 0 for fewer than two values."""
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def median_abs_deviation(values: list[float]) -> float:
    centre = statistics.median(values)
    return statistics.median(abs(v - centre) for v in values)


@dataclass(frozen=True)
class Measurement:
    """One worker run: raw warm-up and timed step seconds plus what the runtime reported."""

    batch_size: int
    timed_seconds: tuple[float, ...]
    warmup_seconds: tuple[float, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict, compare=False)
    wall_seconds: float = 0.0
    timed_wall_seconds: float = 0.0  # the timed loop's wall time as the worker clocked it (0: not recorded)

    def __post_init__(self) -> None:
        batch = self.batch_size
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH_SIZE:
            raise ValueError(f"batch size must be an integer from 1 to {MAX_BATCH_SIZE}, got {str(batch)[:40]}")
        steps = (*self.timed_seconds, *self.warmup_seconds)
        loop = self.timed_wall_seconds
        if not math.isfinite(loop) or (loop != 0 and not MIN_STEP_SECONDS <= loop <= MAX_LOOP_SECONDS):
            raise ValueError(
                f"the timed loop's wall time must be 0 (not recorded) or {MIN_STEP_SECONDS:g} to {MAX_LOOP_SECONDS:g} s"
            )
        if not math.isfinite(self.wall_seconds) or self.wall_seconds < 0:
            raise ValueError("the wall time must be finite and not negative")
        if not self.timed_seconds or any(not math.isfinite(s) or s <= 0 for s in steps):
            raise ValueError("a measurement needs at least one positive timed step, all finite")
        if any(not MIN_STEP_SECONDS <= s <= MAX_STEP_SECONDS for s in steps):
            raise ValueError(f"a step must take from {MIN_STEP_SECONDS:g} to {MAX_STEP_SECONDS:g} seconds")

    @property
    def rates(self) -> list[float]:
        """Images/sec of each timed step."""
        return [self.batch_size / s for s in self.timed_seconds]

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.timed_seconds)

    @property
    def images_per_sec(self) -> float:
        """Median of the per-step rates (the same figure confirmation pools and compares)."""
        return statistics.median(self.rates)

    @property
    def p50_ms(self) -> float | None:
        """Median request time (a step is one request of ``batch_size`` samples), in milliseconds."""
        return latency_ms(self.timed_seconds, 0.5)

    @property
    def p99_ms(self) -> float | None:
        """99th-percentile request time in milliseconds; None from fewer than ``P99_MIN_STEPS`` steps."""
        return latency_ms(self.timed_seconds, 0.99)

    @property
    def loop_seconds(self) -> float:
        """Wall time of the timed loop: the worker's clock, or the sum of step times where it was not kept."""
        return self.timed_wall_seconds if self.timed_wall_seconds > 0 else math.fsum(self.timed_seconds)

    @property
    def loop_images_per_sec(self) -> float:
        """tf_cnn_benchmarks' figure: timed batches x batch size / wall time of the timed loop."""
        return len(self.timed_seconds) * self.batch_size / self.loop_seconds

    @property
    def mad(self) -> float:
        """Median absolute deviation of per-step images/sec."""
        return median_abs_deviation(self.rates)

    @property
    def jitter(self) -> float:
        """MAD scaled to estimate a standard deviation (x1.4826), in images/sec."""
        return 1.4826 * self.mad

    @property
    def cv(self) -> float:
        """Coefficient of variation of per-step images/sec (0 for a single step)."""
        rates = self.rates
        return coefficient_of_variation(rates)

    @property
    def unstable(self) -> bool:
        return self.cv > UNSTABLE_CV

    def to_dict(self) -> dict[str, Any]:
        """The record as stored with a trial: raw values first, derived figures beside them."""
        return {
            "batch_size": self.batch_size,
            "warmup_seconds": list(self.warmup_seconds),
            "timed_seconds": list(self.timed_seconds),
            "wall_seconds": self.wall_seconds,
            "timed_wall_seconds": self.timed_wall_seconds,
            "images_per_sec": self.images_per_sec,
            "median_step_seconds": self.median_step_seconds,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "mad": self.mad,
            "cv": self.cv,
            "unstable": self.unstable,
            "facts": self.facts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """The record as stored; a malformed one (a stored record may come from anywhere) raises ``KeyError``,
        ``TypeError`` or ``ValueError``, never ``OverflowError`` (an infinite batch size, a number past
        float's range are ``ValueError`` here)."""
        try:
            return cls(
                batch_size=int(data["batch_size"]),
                timed_seconds=tuple(float(s) for s in data["timed_seconds"]),
                warmup_seconds=tuple(float(s) for s in data.get("warmup_seconds", ())),
                facts=dict(data.get("facts", {})),
                wall_seconds=float(data.get("wall_seconds", 0.0)),
                timed_wall_seconds=float(data.get("timed_wall_seconds", 0.0)),
            )
        except OverflowError as error:
            raise ValueError(f"a number out of range: {error}") from None


def pooled_loop_rate(runs: Sequence[Measurement]) -> float:
    """tf_cnn_benchmarks' images/sec of ``runs`` together: every timed image over every timed loop's wall time
    (the headline figure of benchmark records, tables, show and the report)."""
    images = sum(len(m.timed_seconds) * m.batch_size for m in runs)
    return images / math.fsum(m.loop_seconds for m in runs)
