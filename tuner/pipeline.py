"""The main job, ``tuner run``: for each runtime and core count, tune train and infer, benchmark, tabulate.

One wall-time budget covers everything (environment set-up, probes, yardsticks, every study). Each study
gets a share of the time still left, weighted by what its steps cost (training about three inference
steps; one core about twice two cores), so a study that overruns takes from the ones after it, not from
the budget. Within a study: the search (baselines first) gets about half its share; the rest is the
benchmark, which is also the confirmation: tf-default, the heuristic, the other baselines and the best
sampled setting measured in interleaved rounds, with as many timed batches as the share allows (the full
10 + 100 when it fits); where three rounds of all of them do not fit, the few the table needs get three
(``forecast.confirmation_size``), since fewer rounds can never give a clear verdict; where not even
those fit, all of them are measured in fewer rounds, or, where not even one round of all fits, the few
in what is left. The verdict, with its
95% interval, comes from those rounds; the benchmark records are made from the same runs. Everything is
stored as it is measured, so the same command resumes.
``Job.plan`` says beforehand what ``run`` will do and take, measuring nothing; while it runs, its ETA comes
from the same rules at the trial cost measured so far (both in ``tuner/forecast.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner import probe
from tuner.benchmark import FULL_TIMED as FULL_TIMED  # re-exported, as MIN_TIMED and plan_benchmark below
from tuner.benchmark import (
    GPU_BATCH,
    Target,
    full_policy,
    gpu_skip_reason,
    make_record,
    matmul_peak,
    measure,
    new_run_id,
    own_records,
    skip_record,
    store,
    visible_gpus,
    yardstick_settings,
)
from tuner.benchmark import flops_per_image as count_flops
from tuner.capability import Capabilities, emulated_note
from tuner.confirm import DEFAULT, TUNED
from tuner.cost import CostModel
from tuner.disturbance import DEFAULT_LIMIT, steady
from tuner.envs import create as create_env
from tuner.errors import EnvironmentChanged, TunerError
from tuner.forecast import (
    BUDGET_SLACK,
    LEAST,
    SEARCH_SHARE,
    Cell,
    Outlook,
    Plan,
    Unmeasured,
    benchmark_policy,
    confirmation_size,
    least_s,
    make_plan,
    next_share,
    stored_costs,
    stored_probe,
    stored_trials,
    too_late,
)
from tuner.forecast import MIN_TIMED as MIN_TIMED
from tuner.forecast import plan_benchmark as plan_benchmark
from tuner.measurement import Measurement
from tuner.models import ModelRef, as_ref
from tuner.plan import Prepared, StudyOptions, Yardstick, check_model, prepare, study_config, weight
from tuner.policy import BURST, CONFIRM, MeasurementPolicy
from tuner.probe import fixed_knobs
from tuner.progress import Bar
from tuner.records import (
    BenchmarkRecord,
    MalformedRecord,
    StoredConfirmation,
    StoredVerdict,
    StudyMeta,
    baseline_name,
    imported_from,
)
from tuner.resume import not_the_baseline
from tuner.runner import Runner, runtime_runner
from tuner.runtime import GPU_RUNTIME, MANIFEST, Runtime
from tuner.runtime import load as load_runtime
from tuner.settings import Settings
from tuner.signature import CpuSignature
from tuner.space import SearchSpace
from tuner.space import load as load_space
from tuner.study import StudyConfig, StudyRun, duration, sampled_trials
from tuner.topology import core_set, cores_text, sockets_for
from tuner.workload import workload_for

Log = Callable[[str], None]


def study_records(
    study: optuna.Study, target: Target, signature: CpuSignature
) -> list[tuple[str, Settings, list[Measurement], dict[str, Any]]]:
    """Benchmark records' parts from a study's stored confirmation runs: every baseline under its own name,
    and the best sampled candidate as ``tuned``; each carries what the verdict recommends."""
    confirmation = stored_confirmation(study)
    verdict = StoredVerdict.from_dict(study.user_attrs.get("verdict"), f"study {study.study_name}: verdict")
    runs: dict[str, list[Measurement]] = {}
    for run in confirmation.runs:
        runs.setdefault(run.candidate, []).append(run.measurement)
    best = verdict.best_sampled()
    recommended_label = TUNED if verdict.recommended == best else verdict.recommended
    searched = _searched(study, verdict)
    parts = []
    for name, measured in runs.items():
        if name not in verdict.params or (name.startswith("trial ") and name != best):
            continue
        label = TUNED if name == best else name
        extra: dict[str, Any] = {
            "study": study.study_name,
            "candidate": name,
            "recommended": recommended_label,
            "verdict": verdict.text,
        }
        if label == TUNED:  # the best of how many, searching what: one sampled setting is no search
            extra.update(sampled=searched, searched=extra_knobs(study))
        parts.append((label, verdict.params[name], measured, extra))
    return parts


def resumed_policy(fresh: MeasurementPolicy, shape: Mapping[str, int]) -> MeasurementPolicy:
    """``fresh`` (its rounds) with the warm-up and timed batches of a stored confirmation (checked ints), its
    timeout scaled to their number."""
    warmup, timed = max(0, shape["warmup"]), max(1, shape["timed"])
    scale = max(1.0, (warmup + timed) / (fresh.warmup + fresh.timed))
    return dataclasses.replace(fresh, warmup=warmup, timed=timed, timeout_s=fresh.timeout_s * scale)


def stored_confirmation(study: optuna.Study) -> StoredConfirmation:
    """The study's confirmation runs as stored, checked (empty before any)."""
    return StoredConfirmation.from_dict(study.user_attrs.get("confirmation"), f"study {study.study_name}: confirmation")


