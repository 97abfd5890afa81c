"""The one budget policy (tuner/plan.py): shares of the time left by weight, never below a study's floor."""

from __future__ import annotations

import pytest

from tests.helpers import make_config
from tuner.cost import CostModel
from tuner.plan import Yardstick, share, shares, weight
from tuner.policy import BURST, MeasurementPolicy


def test_without_floors_the_time_left_is_shared_by_weight() -> None:
    # Two studies still to run, the next one twice as costly per step: it gets two thirds of the time left.
    assert share(90.0, [2.0, 1.0]) == pytest.approx(60.0)
    # No budget: no share.
    assert share(None, [2.0, 1.0], [50.0, 50.0]) is None


def test_the_floor_keeps_a_many_core_study_from_a_share_too_small_for_its_baselines() -> None:
    # On a 64-core machine a one-core training study weighs 192 times a 64-core inference study.
    weights = [weight("train", 1, 64), weight("infer", 64, 64)]
    assert weights == [192.0, 1.0]
    # By weight alone the 64-core study would get about 5 s of 1000, far less than its baselines need.
    assert shares(1000.0, weights)[1] == pytest.approx(1000.0 / 193)
    # With its floor (100 s: its baselines and three confirmation rounds) it gets that much...
    assert shares(1000.0, weights, [0.0, 100.0]) == pytest.approx([900.0, 100.0])
    # ...and the study before it, told its own share, leaves that time: 900 s, not 995 s.
    assert share(1000.0, weights, [0.0, 100.0]) == pytest.approx(900.0)


def test_a_study_above_its_floor_shares_what_the_floors_leave_by_weight() -> None:
    # The third study's weighted share (10 of 100) is below its floor (40): it gets 40, and the first two
    # split the other 60 by their weights 3 : 1, both above their floors.
    assert shares(100.0, [6.0, 2.0, 1.0], [10.0, 10.0, 40.0]) == pytest.approx([45.0, 15.0, 40.0])


def test_floors_that_do_not_fit_the_time_left_are_cut_alike() -> None:
    cut = shares(100.0, [1.0, 1.0, 1.0], [100.0, 60.0, 40.0])
    # 200 s of floors in 100 s: each gets half its floor, so the shares still add up to the time left.
    assert cut == pytest.approx([50.0, 30.0, 20.0])
    assert sum(cut) == pytest.approx(100.0)


def test_a_floor_counts_the_baselines_the_candidates_and_three_confirmation_rounds() -> None:
    config = make_config(cores=2, candidates=1)
    measured = CostModel(wall_s=10.0, step_s=1.0, policy=config.policy)  # 5 steps of 1 s, 5 s overhead
    # A study measured like this one: 2 baselines + 1 candidate, each one search run and 3 confirmation
    # runs of 10 s (the test policies have the same 1 + 4 steps): 3 x 4 x 10 s.
    assert Yardstick(measured, weight=1.0).floor_s(config, baselines=2, weight=1.0) == pytest.approx(120.0)
    # A study whose steps cost twice as much: 5 s overhead + 5 steps of 2 s = 15 s a run.
    assert Yardstick(measured, weight=1.0).floor_s(config, baselines=2, weight=2.0) == pytest.approx(180.0)
    # Before anything is measured, a probe of 8 s prices every run at 8 s, whatever the study's weight.
    probe = Yardstick(CostModel.estimate(8.0, BURST))
    assert probe.floor_s(config, baselines=2, weight=5.0) == pytest.approx(3 * 4 * 8.0)


def test_a_longer_confirmation_policy_raises_the_floor() -> None:
    longer = MeasurementPolicy("long", warmup=1, timed=14, timeout_s=60.0, rounds=3)
    config = make_config(cores=2, candidates=1, confirm_policy=longer)
    measured = CostModel(wall_s=10.0, step_s=1.0, policy=config.policy)
    # Each confirmation run has 10 more timed steps of 1 s: 3 x (10 + 3 x 20) s.
    assert Yardstick(measured).floor_s(config, baselines=2, weight=1.0) == pytest.approx(210.0)


def test_the_probe_line_says_what_it_read_back_and_what_it_could_not() -> None:
    from tuner.plan import Prepared
    from tuner.replay import ReplayRunner
    from tuner.runtime import load as load_runtime
    from tuner.space import load as load_space

    def line(facts: dict[str, object]) -> str:
        runner = ReplayRunner.from_rates(lambda spec: 1.0)
        return Prepared(load_runtime("tensorflow"), load_space("tensorflow", 1), facts, runner).describe()

    seen = {"framework_version": "2.21.0", "onednn": True, "onednn_runtime": "threadpool", "onednn_isa": "Intel AVX2"}
    # What the probe read back is named as read; oneDNN's threading runtime, where its verbose mode printed none
    # (a build or CPU whose kernels log nothing), is "not reported", never the word None.
    assert "oneDNN on (runtime threadpool, kernels for Intel AVX2), OpenMP none, 0 GPU" in line(seen)
    assert "oneDNN off (runtime not reported), OpenMP none" in line({"framework_version": "2.21.0", "onednn": False})
