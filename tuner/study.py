"""One Optuna study per (model, mode, runtime, CPU signature, core count): search, then confirm.

The trial path: the sampler proposes knobs -> ``Settings`` validates them -> the runner measures them in a
pinned worker process -> the measurement (raw step times and runtime facts) is stored on the trial as user
attributes and its median images/sec is the trial's value. Baselines are enqueued first. Failed trials are
stored FAIL with their reason, never scored. The verdict from confirmation is stored on the study.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import __version__, disturbance, interrupt
from tuner.capability import Capabilities, narrow, plan_baselines, unrunnable
from tuner.confirm import (
    DEFAULT,
    HEURISTIC,
    MIN_ROUNDS,
    Candidate,
    Verdict,
    confirm_logged,
    pick_candidates,
    planned_rounds,
    store_verdict,
)
from tuner.cost import CostModel
from tuner.disturbance import Disturbed
from tuner.errors import EnvironmentChanged, Interrupted, InvalidSettings, Pruned, TunerError, WorkerNotStarted
from tuner.objective import OBJECTIVES, Objective
from tuner.owner import fail_orphans
from tuner.owner import identity as owner_identity
from tuner.policy import BURST, CONFIRM, MeasurementPolicy
from tuner.progress import StepLines
from tuner.progress import duration as duration  # re-exported: the ETA lines' format
from tuner.records import baseline_name, trial_measurement, trial_text, utc_now
from tuner.resume import (
    WORKER_FAILURES,
    Progress,
    baselines_pending,
    not_the_baseline,
    open_study,
    queue_baselines,
)
from tuner.runner import Runner, TrialSpec
from tuner.sanitize import one_line
from tuner.settings import Settings
from tuner.signature import CpuSignature
from tuner.space import SearchSpace, contains, searched_batches
from tuner.topology import cpu_quota, sockets_for, splits
from tuner.topology import notes as topology_notes
from tuner.workload import Workload

MAX_FAILURES_IN_A_ROW = 3
HOST_FAULTS = {WorkerNotStarted.reason, EnvironmentChanged.reason}  # a failed trial of these ends the study at once
SHARED_POLL_S = 2.0  # how often a worker waiting on other workers' last trials looks again
MAX_SKIPS_IN_A_ROW = 25  # sampler keeps proposing measured or forbidden settings: the space is exhausted


@dataclass(frozen=True)
class StudyConfig:
    workload: Workload
    cores: tuple[int, ...]  # the logical CPUs, one per physical core
    space: SearchSpace
    signature: CpuSignature
    runtime: str = "tensorflow"
    python: str = ""
    trials: int = 20
    budget_s: float | None = None
    policy: MeasurementPolicy = BURST
    confirm_policy: MeasurementPolicy = CONFIRM
    candidates: int = 2
    sampler: str = "tpe"
    pruner: str = "none"
    seed: int = 0
    probe: dict[str, Any] = field(default_factory=dict, compare=False)  # what the runtime really loaded
    model_facts: dict[str, Any] = field(default_factory=dict, compare=False)  # a model file's parameters, inputs
    inert: tuple[str, ...] = ()  # knobs searched although the runtime ignores them (--allow-inert)
    allow_precision: tuple[str, ...] = ()  # precisions other than fp32 the user opted into (--allow-precision)
    force_precision: bool = False  # search them even where the CPU lacks the instructions (--force-precision)

    @property
    def name(self) -> str:
        w = self.workload
        goal = "" if w.objective == "throughput" else f"-{w.objective}"  # throughput studies keep their names
        batch = ".".join(map(str, searched_batches(self.space))) or w.batch_size  # -b1.8.32.64: batch searched
        isa = "+isa" if "onednn_isa" in self.space.data["knobs"] else ""  # --search-isa: a study of its own
        return f"{w.model}-{w.mode}{goal}-b{batch}-{self.runtime}{isa}-{len(self.cores)}c-{self.signature.id}"

    def metadata(self) -> dict[str, Any]:
        """Where and how this study measures; stored on the study when it is created."""
        return {
            "model": self.workload.model,
            "model_source": None if self.workload.source is None else self.workload.source.worker_fields(),
            "mode": self.workload.mode,
            "batch_size": self.workload.batch_size,
            "searched_batches": searched_batches(self.space),
            "searched_knobs": sorted(self.space.data["knobs"]),
            "objective": self.workload.objective,
            "model_facts": self.model_facts,
            "runtime": self.runtime,
            "python": self.python,
            "cores": len(self.cores),
            "core_set": list(self.cores),
            "cpu": self.signature.to_dict(),
            "space": self.space.name,
            "space_hash": self.space.hash,
            "policy": {"name": self.policy.name, "warmup": self.policy.warmup, "timed": self.policy.timed},
            "tool_version": __version__,
            "probe": self.probe,
            "inert_knobs": list(self.inert),
            "cpu_quota": cpu_quota(),
            "topology_notes": topology_notes(self.cores),
            "host": socket.gethostname(),
            "created": utc_now(),
        }


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The named sampler, seeded. Optuna's samplers take seeds below 2**32: a resumed study offsets the
    user's seed by its trials, which may pass that, so the seed wraps."""
    seed %= 2**32
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise TunerError(f"unknown sampler {name!r}; known: tpe, random")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "wilcoxon":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
    raise TunerError(f"unknown pruner {name!r}; known: none, median, wilcoxon")


