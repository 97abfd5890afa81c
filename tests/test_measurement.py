"""Measurements: raw step times kept, medians and spreads derived, unstable bursts flagged."""

from __future__ import annotations

import math

import pytest

from tuner.measurement import (
    MAX_BATCH_SIZE,
    MAX_LOOP_SECONDS,
    MAX_STEP_SECONDS,
    MIN_STEP_SECONDS,
    UNSTABLE_CV,
    Measurement,
    median_abs_deviation,
    pooled_loop_rate,
)

# Step times chosen so the rates are round numbers: batch 32 at 0.1 s is 320 images/sec.
STEADY = (0.1, 0.1, 0.1, 0.1, 0.1)
SPREAD = (0.08, 0.1, 0.2, 0.1, 0.16)  # rates 400, 320, 160, 320, 200


def test_rates_are_per_step() -> None:
    m = Measurement(32, (0.1, 0.2, 0.05))
    # Each timed step gives batch / seconds images/sec, in step order.
    assert m.rates == pytest.approx([320.0, 160.0, 640.0])


def test_median_step_and_images_per_sec() -> None:
    m = Measurement(32, SPREAD)
    # The headline figure is batch over the median step time, not the mean: one slow step does not drag it.
    assert m.median_step_seconds == pytest.approx(0.1)
    assert m.images_per_sec == pytest.approx(320.0)


def test_median_of_even_count() -> None:
    m = Measurement(10, (0.1, 0.2, 0.3, 0.4))
    # With an even count the median is the mean of the middle two.
    assert m.median_step_seconds == pytest.approx(0.25)
    # images/sec is the median of the per-step rates (100, 50, 33.3, 25): the mean of 50 and 33.3, the same
    # statistic confirmation pools, not batch / median step time (40).
    assert m.images_per_sec == pytest.approx((50 + 100 / 3) / 2)


def test_warmup_does_not_count() -> None:
    m = Measurement(32, STEADY, warmup_seconds=(5.0, 1.0))
    # Warm-up steps (graph trace, cache fill) are kept but never enter the figures.
    assert m.images_per_sec == pytest.approx(320.0)
    assert m.mad == pytest.approx(0.0)


def test_mad_and_jitter() -> None:
    m = Measurement(32, SPREAD)
    # Rates 400, 320, 160, 320, 200: median 320, absolute deviations 80, 0, 160, 0, 120, whose median is 80.
    assert m.mad == pytest.approx(80.0)
    # Jitter scales the MAD to a standard-deviation estimate, as tf_cnn_benchmarks does.
    assert m.jitter == pytest.approx(1.4826 * 80.0)


def test_median_abs_deviation_helper() -> None:
    # The MAD is robust: one wild value moves it little.
    assert median_abs_deviation([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(1.0)


def test_cv_of_steady_and_single_step() -> None:
    # Identical steps have no spread; a single step has no spread to estimate, so cv is 0 rather than an error.
    assert Measurement(32, STEADY).cv == pytest.approx(0.0)
    assert Measurement(32, (0.1,)).cv == 0.0


def test_cv_is_stdev_over_mean_of_rates() -> None:
    m = Measurement(32, SPREAD)
    rates = [400.0, 320.0, 160.0, 320.0, 200.0]
    mean = sum(rates) / len(rates)
    stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1))
    # The coefficient of variation is the sample standard deviation of the rates over their mean.
    assert m.cv == pytest.approx(stdev / mean)


def test_unstable_flag() -> None:
    # A wide spread (cv far over the threshold) is flagged, a steady burst is not.
    assert Measurement(32, SPREAD).cv > UNSTABLE_CV
    assert Measurement(32, SPREAD).unstable
    assert not Measurement(32, STEADY).unstable
    # A couple of percent of noise is normal and stays trusted.
    assert not Measurement(32, (0.100, 0.102, 0.098, 0.101, 0.099)).unstable


def test_to_dict_keeps_raw_values_and_derived_figures() -> None:
    m = Measurement(32, SPREAD, warmup_seconds=(0.5, 0.12), facts={"framework": "x"}, wall_seconds=3.5)
    data = m.to_dict()
    # Raw values are stored as given, so every figure can be recomputed later.
    assert data["timed_seconds"] == list(SPREAD)
    assert data["warmup_seconds"] == [0.5, 0.12]
    assert data["batch_size"] == 32
    assert data["wall_seconds"] == 3.5
    assert data["facts"] == {"framework": "x"}
    # Derived figures sit beside them.
    assert data["images_per_sec"] == pytest.approx(320.0)
    assert data["median_step_seconds"] == pytest.approx(0.1)
    assert data["mad"] == pytest.approx(80.0)
    assert data["unstable"] is True


def test_from_dict_round_trip() -> None:
    m = Measurement(32, SPREAD, warmup_seconds=(0.5, 0.12), facts={"cpus": [0, 1]}, wall_seconds=3.5)
    back = Measurement.from_dict(m.to_dict())
    # The stored dict rebuilds an equal record with the same raw values and facts.
    assert back == m
    assert back.timed_seconds == SPREAD
    assert back.warmup_seconds == (0.5, 0.12)
    assert back.facts == {"cpus": [0, 1]}
    assert back.wall_seconds == 3.5