def confirmation_id(study: optuna.Study) -> str:
    """Names one confirmation's runs: a new confirmation, or more rounds of it, is another id."""
    confirmation = stored_confirmation(study)
    return f"{study.study_name}:{confirmation.id}:{len(confirmation.runs)}"


def sampled_count(study: optuna.Study) -> int:
    """How many sampled settings the study's search had measured when its verdict was confirmed (trials
    added since, by an unfinished tune or another worker of a shared study, are not what "tuned" was chosen
    from); without that count (no verdict yet, or one stored before it was kept), its complete trials that
    are no baseline and are usable. "tuned" is the best of these; with one or two it is hardly a search."""
    verdict = None
    if "verdict" in study.user_attrs:
        verdict = StoredVerdict.from_dict(study.user_attrs["verdict"], f"study {study.study_name}: verdict")
    return _searched(study, verdict)


def _searched(study: optuna.Study, verdict: StoredVerdict | None) -> int:
    """``sampled_count`` from a verdict already read: its count, else the study's sampled trials."""
    return verdict.sampled if verdict is not None and verdict.sampled is not None else len(sampled_trials(study))


def extra_knobs(study: optuna.Study) -> list[str]:
    """The knobs the study searched beside its runtime's own (``records.EXTRA_KNOBS``: batch, the oneDNN ISA
    cap); none where its ``tuner`` attribute does not read (tuner_studies reports such a study)."""
    try:
        return StudyMeta.from_dict(study.user_attrs.get("tuner")).extra_knobs
    except MalformedRecord:
        return []


def stored_search(storage: optuna.storages.BaseStorage, study_name: str) -> dict[str, Any]:
    """What a tuned record from the named study says of its search: ``sampled`` (``sampled_count``: the best
    of how many) and ``searched`` (``extra_knobs``: a --search-batch or --search-isa study's tuned figure is
    not the plain study's); empty if the study does not exist."""
    if study_name not in {s.study_name for s in storage.get_all_studies()}:
        return {}
    study = optuna.load_study(study_name=study_name, storage=storage)
    return {"sampled": sampled_count(study), "searched": extra_knobs(study)}


def tuned_settings(study: optuna.Study) -> Settings | None:
    """The tuned settings of a study: its best confirmed sampled setting, else its best sampled trial that
    confirmation did not drop (a setting whose confirmation run failed is never run as "tuned")."""
    dropped: Mapping[str, str] = stored_confirmation(study).dropped
    if "verdict" in study.user_attrs:
        verdict = StoredVerdict.from_dict(study.user_attrs["verdict"], f"study {study.study_name}: verdict")
        best = verdict.best_sampled()
        if best is not None:
            return verdict.params[best]
        dropped = {**dropped, **verdict.dropped}
    kept = [t for t in sampled_trials(study) if f"trial {t.number}" not in dropped]
    top = max(kept, key=lambda t: t.value or 0.0, default=None)
    return None if top is None else Settings.from_params(top.params)


