"""Study logic with a replaying runner: baselines first, failures stored, resume, confirmation, budget."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import FAST_CONFIRM, make_config
from tuner import report
from tuner.confirm import DEFAULT, HEURISTIC
from tuner.errors import EnvironmentChanged, TunerError, WorkerCrashed, WorkerNotStarted
from tuner.models import ModelRef
from tuner.owner import identity as owner_identity
from tuner.pipeline import tuned_settings
from tuner.policy import MeasurementPolicy
from tuner.replay import ReplayRunner
from tuner.resume import queue_baselines
from tuner.runner import TrialSpec
from tuner.space import load as load_space
from tuner.study import WAIT, StopRule, StudyRun
from tuner.summary import format_table, summarize_study
from tuner.workload import Workload


def fast(params: dict[str, object]) -> bool:
    return (params["intra_op"], params["inter_op"], params["data_format"]) == (1, 1, "NHWC")


def rate(spec: TrialSpec) -> float:
    """A landscape with one clearly best thread setting (20% over the rest), whatever oneDNN's switch."""
    return 1200.0 if fast(spec.settings.params()) else 1000.0


def rate_of(params: dict[str, object]) -> float:
    """What ``rate`` gives the settings ``params``."""
    return 1200.0 if fast(params) else 1000.0


def states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials()]


def test_baselines_are_measured_first_with_raw_values_and_metadata(storage: optuna.storages.RDBStorage) -> None:
    run = StudyRun(storage, make_config(trials=6), ReplayRunner.from_rates(rate, noise=0.01))
    run.search(None)
    trials = run.study.get_trials()
    # The two baselines are enqueued before any sampled trial, with the space's values at 2 cores.
    assert trials[0].user_attrs["baseline"] == "tf-default"
    assert trials[0].params == {"intra_op": 0, "inter_op": 0, "data_format": "NHWC", "onednn": "default"}
    assert trials[1].user_attrs["baseline"] == "heuristic"
    assert trials[1].params == {"intra_op": 2, "inter_op": 1, "data_format": "NCHW", "onednn": "default"}
    # Exactly the requested number of complete trials, each keeping its raw timed step times.
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    assert all(len(t.user_attrs["measurement"]["timed_seconds"]) == 4 for t in complete)
    # The study records where it was measured.
    meta = run.study.user_attrs["tuner"]
    assert meta["cpu"]["id"] == run.config.signature.id
    assert meta["cores"] == 2 and meta["core_set"] == [0, 1]
    assert meta["space_hash"] == run.config.space.hash and meta["tool_version"]


def test_failed_trial_is_stored_as_fail_with_reason_and_search_goes_on(storage: optuna.storages.RDBStorage) -> None:
    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        if call == 2:
            return WorkerCrashed("worker killed by SIGSEGV", "Segmentation fault")
        return [0.032] * 5

    run = StudyRun(storage, make_config(trials=5), ReplayRunner(script))
    run.search(None)
    failed = [t for t in run.study.get_trials() if t.state == TrialState.FAIL]
    # The crash becomes one FAIL trial with its typed reason and stderr tail, never a score.
    assert len(failed) == 1
    assert failed[0].user_attrs["fail_reason"] == "crashed"
    assert "Segmentation fault" in failed[0].user_attrs["stderr_tail"]
    assert failed[0].value is None
    # The study went on to the requested number of complete trials.
    assert states(run.study).count(TrialState.COMPLETE) == 5


def test_three_failures_in_a_row_stop_the_study(storage: optuna.storages.RDBStorage) -> None:
    runner = ReplayRunner(lambda spec, call: WorkerCrashed("worker killed by SIGABRT"))
    run = StudyRun(storage, make_config(trials=5), runner)
    # Failing forever would waste the whole budget: after three in a row the study stops with the reason.
    with pytest.raises(TunerError, match="3 trials in a row failed; last: crashed"):
        run.search(None)
    assert states(run.study).count(TrialState.FAIL) == 3


def test_sampled_settings_failing_in_a_row_end_the_search_and_the_study_still_gets_its_verdict(
    storage: optuna.storages.RDBStorage,
) -> None:
    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        # The baselines run; every setting the sampler proposes dies (a region of the space this CPU cannot
        # hold, say), and so does no confirmation run of a baseline.
        if spec.policy.name != FAST_CONFIRM.name and call >= 2:
            return WorkerCrashed("worker killed by SIGABRT", "Aborted")
        return [spec.global_batch / rate(spec)] * (spec.policy.warmup + spec.policy.timed)

    lines: list[str] = []
    config = make_config(trials=8)
    verdict = StudyRun(storage, config, ReplayRunner(script), progress=lines.append).run()
    trials = optuna.load_study(study_name=config.name, storage=storage).trials
    # Three failures in a row end the search, saying so, not the study: tf-default and the heuristic were
    # measured, and their confirmation gives the verdict.
    measured = [t.state for t in trials if t.state != TrialState.PRUNED]  # skips (duplicates) measure nothing
    assert measured == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] * 3
    assert any(line.startswith("search ends: 3 trials in a row failed; last: crashed") for line in lines)
    assert verdict.recommended == "tf-default" and set(verdict.rates) == {"tf-default", "heuristic"}


def test_forged_trials_in_a_shared_study_are_left_out_not_fatal(storage: optuna.storages.RDBStorage) -> None:
    config = make_config(trials=6)
    StudyRun(storage, config, ReplayRunner.from_rates(rate)).search(None)
    study = optuna.load_study(study_name=config.name, storage=storage)
    bogus = optuna.distributions.IntDistribution(0, 2)
    # Another process wrote a complete trial whose params are no settings, and one of valid settings whose
    # value is infinite (it would always rank first).
    study.add_trial(optuna.trial.create_trial(params={"bogus": 1}, distributions={"bogus": bogus}, value=5.0))
    valid = study.trials[2]
    infinite = optuna.trial.create_trial(params=valid.params, distributions=valid.distributions, value=float("inf"))
    study.add_trial(infinite)
    lines: list[str] = []
    run = StudyRun(storage, dataclasses.replace(config, trials=8), ReplayRunner.from_rates(rate), progress=lines.append)
    # Each is named once when the study opens, with why ...
    left_out = [line for line in lines if "left out" in line]
    assert len(left_out) == 2 and "not valid settings" in left_out[0] and "not a finite number" in left_out[1]
    # ... and the study goes on: searched, confirmed with a verdict, none of the two among its candidates
    # or run as tuned.
    verdict = run.run()
    forged = {f"trial {number}" for number in (len(study.trials) - 2, len(study.trials) - 1)}
    assert not forged & set(verdict.rates)
    tuned = tuned_settings(optuna.load_study(study_name=config.name, storage=storage))
    assert tuned is not None