WAIT = "wait"  # StopRule: other workers are measuring the study's last trials
WAIT_LINE_S = 60.0  # while waiting for them, a line this often


@dataclass(frozen=True)
class StopRule:
    """When the search ends. ``check`` is asked before every trial and answers why the search ends now (its
    progress line, or "" for an end that says nothing), ``WAIT`` while other workers measure the last
    trials, or None to measure another trial. The exits, in the order they are checked: enough complete
    trials; every distinct setting that can run here tried; the study's other trials taken by workers
    elsewhere (wait); only the time confirmation needs left before ``deadline`` (the end of the study's
    budget; for a search alone, ``confirms`` False, less than a trial's time), once the baselines are done
    (and, with a soft end, one sampled setting measured); past ``stop_at`` (a soft end, which leaves the
    rest to a longer benchmark), the same; the sampler proposing only measured or forbidden settings
    ``MAX_SKIPS_IN_A_ROW`` times."""

    trials: int  # complete trials wanted
    size: int  # distinct settings that can be measured here
    deadline: float | None = None
    stop_at: float | None = None
    confirms: bool = True  # False for a search alone (--no-confirm): no time is kept for a confirmation

    def check(self, run: StudyRun, skips: int) -> str | None:
        complete = len(run.measured())
        if complete >= self.trials and (pending := run.baselines_pending()):
            # Fewer trials asked for than there are baselines: say which were left out (still queued).
            return (
                f"search ends at {self.trials} complete trials; baselines not yet measured: {', '.join(pending)} "
                "(queued: a run with more trials measures them first)"
            )
        if complete >= self.trials or len(set(run.known()) | set(run.failing())) >= self.size:
            return ""
        if complete + len(run.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) >= self.trials:
            return WAIT
        if (
            self.deadline is not None
            and run.baselines_done()
            and (self.stop_at is None or run.sampled())  # with a soft end: one sampled setting at least
            and run.clock() + (run.confirm_cost(MIN_ROUNDS) if self.confirms else run.trial_s()) >= self.deadline
        ):
            rest = "the rest of the budget is confirmation's" if self.confirms else "another trial would not fit"
            return f"search ends after {complete} complete trials: {rest}"
        if self.stop_at is not None and run.clock() >= self.stop_at and run.baselines_done() and run.sampled():
            return f"search ends after {complete} complete trials: its share of the budget is spent"
        if skips >= MAX_SKIPS_IN_A_ROW:
            return f"sampler proposed only measured settings {skips} times: search ends"
        return None


