"""TuneJob (tuner tune): the budget shared as `tuner run` shares it, floors included."""

from __future__ import annotations

import re

import optuna
import pytest

from tests.test_pipeline import Clock, ClockedRunner
from tuner.plan import StudyOptions, prepare, share, weight
from tuner.runtime import load
from tuner.signature import cpu_signature
from tuner.tune import TuneJob


def _first_share(storage: optuna.storages.BaseStorage, search_only: bool) -> tuple[int, TuneJob]:
    """The 1-core training study's share of 12 minutes on a 16-core machine (as in test_pipeline: by weight
    alone a 16-core study gets a few seconds); the job, run."""
    clock = Clock()
    runner = ClockedRunner(clock)
    ready = prepare(load("tensorflow-eigen"), runner, 16)
    lines: list[str] = []
    job = TuneJob(storage, cpu_signature(), ready, [1, 16], ["train", "infer"], 12 * 60.0, "tiny", 32,
                  StudyOptions(trials=6, candidates=1), search_only=search_only, probe_s=20.0, log=lines.append,
                  clock=clock)  # fmt: skip
    job.run()
    shares = [line for line in lines if re.search(r"study \d/4: .* share ", line)]
    first = re.search(r"share (\d+)m(\d\d)s", shares[0])
    assert first is not None
    return int(first.group(1)) * 60 + int(first.group(2)), job


def test_tune_gives_the_many_core_studies_their_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tuner.plan.core_set", lambda count, *a, **k: tuple(range(count)))
    given, job = _first_share(optuna.storages.InMemoryStorage(), search_only=False)
    plan = [(mode, n) for n in (1, 16) for mode in ("train", "infer")]
    by_weight = share(12 * 60.0, [weight(mode, n, 16) for mode, n in plan])
    assert by_weight is not None
    # The first (one-core training) study gave up part of its weighted share to the floors of the others.
    assert given < by_weight - 5
    # Every study finished with a verdict.
    assert len(job.studies) == 4 and job.failures == []
    alone, job = _first_share(optuna.storages.InMemoryStorage(), search_only=True)
    # A search alone (--no-confirm): the other studies' floors hold no confirmation, so the first study
    # gives up less of its share; they still hold the baselines, so it gives up some.
    assert given < alone < by_weight
    assert len(job.studies) == 4 and job.failures == []


@pytest.mark.parametrize("search_only", [False, True])
def test_tune_trial_lines_end_with_an_eta_that_the_study_meets(
    storage: optuna.storages.RDBStorage, search_only: bool
) -> None:
    """With a confirmation after the search, and without one (--no-confirm: its ETA counts none)."""
    clock = Clock()
    runner = ClockedRunner(clock)
    ready = prepare(load("tensorflow-eigen"), runner, 1)
    said: list[tuple[float, str]] = []
    job = TuneJob(storage, cpu_signature(), ready, [1], ["infer"], None, "tiny", 32,
                  StudyOptions(trials=8, candidates=1), search_only=search_only,
                  log=lambda line: said.append((clock.now, line)), clock=clock)  # fmt: skip
    job.run()
    ended = clock.now
    trials = [(at, line) for at, line in said if re.search(r"trial \d+ \[\d+/8\]", line)]
    # Every trial line once a trial time is known ends with the study's ETA, never with "left" (the budget).
    assert trials and not any(line.endswith(" left") for _, line in trials)
    etas = []
    for at, line in trials[2:]:
        match = re.search(r"study ETA (\d+)m(\d\d)s$", line)
        assert match is not None, line
        etas.append((at + int(match.group(1)) * 60 + int(match.group(2)), ended - at))
    # From the third trial on, the ETA (the trials left at the median trial time, then confirmation) lands
    # within 15% of the study's real end (or 30 s), on a clock where every run costs what it would.
    assert all(abs(predicted - ended) <= max(30.0, 0.15 * remaining) for predicted, remaining in etas), etas


def test_a_search_alone_uses_its_whole_budget(storage: optuna.storages.RDBStorage) -> None:
    """--no-confirm (a fleet worker): no confirmation follows, so none of the budget is kept for one. Stock
    TensorFlow's space: more settings than 600 s can measure."""
    clock = Clock()
    runner = ClockedRunner(clock)
    ready = prepare(load("tensorflow"), runner, 1)
    lines: list[str] = []
    started = clock.now
    job = TuneJob(storage, cpu_signature(), ready, [1], ["infer"], 600.0, "tiny", 32, StudyOptions(trials=500),
                  search_only=True, log=lines.append, clock=clock)  # fmt: skip
    job.run()
    spent = clock.now - started
    runs = [spec for spec in runner.calls if spec.policy.name != "probe"]
    one_run = spent / len(runs)
    # The search ran until another trial would not fit, not until only a confirmation's time (3 rounds of
    # its baselines and candidates, over a dozen runs) was left: it ends within two runs of the budget's end
    # (trial times vary with the settings), and not past it, so no overrun is reported.
    assert 600.0 - 2 * one_run <= spent <= 600.0, (spent, one_run)
    assert any("search ends after" in line and "another trial would not fit" in line for line in lines)
    assert not any("overran" in line for line in lines)
    # Search alone: nothing was confirmed.
    assert "verdict" not in storage.get_all_studies()[0].user_attrs


def test_an_environment_rebuilt_mid_job_ends_the_studies_of_that_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.errors import EnvironmentChanged
    from tuner.measurement import Measurement
    from tuner.runner import StepCallback, TrialSpec

    monkeypatch.setattr("tuner.plan.core_set", lambda count, *a, **k: tuple(range(count)))
    clock = Clock()

    class Rebuilt(ClockedRunner):
        """Another tuner rebuilds the environment before the fourth trial of the job."""

        def run(self, spec: TrialSpec, on_step: StepCallback | None = None) -> Measurement:
            if len(self.calls) >= 3:
                raise EnvironmentChanged("environment /e/x was rebuilt by another tuner during this run")
            return super().run(spec, on_step)

    runner = Rebuilt(clock)
    ready = prepare(load("tensorflow-eigen"), runner, 16)
    lines: list[str] = []
    job = TuneJob(optuna.storages.InMemoryStorage(), cpu_signature(), ready, [1, 16], ["train", "infer"], None,
                  "tiny", 32, StudyOptions(trials=6, candidates=1), probe_s=20.0, log=lines.append,
                  clock=clock)  # fmt: skip
    job.run()
    # The first study fails with the reason, and the three after it are not started: each would meet the
    # same rebuilt environment at its first trial (before, each failed in turn, one stored FAIL trial each).
    assert len(job.failures) == 1 and "was rebuilt by another tuner" in job.failures[0]
    assert any("the 3 studies after it not started" in line for line in lines), lines
    assert not any(re.search(r"study [234]/4: ", line) for line in lines)
    assert job.studies == []