def test_a_stored_setting_a_newer_rule_cannot_run_is_left_out_and_other_choices_are_refused(
    storage: optuna.storages.RDBStorage,
) -> None:
    config = make_config(trials=5, space=load_space("tensorflow", 2), allow_precision=("bf16",))
    first = StudyRun(storage, config, ReplayRunner.from_rates(rate))
    first.search(None)
    study = optuna.load_study(study_name=config.name, storage=storage)
    # An earlier tuner searched bf16 with oneDNN off, which this one takes out as emulated (plain Eigen); it
    # measured that setting with a value that would rank first.
    emulated = dict(first.baselines.runnable[DEFAULT], precision="bf16", onednn=False)
    study.add_trial(optuna.trial.create_trial(params=emulated, distributions=first.space.distributions(2), value=1e9))
    old = len(study.trials) - 1
    lines: list[str] = []
    run = StudyRun(storage, dataclasses.replace(config, trials=6), ReplayRunner.from_rates(rate), progress=lines.append)
    # Resumed, the study names it once with the rule's reason, and never ranks, confirms or recommends it.
    assert any(f"trial {old} left out: its settings cannot run here: with oneDNN off, bf16" in line for line in lines)
    assert f"trial {old}" not in [c.name for c in run.candidates()]
    assert f"trial {old}" not in run.run().params
    # Resumed without --allow-precision, the space holds fewer precisions than the study searched: Optuna would
    # stop at the first trial; the run is refused in one line naming the knob and why, before anything is stored.
    before = [(t.number, t.state) for t in optuna.load_study(study_name=config.name, storage=storage).trials]
    refused = (
        r"searched precision over fp32, bf16, and this run can search fp32 \(precision=bf16 taken out: .*\): resume"
    )
    with pytest.raises(TunerError, match=refused):
        StudyRun(storage, dataclasses.replace(config, allow_precision=()), ReplayRunner.from_rates(rate))
    assert [(t.number, t.state) for t in optuna.load_study(study_name=config.name, storage=storage).trials] == before


def test_a_peers_baseline_impostors_and_out_of_space_queue_are_skipped_not_measured_or_confirmed(
    storage: optuna.storages.RDBStorage,
) -> None:
    config = make_config(trials=6)
    first = StudyRun(storage, config, ReplayRunner.from_rates(rate))
    first.search(None)
    planned = first.baselines.runnable
    study = optuna.load_study(study_name=config.name, storage=storage)
    forged = dict(planned[DEFAULT], intra_op=1, inter_op=1)  # the fast settings, posing as tf-default
    space = first.space.distributions(2)
    # Another process wrote a finished tf-default of other settings with a huge value (it would rank first
    # and be confirmed as tf-default: every ratio of the verdict would be to it) ...
    study.add_trial(optuna.trial.create_trial(params=forged, distributions=space, value=1e9,
                                              user_attrs={"baseline": DEFAULT}))  # fmt: skip
    impostor = len(study.trials) - 1
    # ... and queued a heuristic of other settings, a data format the space lacks (Optuna stops the search
    # at a choice it lacks) and an intra_op out of range (Optuna measures it, with a warning).
    study.enqueue_trial(dict(planned[HEURISTIC], intra_op=1), user_attrs={"baseline": HEURISTIC})
    study.enqueue_trial(dict(planned[DEFAULT], data_format="NCDHW"))
    study.enqueue_trial(dict(planned[DEFAULT], intra_op=999))
    # Values Optuna's own check takes for a choice (1.0 for True), and a tf-default queued with no settings
    # (the sampler would choose them, and the log would say "measuring tf-default").
    study.enqueue_trial(dict(planned[DEFAULT], onednn=1.0))
    study.enqueue_trial({}, user_attrs={"baseline": DEFAULT})
    queued = range(impostor + 1, impostor + 6)
    lines: list[str] = []
    runner = ReplayRunner.from_rates(rate)
    run = StudyRun(storage, dataclasses.replace(config, trials=10), runner, progress=lines.append)
    # The finished impostor is named once when the study opens, with why.
    assert any(f"trial {impostor} left out" in line and "not tf-default's here" in line for line in lines), lines
    verdict = run.run()
    trials = optuna.load_study(study_name=config.name, storage=storage).trials
    # Each queued one was skipped before any worker ran, with who queued it and why ...
    reasons = [trials[n].user_attrs.get("skip_reason", "") for n in queued]
    assert all(r.startswith("queued by another process") for r in reasons), reasons
    assert "not heuristic's here" in reasons[0] and "data_format=NCDHW" in reasons[1] and "intra_op=999" in reasons[2]
    assert "onednn=1.0" in reasons[3] and "named baseline tf-default" in reasons[4]
    assert all(trials[n].state == TrialState.PRUNED for n in queued)
    # ... so no worker ever ran those settings.
    ran = [spec.settings.params() for spec in runner.calls]
    assert not [p for p in ran if p.get("intra_op") == 999 or p.get("data_format") == "NCDHW" or p["onednn"] == 1.0]
    # The verdict's baselines are this study's own: tf-default and heuristic as planned, never the impostor.
    assert verdict.params[DEFAULT] == planned[DEFAULT] and verdict.params[HEURISTIC] == planned[HEURISTIC]
    # `show` reports tf-default's search value from the real one, never the impostor's 1e9.
    stored = optuna.load_study(study_name=config.name, storage=storage)
    shown = summarize_study(stored)
    assert shown["search_baselines"][DEFAULT] == rate_of(planned[DEFAULT])
    # The report's figures draw the impostor as a plain trial, not as tf-default; the real one keeps its name.
    drawn = report.plotted(stored)[0].trials
    assert "baseline" not in drawn[impostor].user_attrs
    assert [t.user_attrs.get("baseline") for t in drawn].count(DEFAULT) == 1
    # The impostor never counted for the study's trials: 10 usable ones were measured, and no proposal was
    # skipped as surplus on its account.
    assert len(run.measured()) == 10
    assert not [t for t in trials if t.user_attrs.get("skip_reason", "").startswith("surplus")]


