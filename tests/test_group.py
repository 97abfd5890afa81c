"""Instances: several pinned workers measured as one trial over their common window (tuner/group.py), with
the fake worker standing in for TensorFlow: start barrier, common window, one instance crashing or hanging."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.test_runner import FakeRunner, is_gone
from tuner.errors import WorkerBadOutput, WorkerCrashed, WorkerExited, WorkerTimeout
from tuner.group import Instance, combine, padded_steps
from tuner.policy import MeasurementPolicy
from tuner.runner import TrialSpec, check_read_back
from tuner.settings import Settings
from tuner.workload import Workload

TWO = tuple(sorted(os.sched_getaffinity(0)))[:2]
needs_two = pytest.mark.skipif(len(TWO) < 2, reason="needs two CPUs")
POLICY = MeasurementPolicy("test", warmup=1, timed=3, timeout_s=15.0)
HANG = MeasurementPolicy("hang", warmup=1, timed=3, timeout_s=4.0)


def group_spec(policy: MeasurementPolicy = POLICY) -> TrialSpec:
    return TrialSpec(Settings.from_params({"instances": 2, "intra_op": 1}), Workload("tiny", "infer", 8), TWO, policy)


def test_combine_sums_rates_over_the_common_window_only() -> None:
    # Instance a runs steps of 1 s ending at 1..6; instance b starts 2 s later with steps of 2 s.
    a = Instance((0,), (1.0,) * 6, (1.0, 2.0, 3.0, 4.0, 5.0, 6.0))
    b = Instance((1,), (2.0,) * 3, (4.0, 6.0, 8.0))
    steps = combine([a, b], batch=10, keep=2)
    # The window is from b's first step (2 s) to a's last (6 s): a's steps 3..6 and b's first two lie inside;
    # b's last step ran alone and is not counted. Two group steps, each 10/1 + 10/2 = 15 images/sec.
    assert steps.window_seconds == pytest.approx(4.0)
    assert [p["steps_in_window"] for p in steps.per_instance] == [4, 2]
    assert [20 / s for s in steps.step_seconds] == pytest.approx([15.0, 15.0])
    # The timed-loop rate sums each instance's in-window rate: 10/1 + 10/2.
    assert len(steps.step_seconds) * 20 / steps.loop_seconds == pytest.approx(15.0)


def test_instances_that_never_ran_together_are_bad_output() -> None:
    a = Instance((0,), (1.0, 1.0), (1.0, 2.0))
    b = Instance((1,), (1.0, 1.0), (5.0, 6.0))
    # One finished before the other began: there is no common window, so no sum can be honest.
    with pytest.raises(WorkerBadOutput, match="hardly ran at the same time \\(0 step"):
        combine([a, b], batch=10, keep=5)


def test_each_instance_runs_extra_steps_so_the_window_holds_enough() -> None:
    # Edges fall outside the window: at least two extra steps, a quarter more for long bursts.
    assert padded_steps(5) == 7 and padded_steps(20) == 25


@needs_two
def test_group_starts_together_pins_each_instance_and_sums_over_the_window(tmp_path: Path) -> None:
    m = FakeRunner("ok", stamps=tmp_path).run(group_spec())
    stamps = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    # Two instances, each on its own CPU.
    assert sorted(tuple(s["cores"]) for s in stamps) == [(TWO[0],), (TWO[1],)]
    # The barrier: neither was released before both were ready.
    assert min(s["released"] for s in stamps) >= max(s["ready"] for s in stamps)
    # The trial's batch is both instances' batches; per-instance figures are stored; the steps are the
    # group's (the policy's timed count, from the padded runs) and each is the sum of two instances' rates.
    # Each instance's steps are sleeps of 0.05 s: never shorter, and a little longer (on a busy machine a
    # wake-up can come tens of ms late, so the lower bound leaves room for that: twice as long at most).
    assert m.batch_size == 16 and len(m.facts["instances"]) == 2
    assert len(m.timed_seconds) == POLICY.timed
    assert all(0.5 * 8 / 0.05 <= i["images_per_sec"] <= 8 / 0.05 for i in m.facts["instances"])
    per = sum(i["images_per_sec"] for i in m.facts["instances"])
    assert m.images_per_sec == pytest.approx(per, rel=0.1) and m.images_per_sec <= 2 * 8 / 0.05
    assert m.facts["cpus"] == sorted(TWO) and m.facts["window_seconds"] > 0


@needs_two
def test_one_instance_crashing_fails_the_trial_and_ends_the_group(tmp_path: Path) -> None:
    # The instance on the second CPU aborts before it is ready; the other waits at the barrier meanwhile.
    with pytest.raises(WorkerCrashed, match="instance 1: worker killed by SIGABRT"):
        FakeRunner("crash-last", stamps=tmp_path).run(group_spec())
    # The instance left waiting was killed with the group: nothing was released, no stamp written.
    assert list(tmp_path.glob("*.json")) == []


@needs_two
def test_one_instance_hanging_times_out_and_kills_every_instance(tmp_path: Path) -> None:
    with pytest.raises(WorkerTimeout, match="ran past 4 s"):
        FakeRunner("hang-last", stamps=tmp_path).run(group_spec(HANG))
    pids = [json.loads(p.read_text())["pid"] for p in tmp_path.glob("*.json")]
    # Both instances had started; after the timeout neither is left running.
    assert len(pids) == 2 and all(is_gone(pid) for pid in pids)


@needs_two
def test_an_instance_dying_after_it_was_ready_fails_the_trial_in_one_line(tmp_path: Path) -> None:
    # The second instance reports ready, then exits before the barrier opens: releasing it must not break
    # the runner (its stdin is gone); the trial fails with that instance's exit.
    with pytest.raises(WorkerExited, match="instance 1: worker exited with status 7"):
        FakeRunner("die-after-ready", stamps=tmp_path).run(group_spec())


def test_a_read_back_that_contradicts_the_settings_fails_the_trial() -> None:
    tcmalloc = Settings.from_params({"allocator": "tcmalloc"})
    # A preload the loader ignored leaves glibc mapped: measured as such, it must not be stored as TCMalloc.
    with pytest.raises(WorkerBadOutput, match="asked for allocator tcmalloc, the worker mapped system"):
        check_read_back(tcmalloc, {"allocator": "system", "compute_dtype": "float32"})
    with pytest.raises(WorkerBadOutput, match="precision bf16, the model computed in float32"):
        check_read_back(
            Settings.from_params({"precision": "bf16"}), {"allocator": "system", "compute_dtype": "float32"}
        )
    # What was asked for, or a worker that reports neither (older runtimes), passes.
    check_read_back(tcmalloc, {"allocator": "tcmalloc", "compute_dtype": "float32"})
    check_read_back(tcmalloc, {})


def test_a_group_too_short_to_overlap_is_bad_output() -> None:
    a = Instance((0,), (1.0, 1.0, 1.0), (1.0, 2.0, 3.0))
    b = Instance((1,), (1.0, 1.0, 1.0), (2.5, 3.5, 4.5))
    # One step of each lies in the common window [1.5, 3]: not enough to rank a setting on.
    with pytest.raises(WorkerBadOutput, match="hardly ran at the same time"):
        combine([a, b], batch=10, keep=5)
