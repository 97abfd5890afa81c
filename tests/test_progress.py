"""Long runs say how far they are: a step callback logs at most every STEP_LINE_S, with the mean step time and
what is left; trials, confirmation runs and benchmark rounds use it."""

from __future__ import annotations

import pytest

from tuner import progress
from tuner.cli import main
from tuner.progress import StepLines
from tuner.replay import ReplayRunner


def test_a_long_run_says_how_far_it_is_at_most_every_so_often() -> None:
    now = [0.0]
    said: list[str] = []
    lines = StepLines(said.append, "round 1/1 tf-default", warmup=2, timed=4, clock=lambda: now[0])
    for phase, index in (("warmup", 0), ("warmup", 1), ("timed", 0), ("timed", 1), ("timed", 2), ("timed", 3)):
        now[0] += 20.0  # a 20 s batch: a line every other batch, as 30 s have passed since the last
        lines(phase, index, 20.0)
    # Two lines in 120 s: after 40 s (batch 2 of 6) and after 80 s (batch 4); none at the end, which the
    # run's own result line says. Each names the run, where it is, the mean batch time and what is left.
    assert said == [
        "round 1/1 tf-default: batch 2/6, 20.0 s/batch, ~1m20s left",
        "round 1/1 tf-default: batch 4/6, 20.0 s/batch, ~0m40s left",
    ]


def test_a_short_run_says_nothing_more() -> None:
    said: list[str] = []
    lines = StepLines(said.append, "trial 0", warmup=1, timed=3)
    for phase, index in (("warmup", 0), ("timed", 0), ("timed", 1), ("timed", 2)):
        lines(phase, index, 0.01)
    # Done within STEP_LINE_S: no line (the trial's own result line follows at once).
    assert said == []


@pytest.mark.parametrize("command", ["tune", "benchmark"])
def test_trials_confirmation_and_benchmark_rounds_pass_their_steps_on(
    command: str, storage_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress, "STEP_LINE_S", 0.0)  # every batch says so
    argv = [command, "--model", "tiny", "--cores", "1", "--mode", "infer", "--storage", storage_url]
    argv += ["--trials", "4"] if command == "tune" else ["--settings", "tf-default", "--warmup", "1", "--timed", "3"]
    assert main(argv, runner=ReplayRunner.from_rates(lambda spec: 1000.0)) == 0
    err = capsys.readouterr().err
    # Each kind of run passes the step events on to a progress line of its own name.
    wanted = (
        ["trial 0: batch 1/", "confirm tf-default: batch 1/"]
        if command == "tune"
        else ["round 1/1 tf-default: batch 1/4"]
    )
    for start in wanted:
        assert start in err, (start, err[-2000:])