def test_before_a_verdict_show_and_the_report_know_a_baseline_by_the_settings_the_run_planned(
    storage: optuna.storages.RDBStorage,
) -> None:
    config = make_config(trials=4)
    # A peer wrote a finished tf-default of other settings with a huge value before this run opened the
    # study, so it is the first trial of that name (show took the first one) ...
    study = optuna.create_study(storage=storage, study_name=config.name, direction="maximize")
    forged = dict(config.space.baselines(2)[DEFAULT], intra_op=1, inter_op=1)  # the fast settings
    space = config.space.distributions(2)
    study.add_trial(optuna.trial.create_trial(params=forged, distributions=space, value=1e9,
                                              user_attrs={"baseline": DEFAULT}))  # fmt: skip
    # It also wrote one under a baseline name this run does not measure (oneDNN on is tf-default on this CPU).
    study.add_trial(optuna.trial.create_trial(params=forged, distributions=space, value=1e9,
                                              user_attrs={"baseline": "onednn-on"}))  # fmt: skip
    # ... and this run searched only: no confirmation, so no verdict to say what tf-default is.
    run = StudyRun(storage, config, ReplayRunner.from_rates(rate))
    run.search(None)
    planned = run.baselines.runnable
    stored = optuna.load_study(study_name=config.name, storage=storage)
    assert "verdict" not in stored.user_attrs
    # The study stores the settings the run planned for each baseline: the word show and the report use.
    assert stored.user_attrs["runnable"]["planned"] == {name: dict(p) for name, p in planned.items()}
    # `show` reports tf-default's search value from the real one (as planned), never the impostor's 1e9, and
    # no onednn-on at all: the run does not measure one here.
    searched = summarize_study(stored)["search_baselines"]
    assert searched[DEFAULT] == rate_of(planned[DEFAULT]) and "onednn-on" not in searched
    # The report's figures draw both impostors as plain trials; the real tf-default keeps its name.
    drawn = report.plotted(stored)[0].trials
    assert "baseline" not in drawn[0].user_attrs and "baseline" not in drawn[1].user_attrs
    assert [t.user_attrs.get("baseline") for t in drawn].count(DEFAULT) == 1


def test_a_model_files_stand_in_baseline_is_its_own_though_it_sets_a_knob_the_space_lacks(
    storage: optuna.storages.RDBStorage,
) -> None:
    ref = ModelRef("mine-0123abcd", "keras", "/models/mine.keras")
    config = make_config(trials=4, workload=Workload(ref.label, "infer", 32, source=ref))
    run = StudyRun(storage, config, ReplayRunner.from_rates(rate))
    # A model file keeps its layout: the heuristic's NCHW cannot apply, its NHWC part stands in, planned
    # with the file's own precision (fp32), a knob this space does not search.
    stand_in = run.baselines.runnable["heuristic-nhwc"]
    assert stand_in.get("precision") == "fp32" and "precision" not in run.space.data["knobs"]
    verdict = run.run()
    # Measured with the space's knobs only, it is still the stand-in as planned (the precision it lacks is
    # the default): ranked, and confirmed under its name.
    assert "heuristic-nhwc" in verdict.params
    assert len(run.measured()) >= 4
    skipped = [
        t for t in optuna.load_study(study_name=config.name, storage=storage).trials if "skip_reason" in t.user_attrs
    ]
    # No proposal was skipped as surplus: the complete trials were counted as complete.
    assert not [t for t in skipped if t.user_attrs["skip_reason"].startswith("surplus")]


def test_a_resume_planned_otherwise_still_confirms_against_tf_default(storage: optuna.storages.RDBStorage) -> None:
    # The stock runtime loads no OpenMP library: the OpenMP build's space has its OMP/KMP knobs taken out.
    config = make_config(trials=5, space=load_space("intel-tensorflow", 2), probe={"onednn": True, "openmp": None})
    StudyRun(storage, config, ReplayRunner.from_rates(rate)).search(None)
    lines: list[str] = []
    # Resumed with those knobs allowed (--allow-inert): the baselines are now planned with them, so none of
    # the trials measured before is tf-default as planned now; and 3 trials are asked for, fewer than stored.
    inert = ("OMP_NUM_THREADS", "KMP_BLOCKTIME", "KMP_AFFINITY")
    again = StudyRun(storage, dataclasses.replace(config, inert=inert, trials=3), ReplayRunner.from_rates(rate),
                     progress=lines.append)  # fmt: skip
    assert any("not tf-default's here (written by another process, or planned otherwise)" in x for x in lines), lines
    verdict = again.run()
    # The search ends on its trial count, and confirmation measures tf-default afresh from its planned
    # settings: the study gets a verdict against tf-default as planned now, not "no complete trial".
    assert verdict.params[DEFAULT] == again.baselines.runnable[DEFAULT]
    assert "OMP_NUM_THREADS" in verdict.params[DEFAULT]


