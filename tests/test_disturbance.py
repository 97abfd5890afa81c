"""Disturbance accounting (tuner/disturbance.py): a real busy neighbour on a trial's core is seen and the
trial measured again; steal and quota throttling read from fake /proc and cgroup files; a study never ranks
a disturbed value; stored figures are checked before use and shown."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import make_config, one_error_line
from tests.test_runner import CORES, FakeRunner, make_spec
from tuner import cli
from tuner.disturbance import (
    Disturbance,
    Disturbed,
    Monitor,
    Sources,
    Steady,
    parse_limit,
    sample,
    study_figures,
)
from tuner.errors import Pruned, UsageError
from tuner.measurement import Measurement
from tuner.policy import MeasurementPolicy
from tuner.replay import ReplayRunner
from tuner.runner import StepCallback, TaskSpec, TrialSpec
from tuner.study import StudyRun
from tuner.summary import format_importance_lines, summarize_study

SPIN = MeasurementPolicy("spin", warmup=1, timed=5, timeout_s=60.0)  # 5 real steps of ~0.15 s: a 0.75 s window


class Counting:
    """Counts the runs of the runner inside it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.runs = 0

    def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
        self.runs += 1
        measurement: Measurement = self.inner.run(spec, on_step)
        return measurement

    def compute(self, spec: TaskSpec) -> dict[str, Any]:
        result: dict[str, Any] = self.inner.compute(spec)
        return result


def busy_loop(core: int) -> subprocess.Popen[str]:
    """A real neighbour: a Python busy loop pinned to ``core``, returned once it is pinned and about to spin
    (however slowly its interpreter started)."""
    code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nprint('pinned', flush=True)\nwhile True:\n    pass\n"
    hog = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert hog.stdout is not None and hog.stdout.readline().strip() == "pinned"
    return hog


def leaving(hogs: list[subprocess.Popen[str]]) -> Callable[[Sequence[int]], float]:
    """Steady's wait for quiet cores, played by the neighbours ``hogs`` leaving at once."""

    def neighbour_leaves(cores: Sequence[int]) -> float:
        for hog in hogs:
            hog.kill()
            hog.wait()
            if hog.stdout is not None:
                hog.stdout.close()
        return 0.0

    return neighbour_leaves


def skip_unless_quiet() -> None:
    """These tests judge real disturbance: their quiet runs need the cores quiet once their own busy loop
    leaves. Where other work (another job on a shared machine) already holds them, they skip, saying so."""
    before = sample(CORES, 1.0)
    if before.share > 0.1:
        pytest.skip(f"the cores are busy with other work ({before.describe()}): this test needs them quiet")


@contextlib.contextmanager
def quiet_around(before: bool = True) -> Iterator[None]:
    """Runs that must find the cores quiet (once this test's own neighbour has left): where other work holds
    them just before or just after (a job that came meanwhile on a shared machine), the test skips, saying
    so, rather than judging the runs. The look after comes whatever the runs raised: a pruned run too."""
    if before:
        skip_unless_quiet()
    try:
        yield
    finally:
        after = sample(CORES, 0.5)
        if after.share > 0.1:
            pytest.skip(f"other work came onto the cores during a quiet run ({after.describe()})")


def test_a_busy_neighbour_on_the_trials_core_is_measured_again_and_a_quiet_trial_is_not() -> None:
    inner = Counting(FakeRunner("spin"))
    hogs: list[subprocess.Popen[str]] = []
    neighbour_leaves = leaving(hogs)
    runner = Steady(inner, limit=0.25, wait_quiet=neighbour_leaves)
    with quiet_around():
        quiet = runner.run(make_spec(SPIN))
    # Alone on its core, the worker's window is its own: measured once, its figure recorded and small.
    assert inner.runs == 1
    found = Disturbance.from_dict(quiet.facts["disturbance"])
    assert found is not None and found.judged and found.other < 0.25
    assert "disturbed_attempts" not in quiet.facts

    hogs.append(busy_loop(CORES[0]))
    try:
        with quiet_around(before=False):  # measured again once the neighbour left: on quiet cores
            kept = runner.run(make_spec(SPIN))
    finally:
        neighbour_leaves(CORES)
    # The busy loop took up to half the core during the first attempt (29% to 50% seen, less when the
    # machine is busy too): over the limit, so measured again after it left; the kept measurement is the
    # quiet one and the thrown-away attempt is recorded with its share over the limit.
    assert inner.runs == 3
    thrown = [Disturbance.from_dict(d) for d in kept.facts["disturbed_attempts"]]
    assert len(thrown) == 1 and thrown[0] is not None and thrown[0].other > 0.25
    again = Disturbance.from_dict(kept.facts["disturbance"])
    assert again is not None and again.other < 0.25