def test_from_dict_tolerates_missing_optional_fields() -> None:
    back = Measurement.from_dict({"batch_size": "16", "timed_seconds": [1, 2]})
    # Old records without warm-up, facts or wall time still load, with values typed.
    assert back == Measurement(16, (1.0, 2.0))
    assert back.warmup_seconds == ()
    assert back.facts == {}


@pytest.mark.parametrize("timed", [(), (0.0,), (0.1, -0.1), (0.1, 0.0, 0.1)])
def test_rejects_empty_or_non_positive_steps(timed: tuple[float, ...]) -> None:
    # A rate needs a positive time; zero or negative would give infinite or negative images/sec.
    with pytest.raises(ValueError, match="positive timed step"):
        Measurement(32, timed)


def test_from_dict_rejects_non_positive_steps() -> None:
    # A corrupted stored record is refused the same way as a fresh one.
    with pytest.raises(ValueError):
        Measurement.from_dict({"batch_size": 32, "timed_seconds": [0.1, 0.0]})


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_rejects_non_finite_steps(bad: float) -> None:
    # NaN or infinite step times should be refused like zero ones; NaN later breaks to_dict().
    with pytest.raises(ValueError):
        Measurement(32, (0.1, bad))


def test_facts_do_not_affect_equality() -> None:
    # Facts are context (versions, cpus), not part of what was measured.
    assert Measurement(32, STEADY, facts={"a": 1}) == Measurement(32, STEADY, facts={"b": 2})


@pytest.mark.parametrize("batch", [0, -32, True, 32.0, 2**40, MAX_BATCH_SIZE + 1])
def test_rejects_a_batch_size_that_is_no_count_in_range(batch: object) -> None:
    # A stored record's batch size multiplies every rate: it must be a whole count a run can measure, not a
    # bool, a float or a number so large the rates overflow.
    with pytest.raises(ValueError, match="batch size"):
        Measurement(batch, STEADY)  # type: ignore[arg-type]


@pytest.mark.parametrize("steps", [(5e-324,), (0.1, 1e-10), (1e300,), (0.1, MAX_STEP_SECONDS * 2)])
def test_rejects_steps_whose_rates_would_not_be_finite(steps: tuple[float, ...]) -> None:
    # 32 / 5e-324 is an infinite rate; huge steps overflow the loop's sum (fsum raises OverflowError): a step
    # takes from a nanosecond to ten million seconds, or the record is refused.
    with pytest.raises(ValueError, match="a step must take"):
        Measurement(32, steps)
    # Warm-up steps the same: they are stored and summed alike.
    with pytest.raises(ValueError, match="a step must take"):
        Measurement(32, STEADY, steps)


@pytest.mark.parametrize("loop", [5e-324, -1.0, math.inf, 1e300])
def test_rejects_a_timed_loop_time_whose_loop_rate_would_not_be_finite(loop: float) -> None:
    # The headline figure divides by the loop's wall time: a denormal one gives an infinite rate.
    with pytest.raises(ValueError, match="timed loop"):
        Measurement(32, STEADY, timed_wall_seconds=loop)


def test_the_extremes_a_run_can_measure_keep_every_figure_finite() -> None:
    # The largest batch (4096 per step on each of 64 replicas in each of 1024 instances) in the shortest step,
    # and one batch in the longest: both accepted, every rate finite and above 0, as ms/image is too.
    fast = Measurement(MAX_BATCH_SIZE, (MIN_STEP_SECONDS,) * 3, timed_wall_seconds=MIN_STEP_SECONDS)
    slow = Measurement(1, (MAX_STEP_SECONDS,) * 3, (MAX_STEP_SECONDS,), timed_wall_seconds=MAX_LOOP_SECONDS)
    for m in (fast, slow):
        figures = [*m.rates, m.images_per_sec, m.loop_images_per_sec, 1000.0 / m.loop_images_per_sec]
        assert all(math.isfinite(f) and f > 0 for f in figures)
    assert math.isfinite(pooled_loop_rate([slow] * 100_000)) and pooled_loop_rate([slow]) > 0


@pytest.mark.parametrize(
    "change",
    [
        {"batch_size": math.inf},  # JSON's 1e999: int(inf) raises OverflowError
        {"batch_size": 10**400},
        {"timed_seconds": [10**400]},  # float() of it raises OverflowError
        {"wall_seconds": 10**400},
        {"wall_seconds": math.nan},
        {"timed_wall_seconds": -(10**400)},
    ],
)
def test_from_dict_raises_value_error_for_numbers_out_of_range(change: dict[str, object]) -> None:
    data = {**Measurement(32, STEADY).to_dict(), **change}
    # Readers of stored records catch KeyError, TypeError and ValueError: a stored number out of range is a
    # ValueError too, never an OverflowError that escapes them and crashes a command.
    with pytest.raises(ValueError):
        Measurement.from_dict(data)