@pytest.mark.parametrize(
    "fault",
    [
        # The machine's fault: no memory to fork, say.
        WorkerNotStarted("cannot start worker python: [Errno 12] Cannot allocate memory"),
        # Another tuner sharing $TUNER_ENVS rebuilt the environment under the study (tuner/runner.py).
        EnvironmentChanged("environment /e/intel-tensorflow was rebuilt by another tuner during this run"),
    ],
    ids=["not-started", "environment"],
)
def test_a_fault_of_the_host_ends_the_search_and_holds_nothing_against_the_setting(
    storage: optuna.storages.RDBStorage, fault: TunerError
) -> None:
    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        return fault if call == 2 else [0.03] * 5  # the third trial meets it

    run = StudyRun(storage, make_config(trials=6), ReplayRunner(script))
    # The search stops at once with the reason: every trial after it would fail alike, whatever its settings.
    with pytest.raises(TunerError, match=re.escape(str(fault))):
        run.search(None)
    assert states(run.study).count(TrialState.COMPLETE) == 2 and states(run.study)[-1] == TrialState.FAIL
    stopped = run.study.get_trials()[-1]
    # Stored with its reason, which is neither "known to fail" nor done: the setting is not held against.
    assert stopped.user_attrs["fail_reason"] == fault.reason and run.failing() == {}
    # Once workers start again, the same command goes on and completes the study.
    again = StudyRun(storage, make_config(trials=6), ReplayRunner.from_rates(rate))
    again.search(None)
    assert states(again.study).count(TrialState.COMPLETE) == 6


def test_rerun_resumes_without_repeating_baselines(storage: optuna.storages.RDBStorage) -> None:
    StudyRun(storage, make_config(trials=4), ReplayRunner.from_rates(rate)).search(None)
    run = StudyRun(storage, make_config(trials=7), ReplayRunner.from_rates(rate))
    run.search(None)
    trials = run.study.get_trials()
    baselines = [t.user_attrs.get("baseline") for t in trials if "baseline" in t.user_attrs]
    # Resuming adds trials to the same study; the baselines were measured once, not re-enqueued.
    assert sorted(baselines) == ["heuristic", "tf-default"]
    assert states(run.study).count(TrialState.COMPLETE) == 7


def test_trial_left_running_by_a_dead_process_is_failed_on_resume(storage: optuna.storages.RDBStorage) -> None:
    run = StudyRun(storage, make_config(trials=3), ReplayRunner.from_rates(rate))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = run.study.ask()
    orphan.set_user_attr("owner", {**owner_identity(), "pid": int(dead.stdout), "start": None})
    # A new run on this host finds the RUNNING trial whose process is gone and marks it failed.
    StudyRun(storage, make_config(trials=3), ReplayRunner.from_rates(rate))
    frozen = run.study.get_trials()[orphan.number]
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["fail_reason"] == "orphaned"


def test_running_trial_of_a_live_process_is_left_alone(storage: optuna.storages.RDBStorage) -> None:
    run = StudyRun(storage, make_config(trials=3), ReplayRunner.from_rates(rate))
    live = run.study.ask()
    live.set_user_attr("owner", owner_identity())
    StudyRun(storage, make_config(trials=3), ReplayRunner.from_rates(rate))
    # Another worker still measuring must not have its trial failed under it.
    assert run.study.get_trials()[live.number].state == TrialState.RUNNING


def test_keyboard_interrupt_fails_the_running_trial_and_keeps_finished_ones(
    storage: optuna.storages.RDBStorage,
) -> None:
    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        return KeyboardInterrupt() if call == 3 else [0.032] * 5

    run = StudyRun(storage, make_config(trials=6), ReplayRunner(script))
    with pytest.raises(KeyboardInterrupt):
        run.search(None)
    trials = [t for t in run.study.get_trials() if t.state != TrialState.PRUNED]  # skips measure nothing
    # Three finished trials are kept; the interrupted one is FAIL with its reason; nothing stays RUNNING.
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    assert trials[3].user_attrs["fail_reason"] == "interrupted"
    # The same study then resumes to the requested count.
    again = StudyRun(storage, make_config(trials=6), ReplayRunner.from_rates(rate))
    again.search(None)
    assert states(again.study).count(TrialState.COMPLETE) == 6
    assert TrialState.RUNNING not in states(again.study)


def test_an_interrupted_baseline_is_measured_first_on_resume(storage: optuna.storages.RDBStorage) -> None:
    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        return KeyboardInterrupt() if call == 0 else [0.032] * 5

    run = StudyRun(storage, make_config(trials=6), ReplayRunner(script))
    order = list(run.baselines.runnable)
    assert len(order) >= 2  # tf-default and the heuristic (or heuristic-nhwc and onednn-on) on any CPU
    with pytest.raises(KeyboardInterrupt):
        run.search(None)
    # The first baseline was interrupted; the others still wait from the first start.
    trials = run.study.get_trials()
    assert trials[0].user_attrs["baseline"] == order[0] and trials[0].user_attrs["fail_reason"] == "interrupted"
    # Resumed with one trial fewer than the baselines (the case where order decides which are measured): the
    # plan's order holds, the interrupted one first, as if never interrupted; the last one is left out.
    again = StudyRun(storage, make_config(trials=len(order) - 1), ReplayRunner.from_rates(rate))
    again.search(None)
    done = [t.user_attrs["baseline"] for t in again.study.get_trials() if t.state == TrialState.COMPLETE]
    assert done == order[:-1]
    # The waiting trials it overtook were taken out of the queue and queued again: failed as "requeued" (no
    # sampler learns from a failure, as it would from a pruned trial), each saying behind which baseline.
    requeued = [t for t in again.study.get_trials() if t.user_attrs.get("fail_reason") == "requeued"]
    assert [t.user_attrs["baseline"] for t in requeued] == order[1:]
    assert all(t.state == TrialState.FAIL and order[0] in t.user_attrs["fail_message"] for t in requeued)
    assert TrialState.RUNNING not in states(again.study)
    # A later resume judges each requeued trial by the settings it was queued with: no "left out" warning.
    said: list[str] = []
    StudyRun(storage, make_config(trials=len(order) - 1), ReplayRunner.from_rates(rate), progress=said.append)
    assert not [line for line in said if "left out" in line], said