def prune_at_timed_step(last: int) -> StepCallback:
    """A pruner that stops every trial it sees at timed step ``last``."""

    def on_step(phase: str, index: int, seconds: float) -> None:
        if phase == "timed" and index == last:
            raise Pruned(f"pruned after timed step {index}")

    return on_step


def test_a_trial_pruned_on_disturbed_steps_is_measured_again_in_full_a_quiet_one_stays_pruned() -> None:
    skip_unless_quiet()
    inner = Counting(FakeRunner("spin"))
    neighbour_leaves = leaving([busy_loop(CORES[0])])
    runner = Steady(inner, limit=0.25, wait_quiet=neighbour_leaves)
    try:
        with quiet_around(before=False):  # measured again once the neighbour left: on quiet cores
            kept = runner.run(make_spec(SPIN), prune_at_timed_step(2))
    finally:
        neighbour_leaves(CORES)
    # The pruner stopped the first attempt while the busy loop held half its core: those steps say nothing
    # about the setting, so it is measured again, in full (the pruner is not asked twice), and the pruned
    # attempt is recorded with its window of three timed steps.
    assert inner.runs == 2 and len(kept.timed_seconds) == SPIN.timed
    (thrown,) = kept.facts["disturbed_attempts"]
    found = Disturbance.from_dict(thrown)
    assert thrown["pruned"] is True and found is not None and found.judged and found.other > 0.25
    # On quiet cores the pruner's word stands: the trial is pruned, once, with its quiet window attached.
    with pytest.raises(Pruned) as pruned, quiet_around():
        runner.run(make_spec(SPIN), prune_at_timed_step(2))
    assert inner.runs == 3
    quiet = Disturbance.from_dict(pruned.value.disturbance)
    assert quiet is not None and quiet.judged and quiet.other < 0.25