class StudyRun:
    """Runs one study to its verdict; every step is stored as it happens, so a re-run resumes. Opening the
    study (resume checks, baselines queued) is ``tuner/resume.py``'s; when the search ends, ``StopRule``'s;
    confirmation's candidates, rounds and stored runs, ``tuner/confirm.py``'s."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        config: StudyConfig,
        runner: Runner,
        progress: Progress = lambda line: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.sleep = sleep
        self.runner = runner
        self.progress = progress
        self.clock = clock
        self.study = optuna.create_study(
            storage=storage,
            study_name=config.name,
            direction="maximize",
            sampler=make_sampler(config.sampler, config.seed),
            pruner=make_pruner(config.pruner),
            load_if_exists=True,
        )
        # A resumed study must not replay the sampler's first proposals: offset the seed by the trials so far.
        done = len(self.study.get_trials(deepcopy=False))
        if done:
            self.study.sampler = make_sampler(config.sampler, config.seed + done)
        self._current = -1  # the trial being measured, to tell whether another process finished it
        self._confirms = True  # whether this run's search is followed by a confirmation (``search``)
        caps = Capabilities.from_probe(config.probe, config.allow_precision, config.force_precision)
        self.caps = dataclasses.replace(caps.for_workload(config.workload), splits=splits(config.cores))
        # The space and baselines as they can run here (the probe's read-back): see tuner/capability.py.
        self.space, excluded = narrow(config.space, self.caps, len(config.cores), keep=config.inert)
        kept = set(self.space.data["knobs"])  # a knob taken out is not set by the baselines either
        named = config.space.baselines(len(config.cores), sockets_for(config.cores))
        baselines = {name: {k: v for k, v in params.items() if k in kept} for name, params in named.items()}
        self.baselines = plan_baselines(baselines, self.caps)
        space = self.space.distributions(len(config.cores))
        open_study(self.study, config, self.caps, self.baselines, excluded, progress, space)
        self._why_unusable: dict[int, str | None] = {}  # by trial number: a finished trial never changes
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            why = self._unusable(trial)
            if why is not None:
                progress(f"trial {trial.number} left out: {why} (written by another process, or planned otherwise)")

    # -- the trials -----------------------------------------------------------------------------------

    def _unusable(self, trial: FrozenTrial) -> str | None:
        """``unusable(trial)``, or a baseline's name on settings that are not that baseline's here
        (``not_the_baseline``); judged once per finished trial: the search asks for its trials many times."""
        if trial.number not in self._why_unusable:
            why = unusable(trial) or not_the_baseline(trial, self.baselines.runnable) or self._not_runnable(trial)
            self._why_unusable[trial.number] = why
        return self._why_unusable[trial.number]

    def _not_runnable(self, trial: FrozenTrial) -> str | None:
        """Why a stored trial's settings cannot run here now (tuner/capability.py's rules: one of a newer tuner,
        or measured before on another footing), or None: it is not ranked, confirmed or recommended."""
        try:
            found = unrunnable(trial.params, self.caps)
        except (TypeError, ValueError) as error:  # ``unusable`` has found what Settings refuses; this is the rest
            return f"its params cannot be judged ({one_line(error, 120)})"
        return None if found is None else f"its settings cannot run here: {found[1]}"

    def _foreign(self, trial: FrozenTrial) -> str | None:
        """Why the settings ``trial`` (running now) was queued with are not this study's to measure, or None
        (it was not queued, or it is a baseline as planned here). Only this run queues trials, its baselines;
        in a shared study another process may queue anything: a baseline's name on other settings or none,
        or values outside the space (Optuna would measure an integer out of range, and stop the search at a
        choice it lacks)."""
        if baseline_name(trial.user_attrs) is not None:  # one of the baselines, as planned here, or not
            claim = not_the_baseline(trial, self.baselines.runnable)
            return None if claim is None else f"queued by another process: {claim}"
        fixed = trial.system_attrs.get("fixed_params")
        if not fixed:
            return None
        if not isinstance(fixed, dict):
            return "queued by another process with no settings"
        space = self.space.distributions(len(self.config.cores))
        for knob, value in fixed.items():
            dist = space.get(knob)
            if dist is None or not contains(dist, value):
                return f"queued by another process with {one_line(knob, 40)}={one_line(value, 40)}, outside the space"
        return None

    def measured(self) -> list[FrozenTrial]:
        """Complete trials, less any whose stored params or value cannot be used (``unusable``)."""
        return measured_trials(self.study, self._unusable)

    def sampled(self) -> list[FrozenTrial]:
        """Complete trials of settings the sampler proposed (not baselines)."""
        return sampled_trials(self.study, self._unusable)

    def known(self) -> dict[str, int]:
        """Settings measured, by label (settings that run alike share one), to the trial that measured them."""
        return {self.caps.label(t.params): t.number for t in self.measured()}

    def failing(self) -> dict[str, int]:
        """Settings whose worker failed (crash, exit, timeout, bad output): proposing them again is a skip."""
        return {
            self.caps.label(t.params): t.number
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if trial_text(t.user_attrs, "fail_reason") in WORKER_FAILURES and t.params and self._unusable(t) is None
        }

    def baselines_done(self) -> bool:
        """Every baseline that can run here is finished (see ``resume.baselines_done``)."""
        return not self.baselines_pending()

    def baselines_pending(self) -> list[str]:
        """The baselines that can run here and are not finished yet."""
        return baselines_pending(self.study, self.baselines.runnable)

    def distinct_settings(self) -> int:
        """How many distinct settings can be measured here: the grid less what breaks a constraint or cannot
        run, counting settings that run alike once (the raw size when the grid is too large to list)."""
        cores = len(self.config.cores)
        grid = self.space.grid(cores)
        if grid is None:
            return self.space.size(cores)
        return len(
            {
                self.caps.label(p)
                for p in grid
                if self.space.violated(p, cores) is None and unrunnable(p, self.caps) is None
            }
        )

    # -- the objective --------------------------------------------------------------------------------

    def objective(self, trial: optuna.Trial) -> float:
        self._current = trial.number
        trial.set_user_attr("owner", owner_identity())
        try:
            return self._measure(trial)
        except Pruned as error:
            trial.set_user_attr("skip_reason", "pruner")
            raise optuna.TrialPruned(str(error)) from None
        except TunerError as error:
            if isinstance(error, Disturbed):
                trial.set_user_attr("disturbed_attempts", error.attempts)
            trial.set_user_attr("fail_reason", error.reason)
            trial.set_user_attr("fail_message", str(error))
            trial.set_user_attr("stderr_tail", getattr(error, "stderr_tail", "")[-1500:])
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", Interrupted.reason)
            raise

    def _skip(self, trial: optuna.Trial, params: dict[str, Any]) -> tuple[str, str] | None:
        """Why this proposal is not measured (the stored skip reason, the pruned message), or None."""
        if baseline_name(trial.user_attrs) is None:  # a baseline is measured even where it repeats a setting
            seen = self.known().get(self.caps.label(params))
            failed = self.failing().get(self.caps.label(params))
            for reason, number in (("duplicate of", seen), ("known to fail, as", failed)):
                if number is not None:
                    return f"{reason} trial {number}", f"{reason} trial {number}"
        broken = self.space.violated(params, len(self.config.cores))
        if broken is not None:
            return f"constraint {broken}", f"breaks constraint {broken}"
        cannot = unrunnable(params, self.caps)
        if cannot is not None:
            return f"not runnable here: {cannot[1]}", f"not runnable here: {cannot[1]}"
        return None

    def _measure(self, trial: optuna.Trial) -> float:
        every = self.study.get_trials(deepcopy=False)
        ahead = [  # a complete trial that is left out (``_unusable``) counts for nothing here, as in the StopRule
            t
            for t in every
            if t.number < trial.number
            and (t.state == TrialState.RUNNING or (t.state == TrialState.COMPLETE and self._unusable(t) is None))
        ]
        if len(ahead) >= self.config.trials:
            # Several workers share this study: the trials before this one already make the count.
            trial.set_user_attr("skip_reason", "surplus: the study's trials are taken by other workers")
            raise optuna.TrialPruned("surplus")
        foreign = next((self._foreign(t) for t in every if t.number == trial.number), None)
        if foreign is not None:
            trial.set_user_attr("skip_reason", foreign)
            queue_baselines(self.study, self.baselines.runnable)  # the baselines it posed as, queued as planned
            raise optuna.TrialPruned(foreign)
        params = self.space.suggest(trial, len(self.config.cores))
        settings = Settings.from_params(params)
        skip = self._skip(trial, params)
        if skip is not None:
            trial.set_user_attr("skip_reason", skip[0])
            raise optuna.TrialPruned(skip[1])
        baseline = baseline_name(trial.user_attrs)

        spec = TrialSpec(settings, self.config.workload, self.config.cores, self.config.policy)

        reported: list[int] = []
        lines = StepLines(self.progress, f"trial {trial.number}", spec.policy.warmup, spec.policy.timed)

        def on_step(phase: str, index: int, seconds: float) -> None:
            lines(phase, index, seconds)
            if phase == "timed":
                trial.report(spec.global_batch / seconds, index)  # per sample, whatever the trial's batch
                reported.append(index)
                if baseline is None and trial.should_prune():  # baselines are always measured in full
                    raise Pruned(f"pruned after timed step {index}")

        self.progress(f"trial {trial.number}: measuring {baseline or settings.label()} ...")
        started = self.clock()
        measurement = self.runner.run(spec, on_step)
        trial.set_user_attr("trial_seconds", self.clock() - started)
        trial.set_user_attr("measurement", measurement.to_dict())
        found = disturbance.of(measurement)
        if found is not None:  # what else ran on its cores while it was timed (tuner/disturbance.py)
            trial.set_user_attr("disturbance", found.to_dict())
        if measurement.facts.get("disturbed_attempts"):
            trial.set_user_attr("disturbed_attempts", measurement.facts["disturbed_attempts"])
            if reported:
                # The steps the pruner saw were the first, disturbed attempt's (Optuna takes one report per
                # step); the kept attempt's steps take their place, so later trials are judged against them.
                for index, value in enumerate(measurement.rates):
                    trial.storage.set_trial_intermediate_value(trial._trial_id, index, value)
        return self.config.workload.goal.score(measurement.rates)

    # -- the search -----------------------------------------------------------------------------------

    def search(self, deadline: float | None, stop_at: float | None = None, confirms: bool = True) -> None:
        """Run trials until the ``StopRule`` ends the search: enough are complete, the space is exhausted,
        or only the time that confirmation needs is left before ``deadline`` (the end of the study's
        budget; for a search alone, ``confirms`` False, less than a trial's time). Past ``stop_at`` (a soft
        end, which leaves the rest to a longer benchmark) it stops once one sampled setting is measured."""
        self._confirms = confirms  # the ETA of each trial line counts confirmation only where one follows
        rule = StopRule(self.config.trials, self.distinct_settings(), deadline, stop_at, confirms)
        streak: list[str] = []  # the reasons of the failures since the last complete trial
        skips = 0
        waiting_since: float | None = None  # other workers hold the last trials: said on entering, then each minute
        said = 0.0
        while True:
            interrupt.checkpoint()  # between trials: a Ctrl-C received during Optuna's bookkeeping stops here
            why = rule.check(self, skips)
            if why == WAIT:
                now = self.clock()
                if waiting_since is None or now - said >= WAIT_LINE_S:
                    waiting_since = now if waiting_since is None else waiting_since
                    said = now
                    running = [t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
                    self.progress(
                        f"waiting for other workers' trials {', '.join(map(str, running)) or '(none running)'} "
                        f"to finish ({duration(now - waiting_since)} so far)"
                    )
                self._wait_for_others()
                continue
            waiting_since = None
            if why is not None:
                if why:
                    self.progress(why)
                return
            complete = len(self.measured())
            last = self._one_trial()
            if last is None:
                continue
            # Skips measure nothing: only a complete trial breaks a run of failures.
            if last.state == TrialState.FAIL:
                streak.append(trial_text(last.user_attrs, "fail_reason") or "")
            elif last.state == TrialState.COMPLETE:
                streak = []
            skips = skips + 1 if "skip_reason" in last.user_attrs and last.user_attrs["skip_reason"] != "pruner" else 0
            self._report(last, complete + (last.state == TrialState.COMPLETE), deadline)
            reason = trial_text(last.user_attrs, "fail_reason") if last.state == TrialState.FAIL else None
            if reason in HOST_FAULTS:
                # The machine could not start a worker, or its environment was rebuilt under the study: the next
                # trial would fail alike, whatever its settings. The second ends every study of the runtime.
                fault = EnvironmentChanged if reason == EnvironmentChanged.reason else TunerError
                raise fault(f"trial {last.number}: {trial_text(last.user_attrs, 'fail_message')}")
            if len(streak) >= MAX_FAILURES_IN_A_ROW:
                why = (
                    f"{len(streak)} trials in a row failed; last: {trial_text(last.user_attrs, 'fail_reason')}: "
                    f"{trial_text(last.user_attrs, 'fail_message') or ''}".strip()
                )
                if not self._failing_settings(streak):
                    raise TunerError(why)
                self.progress(f"search ends: {why}; confirmation takes what it measured")
                return

    def _failing_settings(self, streak: list[str]) -> bool:
        """Whether a run of failures ``streak`` (their reasons) is the settings' own doing, with tf-default
        measured: each worker failed (crash, exit, timeout, bad output, out of memory), not disturbed,
        interrupted or taken by another process. Then the search ends and what it measured is confirmed, as
        settings that fail in a region of the space need not cost the study its verdict; otherwise (a busy
        or broken machine, or nothing to compare with) the study stops with the reason."""
        default = any(baseline_name(t.user_attrs) == DEFAULT for t in self.measured())
        return default and all(reason in WORKER_FAILURES for reason in streak)

    def _wait_for_others(self) -> None:
        """Workers elsewhere are measuring the last trials: wait for them rather than overshoot; if one fails
        (or its worker dies and its heartbeat stops), this worker takes its place."""
        fail_orphans(self.study, self.progress)
        with interrupt.interruptible():
            self.sleep(SHARED_POLL_S)

    def _one_trial(self) -> FrozenTrial | None:
        """Run one trial; the finished trial, or None when another process took it from this one."""
        finished: list[FrozenTrial] = []
        self._current = -1
        try:
            self.study.optimize(
                self.objective, n_trials=1, catch=(TunerError,), callbacks=[lambda _study, t: finished.append(t)]
            )
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            # Another process failed this trial while it ran (it took this one for dead, as "orphaned"):
            # that trial is lost, not the study. Any other error, or one before a trial began, is real.
            if self._current < 0:
                raise
            taken = self.study.get_trials(deepcopy=False)[self._current]
            if taken.state != TrialState.FAIL or taken.user_attrs.get("fail_reason") != "orphaned":
                raise
            self.progress(f"trial {taken.number} was marked {taken.state.name} by another process: skipped")
            return None
        return finished[-1]

    def _report(self, trial: FrozenTrial, complete: int, deadline: float | None) -> None:
        w = self.config.workload
        best = f"best {w.goal.describe(self.study.best_value, w.batch_size)}" if self.measured() else "no best yet"
        eta = self.study_eta(complete, deadline)
        left = f", {eta}" if eta else ""
        line = outcome(trial, w.goal)
        self.progress(f"trial {trial.number} [{complete}/{self.config.trials}] {line} | {best}{left}")

    def study_eta(self, complete: int, deadline: float | None) -> str:
        """When this study should end: its trials still to run at the median trial time measured so far (the
        search stops at ``deadline`` whatever is left), then its confirmation; 'at most' the time to the
        deadline before any trial time is known."""
        now = self.clock()
        cost = self.cost()
        if cost is None:
            return f"study ETA at most {duration(max(0.0, deadline - now))}" if deadline is not None else ""
        search = max(0, self.config.trials - complete) * cost.wall_s
        if deadline is not None:
            search = min(search, max(0.0, deadline - now))
        confirmation = self.confirm_cost(self.config.confirm_policy.rounds) if self._confirms else 0.0
        return f"study ETA {duration(search + confirmation)}"

    # -- confirmation -------------------------------------------------------------------------------

    def candidates(self) -> list[Candidate]:
        """Every baseline, then the best distinct sampled settings, by search value. A baseline whose search
        trials were disturbed (never ranked) and none failed by its worker is confirmed from its planned
        settings: confirmation measures it afresh, so a busy neighbour during the search loses no baseline;
        tf-default is, whenever it has no usable complete trial (``unranked_baselines``)."""
        unranked = self.unranked_baselines()
        extra = [Candidate(name, Settings.from_params(self.baselines.runnable[name])) for name in unranked]
        most = len(self.baselines.runnable) + self.config.candidates
        return pick_candidates(self.measured(), self.caps.label, most, extra)

    def unranked_baselines(self) -> list[str]:
        """Runnable baselines, in plan order, with no usable complete trial and a disturbed one, none of whose
        trials failed by its worker (those are known to fail and stay out); tf-default also without a disturbed
        one, since every verdict is to it and a resumed study may hold none of its settings as planned now
        (a knob allowed by --allow-inert since, say)."""
        reasons: dict[str, set[str | None]] = {}
        complete: set[str] = set()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            name = baseline_name(t.user_attrs)
            if name is None or self._unusable(t) is not None:  # not_the_baseline included
                continue
            if t.state == TrialState.COMPLETE:
                complete.add(name)
            else:
                reasons.setdefault(name, set()).add(trial_text(t.user_attrs, "fail_reason"))
        return [
            name
            for name in self.baselines.runnable
            if name not in complete
            and (name == DEFAULT or Disturbed.reason in reasons.get(name, set()))
            and not reasons.get(name, set()) & WORKER_FAILURES
        ]

    def few_candidates(self, every: list[Candidate]) -> list[Candidate]:
        """Of ``every`` candidate, what the table needs confirmed when all of them cannot have three rounds:
        tf-default, the heuristic (or its runnable part), the best sampled settings, and the other baseline the
        search ranked best (``forecast.FEW_CONFIRMED`` in all with `tuner run`'s one sampled candidate)."""
        value: dict[str, float] = {}
        for t in self.measured():
            name = baseline_name(t.user_attrs) or f"trial {t.number}"
            value[name] = max(value.get(name, 0.0), t.value or 0.0)
        heuristic = self.baselines.stand_ins.get(HEURISTIC, HEURISTIC)
        kept = [c for c in every if c.name in (DEFAULT, heuristic) or c.name.startswith("trial ")]
        rest = [c for c in every if c not in kept]
        if rest:
            kept.append(max(rest, key=lambda c: value.get(c.name, 0.0)))
        return [c for c in every if c in kept]

    def cost(self) -> CostModel | None:
        """What a run costs here, from the measured search trials; None before any."""
        return CostModel.from_trials(self.measured(), self.config.policy)

    def trial_s(self) -> float:
        """Seconds a search trial takes here, start to exit (the median so far; 0 before anything is measured)."""
        cost = self.cost()
        return 0.0 if cost is None else cost.wall_s

    def confirm_cost(self, rounds: int) -> float:
        """Seconds that ``rounds`` rounds of confirmation take here (0 before anything is measured)."""
        cost = self.cost()
        configs = len(self.baselines.runnable) + self.config.candidates
        return 0.0 if cost is None else configs * rounds * cost.run_s(self.config.confirm_policy)

    def confirm(
        self,
        deadline: float | None,
        rounds: int | None = None,
        policy: MeasurementPolicy | None = None,
        candidates: list[Candidate] | None = None,
    ) -> Verdict:
        """Confirm ``candidates`` (default: all of ``candidates()``) for ``rounds`` rounds, or as many as fit
        before ``deadline`` (at least 3), each run measured by ``policy`` (default: the study's confirm
        policy; `tuner run` passes its benchmark's)."""
        candidates = candidates if candidates is not None else self.candidates()
        if DEFAULT not in {c.name for c in candidates}:
            raise TunerError(
                f"study {self.config.name}: the tf-default baseline has no complete trial to confirm against"
            )
        cfg = self.config
        policy = policy or cfg.confirm_policy
        left = None if deadline is None else deadline - self.clock()
        rounds = rounds or planned_rounds(policy, len(candidates), self.cost(), left)
        verdict = confirm_logged(
            self.study, self.runner, candidates, cfg.workload, cfg.cores, policy, rounds, cfg.seed, self.progress
        )
        store_verdict(self.study, verdict, self.caps.effective, len(self.measured()), len(self.sampled()))
        return verdict

    def run(self) -> Verdict:
        start = self.clock()
        budget = self.config.budget_s
        self.search(None if budget is None else start + budget)
        verdict = self.confirm(None if budget is None else start + budget)
        self.store_importances()
        return verdict

    def store_importances(self) -> dict[str, float]:
        """Which knobs mattered over the complete trials; stored on the study (``tuner show`` prints them)."""
        space = self.space.distributions(len(self.config.cores))
        varied = [name for name, dist in space.items() if not dist.single()]
        try:
            importances = compute_importances(self.study, varied, self.config.seed)
        except (RuntimeError, ValueError) as error:  # too few trials, or no knob varied
            self.study.set_user_attr("importances", {"error": str(error)})
            return {}
        self.study.set_user_attr("importances", importances)
        return importances


def measured_trials(
    study: optuna.Study, why_unusable: Callable[[FrozenTrial], str | None] | None = None
) -> list[FrozenTrial]:
    """The study's complete trials, less any ``why_unusable`` (default ``unusable``) finds a reason to leave out."""
    why = why_unusable or unusable
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if why(t) is None]