@dataclass(frozen=True)
class Recommended:
    """What a study's confirmed verdict recommends, named as benchmark records name it: ``tuned`` for its best
    sampled setting, else the baseline's own name (tf-default when no setting clearly won)."""

    label: str
    settings: Settings
    verdict: str


def stored_recommended(storage: optuna.storages.BaseStorage, study_name: str) -> Recommended | None:
    """The named study's recommendation; None if it does not exist or has no confirmed verdict yet."""
    if study_name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    study = optuna.load_study(study_name=study_name, storage=storage)
    if "verdict" not in study.user_attrs:
        return None
    verdict = StoredVerdict.from_dict(study.user_attrs["verdict"], f"study {study_name}: verdict")
    label = TUNED if verdict.recommended == verdict.best_sampled() else verdict.recommended
    return Recommended(label, verdict.params[verdict.recommended], verdict.text)


def stored_tuned(storage: optuna.storages.BaseStorage, study_name: str) -> Settings | None:
    """The tuned settings of the named study in ``storage``; None if it does not exist or has none yet."""
    if study_name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    return tuned_settings(optuna.load_study(study_name=study_name, storage=storage))


class JobStudy(StudyRun):
    """A study of the job: its trial lines end with the job's ETA, not with the time left in the study's
    share (that is the budget, not an estimate of when the job ends)."""

    def __init__(self, *args: Any, eta: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eta = eta

    def study_eta(self, complete: int, deadline: float | None) -> str:
        return ""  # the job's ETA ends the line instead

    def _report(self, trial: FrozenTrial, complete: int, deadline: float | None) -> None:
        say = self.progress
        self.progress = lambda line: say(f"{line} | {self.eta()}")
        try:
            super()._report(trial, complete, None)
        finally:
            self.progress = say


@dataclass
class Job:
    storage: optuna.storages.BaseStorage
    signature: CpuSignature
    runtimes: Sequence[Runtime]
    counts: Sequence[int]
    modes: Sequence[str]
    budget_s: float | None
    model: ModelRef | str = "resnet50"
    batch_size: int = 32
    objective: str = "throughput"
    seed: int = 0
    allow_precision: tuple[str, ...] = ()  # --allow-precision: bf16 is searched only when asked for
    force_precision: bool = False
    search_batch: tuple[int, ...] = ()  # --search-batch: batch sizes searched beside batch_size (throughput)
    search_isa: bool = False  # --search-isa: oneDNN's instruction-set cap searched too
    create_envs: bool = True
    runner: Runner | None = None  # tests pass a replaying fake; else one subprocess runner per runtime
    max_disturbance: float | None = DEFAULT_LIMIT  # tuner/disturbance.py: over it, a trial is measured again
    log: Log = print
    clock: Callable[[], float] = time.monotonic
    bar: Bar = field(default_factory=Bar)  # over the studies, on a terminal (the CLI's); else no bar
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)  # studies the budget left no time for
    changed: set[str] = field(default_factory=set)  # runtimes whose environment another tuner changed mid-run
    not_started_s: float = 0.0  # the least they need together, at the cost measured (``least_s``)

    @property
    def options(self) -> StudyOptions:
        """Each study: 20 trials, the best sampled setting confirmed against the baselines."""
        return StudyOptions(
            trials=20,
            candidates=1,
            confirm_policy=CONFIRM,
            seed=self.seed,
            allow_precision=self.allow_precision,
            force_precision=self.force_precision,
            search_batch=self.search_batch,
            search_isa=self.search_isa,
        )

    # -- preparation ------------------------------------------------------------------------------------

    def _runner(self, runtime: Runtime) -> Runner:
        return steady(self.runner or runtime_runner(runtime, self.log), self.max_disturbance, self.log)

    def _env_missing(self, runtime: Runtime) -> bool:
        """The runtime's environment is still to be built (a test's fake runner needs none)."""
        return not (runtime.env_dir is None or (runtime.env_dir / MANIFEST).exists() or self.runner is not None)

    def _skipped(self, runtime: Runtime) -> str | None:
        """Why the runtime is left out here (its environment cannot be, or is not to be, built), or None."""
        foreign = None if self.runner is not None else runtime.foreign()  # even with an environment from elsewhere
        if foreign is not None:
            return foreign
        if not self._env_missing(runtime):
            return None
        if not self.create_envs:
            return runtime.installable() or "its environment is not created (tuner env create)"
        return runtime.installable()

    def _ready(self, runtime: Runtime) -> bool:
        """The runtime's environment exists, or is built now (its time counts against the budget)."""
        skipped = self._skipped(runtime)
        if skipped is not None:
            self.notes.append(f"runtime {runtime.name} skipped: {skipped}")
            self.log(f"runtime {runtime.name} skipped: {skipped}")
            return False
        if self._env_missing(runtime):
            self.log(f"runtime {runtime.name}: creating its environment (counts against the budget)")
            report = create_env(runtime, log=self.log)
            self.log(report.line())
        return True

    def _baseline(self, space: SearchSpace, cores: int, name: str) -> Settings:
        baselines = space.baselines(cores, sockets_for(core_set(cores)))
        return Settings.from_params({**baselines.get(name, baselines[DEFAULT]), "data_format": "NHWC"})

    def _cells(self, prepared: Sequence[Prepared]) -> list[tuple[Prepared, Cell]]:
        """Every study of the job in the order it runs them, with what the forecast needs of each."""
        return [(ready, self._cell(ready, n, mode)) for ready in prepared for n in self.counts for mode in self.modes]

    def _cell(self, ready: Prepared, n: int, mode: str) -> Cell:
        config = self._config(ready, n, mode, None)
        # Opened in memory, the study says what it measures here (baselines, distinct settings), storing nothing.
        opened = StudyRun(optuna.storages.InMemoryStorage(), config, Unmeasured())
        trials = stored_trials(self.storage, config.name)
        return Cell(
            config,
            weight(mode, n, max(self.counts)),
            len(opened.baselines.runnable),
            opened.distinct_settings(),
            complete=len(trials),
            measured_baselines=sum(  # a trial with a baseline's name and other settings is no baseline
                baseline_name(t.user_attrs) is not None and not not_the_baseline(t, opened.baselines.runnable)
                for t in trials
            ),
            kept=self._complete(config.name),
        )

    # -- the plan ---------------------------------------------------------------------------------------

    def plan(self) -> Plan:
        """What ``run`` would do, measuring nothing: no environment built, no probe, no worker started, the
        storage only read. A runtime's space follows its probe as stored on a study of this CPU, if any."""
        notes: list[str] = []
        prepared = []
        for runtime in self.runtimes:
            skipped = self._skipped(runtime)
            if skipped is not None:
                notes.append(f"runtime {runtime.name} skipped: {skipped}")
                continue
            if self._env_missing(runtime):
                notes.append(f"runtime {runtime.name}: its environment is built first (not in the total)")
            facts = stored_probe(self.storage, runtime.name, self.signature.id)
            if not facts:
                notes.append(f"runtime {runtime.name} has no probe stored for this CPU: settings counted as declared")
            else:  # the controller's facts as they are now (a probe stored before the CPU's flags were kept)
                facts = {**facts, **probe.machine_facts()}
            space = load_space(runtime.space, max(self.counts))
            prepared.append(Prepared(runtime, space, facts, Unmeasured()))
        cells = [cell for _, cell in self._cells(prepared)]
        costs = stored_costs(self.storage, cells, max(self.counts))
        studies = f"{len(cells)} stud{'y' if len(cells) == 1 else 'ies'}"
        what = (
            f"{studies}: runtimes {', '.join(r.runtime.name for r in prepared) or 'none'}; cores "
            f"{', '.join(map(str, self.counts))}; {', '.join(self.modes)}; model {as_ref(self.model).label}, "
            f"batch {self.batch_size}; on {self.signature.model_name} ({self.signature.id})"
        )
        tasks = (len(prepared) + self._yardsticks_to_measure(prepared), self._gpu_checks())  # and the GPU check
        return make_plan(what, cells, costs, self.budget_s, tasks, notes)

    def _yardsticks_to_measure(self, prepared: Sequence[Prepared]) -> int:
        """How many yardsticks ``_yardsticks`` would measure: those not stored yet."""
        found = own_records(self.storage)  # as benchmark.matmul_peak and flops_per_image read them
        flops = any(r.get("kind") == "flops" and r.get("model") == as_ref(self.model).label for r in found)
        stored = {
            (r.get("runtime"), r.get("cores"), r.get("precision", "fp32"))
            for r in found
            if r.get("kind") == "matmul" and r.get("cpu", {}).get("id") == self.signature.id
        }
        wanted = {(r.runtime.name, n, p) for r in prepared for p in self._precisions(r) for n in self.counts}
        return (not flops) + len(wanted - stored)

    # -- the job ----------------------------------------------------------------------------------------

    def run(self) -> None:
        started = self.clock()
        # Plan against a little less than the budget: floors (every baseline measured, three short rounds)
        # and the table at the end need some slack.
        deadline = None if self.budget_s is None else started + self.budget_s * (1 - BUDGET_SLACK)
        prepared: list[Prepared] = []
        probe_s = 0.0  # the longest probe: before any study is measured, what one run costs here
        for runtime in self.runtimes:
            try:
                if not self._ready(runtime):
                    continue
                probed = self.clock()
                ready = prepare(runtime, self._runner(runtime), max(self.counts), log=self.log)
                prepared.append(check_model(ready, self.model, self.log))
                probe_s = max(probe_s, self.clock() - probed)
            except TunerError as error:
                self._fail(f"runtime {runtime.name}", error)
                continue
            self.log(prepared[-1].describe())
        if not prepared:
            raise TunerError("no runtime could run here: " + "; ".join(self.notes + self.failures))
        self._yardsticks(prepared)
        cells = self._cells(prepared)
        outlook = Outlook(
            [cell for _, cell in cells],
            stored_costs(self.storage, [cell for _, cell in cells], max(self.counts)),
            tail_s=self._gpu_checks() * probe_s,  # the GPU check: one worker run, where the GPU runtime can run
            deadline=deadline,
            ends=None if self.budget_s is None else started + self.budget_s,
        )
        yardstick = Yardstick(CostModel.estimate(probe_s, BURST))
        self.bar.start(len(cells))
        try:
            for index, (ready, _) in enumerate(cells):
                self._study(index, ready, outlook, deadline, yardstick)
                if outlook.latest is not None:  # the floors of the studies after it, from what its runs cost
                    yardstick = outlook.latest
                self.bar.advance()
            self.bar.show("")  # the studies are over: no ETA left to show
            self._gpu_rows(prepared)
        finally:
            self.bar.close()
        spent = self.clock() - started
        over = (
            ""
            if self.budget_s is None or spent <= self.budget_s
            else f" (over the budget by {spent - self.budget_s:.0f} s)"
        )
        self.log(f"job done in {spent:.0f} s{over}")
        if self.not_started:
            self.notes.append(
                f"{len(self.not_started)} stud{'y' if len(self.not_started) == 1 else 'ies'} not started for want of "
                f"budget ({', '.join(self.not_started)}): the same command with a --budget of at least "
                f"{duration(math.ceil(self.not_started_s))} (their least at the cost measured; set-up aside) runs "
                f"{'it' if len(self.not_started) == 1 else 'them'}, and keeps the studies done"
            )

    def _study(
        self, index: int, ready: Prepared, outlook: Outlook, deadline: float | None, yardstick: Yardstick
    ) -> None:
        """Study ``index`` of the job: kept if benchmarked already, else run within its share of the time
        left; what its runs cost is the job's ``outlook.latest`` after it."""
        cells = outlook.cells
        cell = cells[index]
        head = f"study {index + 1}/{len(cells)}: {cell.tag}"
        if cell.kept:
            source = self._imported(cell.config.name)
            self.log(
                f"{head} is already benchmarked: kept"
                if source is None
                else f"{head} was imported (from {source}): kept as measured elsewhere; "
                "another --storage measures it here"
            )
            return
        if ready.runtime.name in self.changed:
            why = f"not started: runtime {ready.runtime.name}'s environment changed during this run"
            self.failures.append(f"{cell.tag}: {why}")
            self.log(f"{head}: {why}")
            return
        begun = self.clock()
        cost = outlook.costs(index)[0]
        started = any(not c.kept for c in cells[:index])  # the first study the job runs always starts
        left = None if outlook.ends is None else max(0.0, outlook.ends - begun)
        if started and cost is not None and left is not None and too_late(cell, cost, left):
            # Started, it would overrun the budget by more than it is worth: its rows wait for a run with time
            # for them, and the job ends near its budget instead of far past it.
            need = duration(math.ceil(least_s(cell, cost)))  # rounded up, the time left down: never "4m15s, 4m15s"
            self.not_started.append(cell.tag)
            self.not_started_s += least_s(cell, cost)
            self.log(f"{head}: not started: it needs at least {need} ({LEAST}), {duration(left)} of the budget is left")
            # The table lists its target as skipped, with why, until a run with time for it measures it.
            reason = f"not started: the budget ran out (it needs at least {need}, {duration(left)} was left)"
            target = Target(ready.runtime.name, cell.config.workload, cell.config.cores)
            store(self.storage, skip_record(target, reason, self.signature))
            return
        budget = next_share(cells[index:], None if deadline is None else deadline - begun, yardstick)
        eta = functools.partial(self._eta, outlook, index, begun, budget)
        self.log(head + (f", share {duration(budget)}" if budget else "") + f", {eta(None)}")
        try:
            cost = self._search_and_benchmark(ready, cell, budget, eta)
        except EnvironmentChanged as error:  # the runtime's other studies would meet it too
            self.changed.add(ready.runtime.name)
            self._fail(cell.tag, error)
            return
        except TunerError as error:
            self._fail(cell.tag, error)
            return
        if cost is not None:
            outlook.latest = Yardstick(cost, cell.weight)

    def _eta(self, outlook: Outlook, index: int, begun: float, budget: float | None, current: CostModel | None) -> str:
        """The job's ETA in study ``index`` (``current``: what its runs cost so far), shown on the bar too."""
        text = outlook.eta(index, self.clock(), begun, budget, current)
        self.bar.show(text)
        return text

    def _fail(self, what: str, error: TunerError) -> None:
        self.failures.append(f"{what}: {error}")
        self.log(f"{what} failed: {error}")

    def _yardsticks(self, prepared: Sequence[Prepared]) -> None:
        """FLOPs per image (once, from the first runtime's graph) and the matmul peak per runtime and cores."""
        first = prepared[0]
        try:
            flops = count_flops(
                self.storage,
                first.runner,
                self.model,
                self._baseline(first.space, 1, DEFAULT),
                core_set(1),
                self.signature,
                self.log,
            )
            counted = ", ".join(f"{flops[mode] / 1e9:.2f} GFLOP/sample {mode}" for mode in flops)
            self.log(f"{as_ref(self.model).label}: {counted}")
        except TunerError as error:
            self._fail("FLOP count", error)
        for ready in prepared:
            name = ready.runtime.name
            for n in self.counts:
                for precision in self._precisions(ready):
                    try:
                        settings = yardstick_settings(n, ready.runtime.honours, precision)
                        peak = matmul_peak(
                            self.storage, ready.runner, name, settings, core_set(n), self.signature, self.log
                        )
                        self.log(f"matmul peak ({precision}), {name} on {cores_text(n)}: {peak:.0f} GFLOP/s")
                    except TunerError as error:
                        self._fail(f"matmul peak {precision} {name} {n}c", error)

    def _precisions(self, ready: Prepared) -> list[str]:
        """The matmul yardstick's precisions: fp32 always; bf16 too where it may be searched, so that a bf16
        row is held against a bf16 matmul."""
        precisions = ["fp32", *(p for p in self.allow_precision if p != "fp32")]
        return [p for p in precisions if "precision" in ready.runtime.honours or p == "fp32"]

    def _config(self, ready: Prepared, n: int, mode: str, share: float | None) -> StudyConfig:
        workload = workload_for(self.model, mode, self.batch_size, self.objective)
        return study_config(ready, workload, n, self.signature, share, self.options)

    def _imported(self, study_name: str) -> str | None:
        """The file the study came from, where `tuner import` brought it (None: none, or measured here)."""
        found = [s for s in self.storage.get_all_studies() if s.study_name == study_name]
        return imported_from(found[0].user_attrs) if found else None

    def _complete(self, study_name: str) -> bool:
        """The study has a verdict and the benchmark records of that very confirmation are stored; or it was
        imported, which no run here may tune (``resume.open_study``): it is kept as measured elsewhere."""
        found = [s for s in self.storage.get_all_studies() if s.study_name == study_name]
        if not found:
            return False
        if imported_from(found[0].user_attrs) is not None:
            return True
        if "verdict" not in found[0].user_attrs:
            return False
        study = optuna.load_study(study_name=study_name, storage=self.storage)
        run_id = confirmation_id(study)
        return any(r.get("run_id") == run_id for r in self._own_benchmarks())

    def _search_and_benchmark(
        self, ready: Prepared, cell: Cell, share: float | None, eta: Callable[[CostModel | None], str]
    ) -> CostModel | None:
        """Search, then benchmark-confirm, one study; what its search runs cost (None: nothing measured)."""
        config = dataclasses.replace(cell.config, budget_s=share)
        tag = cell.tag
        opened: list[StudyRun] = []

        def progress(line: str) -> None:
            self.log(f"[{tag}] {line}")
            if opened and self.bar.shown:  # the bar's ETA follows every line, confirmation's too
                eta(opened[0].cost())

        run = JobStudy(self.storage, config, ready.runner, progress, self.clock, eta=lambda: eta(run.cost()))
        opened.append(run)
        start = self.clock()
        end = None if share is None else start + share
        run.search(end, stop_at=None if share is None else start + SEARCH_SHARE * share)
        cost = run.cost()
        every = run.candidates()
        few = run.few_candidates(every)
        left = None if end is None else end - self.clock()
        configs, bench = confirmation_size(len(every), len(few), cost, left)
        chosen = every if configs == len(every) else few
        stored = stored_confirmation(run.study)
        resumed = next(
            (
                kept
                for kept in (every, few)
                if (stored.rates or stored.dropped) and list(stored.candidates) == [c.name for c in kept]
            ),
            None,
        )
        if resumed is not None and stored.policy:
            # An interrupted confirmation goes on with its settings and batches, so its rounds count.
            chosen, configs = resumed, len(resumed)
            bench = resumed_policy(benchmark_policy(cost, left, configs), stored.policy)
            self.log(f"[{tag}] resuming its confirmation: {len(stored.runs)} runs stored")
        elif chosen is few and len(few) < len(every):
            # Three rounds of every candidate do not fit, and fewer rounds can never give a clear verdict.
            out = ", ".join(c.name for c in every if c not in few)
            self.log(
                f"[{tag}] three rounds of all {len(every)} settings do not fit its share: confirming the "
                f"{len(few)} the table needs ({out}: not confirmed, their search trials stay in the study)"
            )
        self.log(
            f"[{tag}] benchmark-confirmation: {configs} settings x {bench.rounds} rounds x "
            f"({bench.warmup} warm-up + {bench.timed} timed batches)"
        )
        verdict = run.confirm(None, rounds=bench.rounds, policy=bench, candidates=chosen)
        run.store_importances()
        self.log(f"[{tag}] verdict: {verdict.text()}")
        self.log(f"[{tag}] {verdict.against_each()}")
        self._store_records(run.study, Target(ready.runtime.name, config.workload, config.cores), run.caps)
        return cost

    def _own_benchmarks(self) -> list[BenchmarkRecord]:
        """The benchmark records this storage's own runs stored: an imported one (``tuner import``) is
        another machine's, whatever run it names, and never stands for a benchmark of this job's."""
        return [r for r in own_records(self.storage) if r.get("kind") == "benchmark"]

    def _store_records(self, study: optuna.Study, target: Target, caps: Capabilities) -> None:
        """The CPU rows of a study's benchmark-confirmation; a bf16 setting searched with --force-precision that
        ran without bf16 instructions is marked ``emulated``, as `tuner benchmark` marks one."""
        stored = {(r.get("run_id"), r.get("label")) for r in self._own_benchmarks()}
        run_id = confirmation_id(study)  # the same confirmation runs always give the same records
        for label, settings, measured, extra in study_records(study, target, self.signature):
            note = emulated_note(settings.params(), caps)
            if note is not None:
                extra = {**extra, "emulated": note}
            if (run_id, label) not in stored:
                store(self.storage, make_record(target, label, settings, measured, self.signature, run_id, extra))

    def _gpu_runner(self) -> tuple[Runner | None, str | None]:
        """The GPU rows' runner, in the GPU runtime (runtimes/tensorflow-gpu.toml: TensorFlow with CUDA), or
        why it cannot run here: no NVIDIA driver, or its environment not created (never built by the job: it
        is several GiB, `tuner env create tensorflow-gpu`). Tests pass their fake runner."""
        if self.runner is not None:
            return steady(self.runner, self.max_disturbance, self.log), None
        gpu = load_runtime(GPU_RUNTIME)
        reason = gpu.installable()
        if reason is not None:
            return None, reason
        try:
            return steady(runtime_runner(gpu, self.log), self.max_disturbance, self.log), None
        except TunerError as error:
            return None, str(error)

    def _gpu_checks(self) -> int:
        """Worker runs the GPU rows start before measuring: one question to TensorFlow, where it can run."""
        return 0 if self.runner is None and load_runtime(GPU_RUNTIME).installable() is not None else 1

    def _gpu_rows(self, prepared: Sequence[Prepared]) -> None:
        """GPU targets in the GPU runtime: 1 to N visible GPUs, one replica each, batch 64 per GPU, NCHW, with
        the host threads tuned for the stock CPU runtime on the largest core count. Where the GPU runtime
        cannot run here, or its TensorFlow sees no GPU, the reference table's rows are stored skipped, with why."""
        host = core_set(max(self.counts))
        stock = next((ready for ready in prepared if ready.runtime.name == "tensorflow"), prepared[0])
        runner, reason = self._gpu_runner()
        visible = 0
        if runner is not None:
            try:
                visible = visible_gpus(runner, Settings.from_params(fixed_knobs(stock.space)), host)
            except TunerError as error:
                self._fail(f"GPU check {GPU_RUNTIME}", error)
                reason = f"the GPU check failed: {error}"
            reason = reason or gpu_skip_reason(GPU_RUNTIME, visible, 1)
        if reason is not None or runner is None:
            reason = reason or "no GPU runner"
            for mode in self.modes:
                for count in (1, 2):  # the reference table's GPU rows
                    target = Target(GPU_RUNTIME, workload_for(self.model, mode, GPU_BATCH), host, "gpu", count)
                    store(self.storage, skip_record(target, reason, self.signature))
            self.log(f"GPU rows skipped: {reason}")
            return
        for mode in self.modes:
            for count in range(1, visible + 1):
                target = Target(GPU_RUNTIME, workload_for(self.model, mode, GPU_BATCH), host, "gpu", count)
                host_study = self._config(stock, max(self.counts), mode, None).name
                tuned = stored_tuned(self.storage, host_study)
                settings = dataclasses.replace(
                    tuned or self._baseline(stock.space, len(host), DEFAULT), data_format="NCHW"
                )
                label = TUNED if tuned is not None else DEFAULT
                try:
                    runs = measure(runner, target, [(label, settings)], full_policy(), self.log)
                except TunerError as error:
                    self._fail(target.describe(), error)
                    continue
                extra = stored_search(self.storage, host_study) if tuned is not None else None
                record = make_record(target, label, settings, runs[label], self.signature, new_run_id(), extra)
                store(self.storage, record)
