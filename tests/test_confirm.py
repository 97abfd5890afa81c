"""Confirmation: interleaved re-measurement, a bootstrap interval, and tf-default unless a gain is clear."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import FrozenTrial, create_trial

from tuner.confirm import (
    DEFAULT,
    HEURISTIC,
    MIN_ROUNDS,
    Candidate,
    ConfirmationLog,
    Verdict,
    bootstrap_ratio,
    confirm,
    confirm_logged,
    decide,
    pick_candidates,
    planned_rounds,
    store_verdict,
)
from tuner.cost import CostModel
from tuner.disturbance import Disturbed
from tuner.errors import (
    Interrupted,
    TunerError,
    WorkerCrashed,
    WorkerExited,
    WorkerNotStarted,
    WorkerOutOfMemory,
    WorkerTimeout,
)
from tuner.measurement import Measurement
from tuner.policy import MeasurementPolicy
from tuner.records import ConfirmationRun, MalformedRecord, StoredConfirmation, StoredVerdict
from tuner.replay import ReplayRunner
from tuner.runner import TrialSpec
from tuner.settings import Settings
from tuner.summary import confirmed_loop_rates
from tuner.workload import Workload

POLICY = MeasurementPolicy("test", warmup=1, timed=4, timeout_s=60.0)
WORKLOAD = Workload("tiny", "infer", 32)
CORES = (0, 1)

A = Candidate(DEFAULT, Settings())
B = Candidate(HEURISTIC, Settings(intra_op=2, inter_op=1, data_format="NCHW"))
C = Candidate("trial 3", Settings(intra_op=1, inter_op=1))
CANDIDATES = (A, B, C)


def runner_for(rates: dict[str, float], noise: float, seed: int = 0) -> ReplayRunner:
    """A replaying runner giving each candidate its images/sec (looked up by settings) with relative noise."""
    by_settings = {c.settings: rates[c.name] for c in CANDIDATES}
    return ReplayRunner.from_rates(lambda spec: by_settings[spec.settings], noise=noise, seed=seed)


def run_confirm(runner: ReplayRunner, rounds: int = 3, **kwargs: object) -> Verdict:
    return confirm(runner, CANDIDATES, WORKLOAD, CORES, POLICY, rounds, **kwargs)  # type: ignore[arg-type]


# -- bootstrap -----------------------------------------------------------------------------------------


def test_bootstrap_of_identical_data_contains_one() -> None:
    runs = [[100.0, 101.0, 99.0, 100.5], [98.0, 102.0, 100.0, 99.5], [100.0, 100.0, 101.5, 99.0]]
    interval = bootstrap_ratio(runs, runs)
    # The same data against itself has a ratio of exactly 1, and the interval must not exclude it.
    assert interval.value == pytest.approx(1.0)
    assert interval.low <= 1.0 <= interval.high


def test_bootstrap_interval_brackets_the_ratio() -> None:
    top = [[110.0, 111.0, 109.0], [112.0, 108.0, 110.0]]
    bottom = [[100.0, 101.0, 99.0], [102.0, 98.0, 100.0]]
    interval = bootstrap_ratio(top, bottom)
    # Pooled medians 110 and 100 give 1.1, and the interval lies around it, above 1 for this clear gap.
    assert interval.value == pytest.approx(1.1)
    assert 1.0 < interval.low <= interval.value <= interval.high


def test_bootstrap_leaves_out_a_pair_with_a_round_of_no_steps() -> None:
    top = [[110.0, 111.0, 109.0], [], [108.0, 112.0, 110.0]]
    bottom = [[100.0, 101.0, 99.0], [102.0], [98.0, 100.0, 103.0]]
    # Only a crafted record has an empty round: its pair is left out of the resampling (drawing it alone
    # would leave no steps to take a median of), and the interval is that of the other two pairs.
    interval = bootstrap_ratio(top, bottom)
    alone = bootstrap_ratio([top[0], top[2]], [bottom[0], bottom[2]])
    assert (interval.low, interval.high) == (alone.low, alone.high)
    # With no pair left there is nothing to resample: an error, not a made-up interval.
    with pytest.raises(ValueError, match="a pair of rounds with steps"):
        bootstrap_ratio([[]], [[100.0]])


def test_bootstrap_is_reproducible_by_seed() -> None:
    top = [[110.0, 90.0, 105.0], [95.0, 115.0, 100.0]]
    bottom = [[100.0, 101.0, 99.0], [97.0, 103.0, 100.0]]
    # The same seed gives the same interval, so a stored verdict can be recomputed exactly.
    assert bootstrap_ratio(top, bottom, seed=7) == bootstrap_ratio(top, bottom, seed=7)


# -- verdicts ------------------------------------------------------------------------------------------


def test_clearly_faster_candidate_wins() -> None:
    verdict = run_confirm(runner_for({DEFAULT: 100.0, HEURISTIC: 100.0, "trial 3": 110.0}, noise=0.01))
    # 10% faster with 1% noise over 3 rounds: the candidate wins and its gain is clear.
    assert verdict.winner == "trial 3"
    assert verdict.clear is True
    assert verdict.recommended == "trial 3"
    # The whole 95% interval lies above 1, around the true 1.1.
    assert verdict.vs_default.low > 1.0
    assert verdict.vs_default.value == pytest.approx(1.1, rel=0.02)
    # With a heuristic among the candidates it is compared too.
    assert verdict.vs_heuristic is not None
    assert verdict.vs_heuristic.low > 1.0
    # The text reports the win.
    assert verdict.text().startswith("trial 3 wins: ")


def test_small_gain_within_noise_is_not_clear() -> None:
    verdict = run_confirm(runner_for({DEFAULT: 100.0, HEURISTIC: 99.0, "trial 3": 100.5}, noise=0.05))
    # 0.5% faster under 5% noise cannot be told from luck: no clear gain, and tf-default is recommended.
    assert verdict.clear is False
    assert verdict.recommended == DEFAULT
    assert verdict.vs_default.low <= 1.0
    # Whatever won by median, the text says tf-default is the recommendation.
    assert "recommend tf-default" in verdict.text()


def test_default_fastest_is_never_clear() -> None:
    verdict = run_confirm(runner_for({DEFAULT: 120.0, HEURISTIC: 100.0, "trial 3": 100.0}, noise=0.01))
    # When tf-default itself wins there is nothing to recommend over it.
    assert verdict.winner == DEFAULT
    assert verdict.clear is False
    assert verdict.recommended == DEFAULT
    assert verdict.text() == "tf-default is fastest: recommend tf-default"


def test_no_heuristic_gives_no_heuristic_interval() -> None:
    rates = {DEFAULT: [[100.0, 100.0]], "trial 3": [[120.0, 121.0]]}
    verdict = decide(rates, {DEFAULT: Settings().params(), "trial 3": C.settings.params()})
    # Without a heuristic baseline there is no comparison against it.
    assert verdict.vs_heuristic is None
    assert verdict.to_dict()["speedup_vs_heuristic"] is None


def test_to_dict_contains_recommended_params() -> None:
    clear = run_confirm(runner_for({DEFAULT: 100.0, HEURISTIC: 100.0, "trial 3": 110.0}, noise=0.01))
    data = clear.to_dict()
    # The stored verdict carries the recommended settings themselves, so they can be applied without a lookup.
    assert data["recommended"] == "trial 3"
    assert data["recommended_params"] == C.settings.params()
    # It also records rounds, per-candidate medians and the raw per-round rates.
    assert data["rounds"] == 3
    assert set(data["images_per_sec"]) == {DEFAULT, HEURISTIC, "trial 3"}
    assert data["rates"] == clear.rates


def test_to_dict_recommends_default_params_when_not_clear() -> None:
    verdict = run_confirm(runner_for({DEFAULT: 100.0, HEURISTIC: 99.0, "trial 3": 100.5}, noise=0.05))
    # Without a clear gain the recommended params are tf-default's, not the median winner's.
    assert verdict.to_dict()["recommended_params"] == Settings().params()


# -- confirm() -----------------------------------------------------------------------------------------


def test_candidates_are_measured_interleaved() -> None:
    runner = runner_for({DEFAULT: 100.0, HEURISTIC: 100.0, "trial 3": 100.0}, noise=0.0)
    verdict = run_confirm(runner, rounds=3)
    # A B C, B C A, C A B: interleaved so drift hits every candidate alike, and rotated so that no candidate
    # always runs first in its round.
    a, b, c = A.settings, B.settings, C.settings
    assert [spec.settings for spec in runner.calls] == [a, b, c, b, c, a, c, a, b]
    # Every run uses the confirmation's workload, cores and policy.
    assert all(spec == TrialSpec(spec.settings, WORKLOAD, CORES, POLICY) for spec in runner.calls)
    # Each candidate has one list of per-step rates per round, timed steps only.
    assert all(len(runs) == 3 and all(len(r) == POLICY.timed for r in runs) for runs in verdict.rates.values())


def test_done_rounds_are_reused_not_remeasured() -> None:
    done = {
        DEFAULT: [[90.0, 90.0, 90.0, 90.0]],
        HEURISTIC: [[91.0, 91.0, 91.0, 91.0]],
        "trial 3": [[92.0, 92.0, 92.0, 92.0]],
    }
    before = copy.deepcopy(done)
    runner = runner_for({DEFAULT: 100.0, HEURISTIC: 100.0, "trial 3": 100.0}, noise=0.0)
    verdict = run_confirm(runner, rounds=3, done=done)
    # Round 0 was already measured, so only rounds 1 and 2 run, still interleaved and rotated.
    a, b, c = A.settings, B.settings, C.settings
    assert [spec.settings for spec in runner.calls] == [b, c, a, c, a, b]
    # The earlier round is kept as the first of each candidate's rounds.
    assert verdict.rates[DEFAULT][0] == [90.0, 90.0, 90.0, 90.0]
    assert verdict.rates["trial 3"][0] == [92.0, 92.0, 92.0, 92.0]
    assert all(len(runs) == 3 for runs in verdict.rates.values())
    # The caller's record of done rounds is not modified.
    assert done == before


def test_partially_done_rounds_fill_in_per_candidate() -> None:
    done = {DEFAULT: [[100.0] * 4, [100.0] * 4]}
    runner = runner_for({DEFAULT: 100.0, HEURISTIC: 100.0, "trial 3": 100.0}, noise=0.0)
    run_confirm(runner, rounds=3, done=done)
    # tf-default already has two rounds; the others catch up first (round 1 starts from B), then all three
    # measure round 2, which starts from C.
    a, b, c = A.settings, B.settings, C.settings
    assert [spec.settings for spec in runner.calls] == [b, c, b, c, c, a, b]


def test_all_rounds_done_measures_nothing() -> None:
    done = {c.name: [[100.0] * 4] * 2 for c in CANDIDATES}
    runner = runner_for({DEFAULT: 100.0, HEURISTIC: 100.0, "trial 3": 100.0}, noise=0.0)
    verdict = run_confirm(runner, rounds=2, done=done)
    # A resumed confirmation that is already complete decides from stored rounds alone.
    assert runner.calls == []
    assert verdict.rates == done


def test_on_run_is_called_after_every_new_run() -> None:
    seen: list[tuple[int, str, Measurement]] = []
    done = {c.name: [[100.0] * 4] for c in CANDIDATES}
    runner = runner_for({DEFAULT: 100.0, HEURISTIC: 100.0, "trial 3": 100.0}, noise=0.0)
    run_confirm(runner, rounds=2, done=done, on_run=lambda r, c, m: seen.append((r, c.name, m)))
    # Only the new runs are reported, each with its round number, so a caller can store them as they come.
    # Round 1 starts from the second candidate (the order rotates each round).
    assert [(r, name) for r, name, _ in seen] == [(1, HEURISTIC), (1, "trial 3"), (1, DEFAULT)]
    # The measurement reported is the full record, with the policy's timed steps.
    assert all(len(m.timed_seconds) == POLICY.timed for _, _, m in seen)


# -- candidates, rounds and the stored runs ------------------------------------------------------------


def trial(number: int, value: float, intra_op: int, baseline: str | None = None) -> FrozenTrial:
    """A complete trial as the search stores it: a baseline under its name, or a sampled setting."""
    made = create_trial(
        params={"intra_op": intra_op, "inter_op": 1},
        distributions={"intra_op": IntDistribution(0, 8), "inter_op": IntDistribution(0, 4)},
        value=value,
        user_attrs={"baseline": baseline} if baseline else {},
    )
    made.number = number
    return made


def test_candidates_are_every_baseline_then_the_best_distinct_sampled_settings() -> None:
    trials = [
        trial(0, 100.0, 0, baseline=DEFAULT),
        trial(1, 90.0, 2, baseline=HEURISTIC),
        trial(2, 95.0, 2),  # the heuristic's setting, sampled again: already a candidate
        trial(3, 120.0, 1),
        trial(4, 119.0, 1),  # the same setting as trial 3, measured again: counted once
        trial(5, 110.0, 3),
        trial(6, 105.0, 4),
    ]

    def label(params: Mapping[str, Any]) -> str:
        return f"{params['intra_op']}/{params['inter_op']}"

    chosen = pick_candidates(trials, label, most=4)
    # Both baselines by name (by search value), then the two best settings not measured as any of them.
    assert [c.name for c in chosen] == [DEFAULT, HEURISTIC, "trial 3", "trial 5"]
    assert chosen[2].settings == Settings(intra_op=1, inter_op=1)
    # Room for the baselines only: no sampled setting is confirmed.
    assert [c.name for c in pick_candidates(trials, label, most=2)] == [DEFAULT, HEURISTIC]


def test_planned_rounds_fit_the_time_left_but_never_fall_below_three() -> None:
    wanted = MeasurementPolicy("confirm", warmup=1, timed=4, timeout_s=60.0, rounds=6)
    cost = CostModel(wall_s=10.0, step_s=1.0, policy=POLICY)
    # No deadline, or nothing measured to price a run: the rounds the policy asks for.
    assert planned_rounds(wanted, 3, None, 1000.0) == 6
    assert planned_rounds(wanted, 3, cost, None) == 6
    # 3 settings x 10 s a run: 150 s hold 5 rounds, fewer than the 6 asked for.
    assert planned_rounds(wanted, 3, cost, 150.0) == 5
    # Time for one round only: still 3, the fewest a clear verdict can come from.
    assert planned_rounds(wanted, 3, cost, 30.0) == MIN_ROUNDS


def test_a_malformed_stored_confirmation_is_refused_with_where_it_breaks(
    storage: optuna.storages.RDBStorage,
) -> None:
    study = optuna.create_study(storage=storage, study_name="poisoned")
    run = {"round": 0, "candidate": DEFAULT, "measurement": {"batch_size": 32, "timed_seconds": "fast"}}
    study.set_user_attr("confirmation", {"candidates": [DEFAULT], "rates": {DEFAULT: [[1.0]]}, "runs": [run]})
    # A run whose measurement has no step times (another worker's garbage) is one typed error naming it,
    # not a KeyError or a resumed confirmation built on it.
    with pytest.raises(MalformedRecord, match=r"confirmation\.runs\[0\]\.measurement"):
        ConfirmationLog(study, [DEFAULT], POLICY)


def test_confirmation_log_stores_each_run_as_a_typed_record(storage: optuna.storages.RDBStorage) -> None:
    study = optuna.create_study(storage=storage, study_name="log")
    log = ConfirmationLog(study, [DEFAULT, HEURISTIC], POLICY)
    measurement = Measurement(32, (0.032,) * 4, (0.05,))
    log.add(0, DEFAULT, measurement)
    stored = StoredConfirmation.from_dict(study.user_attrs["confirmation"])
    # What was stored reads back as it was measured: the candidate, its round and the whole measurement.
    assert stored.runs == (ConfirmationRun(0, DEFAULT, measurement),)
    assert stored.candidates == (DEFAULT, HEURISTIC) and stored.policy == {"warmup": 1, "timed": 4}
    # A new log for the same candidates and policy resumes it: the same id, the stored round kept.
    again = ConfirmationLog(study, [DEFAULT, HEURISTIC], POLICY)
    assert again.id == stored.id and again.rates() == {DEFAULT: [measurement.rates]}


def test_the_winner_is_compared_with_every_other_candidate() -> None:
    rates = {
        DEFAULT: [[100.0, 101.0]] * 3,
        "openvino-small": [[150.0, 151.0]] * 3,
        "trial 3": [[165.0, 166.0]] * 3,
    }
    params = {DEFAULT: Settings().params(), "openvino-small": Settings().params(), "trial 3": C.settings.params()}
    verdict = decide(rates, params)
    # Every other candidate, the launcher recipes included, gets the winner's speedup with its interval:
    # 165.5 / 150.5 over the recipe, 165.5 / 100.5 over tf-default.
    assert set(verdict.vs_others) == {DEFAULT, "openvino-small"}
    assert verdict.vs_others["openvino-small"].value == pytest.approx(165.5 / 150.5, rel=1e-3)
    assert verdict.against_each().startswith("trial 3 over: tf-default 1.65x")
    assert set(verdict.to_dict()["speedup_vs_each"]) == {DEFAULT, "openvino-small"}


# -- a candidate whose run fails ----------------------------------------------------------------------


def failing_runner(fails: dict[str, BaseException], rates: dict[str, float] | None = None) -> ReplayRunner:
    """Each candidate at its rate (100 images/sec unless told), except that the runs of those in ``fails``
    raise the error given, every time."""
    rates = rates or {}
    by_settings = {c.settings: c.name for c in CANDIDATES}

    def script(spec: TrialSpec, _call: int) -> Sequence[float] | BaseException:
        name = by_settings[spec.settings]
        if name in fails:
            return fails[name]
        return [spec.global_batch / rates.get(name, 100.0)] * (spec.policy.warmup + spec.policy.timed)

    return ReplayRunner(script)


def test_a_candidate_whose_run_fails_is_dropped_and_the_others_are_confirmed() -> None:
    oom = WorkerOutOfMemory("worker ran out of memory (exit status 137)", "MemoryError: cannot allocate\n")
    runner = failing_runner({"trial 3": oom}, {DEFAULT: 100.0, HEURISTIC: 120.0})
    failed: list[tuple[int, str, str]] = []
    stored: list[tuple[str, str, bool]] = []
    verdict = run_confirm(
        runner,
        rounds=3,
        on_fail=lambda r, c, why: failed.append((r, c.name, why)),
        on_drop=lambda c, why, lasting: stored.append((c.name, why, lasting)),
    )
    # trial 3 fails in its first run (round 1, third in order) and is measured no more: 1 run of it, then
    # 3 rounds of the two others.
    assert sum(spec.settings == C.settings for spec in runner.calls) == 1
    assert len(runner.calls) == 1 + 2 * 3
    # The verdict is decided on the two that ran, every round of theirs, and names the dropped one with why
    # (the worker's own last words, shortened to one line).
    assert set(verdict.rates) == {DEFAULT, HEURISTIC} and all(len(r) == 3 for r in verdict.rates.values())
    assert verdict.winner == HEURISTIC
    assert verdict.dropped == {"trial 3": "worker ran out of memory (exit status 137): MemoryError: cannot allocate"}
    # Said when it fails; handed on to be stored once tf-default has run well after it (round 2 starts with
    # the heuristic, then tf-default): a lasting drop, as running out of memory is the setting's own.
    assert failed == [(0, "trial 3", verdict.dropped["trial 3"])]
    assert stored == [("trial 3", verdict.dropped["trial 3"], True)]
    assert "dropped (a confirmation run failed): trial 3 (worker ran out of memory" in verdict.text()
    # And the stored form carries it, for show and the table.
    assert verdict.to_dict()["dropped"] == verdict.dropped
    assert "trial 3" not in verdict.to_dict()["params"]


def test_a_candidate_disturbed_in_every_attempt_is_dropped_too() -> None:
    disturbed = Disturbed("disturbed in all 3 attempts (last: 40% of its cores' time taken)", [])
    stored: list[tuple[str, bool]] = []
    verdict = run_confirm(
        failing_runner({HEURISTIC: disturbed}),
        rounds=3,
        on_drop=lambda c, why, lasting: stored.append((c.name, lasting)),
    )
    # A busy neighbour that keeps one candidate from a fair measurement costs that candidate, not the verdict.
    assert set(verdict.rates) == {DEFAULT, "trial 3"} and HEURISTIC in verdict.dropped
    assert verdict.vs_heuristic is None
    # But not for good: the neighbour may be gone when the confirmation resumes, so the drop does not last.
    assert stored == [(HEURISTIC, False)]


def test_tf_default_failing_ends_the_confirmation_and_an_interrupt_is_no_failure() -> None:
    crashed = WorkerExited("worker exited with status 1", "RuntimeError: broken\n")
    # Without tf-default there is nothing to compare against: one error naming it and why, never a verdict.
    with pytest.raises(TunerError, match=r"tf-default failed in confirmation round 1: worker exited .*broken"):
        run_confirm(failing_runner({DEFAULT: crashed}), rounds=3)
    # Ctrl-C while a candidate runs is the user's, not the candidate's: it stops everything, nothing is dropped;
    # so does a worker that could not even be started (the machine's fault, never the settings').
    with pytest.raises(Interrupted):
        run_confirm(failing_runner({"trial 3": Interrupted("interrupted")}), rounds=3)
    with pytest.raises(WorkerNotStarted):
        run_confirm(failing_runner({"trial 3": WorkerNotStarted("cannot start worker x: [Errno 12]")}), rounds=3)


def test_when_tf_default_fails_too_no_drop_is_stored_and_a_resume_measures_them_all(
    storage: optuna.storages.RDBStorage,
) -> None:
    study = optuna.create_study(storage=storage, study_name="machine")
    broken = WorkerExited("worker exited with status 1", "OSError: [Errno 28] No space left on device\n")
    # The disk fills up in round 2: the heuristic (first in that round) fails, then tf-default does too.
    # The heuristic's failure was the machine's, not its own, so it is not stored as dropped.
    with pytest.raises(TunerError, match="tf-default failed in confirmation round 2"):
        confirm_logged(study, RoundRunner(fail_from=3, error=broken), CANDIDATES, WORKLOAD, CORES, POLICY, 3)
    assert StoredConfirmation.from_dict(study.user_attrs["confirmation"]).dropped == {}
    # Space freed, the same confirmation resumes and measures every candidate, the heuristic included.
    again = confirm_logged(study, failing_runner({}), CANDIDATES, WORKLOAD, CORES, POLICY, 3)
    assert again.dropped == {} and all(len(runs) == 3 for runs in again.rates.values())


class RoundRunner(ReplayRunner):
    """Every candidate at 100 images/sec until its ``fail_from``-th run, from which every run raises ``error``."""

    def __init__(self, fail_from: int, error: BaseException) -> None:
        def script(spec: TrialSpec, call: int) -> Sequence[float] | BaseException:
            if call >= fail_from:
                return error
            return [spec.global_batch / 100.0] * (spec.policy.warmup + spec.policy.timed)

        super().__init__(script)


def test_once_only_tf_default_is_left_nothing_more_is_measured() -> None:
    crashed = WorkerCrashed("worker killed by SIGSEGV", "Segmentation fault")
    runner = failing_runner({HEURISTIC: crashed, "trial 3": crashed})
    verdict = run_confirm(runner, rounds=3)
    # Round 1 measures tf-default, then sees both others fail; tf-default runs once more (round 2), which
    # shows the failures were theirs, and is then not measured alone for a third round.
    assert len(runner.calls) == 4 and set(verdict.rates) == {DEFAULT}
    assert verdict.text().startswith("nothing left to compare with tf-default: recommend tf-default; dropped")
    assert verdict.against_each() == "tf-default over: no other candidate"


def test_a_resumed_confirmation_keeps_its_dropped_candidates_dropped(storage: optuna.storages.RDBStorage) -> None:
    study = optuna.create_study(storage=storage, study_name="dropped")
    timeout = WorkerTimeout("worker ran past 60 s")
    first = confirm_logged(study, failing_runner({"trial 3": timeout}), CANDIDATES, WORKLOAD, CORES, POLICY, 2)
    stored = StoredConfirmation.from_dict(study.user_attrs["confirmation"])
    # The drop is stored with the runs, as it happens.
    assert stored.dropped == {"trial 3": "worker ran past 60 s"} == first.dropped
    # Resumed with one more round, by a runner under which trial 3 would now run: it is not tried again
    # (its failure is on record), only the third round of the others is measured.
    runner = failing_runner({})
    lines: list[str] = []
    again = confirm_logged(study, runner, CANDIDATES, WORKLOAD, CORES, POLICY, 3, progress=lines.append)
    assert [spec.settings for spec in runner.calls] == [A.settings, B.settings]
    assert again.dropped == first.dropped and set(again.rates) == {DEFAULT, HEURISTIC}
    assert "trial 3: dropped earlier in this confirmation (worker ran past 60 s)" in lines


def test_a_stored_drop_must_name_a_candidate() -> None:
    # A shared study's "dropped" is checked like every other name: a crafted key is refused where it is.
    with pytest.raises(MalformedRecord, match=r"confirmation\.dropped"):
        StoredConfirmation.from_dict({"candidates": [DEFAULT], "dropped": {"$(rm -rf ~)": "x"}})
    with pytest.raises(MalformedRecord, match=r"confirmation\.dropped"):
        StoredConfirmation.from_dict({"candidates": [DEFAULT], "dropped": {"trial 3": 7}})


def test_a_candidate_dropped_after_good_rounds_leaves_the_verdicts_loop_rates_whole(
    storage: optuna.storages.RDBStorage,
) -> None:
    study = optuna.create_study(storage=storage, study_name="late")
    oom = WorkerOutOfMemory("worker ran out of memory (exit status 137)")
    runs = {"trial 3": 0}

    def script(spec: TrialSpec, _call: int) -> Sequence[float] | BaseException:
        if spec.settings == C.settings:
            runs["trial 3"] += 1
            if runs["trial 3"] > 1:  # its first round runs; from the second on it runs out of memory
                return oom
        return [spec.global_batch / 100.0] * (spec.policy.warmup + spec.policy.timed)

    verdict = confirm_logged(study, ReplayRunner(script), CANDIDATES, WORKLOAD, CORES, POLICY, 3)
    store_verdict(study, verdict, dict, trials=3)
    stored = StoredVerdict.from_dict(study.user_attrs["verdict"])
    confirmation = StoredConfirmation.from_dict(study.user_attrs["confirmation"])
    # Its good round stays on record with the runs, but the verdict was decided without it ...
    assert len(confirmation.rates["trial 3"]) == 1 and "trial 3" in stored.dropped
    # ... and show's timed-loop figures are those of the candidates the verdict compared, not "not stored".
    loop = confirmed_loop_rates(stored, confirmation)
    assert loop is not None and set(loop) == {DEFAULT, HEURISTIC}


def test_a_failure_after_tf_defaults_last_run_is_checked_by_one_more_run_of_it(
    storage: optuna.storages.RDBStorage,
) -> None:
    broken = WorkerExited("worker exited with status 1", "OSError: [Errno 28] No space left on device\n")
    # Round 3 runs trial 3, tf-default, then the heuristic (call 8), which fails: no tf-default run follows in
    # the rounds, so one more run of it (call 9) is the check. Here the disk is full for it too: the
    # heuristic's failure may be the machine's, so the confirmation ends and nothing is stored as dropped.
    study = optuna.create_study(storage=storage, study_name="late-machine")
    with pytest.raises(TunerError, match="tf-default failed in the check after confirmation's last round"):
        confirm_logged(study, RoundRunner(fail_from=8, error=broken), CANDIDATES, WORKLOAD, CORES, POLICY, 3)
    assert StoredConfirmation.from_dict(study.user_attrs["confirmation"]).dropped == {}
    # Where only the heuristic fails, the check passes: its drop is the heuristic's own, stored, and the
    # check's run is not a round (tf-default keeps its three).
    calls: list[int] = []

    def script(spec: TrialSpec, call: int) -> Sequence[float] | BaseException:
        calls.append(call)
        return broken if call == 8 else [spec.global_batch / 100.0] * (spec.policy.warmup + spec.policy.timed)

    study = optuna.create_study(storage=storage, study_name="late-own")
    verdict = confirm_logged(study, ReplayRunner(script), CANDIDATES, WORKLOAD, CORES, POLICY, 3)
    assert calls == list(range(10)) and len(verdict.rates[DEFAULT]) == 3
    assert set(StoredConfirmation.from_dict(study.user_attrs["confirmation"]).dropped) == {HEURISTIC}