def test_two_workers_resuming_at_once_requeue_each_waiting_baseline_once(
    storage: optuna.storages.RDBStorage,
) -> None:
    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        return KeyboardInterrupt() if call == 0 else [0.032] * 5

    config = make_config(trials=6)
    run = StudyRun(storage, config, ReplayRunner(script))
    order = list(run.baselines.runnable)
    with pytest.raises(KeyboardInterrupt):
        run.search(None)
    # Worker B reads the queue; worker A then resumes and requeues; B acts on what it read.
    late = optuna.load_study(study_name=config.name, storage=storage)
    snapshot = late.get_trials(deepcopy=True)
    StudyRun(storage, config, ReplayRunner.from_rates(rate))
    late.get_trials = lambda deepcopy=True, states=None: snapshot  # type: ignore[method-assign]
    queue_baselines(late, run.baselines.runnable)
    trials = late._storage.get_all_trials(late._study_id)
    # B's claims find the waiting trials already taken by A: no error (Optuna raises for a finished trial),
    # each overtaken baseline was requeued once, by A; only the missing one is queued by both, as before.
    requeued = [t.user_attrs["baseline"] for t in trials if t.user_attrs.get("fail_reason") == "requeued"]
    assert requeued == order[1:]
    waiting = [t.user_attrs["baseline"] for t in trials if t.state == TrialState.WAITING]
    assert sorted(waiting) == sorted([*order, order[0]])


def test_confirmation_finds_the_fast_setting_and_stores_the_verdict(storage: optuna.storages.RDBStorage) -> None:
    config = make_config(cores=1, trials=16)
    runner = ReplayRunner.from_rates(rate, noise=0.01, seed=3)
    verdict = StudyRun(storage, config, runner).run()
    # The 20% faster setting wins, clearly, against both baselines.
    assert fast(verdict.params[verdict.winner])
    assert verdict.clear and verdict.recommended == verdict.winner
    assert verdict.vs_default.low > 1.1 and verdict.vs_heuristic is not None
    stored = optuna.load_study(study_name=config.name, storage=storage).user_attrs["verdict"]
    # The verdict is stored on the study with the recommended settings and the rounds measured.
    assert stored["recommended_params"]["intra_op"] == 1 and stored["rounds"] == 3
    assert set(stored["images_per_sec"]) >= {"tf-default", "heuristic"}


def test_no_clear_gain_recommends_tf_default(storage: optuna.storages.RDBStorage) -> None:
    runner = ReplayRunner.from_rates(lambda spec: 1000.0, noise=0.05, seed=5)
    verdict = StudyRun(storage, make_config(cores=1, trials=6), runner).run()
    # Every setting is the same speed: whatever won by luck is not clearly better, so tf-default is advised.
    assert not verdict.clear
    assert verdict.recommended == "tf-default"


def test_search_stops_when_the_space_is_exhausted(storage: optuna.storages.RDBStorage) -> None:
    config = make_config(cores=1, trials=50)
    run = StudyRun(storage, config, ReplayRunner.from_rates(rate))
    run.search(None)
    labels = [run.caps.label(t.params) for t in run.study.get_trials() if t.state == TrialState.COMPLETE]
    # One core holds 3 x 2 x 2 x 3 = 36 settings. With oneDNN on by default here, "default" runs as "on"
    # (24 left), and NCHW with oneDNN forced off cannot run (6 fewer): 18. Each is measured once, then it ends.
    assert config.space.size(1) == 36 and run.distinct_settings() == 18
    assert len(labels) == 18
    assert len(set(labels)) == 18


def test_changed_search_space_is_refused(storage: optuna.storages.RDBStorage, tmp_path: object) -> None:
    StudyRun(storage, make_config(trials=2), ReplayRunner.from_rates(rate)).search(None)
    config = make_config(trials=2)
    changed = type(config.space)(config.space.path, {**config.space.data, "description": "edited"})
    # Mixing trials from two different spaces in one study would corrupt it: refused with one line.
    with pytest.raises(TunerError, match="another version of search space"):
        StudyRun(storage, make_config(trials=2, space=changed), ReplayRunner.from_rates(rate))


def test_a_study_measured_with_another_framework_version_is_refused(storage: optuna.storages.RDBStorage) -> None:
    probe = {"onednn": True, "framework_version": "2.14.0"}
    StudyRun(storage, make_config(trials=2, probe=probe), ReplayRunner.from_rates(rate)).search(None)
    # The same framework (a resumed run, or another worker of a shared study): it goes on.
    StudyRun(storage, make_config(trials=3, probe=probe), ReplayRunner.from_rates(rate)).search(None)
    # The environment was rebuilt with another TensorFlow since (or a worker on another machine has one): the
    # same settings run other code, so its trials are not mixed in; one line, and the study is left as it was.
    before = len(storage.get_all_trials(storage.get_all_studies()[0]._study_id))
    newer = make_config(trials=4, probe={**probe, "framework_version": "2.15.0"})
    with pytest.raises(TunerError, match=re.escape("measured with framework version 2.14.0, and this run has 2.15.0")):
        StudyRun(storage, newer, ReplayRunner.from_rates(rate))
    assert len(storage.get_all_trials(storage.get_all_studies()[0]._study_id)) == before == 3
    # Where either side has no version read back (a study stored by an older tool), nothing is refused.
    StudyRun(storage, make_config(trials=4, probe={"onednn": True}), ReplayRunner.from_rates(rate)).search(None)


def test_budget_ends_the_search_and_leaves_room_for_confirmation(storage: optuna.storages.RDBStorage) -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    def script(spec: TrialSpec, call: int) -> list[float]:
        now[0] += 10.0  # every measurement costs 10 s of the fake clock
        return [0.032] * 5

    config = make_config(trials=30, budget_s=300.0)
    run = StudyRun(storage, config, ReplayRunner(script), clock=clock)
    verdict = run.run()
    complete = states(run.study).count(TrialState.COMPLETE)
    # Confirmation needs 4 settings x 3 rounds x 10 s = 120 s, so the search stops once 180 s are spent:
    # 18 trials, fewer than the 30 asked for.
    assert complete == 18
    # Confirmation got its three interleaved rounds, and the study ended on its budget.
    assert min(len(r) for r in verdict.rates.values()) == 3
    assert now[0] == 300.0