def sampled_trials(
    study: optuna.Study, why_unusable: Callable[[FrozenTrial], str | None] | None = None
) -> list[FrozenTrial]:
    """``measured_trials`` of settings the sampler proposed: no baseline. "tuned" is the best of these."""
    return [t for t in measured_trials(study, why_unusable) if baseline_name(t.user_attrs) is None]


def unusable(trial: FrozenTrial) -> str | None:
    """Why a stored trial cannot be used, or None: its params are not valid settings, or it is complete with
    no finite value. In a shared study another process may have written anything; such a trial is left out
    (never ranked, skipped by, confirmed or run as tuned) rather than stopping the study with an error."""
    if trial.state == TrialState.COMPLETE and (trial.value is None or not math.isfinite(trial.value)):
        return f"its value {trial.value!r} is not a finite number"
    try:
        Settings.from_params(trial.params)
    except InvalidSettings as error:
        return f"its params are not valid settings ({one_line(error, 200)})"
    return None


def outcome(trial: FrozenTrial, goal: Objective = OBJECTIVES["throughput"]) -> str:
    """What one finished trial measured, or why it failed or was skipped, as a progress line says it."""
    label = baseline_name(trial.user_attrs) or Settings.from_params(trial.params).label()
    m = trial_measurement(trial.user_attrs)
    if trial.state == TrialState.COMPLETE and m is not None:
        value = goal.describe(goal.score(m.rates), m.batch_size)
        return f"{label}: {value} (cv {m.cv:.1%}{', unstable' if m.unstable else ''})"
    if trial.state == TrialState.COMPLETE:
        return f"{label}: {trial.value} (no measurement stored)"
    if trial.state == TrialState.FAIL:
        reason = trial_text(trial.user_attrs, "fail_reason") or "error"
        return f"{label}: FAILED ({reason}: {trial_text(trial.user_attrs, 'fail_message') or ''})"
    return f"{label}: skipped ({trial_text(trial.user_attrs, 'skip_reason') or 'pruned'})"


def compute_importances(study: optuna.Study, params: list[str], seed: int = 0) -> dict[str, float]:
    """fANOVA importances (Optuna's random-forest evaluator, seeded), summing to 1.

    Not Optuna's default PED-ANOVA: it compares the top 10% of trials with the rest, and a study of a dozen
    trials has one trial in its top 10%, so its figures say little.
    """
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params)
    return {name: float(value) for name, value in found.items()}