def write_stat(folder: Path, ticks: dict[int, tuple[int, int]]) -> None:
    """/proc/stat with per-CPU (user, steal) ticks; every other field fixed."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for cpu, (user, steal) in sorted(ticks.items()):
        lines.append(f"cpu{cpu} {user} 0 0 1000 0 0 0 {steal} 0 0")
    (folder / "stat").write_text("\n".join(lines) + "\nintr 0\nctxt 0\nbtime 0\n")


def test_steal_and_quota_throttling_are_read_from_proc_and_cgroup_files(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    v2 = tmp_path / "cgroup"
    (v2 / "job").mkdir(parents=True)
    (tmp_path / "self-cgroup").write_text("0::/job\n")
    now = [100.0]
    sources = Sources(proc=proc, cgroup=v2, proc_cgroup=tmp_path / "self-cgroup", clock=lambda: now[0])
    write_stat(proc, {0: (500, 10), 1: (700, 20)})
    (v2 / "job" / "cpu.stat").write_text("usage_usec 10\nnr_throttled 1\nthrottled_usec 1000000\n")
    monitor = Monitor([0, 1], sources)
    monitor.open(())
    # Two seconds later: CPU 0 stole 0.5 s (50 ticks), CPU 1 0.3 s; the quota held the group off 0.4 s; and
    # processes other than the trial's (it has none here) ran 1 s on CPU 0.
    write_stat(proc, {0: (600, 60), 1: (700, 50)})
    (v2 / "job" / "cpu.stat").write_text("usage_usec 10\nnr_throttled 3\nthrottled_usec 1400000\n")
    now[0] += 2.0
    found = monitor.close(())
    assert found is not None
    # Shares of 2 cores x 2 s: steal 0.8 s of 4, others 1 s of 4; throttling 0.4 s of the 2 s wall time.
    assert found.steal == pytest.approx(0.2)
    assert found.other == pytest.approx(0.25)
    assert found.throttled == pytest.approx(0.2)
    assert found.share == pytest.approx(0.65) and found.over(0.05)

    # cgroup v1: the cpu controller's own hierarchy, throttled_time in nanoseconds.
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "job").mkdir(parents=True)
    (tmp_path / "self-cgroup").write_text("4:cpu,cpuacct:/job\n1:memory:/job\n")
    sources.cgroup = v1
    (v1 / "cpu,cpuacct" / "job" / "cpu.stat").write_text("nr_periods 5\nnr_throttled 0\nthrottled_time 0\n")
    monitor.open(())
    (v1 / "cpu,cpuacct" / "job" / "cpu.stat").write_text("nr_periods 9\nnr_throttled 2\nthrottled_time 500000000\n")
    now[0] += 1.0
    found = monitor.close(())
    assert found is not None and found.throttled == pytest.approx(0.5) and found.steal == 0.0


def test_cpus_are_numbered_by_proc_stat_where_some_are_offline(tmp_path: Path) -> None:
    """With CPU 1 offline, /proc/stat lists cpu0, cpu2, cpu3: psutil's list is in that order, so its second
    entry is CPU 2, not CPU 1."""
    now = [10.0]
    sources = Sources(proc=tmp_path, cgroup=tmp_path / "none", proc_cgroup=tmp_path / "none", clock=lambda: now[0])
    write_stat(tmp_path, {0: (100, 0), 2: (100, 0), 3: (100, 0)})
    monitor = Monitor([2], sources)
    monitor.open(())
    # One second later others ran 0.5 s on CPU 2 and 1 s on CPU 3; CPU 0 stayed idle.
    write_stat(tmp_path, {0: (100, 0), 2: (150, 0), 3: (200, 0)})
    now[0] += 1.0
    found = monitor.close(())
    # The trial's core 2 was half taken by others: its own line, not the third line (CPU 3) nor the first.
    assert found is not None and found.judged and found.other == pytest.approx(0.5)
    # A core that is not online has no counters: its window is recorded but not judged.
    offline = Monitor([1], sources)
    offline.open(())
    now[0] += 1.0
    unjudged = offline.close(())
    assert unjudged is not None and not unjudged.judged


class Disturbing:
    """Replays rates and reports, per call, the disturbance ``shares[call]`` (0 once the list is used up)."""

    def __init__(self, inner: ReplayRunner, shares: dict[int, float]) -> None:
        self.inner, self.shares, self.calls = inner, shares, 0

    def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
        measurement = self.inner.run(spec, on_step)
        share = self.shares.get(self.calls, 0.0)
        self.calls += 1
        measurement.facts["disturbance"] = Disturbance(2.0, 2, share, 0.0, 0.0).to_dict()
        return measurement

    def compute(self, spec: TaskSpec) -> dict[str, Any]:
        return self.inner.compute(spec)


def test_the_pruner_is_left_the_kept_attempts_steps_not_the_disturbed_ones(storage: optuna.storages.RDBStorage) -> None:
    def script(spec: TrialSpec, call: int) -> list[float]:
        # Call 0, tf-default's first attempt, ran at half speed beside a neighbour; every later call is quiet.
        rate = 500.0 if call == 0 else 1000.0
        return [spec.global_batch / rate] * (spec.policy.warmup + spec.policy.timed)

    runner = Steady(Disturbing(ReplayRunner(script), {0: 0.4}), 0.05, wait_quiet=lambda cores: 0.0)
    run = StudyRun(storage, make_config(trials=1), runner)
    run.search(None)
    first = run.study.get_trials()[0]
    # Ranked on its quiet second attempt, and the per-step values a pruner compares later trials with are
    # that attempt's too (1000 images/sec each), not the disturbed first attempt's 500 it reported live.
    assert first.state == TrialState.COMPLETE and first.value == pytest.approx(1000.0)
    assert [a["other"] for a in first.user_attrs["disturbed_attempts"]] == [0.4]
    timed = run.config.policy.timed
    assert sorted(first.intermediate_values) == list(range(timed))
    assert all(value == pytest.approx(1000.0) for value in first.intermediate_values.values())


def test_a_study_never_ranks_a_disturbed_value(storage: optuna.storages.RDBStorage) -> None:
    def rate(spec: TrialSpec) -> float:
        return 1200.0 if spec.settings.intra_op == 1 and spec.settings.data_format == "NHWC" else 1000.0

    # Every run of call 0 (tf-default) measures 40% disturbed; calls 0, 1 and 2 are its three attempts.
    runner = Steady(Disturbing(ReplayRunner.from_rates(rate), {0: 0.4, 1: 0.4, 2: 0.4, 3: 0.3}), 0.05,
                    wait_quiet=lambda cores: 0.0)  # fmt: skip
    run = StudyRun(storage, make_config(trials=3), runner)
    run.search(None)
    trials = run.study.get_trials()
    # tf-default was disturbed in all three attempts: failed as "disturbed", with no value, its attempts kept.
    assert trials[0].state == TrialState.FAIL and trials[0].value is None
    assert trials[0].user_attrs["fail_reason"] == "disturbed"
    assert [a["other"] for a in trials[0].user_attrs["disturbed_attempts"]] == [0.4, 0.4, 0.4]
    # The heuristic's first attempt (call 3) was disturbed, its second not: ranked on the second.
    assert trials[1].state == TrialState.COMPLETE
    assert [a["other"] for a in trials[1].user_attrs["disturbed_attempts"]] == [0.3]
    assert trials[1].user_attrs["disturbance"]["other"] == 0.0
    # The budget is not held by a disturbed baseline, and show says what happened.
    assert run.baselines_done()
    summary = summarize_study(run.study)
    assert summary["disturbance"]["remeasured"] == 1 and summary["disturbance"]["not_ranked"] == 1
    text = " ".join(format_importance_lines([summary]).split())  # the lines as one, whatever the wrapping
    assert "1 trial(s) measured again; 1 not ranked (disturbed in every attempt)" in text
    assert "40%, 40%, 40%, 30%" in text


def test_all_attempts_disturbed_raise_with_every_attempts_figure() -> None:
    runner = Steady(Disturbing(ReplayRunner.from_rates(lambda s: 1000.0), {0: 0.5, 1: 0.2}), 0.1, attempts=2,
                    wait_quiet=lambda cores: 0.0)  # fmt: skip
    with pytest.raises(Disturbed, match="disturbed in all 2 attempts") as raised:
        runner.run(make_spec())
    # Both attempts' figures travel with the error, so the study stores them.
    assert [a["other"] for a in raised.value.attempts] == [0.5, 0.2]
    # With the limit off, the figure is only recorded: one run, kept whatever it shows.
    recording = Steady(Disturbing(ReplayRunner.from_rates(lambda s: 1000.0), {0: 0.9}), None)
    assert recording.run(make_spec()).facts["disturbance"]["other"] == 0.9


def test_stored_figures_are_checked_before_use() -> None:
    # Shares must be numbers from 0 to 1, the window a finite non-negative number, cores a sane count.
    good = {"window_s": 1.0, "cores": 2, "other": 0.1, "steal": 0.0, "throttled": 0.0}
    assert Disturbance.from_dict(good) is not None
    for bad in ({**good, "other": 7}, {**good, "other": "0.1"}, {**good, "cores": True}, {**good, "window_s": -1},
                {k: v for k, v in good.items() if k != "steal"}, "0.1", None):  # fmt: skip
        assert Disturbance.from_dict(bad) is None

    class Trial:
        def __init__(self, attrs: dict[str, Any]) -> None:
            self.user_attrs = attrs

    # Malformed stored attempts (from an imported file) are left out, not counted or printed.
    figures = study_figures([Trial({"disturbance": good, "disturbed_attempts": [{"other": "rm -rf"}, 3]})])
    assert figures["thrown_away"] == [] and figures["remeasured"] == 0 and figures["largest_kept"] == 0.1


def test_limit_flag_takes_a_share_or_a_percentage_and_refuses_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_limit("0.05") == 0.05 and parse_limit("10%") == pytest.approx(0.1) and parse_limit("off") is None
    for bad in ("0", "1", "150%", "x", "-0.1", "nan"):
        with pytest.raises(UsageError, match="--max-disturbance"):
            parse_limit(bad)
    # On the command line: one line naming the flag, exit 1, before anything is measured or stored.
    assert cli.main(["tune", "--model", "tiny", "--max-disturbance", "2", "--storage", "sqlite:///:memory:"]) == 1
    assert "--max-disturbance" in one_error_line(capsys.readouterr().err)


def test_instances_kept_apart_by_a_neighbour_are_measured_again_other_failures_are_not() -> None:
    from tuner.errors import WorkerBadOutput

    class Apart:
        """Fails its first run as instances that could not run side by side, with the window's figure."""

        def __init__(self, disturbed: float) -> None:
            self.runs, self.disturbed = 0, disturbed
            self.inner = ReplayRunner.from_rates(lambda s: 1000.0)

        def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
            self.runs += 1
            if self.runs == 1:
                error = WorkerBadOutput("the instances' timed steps hardly ran at the same time")
                error.disturbance = Disturbance(1.0, 2, self.disturbed, 0.0, 0.0).to_dict()
                raise error
            return self.inner.run(spec, on_step)

        def compute(self, spec: TaskSpec) -> dict[str, Any]:
            return self.inner.compute(spec)

    disturbed = Apart(0.45)
    kept = Steady(disturbed, 0.05, wait_quiet=lambda cores: 0.0).run(make_spec())
    # The failure came with half a core taken by others: an attempt thrown away, not a setting that fails.
    assert disturbed.runs == 2 and [a["other"] for a in kept.facts["disturbed_attempts"]] == [0.45]
    quiet = Apart(0.0)
    # The same failure on quiet cores is the setting's own: raised at once, not measured again.
    with pytest.raises(WorkerBadOutput):
        Steady(quiet, 0.05, wait_quiet=lambda cores: 0.0).run(make_spec())
    assert quiet.runs == 1