def test_budget_never_skips_the_baselines(storage: optuna.storages.RDBStorage) -> None:
    now = [0.0]

    def script(spec: TrialSpec, call: int) -> list[float]:
        now[0] += 50.0
        return [0.032] * 5

    run = StudyRun(storage, make_config(trials=30, budget_s=60.0), ReplayRunner(script), clock=lambda: now[0])
    verdict = run.run()
    # Even a budget too small for anything measures both baselines and confirms them: a verdict needs them.
    assert {"tf-default", "heuristic"} <= set(verdict.rates)


def test_median_pruner_stops_slow_trials_early(storage: optuna.storages.RDBStorage) -> None:
    # Every NCHW setting is 10x slower; the heuristic baseline is NCHW, so the slow side has a reference.
    runner = ReplayRunner.from_rates(lambda spec: 100.0 if spec.settings.data_format == "NCHW" else 1000.0)
    run = StudyRun(storage, make_config(trials=16, pruner="median", sampler="random"), runner)
    run.search(None)
    pruned = [t for t in run.study.get_trials() if t.user_attrs.get("skip_reason") == "pruner"]
    # The pruner acted, and only on the 10x slower settings: every pruned trial is NCHW, none NHWC.
    assert pruned, "the median pruner never stopped a trial"
    assert {t.params["data_format"] for t in pruned} == {"NCHW"}
    assert all(t.state == TrialState.PRUNED for t in pruned)


def test_wilcoxon_pruner_prunes_slow_settings_and_never_baselines(storage: optuna.storages.RDBStorage) -> None:
    runner = ReplayRunner.from_rates(lambda spec: 200.0 if spec.settings.data_format == "NCHW" else 1000.0, 0.02)
    longer = MeasurementPolicy("test-long", warmup=1, timed=8, timeout_s=60.0)  # enough steps for the test
    run = StudyRun(storage, make_config(trials=12, pruner="wilcoxon", sampler="random", policy=longer), runner)
    run.search(None)
    trials = run.study.get_trials()
    # The pruner's dependencies are installed (it would otherwise fail every trial), and the baselines,
    # the slow NCHW heuristic included, are always measured in full.
    assert not [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.state == TrialState.COMPLETE for t in trials if "baseline" in t.user_attrs)

    # It did act, and on the slow side: a larger share of the sampled NCHW settings (5x slower) was stopped
    # than of the NHWC ones (at p < 0.1 it may also stop a fast one now and then, by design).
    def pruned_share(layout: str) -> float:
        sampled = [t for t in trials if t.params.get("data_format") == layout and "baseline" not in t.user_attrs]
        sampled = [t for t in sampled if t.state == TrialState.COMPLETE or t.user_attrs.get("skip_reason") == "pruner"]
        return sum(t.state == TrialState.PRUNED for t in sampled) / max(1, len(sampled))

    assert pruned_share("NCHW") > 0 and pruned_share("NCHW") > pruned_share("NHWC")


def test_resuming_on_another_core_set_is_refused(storage: optuna.storages.RDBStorage) -> None:
    StudyRun(storage, make_config(cores=1, trials=2), ReplayRunner.from_rates(rate)).search(None)
    moved = dataclasses.replace(make_config(cores=1, trials=2), cores=(1,))
    # Trials timed on CPU 0 and on CPU 1 are not one experiment: the study refuses to mix them.
    with pytest.raises(TunerError, match="was measured with core_set"):
        StudyRun(storage, moved, ReplayRunner.from_rates(rate))


def test_confirmation_rounds_are_reused_only_when_measured_the_same_way(storage: optuna.storages.RDBStorage) -> None:
    runner = ReplayRunner.from_rates(rate, noise=0.01)
    run = StudyRun(storage, make_config(trials=4, candidates=1), runner)
    run.search(None)
    run.confirm(None, rounds=3)
    first = run.study.user_attrs["confirmation"]
    calls = len(runner.calls)
    run.confirm(None, rounds=3)
    # Same candidates, same policy: the stored rounds stand and nothing is measured again.
    assert len(runner.calls) == calls and run.study.user_attrs["confirmation"]["id"] == first["id"]
    longer = dataclasses.replace(run.config.confirm_policy, timed=6)
    run.confirm(None, rounds=3, policy=longer)  # as `tuner run` passes its benchmark's policy
    second = run.study.user_attrs["confirmation"]
    # Another policy: a new confirmation with its own id; rounds of 4 timed steps are not mixed with 6.
    assert second["id"] != first["id"] and second["policy"] == {"warmup": longer.warmup, "timed": 6}
    assert len(runner.calls) == calls + 3 * len(first["candidates"])
    assert {len(run["measurement"]["timed_seconds"]) for run in second["runs"]} == {6}


def test_trial_failed_by_another_process_while_it_ran_costs_that_trial_only(
    storage: optuna.storages.RDBStorage,
) -> None:
    def script(spec: TrialSpec, call: int) -> list[float]:
        if call == 2:  # another tuner (another container, say) takes this running trial for orphaned
            running = storage.get_all_trials(storage.get_all_studies()[0]._study_id, states=(TrialState.RUNNING,))
            storage.set_trial_user_attr(running[0]._trial_id, "fail_reason", "orphaned")
            storage.set_trial_state_values(running[0]._trial_id, TrialState.FAIL)
        return [0.032] * 5

    run = StudyRun(storage, make_config(trials=5), ReplayRunner(script))
    run.search(None)
    # That one trial stays FAIL as the other process left it; the study goes on to its five complete trials.
    assert states(run.study).count(TrialState.COMPLETE) == 5
    assert [t.user_attrs.get("fail_reason") for t in run.study.trials if t.state == TrialState.FAIL] == ["orphaned"]


def test_resuming_with_another_measurement_policy_is_refused(storage: optuna.storages.RDBStorage) -> None:
    StudyRun(storage, make_config(cores=1, trials=2), ReplayRunner.from_rates(rate)).search(None)
    longer = MeasurementPolicy("test", warmup=1, timed=8, timeout_s=60.0)
    # Bursts of 4 and of 8 timed steps are not one experiment: resuming with another policy is refused.
    with pytest.raises(TunerError, match="was measured with policy"):
        StudyRun(storage, make_config(cores=1, trials=2, policy=longer), ReplayRunner.from_rates(rate))


def test_what_cannot_run_here_is_said_once_and_not_again_on_resume(storage: optuna.storages.RDBStorage) -> None:
    first: list[str] = []
    StudyRun(storage, make_config(trials=2), ReplayRunner.from_rates(rate), progress=first.append)
    # oneDNN is on by default on this (probed) CPU, so the onednn-on baseline runs as tf-default: said once.
    assert "baseline onednn-on: same as tf-default on this CPU" in first
    again: list[str] = []
    run = StudyRun(storage, make_config(trials=2), ReplayRunner.from_rates(rate), progress=again.append)
    # Resumed on the same CPU, the stored note stands: nothing is said again, and it stays stored.
    assert not [line for line in again if line.startswith("baseline ")]
    assert run.study.user_attrs["runnable"]["baselines"] == {"onednn-on": "same as tf-default on this CPU"}
    # A study stored before the plan was (no "planned"): resumed, it gains the plan and says nothing again.
    older = {k: v for k, v in run.study.user_attrs["runnable"].items() if k != "planned"}
    run.study.set_user_attr("runnable", older)
    third: list[str] = []
    run = StudyRun(storage, make_config(trials=2), ReplayRunner.from_rates(rate), progress=third.append)
    assert not [line for line in third if line.startswith("baseline ")]
    assert set(run.study.user_attrs["runnable"]["planned"]) == set(run.baselines.runnable)


def test_stop_rule_names_each_exit_of_the_search(storage: optuna.storages.RDBStorage) -> None:
    now = [100.0]

    def script(spec: TrialSpec, call: int) -> list[float]:
        now[0] += 10.0  # every measurement costs 10 s of the fake clock
        return [0.032] * 5

    run = StudyRun(storage, make_config(cores=1, trials=3), ReplayRunner(script), clock=lambda: now[0])
    size = run.distinct_settings()
    # Nothing measured yet and no limit reached: the search goes on to the queued baselines.
    assert StopRule(3, size).check(run, skips=0) is None
    run.search(None)
    # Three complete trials of three wanted: the search ends without a word.
    assert StopRule(3, size).check(run, skips=0) == ""
    # Every distinct setting the space holds tried (here: as many as were tried): it ends too.
    assert StopRule(10, len(run.known())).check(run, skips=0) == ""
    running = run.study.ask()
    # One more wanted and another worker measuring it: wait for that worker, do not start another trial.
    assert StopRule(4, size).check(run, skips=0) == WAIT
    run.study.tell(running, state=TrialState.FAIL)
    # Baselines done and less than confirmation's time (4 settings x 3 rounds x 10 s) left before the
    # deadline: it ends, saying so; with more than that left, it goes on.
    assert StopRule(10, size, deadline=now[0] + 121.0).check(run, skips=0) is None
    assert StopRule(10, size, deadline=now[0] + 119.0).check(run, skips=0) == (
        "search ends after 3 complete trials: the rest of the budget is confirmation's"
    )
    # A search alone (--no-confirm) keeps no time for a confirmation that will not come: with 119 s left it
    # goes on, and it ends, saying so, only once less than a trial's time (10 s) is left.
    assert StopRule(10, size, deadline=now[0] + 119.0, confirms=False).check(run, skips=0) is None
    assert StopRule(10, size, deadline=now[0] + 11.0, confirms=False).check(run, skips=0) is None
    assert StopRule(10, size, deadline=now[0] + 9.0, confirms=False).check(run, skips=0) == (
        "search ends after 3 complete trials: another trial would not fit"
    )
    # Past a soft end with one sampled setting measured: it ends, saying its share is spent.
    assert StopRule(10, size, deadline=now[0] + 1e6, stop_at=now[0]).check(run, skips=0) == (
        "search ends after 3 complete trials: its share of the budget is spent"
    )
    # The sampler proposing only measured settings 25 times in a row: the space is exhausted for it.
    assert StopRule(10, size).check(run, skips=25) == "sampler proposed only measured settings 25 times: search ends"


def test_a_baseline_disturbed_in_every_search_attempt_is_confirmed_from_its_plan(
    storage: optuna.storages.RDBStorage,
) -> None:
    from tests.helpers import FAST
    from tuner.disturbance import Disturbed
    from tuner.settings import Settings

    tf_default = Settings.from_params({"intra_op": 0, "inter_op": 0, "data_format": "NHWC", "onednn": "default"})
    heuristic = Settings.from_params({"intra_op": 2, "inter_op": 1, "data_format": "NCHW", "onednn": "default"})
    alike = {"intra_op": 0, "inter_op": 0, "data_format": "NHWC", "onednn": True}  # tf-default, oneDNN on here
    confirmed: list[Settings] = []

    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        searching = spec.policy == FAST
        if searching and spec.settings == tf_default:  # a neighbour kept its cores busy in every attempt
            return Disturbed("disturbed in all 3 attempts")
        if spec.settings == heuristic:  # its worker crashes: known to fail, wherever it is measured
            return WorkerCrashed("worker killed by SIGSEGV")
        if not searching:
            confirmed.append(spec.settings)
        fast = spec.settings == Settings.from_params(alike)  # the search ranks the setting that runs alike first
        return [0.016 if fast else 0.032] * (spec.policy.warmup + spec.policy.timed)

    config = make_config(cores=2, trials=6)
    run = StudyRun(storage, config, ReplayRunner(script))
    run.study.enqueue_trial(alike)
    verdict = run.run()
    reasons = {t.user_attrs.get("baseline"): t.user_attrs.get("fail_reason") for t in run.study.trials}
    # Both baselines failed in the search: tf-default only because it was disturbed, the heuristic by crashing.
    assert reasons["tf-default"] == "disturbed" and reasons["heuristic"] == "crashed"
    # The study does not fail for want of a tf-default trial: confirmation measures tf-default from its
    # planned settings, every round, and the verdict compares against it. The crashing heuristic, known to
    # fail, is not measured again.
    assert "tf-default" in verdict.rates and len(verdict.rates["tf-default"]) == 3
    assert confirmed.count(tf_default) == 3 and "heuristic" not in verdict.rates
    # The sampled setting that runs as tf-default here is not confirmed beside it, and the extra baseline
    # takes no sampled setting's place: at most the baselines plus --candidates settings are confirmed.
    alike_trial = next(t for t in run.study.trials if t.params == alike and t.state == TrialState.COMPLETE)
    assert f"trial {alike_trial.number}" not in verdict.rates
    assert len(verdict.rates) <= len(run.baselines.runnable) + config.candidates
    # A baseline with a disturbed trial and a crashed one is known to fail: it stays out.
    run.study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params=heuristic.params(),
            distributions=next(
                t for t in run.study.trials if t.user_attrs.get("baseline") == "heuristic"
            ).distributions,
            user_attrs={"baseline": "heuristic", "fail_reason": "disturbed"},
        )
    )
    assert run.unranked_baselines() == ["tf-default"]


def test_a_candidate_failing_in_confirmation_is_dropped_and_the_study_still_gets_its_verdict(
    storage: optuna.storages.RDBStorage,
) -> None:
    def script(spec: TrialSpec, call: int) -> list[float] | BaseException:
        # The fast setting runs in the search, then its worker dies in every confirmation run (as a setting
        # near the memory limit may once the confirmation's longer runs start).
        if fast(spec.settings.params()) and spec.policy.name == FAST_CONFIRM.name:
            return WorkerCrashed("worker killed by SIGKILL", "Killed")
        return [spec.global_batch / rate(spec)] * (spec.policy.warmup + spec.policy.timed)

    config = make_config(cores=1, trials=16)
    verdict = StudyRun(storage, config, ReplayRunner(script)).run()
    # The search's best (fast whatever oneDNN's switch: one or two candidates) are dropped with why; the
    # others are confirmed and a verdict is stored all the same.
    dropped = [name for name in verdict.dropped if name.startswith("trial ")]
    assert dropped and all(verdict.dropped[name].startswith("worker killed by SIGKILL") for name in dropped)
    run_trials = optuna.load_study(study_name=config.name, storage=storage).trials
    assert all(fast(run_trials[int(name.split()[1])].params) for name in dropped)
    assert not set(dropped) & set(verdict.rates)
    assert verdict.recommended == "tf-default" and len(verdict.rates) >= 2
    # show says so: the verdict line names the dropped candidate and why, and show --json carries it.
    summary = summarize_study(optuna.load_study(study_name=config.name, storage=storage))
    assert summary["verdict"] is not None and summary["verdict"]["dropped"] == verdict.dropped
    # The fast setting is never run as "tuned" (GPU rows, `benchmark --settings tuned`): it fails there.
    tuned = tuned_settings(optuna.load_study(study_name=config.name, storage=storage))
    assert tuned is None or not fast(tuned.params())
    shown = " ".join(format_table([summary]).split())  # the verdict line is wrapped to the terminal
    assert f"dropped (a confirmation run failed): {dropped[0]} (worker killed by SIGKILL: Killed)" in shown


def test_a_setting_dropped_by_an_unfinished_confirmation_is_never_tuned(storage: optuna.storages.RDBStorage) -> None:
    config = make_config(cores=1, trials=16)
    run = StudyRun(storage, config, ReplayRunner.from_rates(rate, noise=0.01, seed=3))
    run.search(None)
    sampled = [t for t in run.study.trials if t.state == TrialState.COMPLETE and "baseline" not in t.user_attrs]
    best = max(sampled, key=lambda t: t.value or 0.0)
    # Its confirmation dropped the best sampled setting, then ended without a verdict (tf-default failed).
    run.study.set_user_attr(
        "confirmation",
        {"candidates": ["tf-default", f"trial {best.number}"], "dropped": {f"trial {best.number}": "killed"}},
    )
    tuned = tuned_settings(optuna.load_study(study_name=config.name, storage=storage))
    # "tuned" (GPU rows, `benchmark --settings tuned`) falls back to the best sampled trial not dropped.
    assert tuned is not None and tuned.params() != best.params


def test_a_seed_offset_past_two_to_the_32_still_makes_a_sampler() -> None:
    from tuner.study import make_sampler

    # A resumed study offsets the user's seed by its trials: from the largest seed Optuna takes, that passes
    # 2**32, which Optuna's generators refuse ("Seed must be between 0 and 2**32 - 1"). It wraps instead.
    for name in ("tpe", "random"):
        make_sampler(name, 2**32 - 1 + 7)


def test_waiting_for_other_workers_says_so_on_entering_and_each_minute(storage: optuna.storages.RDBStorage) -> None:
    now = [100.0]
    said: list[str] = []
    run = StudyRun(storage, make_config(cores=1, trials=3), ReplayRunner.from_rates(rate), clock=lambda: now[0])
    run.search(None)
    other = run.study.ask()  # another worker's trial, the fourth of four wanted: this worker waits for it
    other.set_user_attr("owner", owner_identity())
    polls = [0]

    def sleep(seconds: float) -> None:  # the poll: 20 s of the fake clock; the other worker ends after 7 polls
        polls[0] += 1
        now[0] += 20.0
        if polls[0] == 7:
            run.study.tell(other, 1000.0)

    waiting = StudyRun(
        storage, make_config(cores=1, trials=4), ReplayRunner.from_rates(rate), said.append, lambda: now[0], sleep
    )
    waiting.search(None)
    lines = [line for line in said if line.startswith("waiting for other workers")]
    # 140 s of waiting: one line on entering, then one a minute (at 60 s and 120 s), each naming the trial.
    assert lines == [
        f"waiting for other workers' trials {other.number} to finish (0m00s so far)",
        f"waiting for other workers' trials {other.number} to finish (1m00s so far)",
        f"waiting for other workers' trials {other.number} to finish (2m00s so far)",
    ]
